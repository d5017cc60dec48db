//! Fuzzes the reconnect machine: an arbitrary configuration and an arbitrary
//! sequence of (time step, input) operations, with the invariant checker
//! (`redial::unstable::invariants`) asserted after every step.
//!
//! The configuration is used twice: its raw values go through the builder
//! unchanged (any value must give `Ok` or a typed `Err`, never a panic), and
//! the same numbers mapped into valid ranges build the configuration the
//! machine runs with (or, when `use_raw` is set and the raw one is valid,
//! the raw one).
#![no_main]

use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use redial::backoff::{Backoff, Jitter};
use redial::unstable::invariants::Checker;
use redial::machine::{Config, ConfigBuilder, Generation, Input, Machine};

/// Longest sequence one run drives (keeps every execution fast).
const MAX_OPS: usize = 1_024;

#[derive(Debug, Arbitrary)]
enum RawJitter {
    None,
    Full,
    Equal,
    Decorrelated,
    Proportional(f64),
}

/// Every setting as raw numbers. Durations are in microseconds, so that
/// sub-millisecond values (truncated to zero) are exercised too.
#[derive(Debug, Arbitrary)]
struct RawConfig {
    initial_us: u64,
    multiplier: f64,
    max_us: u64,
    jitter: RawJitter,
    immediate_first_retry: bool,
    max_attempts: Option<u32>,
    max_elapsed_us: Option<u64>,
    stable_us: u64,
    /// `None`: no connect timeout.
    connect_us: Option<u64>,
    liveness_us: Option<u64>,
    blocked_us: Option<u64>,
    close_us: u64,
    grace_us: Option<u64>,
    permanent_retries: u32,
    probe_us: Option<u64>,
    endpoints: u16,
    first_generation: u64,
    seed: u64,
}

fn us(v: u64) -> Duration {
    Duration::from_micros(v)
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

impl RawConfig {
    fn jitter(&self, fraction: impl Fn(f64) -> f64) -> Jitter {
        match self.jitter {
            RawJitter::None => Jitter::None,
            RawJitter::Full => Jitter::Full,
            RawJitter::Equal => Jitter::Equal,
            RawJitter::Decorrelated => Jitter::Decorrelated,
            RawJitter::Proportional(f) => Jitter::Proportional {
                fraction: fraction(f),
            },
        }
    }

    /// The raw values through the builder: `Ok` or a typed error, no panic.
    fn build_raw(&self) -> Option<Config> {
        let backoff = Backoff::builder()
            .initial(us(self.initial_us))
            .multiplier(self.multiplier)
            .max(us(self.max_us))
            .jitter(self.jitter(|f| f))
            .build();
        let backoff = match backoff {
            Ok(b) => b,
            Err(e) => {
                let _ = e.to_string();
                return None;
            }
        };
        let builder = match self.connect_us {
            Some(t) => Config::builder().connect_timeout(us(t)),
            None => Config::builder().no_connect_timeout(),
        };
        let built = builder
            .backoff(backoff)
            .immediate_first_retry(self.immediate_first_retry)
            .opt(
                self.max_attempts,
                ConfigBuilder::max_attempts,
                ConfigBuilder::no_max_attempts,
            )
            .opt(
                self.max_elapsed_us.map(us),
                ConfigBuilder::max_elapsed,
                ConfigBuilder::no_max_elapsed,
            )
            .stable_period(us(self.stable_us))
            .first_generation(Generation(self.first_generation))
            .opt(
                self.liveness_us.map(us),
                ConfigBuilder::liveness_timeout,
                ConfigBuilder::no_liveness_timeout,
            )
            .opt(
                self.blocked_us.map(us),
                ConfigBuilder::blocked_timeout,
                ConfigBuilder::no_blocked_timeout,
            )
            .close_timeout(us(self.close_us))
            .opt(
                self.grace_us.map(us),
                ConfigBuilder::resume_grace,
                ConfigBuilder::no_resume_grace,
            )
            .permanent_retries(self.permanent_retries)
            .opt(
                self.probe_us.map(us),
                ConfigBuilder::probe_interval,
                ConfigBuilder::no_probe_interval,
            )
            .endpoints(usize::from(self.endpoints))
            .seed(self.seed)
            .build();
        match built {
            Ok(config) => Some(config),
            Err(e) => {
                let _ = e.to_string();
                None
            }
        }
    }

    /// The same numbers mapped into valid ranges (milliseconds, small
    /// enough that timers fire within a run): must always build.
    fn build_valid(&self) -> Config {
        let initial = 1 + self.initial_us % 5_000;
        let max = initial * (1 + self.max_us % 64);
        let multiplier = if self.multiplier.is_finite() {
            1.0 + (self.multiplier.abs() % 4.0)
        } else {
            2.0
        };
        let fraction = |f: f64| if f.is_finite() { f.abs() % 1.0 } else { 0.5 };
        let backoff = Backoff::builder()
            .initial(ms(initial))
            .multiplier(multiplier)
            .max(ms(max))
            .jitter(self.jitter(fraction))
            .build()
            .expect("mapped policy is valid");
        let liveness = self.liveness_us.map(|h| 2 + h % 30_000);
        let blocked = self
            .blocked_us
            .map(|b| liveness.map_or(1 + b % 60_000, |h| 2 * h + b % 60_000));
        let builder = match self.connect_us {
            Some(t) => Config::builder().connect_timeout(ms(1 + t % 30_000)),
            None => Config::builder().no_connect_timeout(),
        };
        builder
            .backoff(backoff)
            .immediate_first_retry(self.immediate_first_retry)
            .opt(
                self.max_attempts.map(|a| 1 + a % 10),
                ConfigBuilder::max_attempts,
                ConfigBuilder::no_max_attempts,
            )
            .opt(
                self.max_elapsed_us.map(|e| ms(1 + e % 200_000)),
                ConfigBuilder::max_elapsed,
                ConfigBuilder::no_max_elapsed,
            )
            .stable_period(ms(1 + self.stable_us % 30_000))
            .first_generation(Generation(1 + self.first_generation % (1 << 52)))
            .opt(
                liveness.map(ms),
                ConfigBuilder::liveness_timeout,
                ConfigBuilder::no_liveness_timeout,
            )
            .opt(
                blocked.map(ms),
                ConfigBuilder::blocked_timeout,
                ConfigBuilder::no_blocked_timeout,
            )
            .close_timeout(ms(1 + self.close_us % 10_000))
            .opt(
                self.grace_us.map(|g| ms(1 + g % 10_000)),
                ConfigBuilder::resume_grace,
                ConfigBuilder::no_resume_grace,
            )
            .permanent_retries(self.permanent_retries % 4)
            .opt(
                self.probe_us.map(|p| ms(1 + p % 3_000)),
                ConfigBuilder::probe_interval,
                ConfigBuilder::no_probe_interval,
            )
            .endpoints(1 + usize::from(self.endpoints % 5))
            .seed(self.seed)
            .build()
            .expect("mapped configuration is valid")
    }
}

/// Which generation an input names.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum GenSel {
    /// The machine's current generation.
    Current,
    /// An older one (stale, possibly 0).
    Older(u8),
    /// A newer one (never issued yet).
    Newer(u8),
    /// Whatever the arbitrary input carries.
    Raw,
}

#[derive(Debug, Arbitrary)]
enum Op {
    /// Feed an input at the current instant.
    Feed(GenSel, Input),
    /// Time passes (ms), then `Timeout`.
    Advance(u16),
    /// A long jump (ms), then `Timeout`.
    Jump(u32),
    /// Jump onto the next deadline (-1, 0 or +1 ms around it), then `Timeout`.
    ToDeadline(i8),
}

#[derive(Debug, Arbitrary)]
struct Case {
    config: RawConfig,
    use_raw: bool,
    ops: Vec<Op>,
}

fn with_generation(input: Input, generation: Generation) -> Input {
    match input {
        Input::Adopt { .. } => Input::Adopt { generation },
        Input::AttemptSucceeded { .. } => Input::AttemptSucceeded { generation },
        Input::AttemptFailed { kind, detail, .. } => Input::AttemptFailed {
            generation,
            kind,
            detail,
        },
        Input::LinkLost { kind, detail, .. } => Input::LinkLost {
            generation,
            kind,
            detail,
        },
        Input::LinkResumed {
            session_present, ..
        } => Input::LinkResumed {
            generation,
            session_present,
        },
        Input::Activity { .. } => Input::Activity { generation },
        Input::Blocked { .. } => Input::Blocked { generation },
        Input::Unblocked { .. } => Input::Unblocked { generation },
        other => other,
    }
}

fuzz_target!(|case: Case| {
    let raw = case.config.build_raw();
    let config = match raw {
        Some(config) if case.use_raw => config,
        _ => case.config.build_valid(),
    };
    let mut machine = Machine::new(config);
    let mut checker = Checker::new(&machine);
    let t0 = Instant::now();
    let mut now = t0;
    for op in case.ops.into_iter().take(MAX_OPS) {
        let input = match op {
            Op::Feed(sel, input) => {
                let current = machine.generation().0;
                let generation = match sel {
                    GenSel::Current => Generation(current),
                    GenSel::Older(k) => Generation(current.saturating_sub(u64::from(k) + 1)),
                    GenSel::Newer(k) => Generation(current.saturating_add(u64::from(k) + 1)),
                    GenSel::Raw => input.generation().unwrap_or_default(),
                };
                match input {
                    // The selector picks a probe number the same way.
                    Input::Probed { probe, outcome } => {
                        let latest = machine.stats().probes;
                        let probe = match sel {
                            GenSel::Current => latest,
                            GenSel::Older(k) => latest.saturating_sub(u64::from(k) + 1),
                            GenSel::Newer(k) => latest.saturating_add(u64::from(k) + 1),
                            GenSel::Raw => probe,
                        };
                        Input::Probed { probe, outcome }
                    }
                    other => with_generation(other, generation),
                }
            }
            Op::Advance(d) => {
                now += ms(u64::from(d));
                Input::Timeout
            }
            Op::Jump(d) => {
                now += ms(u64::from(d));
                Input::Timeout
            }
            Op::ToDeadline(offset) => {
                if let Some(t) = machine.poll_timeout() {
                    let target = match offset.signum() {
                        -1 => t - ms(1),
                        0 => t,
                        _ => t + ms(1),
                    };
                    now = now.max(target);
                }
                Input::Timeout
            }
        };
        if let Err(violation) = checker.drive(&mut machine, now, input) {
            panic!("{violation}\nstate: {:?}", machine.state());
        }
    }
});

/// Sets an optional setting through its plain setter or its `no_*` one.
trait SetOpt: Sized {
    fn opt<T>(self, value: Option<T>, set: fn(Self, T) -> Self, unset: fn(Self) -> Self) -> Self {
        match value {
            Some(v) => set(self, v),
            None => unset(self),
        }
    }
}

impl SetOpt for ConfigBuilder {}
