//! The fault campaign against the real RabbitMQ and a private Mosquitto
//! (see docs/campaign.md):
//!
//! ```sh
//! cargo run --release --all-features --example campaign -- --seeds 200
//! cargo run --release --all-features --example campaign -- --seed 17 --adapter amqp
//! ```
//!
//! Options: `--seeds N` (seeds 1..=N), `--seeds A..=B` (a range, to split a
//! long run over several processes), `--seed N` (replay one),
//! `--adapter amqp|mqtt|both`, `--quick` (the CI profile), `--no-alarm`
//! (never raise the broker-wide memory alarm), `--dry-run` (print the
//! schedules only). Exits non-zero when any run breaks a rule.
//! `REDIAL_LOG=redial=debug` (a tracing filter) prints the logs to stderr.

#[path = "../tests/campaign/mod.rs"]
mod campaign;
#[path = "../tests/support/mod.rs"]
mod support;

use campaign::schedule::{Adapter, Schedule};
use campaign::{Options, Settings, checker, run_campaign};

fn usage(error: &str) -> ! {
    eprintln!("campaign: {error}");
    eprintln!(
        "usage: campaign [--seeds N | --seeds A..=B | --seed N] [--adapter amqp|mqtt|both] [--quick] [--no-alarm] [--dry-run]"
    );
    std::process::exit(2);
}

/// `N` (1..=N) or `A..=B`.
fn seed_range(text: &str) -> Option<Vec<u64>> {
    let (first, last) = match text.split_once("..=") {
        Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
        None => (1, text.parse().ok()?),
    };
    (first <= last).then(|| (first..=last).collect())
}

fn parse(args: impl Iterator<Item = String>) -> (Options, bool) {
    let mut dry_run = false;
    let mut options = Options {
        seeds: (1..=20).collect(),
        adapters: vec![Adapter::Amqp, Adapter::Mqtt],
        quick: false,
        alarms: true,
    };
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| usage(&format!("{name} needs a value")))
        };
        match arg.as_str() {
            "--seeds" => {
                options.seeds = seed_range(&value("--seeds"))
                    .unwrap_or_else(|| usage("--seeds N or --seeds A..=B"));
            }
            "--seed" => {
                let n: u64 = value("--seed")
                    .parse()
                    .unwrap_or_else(|_| usage("--seed N"));
                options.seeds = vec![n];
            }
            "--adapter" => {
                options.adapters = match value("--adapter").as_str() {
                    "amqp" => vec![Adapter::Amqp],
                    "mqtt" => vec![Adapter::Mqtt],
                    "both" => vec![Adapter::Amqp, Adapter::Mqtt],
                    other => usage(&format!("unknown adapter {other}")),
                }
            }
            "--quick" => options.quick = true,
            "--no-alarm" => options.alarms = false,
            "--dry-run" => dry_run = true,
            "-h" | "--help" => usage("help"),
            other => usage(&format!("unknown option {other}")),
        }
    }
    (options, dry_run)
}

fn main() {
    // `REDIAL_LOG=redial=debug` prints the engine's and adapters' logs.
    if let Ok(filter) = std::env::var("REDIAL_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let (options, dry_run) = parse(std::env::args().skip(1));
    if dry_run {
        for &seed in &options.seeds {
            for &adapter in &options.adapters {
                let profile = Settings::new(options.quick).profile(options.quick, options.alarms);
                println!(
                    "seed {seed} {adapter}: {}",
                    Schedule::draw(seed, adapter, profile)
                );
            }
        }
        return;
    }
    if let Err(e) = checker::self_check() {
        eprintln!("campaign: the checker's self-check failed: {e}");
        std::process::exit(3);
    }
    let summary = run_campaign(&options);
    summary.print();
    if summary.runs() == 0 {
        eprintln!("campaign: no run was made (brokers missing?)");
        std::process::exit(2);
    }
    if summary.failed() {
        std::process::exit(1);
    }
}
