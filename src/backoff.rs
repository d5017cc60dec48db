//! Backoff policy: exponential growth, a cap, and one of five jitter modes.
//!
//! All arithmetic is done on whole milliseconds so that a port reproduces the
//! exact same delays from the same seed; the formulas are in `docs/spec.md`
//! ("Backoff").

use std::time::Duration;

use crate::machine::ConfigError;
use crate::rng::SplitMix64;

/// Largest delay the policy accepts, in milliseconds (about 12 days): keeps
/// every intermediate value exactly representable as an `f64`.
pub const MAX_DELAY_MS: u64 = 1 << 30;

/// How a computed delay is randomised.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(tag = "mode", rename_all = "snake_case"))]
#[non_exhaustive]
pub enum Jitter {
    /// No randomisation: `delay = base`.
    None,
    /// AWS "full jitter": `delay = U[0, base]`.
    Full,
    /// AWS "equal jitter": `delay = base/2 + U[0, base - base/2]`.
    Equal,
    /// AWS "decorrelated jitter": `delay = min(cap, U[initial, 3 * previous])`.
    Decorrelated,
    /// gRPC-style proportional jitter: `delay = min(cap, U[base - f*base, base + f*base])`.
    Proportional {
        /// The fraction `f`, within `[0, 1]` (gRPC uses 0.2).
        fraction: f64,
    },
}

/// An exponential backoff policy. Build it with [`Backoff::builder`] or a
/// preset.
///
/// ```
/// use std::time::Duration;
/// use redial::backoff::{Backoff, Jitter};
///
/// let policy = Backoff::builder()
///     .initial(Duration::from_millis(500))
///     .multiplier(1.5)
///     .max(Duration::from_secs(30))
///     .jitter(Jitter::Full)
///     .build()?;
/// assert_eq!(policy.base_ms(2), 750);
/// // Change one setting of a built policy.
/// let capped = policy.to_builder().max(Duration::from_secs(5)).build()?;
/// assert_eq!(capped.max(), Duration::from_secs(5));
/// # Ok::<(), redial::machine::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(
    feature = "serde",
    serde(try_from = "BackoffBuilder", into = "BackoffBuilder")
)]
pub struct Backoff {
    initial_ms: u64,
    multiplier: f64,
    max_ms: u64,
    jitter: Jitter,
}

impl Default for Backoff {
    /// 1 s, x2, capped at 60 s, with +-50 % proportional jitter.
    fn default() -> Self {
        Self {
            initial_ms: 1_000,
            multiplier: 2.0,
            max_ms: 60_000,
            jitter: Jitter::Proportional { fraction: 0.5 },
        }
    }
}

/// Builds a [`Backoff`]; [`BackoffBuilder::build`] checks every setting.
/// Starts from the defaults (1 s, x2, cap 60 s, +-50 % jitter).
///
/// With the `serde` feature it deserializes from
/// `{"initial": "500ms", "multiplier": 1.5, "max": "30s", "jitter": {"mode": "full"}}`
/// (every key optional, durations in `humantime` form).
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct BackoffBuilder {
    #[cfg_attr(feature = "serde", serde(with = "crate::serde_duration"))]
    initial: Duration,
    multiplier: f64,
    #[cfg_attr(feature = "serde", serde(with = "crate::serde_duration"))]
    max: Duration,
    jitter: Jitter,
}

impl Default for BackoffBuilder {
    fn default() -> Self {
        Backoff::default().to_builder()
    }
}

impl BackoffBuilder {
    /// The first delay (truncated to whole milliseconds; at least 1 ms).
    pub fn initial(mut self, initial: Duration) -> Self {
        self.initial = initial;
        self
    }
    /// The growth factor per step (a finite number >= 1).
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }
    /// The cap on every delay (at least the first delay).
    pub fn max(mut self, max: Duration) -> Self {
        self.max = max;
        self
    }
    /// How each delay is randomised.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Checks every setting and returns the policy.
    ///
    /// # Errors
    /// [`ConfigError`] naming the setting that cannot work.
    pub fn build(self) -> Result<Backoff, ConfigError> {
        let initial_ms = whole_ms("backoff.initial", self.initial)?;
        let max_ms = whole_ms("backoff.max", self.max)?;
        if initial_ms > MAX_DELAY_MS || max_ms > MAX_DELAY_MS {
            return Err(ConfigError::TooLarge {
                field: "backoff",
                max_ms: MAX_DELAY_MS,
            });
        }
        let multiplier = self.multiplier;
        if multiplier.is_nan() || multiplier < 1.0 || !multiplier.is_finite() {
            return Err(ConfigError::MultiplierBelowOne { multiplier });
        }
        if max_ms < initial_ms {
            return Err(ConfigError::CapBelowInitial { initial_ms, max_ms });
        }
        if let Jitter::Proportional { fraction } = self.jitter
            && !(0.0..=1.0).contains(&fraction)
        {
            return Err(ConfigError::JitterOutOfRange { fraction });
        }
        Ok(Backoff {
            initial_ms,
            multiplier,
            max_ms,
            jitter: self.jitter,
        })
    }
}

impl TryFrom<BackoffBuilder> for Backoff {
    type Error = ConfigError;
    fn try_from(builder: BackoffBuilder) -> Result<Self, ConfigError> {
        builder.build()
    }
}

impl From<Backoff> for BackoffBuilder {
    fn from(backoff: Backoff) -> Self {
        backoff.to_builder()
    }
}

impl Backoff {
    /// A builder holding the defaults.
    pub fn builder() -> BackoffBuilder {
        BackoffBuilder::default()
    }

    /// A builder holding this policy's settings, to change some of them.
    pub fn to_builder(&self) -> BackoffBuilder {
        BackoffBuilder {
            initial: self.initial(),
            multiplier: self.multiplier,
            max: self.max(),
            jitter: self.jitter,
        }
    }

    /// gRPC's connection backoff: 1 s, x1.6, +-20 %, capped at 120 s.
    pub fn grpc() -> Self {
        Self {
            initial_ms: 1_000,
            multiplier: 1.6,
            max_ms: 120_000,
            jitter: Jitter::Proportional { fraction: 0.2 },
        }
    }

    /// AWS-style full jitter: `U[0, min(120 s, 1 s * 2^n)]`.
    pub fn aws_full_jitter() -> Self {
        Self {
            initial_ms: 1_000,
            multiplier: 2.0,
            max_ms: 120_000,
            jitter: Jitter::Full,
        }
    }

    /// The same policy with another jitter mode (validated).
    pub fn with_jitter(self, jitter: Jitter) -> Result<Self, ConfigError> {
        self.to_builder().jitter(jitter).build()
    }

    /// The first delay.
    pub fn initial(&self) -> Duration {
        Duration::from_millis(self.initial_ms)
    }

    /// The cap on every delay.
    pub fn max(&self) -> Duration {
        Duration::from_millis(self.max_ms)
    }

    /// The growth factor per step.
    pub fn multiplier(&self) -> f64 {
        self.multiplier
    }

    /// The jitter mode.
    pub fn jitter(&self) -> Jitter {
        self.jitter
    }

    /// The un-jittered delay of step `n` (1-based), in milliseconds:
    /// `base(1) = initial`, `base(n+1) = min(cap, floor(base(n) * multiplier))`.
    pub fn base_ms(&self, step: u32) -> u64 {
        let mut base = self.initial_ms;
        for _ in 1..step {
            let next = self.grow(base);
            if next == base {
                break;
            }
            base = next;
        }
        base
    }

    fn grow(&self, base: u64) -> u64 {
        // Exact in every IEEE-754 language: one multiplication, then truncation.
        let grown = (base as f64 * self.multiplier) as u64;
        grown.min(self.max_ms)
    }
}

fn whole_ms(field: &'static str, d: Duration) -> Result<u64, ConfigError> {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return Err(ConfigError::Zero { field });
    }
    Ok(ms)
}

/// The mutable part of a backoff run: the step's base delay, the previous
/// delay (for decorrelated jitter) and the PRNG.
#[derive(Debug, Clone, PartialEq)]
pub struct BackoffState {
    rng: SplitMix64,
    step: u32,
    base_ms: u64,
    previous_ms: u64,
}

impl BackoffState {
    /// A fresh run seeded with `seed`.
    pub fn new(policy: &Backoff, seed: u64) -> Self {
        Self {
            rng: SplitMix64::new(seed),
            step: 0,
            base_ms: policy.initial_ms,
            previous_ms: policy.initial_ms,
        }
    }

    /// Starts a new outage: the next delay is step 1 again. The PRNG is not
    /// reseeded, so successive outages draw fresh jitter.
    pub fn reset(&mut self, policy: &Backoff) {
        self.step = 0;
        self.base_ms = policy.initial_ms;
        self.previous_ms = policy.initial_ms;
    }

    /// How many delays were drawn since the last reset.
    pub fn step(&self) -> u32 {
        self.step
    }

    /// Draws the delay of the next step, in milliseconds; always within `[0, cap]`.
    pub fn next_delay_ms(&mut self, policy: &Backoff) -> u64 {
        self.step = self.step.saturating_add(1);
        if self.step > 1 {
            self.base_ms = policy.grow(self.base_ms);
        }
        let base = self.base_ms;
        let cap = policy.max_ms;
        let delay = match policy.jitter {
            Jitter::None => base,
            Jitter::Full => self.rng.uniform_inclusive(0, base),
            Jitter::Equal => {
                let half = base / 2;
                half + self.rng.uniform_inclusive(0, base - half)
            }
            Jitter::Decorrelated => {
                let lo = policy.initial_ms;
                let hi = self.previous_ms.saturating_mul(3).max(lo);
                let d = self.rng.uniform_inclusive(lo, hi).min(cap);
                self.previous_ms = d;
                d
            }
            Jitter::Proportional { fraction } => {
                let spread = (base as f64 * fraction) as u64;
                self.rng
                    .uniform_inclusive(base - spread.min(base), base + spread)
                    .min(cap)
            }
        };
        delay.min(cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn base_grows_and_caps() {
        let p = Backoff::builder()
            .initial(ms(1000))
            .multiplier(2.0)
            .max(ms(60_000))
            .jitter(Jitter::None)
            .build()
            .unwrap();
        let bases: Vec<u64> = (1..=8).map(|n| p.base_ms(n)).collect();
        assert_eq!(
            bases,
            vec![1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]
        );
        let mut s = BackoffState::new(&p, 0);
        let drawn: Vec<u64> = (0..8).map(|_| s.next_delay_ms(&p)).collect();
        assert_eq!(drawn, bases);
    }

    #[test]
    fn grpc_preset_grows_by_1_6() {
        let p = Backoff::grpc();
        assert_eq!(p.base_ms(2), 1600);
        assert_eq!(p.base_ms(3), 2560);
        assert_eq!(p.base_ms(100), 120_000);
    }

    #[test]
    fn every_mode_stays_within_cap() {
        for jitter in [
            Jitter::None,
            Jitter::Full,
            Jitter::Equal,
            Jitter::Decorrelated,
            Jitter::Proportional { fraction: 1.0 },
        ] {
            let p = Backoff::builder()
                .initial(ms(3))
                .multiplier(1.7)
                .max(ms(500))
                .jitter(jitter)
                .build()
                .unwrap();
            let mut s = BackoffState::new(&p, 42);
            for _ in 0..1000 {
                assert!(s.next_delay_ms(&p) <= 500, "{jitter:?}");
            }
        }
    }

    #[test]
    fn invalid_policies_are_rejected() {
        assert!(matches!(
            Backoff::builder()
                .initial(ms(0))
                .multiplier(2.0)
                .max(ms(10))
                .jitter(Jitter::None)
                .build(),
            Err(ConfigError::Zero { .. })
        ));
        assert!(matches!(
            Backoff::builder()
                .initial(ms(10))
                .multiplier(0.5)
                .max(ms(10))
                .jitter(Jitter::None)
                .build(),
            Err(ConfigError::MultiplierBelowOne { .. })
        ));
        assert!(matches!(
            Backoff::builder()
                .initial(ms(10))
                .multiplier(f64::NAN)
                .max(ms(10))
                .jitter(Jitter::None)
                .build(),
            Err(ConfigError::MultiplierBelowOne { .. })
        ));
        assert!(matches!(
            Backoff::builder()
                .initial(ms(10))
                .multiplier(2.0)
                .max(ms(5))
                .jitter(Jitter::None)
                .build(),
            Err(ConfigError::CapBelowInitial { .. })
        ));
        assert!(matches!(
            Backoff::builder()
                .initial(ms(10))
                .multiplier(2.0)
                .max(ms(50))
                .jitter(Jitter::Proportional { fraction: 1.5 })
                .build(),
            Err(ConfigError::JitterOutOfRange { .. })
        ));
        assert!(matches!(
            Backoff::builder()
                .initial(ms(10))
                .multiplier(2.0)
                .max(ms(50))
                .jitter(Jitter::Proportional { fraction: -0.1 })
                .build(),
            Err(ConfigError::JitterOutOfRange { .. })
        ));
    }
}
