//! The broker-wide memory alarm, raised only inside a guard that restores
//! the watermark the broker had before, however the run ends.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::support::amqp::rabbitmqctl;

/// RabbitMQ's default watermark, restored when the current one cannot be
/// read or is a tiny leftover of an interrupted run.
const DEFAULT: &str = "0.4";

/// A watermark below this many bytes is an alarm someone left behind.
const LEFTOVER_BYTES: u64 = 1 << 20;

/// The `set_vm_memory_high_watermark` arguments that restore the broker's
/// own watermark, read once per process (`None`: no usable `rabbitmqctl`).
fn restore_args() -> Option<&'static [String]> {
    static ARGS: OnceLock<Option<Vec<String>>> = OnceLock::new();
    ARGS.get_or_init(|| {
        let out = rabbitmqctl(&["eval", "vm_memory_monitor:get_vm_memory_high_watermark()."])?;
        let value = out.trim();
        let args = if let Some(rest) = value.strip_prefix("{absolute,") {
            let bytes = rest.trim_end_matches('}').trim_matches('"').to_owned();
            match bytes.parse::<u64>() {
                Ok(n) if n < LEFTOVER_BYTES => vec![DEFAULT.to_owned()],
                _ => vec!["absolute".to_owned(), bytes],
            }
        } else if value.parse::<f64>().is_ok_and(|f| f > 0.01) {
            vec![value.to_owned()]
        } else {
            vec![DEFAULT.to_owned()]
        };
        Some(args)
    })
    .as_deref()
}

/// Restores the broker's watermark (at the start and end of every run, in
/// case an earlier one was killed with the alarm up). Returns whether
/// `rabbitmqctl` answered.
pub fn restore() -> bool {
    let Some(args) = restore_args() else {
        return false;
    };
    let mut cmd = vec!["set_vm_memory_high_watermark"];
    cmd.extend(args.iter().map(String::as_str));
    rabbitmqctl(&cmd).is_some()
}

/// A raised alarm; dropping it restores the watermark.
pub struct Alarm {
    /// How long raising it took (`rabbitmqctl` is slow).
    pub took: Duration,
}

impl Alarm {
    /// Raises the alarm (watermark 1 byte). `Err` says why it could not
    /// (the fault is then skipped and reported).
    pub fn raise() -> Result<Alarm, String> {
        let started = Instant::now();
        restore_args().ok_or("rabbitmqctl is missing or does not answer")?;
        rabbitmqctl(&["set_vm_memory_high_watermark", "absolute", "1"])
            .ok_or("rabbitmqctl set_vm_memory_high_watermark failed")?;
        Ok(Alarm {
            took: started.elapsed(),
        })
    }
}

impl Drop for Alarm {
    fn drop(&mut self) {
        if !restore() {
            eprintln!(
                "campaign: could not restore the memory watermark; run `rabbitmqctl set_vm_memory_high_watermark {DEFAULT}`"
            );
        }
    }
}
