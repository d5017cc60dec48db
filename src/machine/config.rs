//! The machine's configuration, validated when it is built.

use std::time::Duration;

use crate::backoff::{Backoff, MAX_DELAY_MS};

/// A configuration that cannot work, rejected by [`ConfigBuilder::build`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A duration that must be positive is zero (or below one millisecond).
    #[error("{field} must be at least 1 ms")]
    Zero {
        /// The offending setting.
        field: &'static str,
    },
    /// A duration is larger than the machine can represent exactly.
    #[error("{field} must be at most {max_ms} ms")]
    TooLarge {
        /// The offending setting.
        field: &'static str,
        /// The largest accepted value.
        max_ms: u64,
    },
    /// The backoff multiplier is below 1, or not a finite number.
    #[error("backoff multiplier must be a finite number >= 1, got {multiplier}")]
    MultiplierBelowOne {
        /// The rejected multiplier.
        multiplier: f64,
    },
    /// The backoff cap is below the first delay.
    #[error("backoff cap ({max_ms} ms) is below the first delay ({initial_ms} ms)")]
    CapBelowInitial {
        /// The first delay.
        initial_ms: u64,
        /// The cap.
        max_ms: u64,
    },
    /// Proportional jitter outside `[0, 1]`.
    #[error("jitter fraction must be within [0, 1], got {fraction}")]
    JitterOutOfRange {
        /// The rejected fraction.
        fraction: f64,
    },
    /// `max_attempts` of zero would never try at all.
    #[error("max_attempts must be at least 1")]
    ZeroAttempts,
    /// The number of endpoints is outside `1..=MAX_ENDPOINTS`.
    #[error("endpoints must be within 1..={max}, got {count}")]
    EndpointsOutOfRange {
        /// The rejected count.
        count: usize,
        /// The largest accepted count.
        max: usize,
    },
    /// `first_generation` is 0 or above [`MAX_FIRST_GENERATION`].
    #[error("first_generation must be within 1..={max}, got {generation}")]
    FirstGenerationOutOfRange {
        /// The rejected generation.
        generation: u64,
        /// The largest accepted one.
        max: u64,
    },
    /// The blocked timeout is shorter than twice the liveness timeout (the
    /// rule of [report 001](crate#scenario-ids-and-failure-reports): throttled links must not be replaced faster than dead
    /// ones are detected).
    #[error(
        "blocked_timeout ({blocked_ms} ms) must be at least twice the liveness timeout ({min_ms} ms)"
    )]
    BlockedTimeoutTooShort {
        /// The rejected blocked timeout.
        blocked_ms: u64,
        /// The smallest accepted value.
        min_ms: u64,
    },
}

/// How many early losses may be retried at once: a link that dropped
/// before the stable period proved the broker reachable moments ago, so its
/// retry skips the backoff wait while the budget lasts. At most `burst` such
/// retries at once, then one more per `refill`; past that, early losses back
/// off as usual, so a flapping link still slows down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBudget {
    /// Immediate retries available at once (at least 1).
    pub burst: u32,
    /// The time that earns one more (at least 1 ms).
    pub refill: Duration,
}

impl Default for RetryBudget {
    /// 3 at once, one more every 2 s.
    fn default() -> Self {
        Self {
            burst: 3,
            refill: Duration::from_secs(2),
        }
    }
}

/// The validated budget, in whole milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    pub(crate) burst: u32,
    pub(crate) refill_ms: u64,
}

/// The most endpoints one machine may choose among.
pub const MAX_ENDPOINTS: usize = 1024;

/// The largest `first_generation`: 2^52, so that the generations a machine
/// issues stay below 2^53, which every JSON reader (a JavaScript number
/// included) holds exactly.
pub const MAX_FIRST_GENERATION: u64 = 1 << 52;

/// A validated machine configuration. Build one with [`Config::builder`].
///
/// # Examples
///
/// Settings are checked when the configuration is built, never later: an
/// engine never starts with a configuration it cannot run.
///
/// ```
/// use std::time::Duration;
/// use redial::machine::{Config, ConfigError};
///
/// # fn main() -> Result<(), ConfigError> {
/// let config = Config::builder()
///     .connect_timeout(Duration::from_secs(5))
///     .stable_period(Duration::from_secs(30))
///     .seed(42) // reproducible jitter; random when unset
///     .build()?;
/// assert_eq!(config.connect_timeout(), Some(Duration::from_secs(5)));
/// assert_eq!(config.seed(), 42);
///
/// let refused = Config::builder().connect_timeout(Duration::ZERO).build();
/// assert!(matches!(refused, Err(ConfigError::Zero { .. })));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub(crate) backoff: Backoff,
    pub(crate) immediate_first_retry: bool,
    pub(crate) retry_budget: Option<Budget>,
    pub(crate) max_attempts: Option<u32>,
    pub(crate) max_elapsed_ms: Option<u64>,
    pub(crate) stable_period_ms: u64,
    pub(crate) connect_timeout_ms: Option<u64>,
    pub(crate) liveness_timeout_ms: Option<u64>,
    pub(crate) blocked_timeout_ms: Option<u64>,
    pub(crate) close_timeout_ms: u64,
    pub(crate) resume_grace_ms: Option<u64>,
    pub(crate) permanent_retries: u32,
    pub(crate) probe_interval_ms: Option<u64>,
    pub(crate) endpoints: u32,
    pub(crate) first_generation: u64,
    pub(crate) seed: u64,
}

impl Default for Config {
    /// The defaults, with a random seed like [`ConfigBuilder::build`]: a
    /// fleet built from defaults spreads its retries. Pass
    /// [`ConfigBuilder::seed`] for reproducible jitter.
    fn default() -> Self {
        ConfigBuilder::default()
            .build()
            .expect("the defaults are valid")
    }
}

impl Config {
    /// A builder holding the defaults.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::default()
    }

    /// The backoff policy.
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }
    /// Whether the first attempt after losing a stable link is immediate.
    pub fn immediate_first_retry(&self) -> bool {
        self.immediate_first_retry
    }
    /// The budget of immediate retries after early losses (`None`: none).
    pub fn retry_budget(&self) -> Option<RetryBudget> {
        self.retry_budget.map(|b| RetryBudget {
            burst: b.burst,
            refill: Duration::from_millis(b.refill_ms),
        })
    }
    /// Attempts per outage before giving up, if limited.
    pub fn max_attempts(&self) -> Option<u32> {
        self.max_attempts
    }
    /// Longest outage before giving up, if limited.
    pub fn max_elapsed(&self) -> Option<Duration> {
        self.max_elapsed_ms.map(Duration::from_millis)
    }
    /// How long a link must stay up before the attempt counter resets.
    pub fn stable_period(&self) -> Duration {
        Duration::from_millis(self.stable_period_ms)
    }
    /// How long one attempt may take (`None`: as long as the transport lets it).
    pub fn connect_timeout(&self) -> Option<Duration> {
        self.connect_timeout_ms.map(Duration::from_millis)
    }
    /// The generation of the machine's first link.
    pub fn first_generation(&self) -> super::Generation {
        super::Generation(self.first_generation)
    }
    /// Silence after which a link is declared dead (`None`: disabled).
    pub fn liveness_timeout(&self) -> Option<Duration> {
        self.liveness_timeout_ms.map(Duration::from_millis)
    }
    /// How long a link may stay blocked before it is replaced (`None`: forever).
    pub fn blocked_timeout(&self) -> Option<Duration> {
        self.blocked_timeout_ms.map(Duration::from_millis)
    }
    /// How long the driver may take to close after a shutdown.
    pub fn close_timeout(&self) -> Duration {
        Duration::from_millis(self.close_timeout_ms)
    }
    /// How long a lost link is given to resume by itself (`None`: not at all).
    pub fn resume_grace(&self) -> Option<Duration> {
        self.resume_grace_ms.map(Duration::from_millis)
    }
    /// How many permanent failures per outage are retried like transient ones.
    pub fn permanent_retries(&self) -> u32 {
        self.permanent_retries
    }
    /// How often the broker is probed once a backoff wait is over
    /// (`None`: no probes, attempts on the schedule alone).
    pub fn probe_interval(&self) -> Option<Duration> {
        self.probe_interval_ms.map(Duration::from_millis)
    }
    /// How many endpoints the machine chooses among (see
    /// [`ConfigBuilder::endpoints`]).
    pub fn endpoints(&self) -> usize {
        self.endpoints as usize
    }
    /// The PRNG seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }
}

/// Builds a [`Config`]; every setting is checked by [`ConfigBuilder::build`].
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    backoff: Backoff,
    immediate_first_retry: bool,
    retry_budget: Option<RetryBudget>,
    max_attempts: Option<u32>,
    max_elapsed: Option<Duration>,
    stable_period: Duration,
    connect_timeout: Option<Duration>,
    liveness_timeout: Option<Duration>,
    blocked_timeout: Option<Duration>,
    close_timeout: Duration,
    resume_grace: Option<Duration>,
    permanent_retries: u32,
    probe_interval: Option<Duration>,
    endpoints: usize,
    first_generation: u64,
    seed: Option<u64>,
}

impl Default for ConfigBuilder {
    fn default() -> Self {
        Self {
            backoff: Backoff::default(),
            immediate_first_retry: true,
            retry_budget: Some(RetryBudget::default()),
            max_attempts: None,
            max_elapsed: None,
            stable_period: Duration::from_secs(10),
            connect_timeout: Some(Duration::from_secs(20)),
            liveness_timeout: Some(Duration::from_secs(60)),
            blocked_timeout: None,
            close_timeout: Duration::from_secs(5),
            resume_grace: None,
            permanent_retries: 0,
            probe_interval: None,
            endpoints: 1,
            first_generation: 1,
            seed: None,
        }
    }
}

impl ConfigBuilder {
    /// The backoff policy (default: 1 s, x2, cap 60 s, +-50 % jitter).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }
    /// Retry at once after losing a link that had been stable (default: true,
    /// as NATS ADR-40 asks); every later attempt waits per the policy.
    pub fn immediate_first_retry(mut self, yes: bool) -> Self {
        self.immediate_first_retry = yes;
        self
    }
    /// Immediate retries after links that dropped before the stable period
    /// (default: 3 at once, one more every 2 s; `None`: every such loss
    /// waits its backoff delay). Used only with `immediate_first_retry`.
    pub fn retry_budget(mut self, budget: Option<RetryBudget>) -> Self {
        self.retry_budget = budget;
        self
    }
    /// Give up after this many failed attempts in one outage (default: never).
    /// Probes are not attempts: with [`ConfigBuilder::probe_interval`] set,
    /// an outage whose probes go unanswered makes no attempts, so bound it
    /// with [`ConfigBuilder::max_elapsed`] instead.
    pub fn max_attempts(mut self, attempts: Option<u32>) -> Self {
        self.max_attempts = attempts;
        self
    }
    /// Give up when an outage would last longer than this (default: never).
    pub fn max_elapsed(mut self, elapsed: Option<Duration>) -> Self {
        self.max_elapsed = elapsed;
        self
    }
    /// A link must stay up this long before the attempt counter resets
    /// (default: 10 s); a link that drops sooner counts as a failed attempt.
    pub fn stable_period(mut self, period: Duration) -> Self {
        self.stable_period = period;
        self
    }
    /// How long one attempt may take before it counts as failed (default: 20 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }
    /// No connect timeout: an attempt takes as long as the transport's own
    /// timeouts let it (for SDKs that enforce their own).
    pub fn without_connect_timeout(mut self) -> Self {
        self.connect_timeout = None;
        self
    }
    /// Never give up on failures: no `max_attempts`, no `max_elapsed` (the
    /// default; spelled out for readers). A permanent error still gives up
    /// unless [`ConfigBuilder::permanent_retries`] allows it.
    pub fn never_give_up(mut self) -> Self {
        self.max_attempts = None;
        self.max_elapsed = None;
        self
    }
    /// No retries: the first failed attempt gives up (`max_attempts` 1).
    pub fn no_retries(mut self) -> Self {
        self.max_attempts = Some(1);
        self
    }
    /// The generation of the machine's first link (default: 1). An
    /// application that replaces a machine while callbacks of the old one's
    /// links may still report into the new one starts the new machine at
    /// the old one's `generation().next()`, so that every late report is
    /// stale (the *epochs* of docs/spec.md, section 11).
    pub fn first_generation(mut self, generation: super::Generation) -> Self {
        self.first_generation = generation.0;
        self
    }
    /// Declare a link dead after this much inbound silence (default: 60 s).
    /// `None` disables the watchdog and must be asked for explicitly.
    pub fn liveness_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.liveness_timeout = timeout;
        self
    }
    /// Replace a link that stays blocked longer than this (default: never);
    /// must be at least twice the liveness timeout.
    pub fn blocked_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.blocked_timeout = timeout;
        self
    }
    /// How long the driver may take to close after a shutdown (default: 5 s).
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }
    /// For transports that reconnect underneath (SDK callbacks): how long a
    /// lost link is given to resume by itself before the machine replaces it
    /// (default: `None`, the machine replaces it at once).
    pub fn resume_grace(mut self, grace: Option<Duration>) -> Self {
        self.resume_grace = grace;
        self
    }
    /// Retry this many permanent failures per outage before giving up
    /// (default: 0, give up at the first).
    pub fn permanent_retries(mut self, retries: u32) -> Self {
        self.permanent_retries = retries;
        self
    }
    /// Probe the broker every `interval` once a backoff wait is over, and
    /// make the attempt when a probe finds it reachable (default: `None`, no
    /// probes: a generic transport may not implement
    /// [`crate::runtime::Transport::probe`]; the AMQP and MQTT adapters turn
    /// them on). A probe unanswered after `interval` counts as unreachable.
    pub fn probe_interval(mut self, interval: Option<Duration>) -> Self {
        self.probe_interval = interval;
        self
    }
    /// How many endpoints (the nodes of a cluster, the brokers of a
    /// failover group) the machine chooses among for each attempt and probe
    /// (default: 1). It shuffles them once, from the seed, tries them in
    /// that order, and moves to the next at once after a failure while the
    /// round has one untried; backoff grows per round (docs/spec.md, 12.1).
    /// The adapters set it from their endpoint lists.
    pub fn endpoints(mut self, count: usize) -> Self {
        self.endpoints = count;
        self
    }
    /// The PRNG seed for jitter. When unset, `build` takes one from the
    /// standard library's per-process random keys, so that a fleet spreads.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Checks every setting and returns the configuration.
    pub fn build(self) -> Result<Config, ConfigError> {
        let stable_period_ms = positive_ms("stable_period", self.stable_period)?;
        let connect_timeout_ms = self
            .connect_timeout
            .map(|d| positive_ms("connect_timeout", d))
            .transpose()?;
        if !(1..=MAX_FIRST_GENERATION).contains(&self.first_generation) {
            return Err(ConfigError::FirstGenerationOutOfRange {
                generation: self.first_generation,
                max: MAX_FIRST_GENERATION,
            });
        }
        let close_timeout_ms = positive_ms("close_timeout", self.close_timeout)?;
        let max_elapsed_ms = self
            .max_elapsed
            .map(|d| positive_ms("max_elapsed", d))
            .transpose()?;
        let liveness_timeout_ms = self
            .liveness_timeout
            .map(|d| positive_ms("liveness_timeout", d))
            .transpose()?;
        if liveness_timeout_ms.is_some_and(|h| h < 2) {
            return Err(ConfigError::Zero {
                field: "liveness_timeout / 2",
            });
        }
        let blocked_timeout_ms = self
            .blocked_timeout
            .map(|d| positive_ms("blocked_timeout", d))
            .transpose()?;
        if let (Some(blocked_ms), Some(h)) = (blocked_timeout_ms, liveness_timeout_ms)
            && blocked_ms < 2 * h
        {
            return Err(ConfigError::BlockedTimeoutTooShort {
                blocked_ms,
                min_ms: 2 * h,
            });
        }
        let resume_grace_ms = self
            .resume_grace
            .map(|d| positive_ms("resume_grace", d))
            .transpose()?;
        if self.max_attempts == Some(0) {
            return Err(ConfigError::ZeroAttempts);
        }
        if !(1..=MAX_ENDPOINTS).contains(&self.endpoints) {
            return Err(ConfigError::EndpointsOutOfRange {
                count: self.endpoints,
                max: MAX_ENDPOINTS,
            });
        }
        let retry_budget = match self.retry_budget {
            None => None,
            Some(b) if b.burst == 0 => {
                return Err(ConfigError::Zero {
                    field: "retry_budget.burst",
                });
            }
            Some(b) => Some(Budget {
                burst: b.burst,
                refill_ms: positive_ms("retry_budget.refill", b.refill)?,
            }),
        };
        let probe_interval_ms = self
            .probe_interval
            .map(|d| positive_ms("probe_interval", d))
            .transpose()?;
        let seed = self.seed.unwrap_or_else(random_seed);
        Ok(Config {
            backoff: self.backoff,
            immediate_first_retry: self.immediate_first_retry,
            retry_budget,
            max_attempts: self.max_attempts,
            max_elapsed_ms,
            stable_period_ms,
            connect_timeout_ms,
            liveness_timeout_ms,
            blocked_timeout_ms,
            close_timeout_ms,
            resume_grace_ms,
            permanent_retries: self.permanent_retries,
            probe_interval_ms,
            endpoints: u32::try_from(self.endpoints).expect("checked above"),
            first_generation: self.first_generation,
            seed,
        })
    }
}

fn positive_ms(field: &'static str, d: Duration) -> Result<u64, ConfigError> {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return Err(ConfigError::Zero { field });
    }
    if ms > MAX_DELAY_MS {
        return Err(ConfigError::TooLarge {
            field,
            max_ms: MAX_DELAY_MS,
        });
    }
    Ok(ms)
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(0u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = Config::builder().build().unwrap();
        assert_eq!(c.liveness_timeout(), Some(Duration::from_secs(60)));
        assert!(c.immediate_first_retry());
    }

    #[test]
    fn bad_configs_are_typed_errors() {
        assert_eq!(
            Config::builder().stable_period(Duration::ZERO).build(),
            Err(ConfigError::Zero {
                field: "stable_period"
            })
        );
        assert_eq!(
            Config::builder().max_attempts(Some(0)).build(),
            Err(ConfigError::ZeroAttempts)
        );
        assert!(matches!(
            Config::builder()
                .liveness_timeout(Some(Duration::from_secs(60)))
                .blocked_timeout(Some(Duration::from_secs(90)))
                .build(),
            Err(ConfigError::BlockedTimeoutTooShort { .. })
        ));
        assert!(matches!(
            Config::builder()
                .connect_timeout(Duration::from_secs(100 * 86_400))
                .build(),
            Err(ConfigError::TooLarge { .. })
        ));
    }
}
