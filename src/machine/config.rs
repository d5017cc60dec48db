//! The machine's configuration, validated when it is built.

use std::time::Duration;

use crate::backoff::{Backoff, BackoffBuilder, Jitter, MAX_DELAY_MS};
use crate::env::{EnvError, Vars};

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
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct RetryBudget {
    /// Immediate retries available at once (at least 1).
    pub burst: u32,
    /// The time that earns one more (at least 1 ms).
    #[cfg_attr(feature = "serde", serde(with = "crate::serde_duration"))]
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

/// A validated machine configuration. Build one with [`Config::builder`],
/// change one with [`Config::to_builder`].
///
/// With the `serde` feature it (de)serializes as a [`ConfigBuilder`]:
/// deserializing runs [`ConfigBuilder::build`], so an invalid configuration
/// is an error carrying the [`ConfigError`]'s message.
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
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(
    feature = "serde",
    serde(try_from = "ConfigBuilder", into = "ConfigBuilder")
)]
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

impl Config {
    /// A builder holding this configuration's settings (its seed included),
    /// to change some of them: `config.to_builder().build()` gives back an
    /// equal configuration.
    pub fn to_builder(&self) -> ConfigBuilder {
        let ms = Duration::from_millis;
        ConfigBuilder {
            backoff: self.backoff.to_builder(),
            immediate_first_retry: self.immediate_first_retry,
            retry_budget: self.retry_budget(),
            max_attempts: self.max_attempts,
            max_elapsed: self.max_elapsed_ms.map(ms),
            stable_period: ms(self.stable_period_ms),
            connect_timeout: self.connect_timeout_ms.map(ms),
            liveness_timeout: self.liveness_timeout_ms.map(ms),
            blocked_timeout: self.blocked_timeout_ms.map(ms),
            close_timeout: ms(self.close_timeout_ms),
            resume_grace: self.resume_grace_ms.map(ms),
            permanent_retries: self.permanent_retries,
            probe_interval: self.probe_interval_ms.map(ms),
            endpoints: self.endpoints as usize,
            first_generation: self.first_generation,
            seed: Some(self.seed),
        }
    }
}

impl From<Config> for ConfigBuilder {
    fn from(config: Config) -> Self {
        config.to_builder()
    }
}

impl TryFrom<ConfigBuilder> for Config {
    type Error = ConfigError;
    fn try_from(builder: ConfigBuilder) -> Result<Self, ConfigError> {
        builder.build()
    }
}

/// Builds a [`Config`]; every setting is checked by [`ConfigBuilder::build`].
///
/// Setters take plain values; a setting that can be off has a `no_*`
/// setter (`liveness_timeout(d)` / `no_liveness_timeout()`).
///
/// With the `serde` feature it deserializes from an object holding any of
/// the setters' names (durations in `humantime` form, `null` or `"off"`
/// for a setting turned off, the backoff as [`BackoffBuilder`]); so does
/// [`Config`], through [`ConfigBuilder::build`], so that an invalid
/// configuration is rejected with the [`ConfigError`]'s message.
///
/// ```
/// use std::time::Duration;
/// use redial::machine::Config;
///
/// let config = Config::builder()
///     .liveness_timeout(Duration::from_secs(30))
///     .blocked_timeout(Duration::from_secs(120))
///     .resume_grace(Duration::from_secs(2))
///     .seed(7)
///     .build()?;
/// let again = config.to_builder().no_resume_grace().build()?;
/// assert_eq!(again.resume_grace(), None);
/// assert_eq!(again.liveness_timeout(), config.liveness_timeout());
/// # Ok::<(), redial::machine::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct ConfigBuilder {
    backoff: BackoffBuilder,
    immediate_first_retry: bool,
    retry_budget: Option<RetryBudget>,
    max_attempts: Option<u32>,
    #[cfg_attr(feature = "serde", serde(with = "crate::serde_duration::option"))]
    max_elapsed: Option<Duration>,
    #[cfg_attr(feature = "serde", serde(with = "crate::serde_duration"))]
    stable_period: Duration,
    #[cfg_attr(feature = "serde", serde(with = "crate::serde_duration::option"))]
    connect_timeout: Option<Duration>,
    #[cfg_attr(feature = "serde", serde(with = "crate::serde_duration::option"))]
    liveness_timeout: Option<Duration>,
    #[cfg_attr(feature = "serde", serde(with = "crate::serde_duration::option"))]
    blocked_timeout: Option<Duration>,
    #[cfg_attr(feature = "serde", serde(with = "crate::serde_duration"))]
    close_timeout: Duration,
    #[cfg_attr(feature = "serde", serde(with = "crate::serde_duration::option"))]
    resume_grace: Option<Duration>,
    permanent_retries: u32,
    #[cfg_attr(feature = "serde", serde(with = "crate::serde_duration::option"))]
    probe_interval: Option<Duration>,
    endpoints: usize,
    first_generation: u64,
    seed: Option<u64>,
}

impl Default for ConfigBuilder {
    fn default() -> Self {
        Self {
            backoff: BackoffBuilder::default(),
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
        self.backoff = backoff.to_builder();
        self
    }
    /// Retry at once after losing a link that had been stable (default: true,
    /// as NATS ADR-40 asks); every later attempt waits per the policy.
    pub fn immediate_first_retry(mut self, yes: bool) -> Self {
        self.immediate_first_retry = yes;
        self
    }
    /// Immediate retries after links that dropped before the stable period
    /// (default: 3 at once, one more every 2 s). Used only with
    /// `immediate_first_retry`.
    pub fn retry_budget(mut self, budget: RetryBudget) -> Self {
        self.retry_budget = Some(budget);
        self
    }
    /// No retry budget: every early loss waits its backoff delay.
    pub fn no_retry_budget(mut self) -> Self {
        self.retry_budget = None;
        self
    }
    /// Give up after this many failed attempts in one outage (default: never).
    /// Probes are not attempts: with [`ConfigBuilder::probe_interval`] set,
    /// an outage whose probes go unanswered makes no attempts, so bound it
    /// with [`ConfigBuilder::max_elapsed`] instead.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }
    /// No limit on the attempts of one outage (the default).
    pub fn no_max_attempts(mut self) -> Self {
        self.max_attempts = None;
        self
    }
    /// Give up when an outage would last longer than this (default: never).
    pub fn max_elapsed(mut self, elapsed: Duration) -> Self {
        self.max_elapsed = Some(elapsed);
        self
    }
    /// No limit on an outage's length (the default).
    pub fn no_max_elapsed(mut self) -> Self {
        self.max_elapsed = None;
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
    pub fn no_connect_timeout(mut self) -> Self {
        self.connect_timeout = None;
        self
    }
    /// Never give up on failures: no `max_attempts`, no `max_elapsed` (the
    /// default; spelled out for readers). A permanent error still gives up
    /// unless [`ConfigBuilder::permanent_retries`] allows it.
    pub fn never_give_up(self) -> Self {
        self.no_max_attempts().no_max_elapsed()
    }
    /// No retries: the first failed attempt gives up (`max_attempts` 1).
    pub fn no_retries(self) -> Self {
        self.max_attempts(1)
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
    pub fn liveness_timeout(mut self, timeout: Duration) -> Self {
        self.liveness_timeout = Some(timeout);
        self
    }
    /// No liveness watchdog: a half-open link goes unnoticed until the
    /// transport reports it. Must be asked for explicitly.
    pub fn no_liveness_timeout(mut self) -> Self {
        self.liveness_timeout = None;
        self
    }
    /// Replace a link that stays blocked longer than this (default: never);
    /// must be at least twice the liveness timeout.
    pub fn blocked_timeout(mut self, timeout: Duration) -> Self {
        self.blocked_timeout = Some(timeout);
        self
    }
    /// A blocked link is kept however long it stays blocked (the default).
    pub fn no_blocked_timeout(mut self) -> Self {
        self.blocked_timeout = None;
        self
    }
    /// How long the driver may take to close after a shutdown (default: 5 s).
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }
    /// For transports that reconnect underneath (SDK callbacks): how long a
    /// lost link is given to resume by itself before the machine replaces it
    /// (default: none, the machine replaces it at once).
    pub fn resume_grace(mut self, grace: Duration) -> Self {
        self.resume_grace = Some(grace);
        self
    }
    /// A lost link is replaced at once (the default).
    pub fn no_resume_grace(mut self) -> Self {
        self.resume_grace = None;
        self
    }
    /// Retry this many permanent failures per outage before giving up
    /// (default: 0, give up at the first).
    pub fn permanent_retries(mut self, retries: u32) -> Self {
        self.permanent_retries = retries;
        self
    }
    /// Probe the broker every `interval` once a backoff wait is over, and
    /// make the attempt when a probe finds it reachable (default: no
    /// probes: a generic transport may not implement
    /// [`crate::runtime::Transport::probe`]; the AMQP and MQTT adapters'
    /// `engine_config()` turns them on). A probe unanswered after
    /// `interval` counts as unreachable.
    pub fn probe_interval(mut self, interval: Duration) -> Self {
        self.probe_interval = Some(interval);
        self
    }
    /// No probes: attempts on the backoff schedule alone (the default).
    pub fn no_probe_interval(mut self) -> Self {
        self.probe_interval = None;
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

    /// Overrides settings from the process environment, `{prefix}_*`
    /// variables (`prefix` `"REDIAL"` gives `REDIAL_BACKOFF_INITIAL`, ...);
    /// the names are listed in docs/configuration.md. Unset or empty variables
    /// change nothing; the values are checked by [`ConfigBuilder::build`].
    ///
    /// # Errors
    /// [`EnvError`] names the variable that does not parse.
    pub fn apply_env(self, prefix: &str) -> Result<Self, EnvError> {
        self.apply_env_with(prefix, crate::env::process)
    }

    /// [`ConfigBuilder::apply_env`] over any lookup (a test's map, a
    /// configuration service).
    ///
    /// # Errors
    /// As [`ConfigBuilder::apply_env`].
    pub fn apply_env_with(
        mut self,
        prefix: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, EnvError> {
        let vars = Vars::new(prefix, &lookup);
        if let Some(d) = vars.duration("BACKOFF_INITIAL")? {
            self.backoff = self.backoff.initial(d);
        }
        if let Some(d) = vars.duration("BACKOFF_MAX")? {
            self.backoff = self.backoff.max(d);
        }
        if let Some(m) = vars.parse("BACKOFF_MULTIPLIER", "a number >= 1")? {
            self.backoff = self.backoff.multiplier(m);
        }
        if let Some(j) = vars.with("BACKOFF_JITTER", JITTER, parse_jitter)? {
            self.backoff = self.backoff.jitter(j);
        }
        if let Some(v) = vars.bool("IMMEDIATE_FIRST_RETRY")? {
            self.immediate_first_retry = v;
        }
        if let Some(v) = vars.with("RETRY_BUDGET", BUDGET, parse_budget)? {
            self.retry_budget = v;
        }
        if let Some(v) = vars.optional_parse("MAX_ATTEMPTS", "a whole number, or off")? {
            self.max_attempts = v;
        }
        for (name, slot) in [
            ("MAX_ELAPSED", &mut self.max_elapsed),
            ("CONNECT_TIMEOUT", &mut self.connect_timeout),
            ("LIVENESS_TIMEOUT", &mut self.liveness_timeout),
            ("BLOCKED_TIMEOUT", &mut self.blocked_timeout),
            ("RESUME_GRACE", &mut self.resume_grace),
            ("PROBE_INTERVAL", &mut self.probe_interval),
        ] {
            if let Some(v) = vars.optional_duration(name)? {
                *slot = v;
            }
        }
        for (name, slot) in [
            ("STABLE_PERIOD", &mut self.stable_period),
            ("CLOSE_TIMEOUT", &mut self.close_timeout),
        ] {
            if let Some(v) = vars.duration(name)? {
                *slot = v;
            }
        }
        if let Some(v) = vars.parse("PERMANENT_RETRIES", "a whole number")? {
            self.permanent_retries = v;
        }
        if let Some(v) = vars.parse("SEED", "a whole number")? {
            self.seed = Some(v);
        }
        Ok(self)
    }

    /// Checks every setting and returns the configuration.
    ///
    /// # Errors
    /// [`ConfigError`] naming the setting that cannot work.
    pub fn build(self) -> Result<Config, ConfigError> {
        let backoff = self.backoff.build()?;
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
            backoff,
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

/// What `{prefix}_BACKOFF_JITTER` must look like.
const JITTER: &str = "none, full, equal, decorrelated, or a proportional fraction in [0, 1]";
/// What `{prefix}_RETRY_BUDGET` must look like.
const BUDGET: &str = "off, or a burst and a refill time such as 3/2s";

/// A jitter mode by name, or a proportional fraction (the first
/// `REDIAL_BACKOFF_JITTER` took a fraction only).
fn parse_jitter(v: &str) -> Option<Jitter> {
    match v.to_ascii_lowercase().as_str() {
        "none" => Some(Jitter::None),
        "full" => Some(Jitter::Full),
        "equal" => Some(Jitter::Equal),
        "decorrelated" => Some(Jitter::Decorrelated),
        other => other
            .parse()
            .ok()
            .map(|fraction| Jitter::Proportional { fraction }),
    }
}

/// `off`, or `BURST/REFILL` such as `3/2s`.
fn parse_budget(v: &str) -> Option<Option<RetryBudget>> {
    if crate::env::is_off(v) {
        return Some(None);
    }
    let (burst, refill) = v.split_once('/')?;
    Some(Some(RetryBudget {
        burst: burst.trim().parse().ok()?,
        refill: crate::env::parse_duration(refill)?,
    }))
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
            Config::builder().max_attempts(0).build(),
            Err(ConfigError::ZeroAttempts)
        );
        assert!(matches!(
            Config::builder()
                .liveness_timeout(Duration::from_secs(60))
                .blocked_timeout(Duration::from_secs(90))
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
