//! A seeded, reproducible fault campaign against the real RabbitMQ and a
//! private Mosquitto (see `docs/campaign.md`). Shared by
//! `examples/campaign.rs` (the long campaign) and `tests/campaign.rs` (the
//! CI one); both include it with `#[path]`, next to `tests/support`.
//!
//! * `schedule`: seed -> faults (pure, so `--seed N` replays exactly);
//! * `amqp_driver`, `mqtt_driver`: one per adapter (broker objects,
//!   witness, transport);
//! * `harness`: what both share (publishing, consumer, fault player);
//! * `record`: what a run records; `checker`: the rules.

pub mod alarm;
pub mod amqp_driver;
pub mod checker;
pub mod harness;
pub mod mqtt_driver;
pub mod record;
pub mod report;
pub mod schedule;

use std::time::Duration;

use redial::backoff::{Backoff, Jitter};

use schedule::{Adapter, Profile, Schedule};

/// What every run is configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The AMQP heartbeat and the MQTT keep-alive (the liveness timeout H).
    pub liveness: Duration,
    /// The attempt timeout (whole seconds: MQTT needs them).
    pub connect_timeout: Duration,
    /// The engine's backoff.
    pub backoff: Backoff,
    /// Uptime after which the backoff resets.
    pub stable_period: Duration,
    /// Publishes per second.
    pub rate_per_sec: u64,
    /// Every publish's publish timeout (queued, written and awaiting its
    /// confirm): its deadline.
    pub ttl: Duration,
    /// The outbox's `max_messages`.
    pub max_messages: usize,
    /// The AMQP consumer stream's capacity.
    pub consumer_buffer: usize,
    /// The AMQP consumer's prefetch.
    pub prefetch: u16,
    /// A slow consumer's pause per message.
    pub slow_pause: Duration,
    /// Slack on a publish's deadline (scheduling on a loaded machine).
    pub deadline_slack: Duration,
    /// Slack added to each window's outage when bounding attempts.
    pub window_slack: Duration,
    /// How long after a window a link loss is still charged to it.
    pub loss_tail: Duration,
    /// How long the witness and the consumer get to see every confirm.
    pub witness_wait: Duration,
}

impl Settings {
    /// The campaign's settings (`quick`: the CI campaign, a lower rate).
    pub fn new(quick: bool) -> Settings {
        Settings {
            liveness: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(3),
            backoff: Backoff::builder()
                .initial(Duration::from_millis(250))
                .multiplier(2.0)
                .max(Duration::from_secs(2))
                .jitter(Jitter::Proportional { fraction: 0.5 })
                .build()
                .expect("a valid backoff"),
            stable_period: Duration::from_secs(2),
            rate_per_sec: if quick { 100 } else { 200 },
            ttl: Duration::from_secs(4),
            max_messages: 400,
            consumer_buffer: 64,
            prefetch: 50,
            slow_pause: Duration::from_millis(50),
            deadline_slack: Duration::from_secs(1),
            window_slack: Duration::from_millis(500),
            loss_tail: Duration::from_secs(1),
            witness_wait: Duration::from_secs(10),
        }
    }

    /// The schedule profile these settings imply.
    pub fn profile(&self, quick: bool, alarms: bool) -> Profile {
        Profile {
            quick,
            alarms,
            liveness: self.liveness,
            // One full backoff delay to reconnect, then a second of quiet.
            tail: self.backoff.max() + Duration::from_secs(2),
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The seeds, in order.
    pub seeds: Vec<u64>,
    /// The adapters, per seed.
    pub adapters: Vec<Adapter>,
    /// Fewer, shorter windows and a lower rate.
    pub quick: bool,
    /// Whether memory alarms may be drawn.
    pub alarms: bool,
}

/// A name unique to this run (queues, topics, payloads, client ids).
pub fn run_tag(schedule: &Schedule) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!(
        "{}{}-{}-{}",
        schedule.adapter,
        schedule.seed,
        std::process::id(),
        nanos / 1_000
    )
}

/// Runs every seed on every adapter, one at a time, printing each run and
/// a summary. Returns the summary (its `failed()` says whether any run
/// broke a rule).
pub fn run_campaign(options: &Options) -> report::Summary {
    let mut summary = report::Summary::default();
    let amqp = crate::support::brokers::amqp_available();
    let mqtt = crate::support::mosquitto::binary_available();
    // A run killed with the alarm up would block every publisher: clear it
    // first (runs with an alarm also restore it before and after).
    if amqp && options.adapters.contains(&Adapter::Amqp) && !alarm::restore() {
        println!(
            "note: rabbitmqctl does not answer: memory alarms and broker-side closes are skipped"
        );
    }
    for &seed in &options.seeds {
        for &adapter in &options.adapters {
            let settings = Settings::new(options.quick);
            let schedule = Schedule::draw(
                seed,
                adapter,
                settings.profile(options.quick, options.alarms),
            );
            let available = match adapter {
                Adapter::Amqp => amqp,
                Adapter::Mqtt => mqtt,
            };
            if !available {
                summary.skip(adapter, seed, "broker not available");
                continue;
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a runtime");
            let started = std::time::Instant::now();
            let run = runtime.block_on(async {
                match adapter {
                    Adapter::Amqp => Ok(amqp_driver::run(schedule.clone(), settings).await),
                    Adapter::Mqtt => mqtt_driver::run(schedule.clone(), settings).await,
                }
            });
            runtime.shutdown_timeout(Duration::from_secs(2));
            match run {
                Ok(run) => {
                    let verdict = checker::check(&run);
                    report::print_run(&run, &verdict, options.quick, started.elapsed());
                    summary.add(&run, &verdict);
                }
                Err(why) => {
                    println!("seed {seed} {adapter}: could not run: {why}");
                    summary.skip(adapter, seed, &why);
                }
            }
        }
    }
    summary
}
