//! A small fixed-bucket histogram of durations: what [`crate::runtime::Stats`]
//! keeps of recovery times and outage lengths instead of the last one only.
//!
//! The bounds are fixed (no configuration, no allocation), so that a
//! metrics exporter can map the buckets one to one onto its own (for
//! Prometheus, cumulative `le` buckets: [`Histogram::cumulative`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How many buckets a [`Histogram`] has: one per bound, and the overflow.
pub const BUCKETS: usize = 13;

/// The buckets' inclusive upper bounds, in milliseconds; the last bucket
/// holds everything above the last bound. From a blip a transport resumes
/// (tens of milliseconds) to a broker restart (minutes).
pub const BUCKET_BOUNDS_MS: [u64; BUCKETS - 1] = [
    10, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000,
];

/// A snapshot of durations counted into fixed buckets (see
/// [`BUCKET_BOUNDS_MS`]). Durations are counted in whole milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Histogram {
    counts: [u64; BUCKETS],
    sum_ms: u64,
}

impl Histogram {
    /// How many durations were recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().fold(0, |a, c| a.saturating_add(*c))
    }

    /// The sum of the recorded durations.
    pub fn sum(&self) -> Duration {
        Duration::from_millis(self.sum_ms)
    }

    /// The mean duration, `None` when nothing was recorded.
    pub fn mean(&self) -> Option<Duration> {
        let count = self.count();
        (count > 0).then(|| Duration::from_millis(self.sum_ms / count))
    }

    /// Each bucket's upper bound (`None` for the overflow bucket) and how
    /// many durations fell into it (above the previous bound, up to and
    /// including this one).
    pub fn buckets(&self) -> impl Iterator<Item = (Option<Duration>, u64)> + '_ {
        let bounds = BUCKET_BOUNDS_MS
            .iter()
            .map(|ms| Some(Duration::from_millis(*ms)))
            .chain(std::iter::once(None));
        bounds.zip(self.counts.iter().copied())
    }

    /// Like [`Histogram::buckets`], with each count including every bucket
    /// below it (Prometheus' `le` buckets; the overflow's is the total).
    pub fn cumulative(&self) -> impl Iterator<Item = (Option<Duration>, u64)> + '_ {
        let mut total = 0u64;
        self.buckets().map(move |(bound, n)| {
            total = total.saturating_add(n);
            (bound, total)
        })
    }

    /// An upper estimate of the `q` quantile (`q` in `0.0..=1.0`): the bound
    /// of the bucket it falls into. `None` when nothing was recorded or it
    /// falls into the overflow bucket.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        // The rank of the quantile, at least the first sample.
        let rank = ((q.clamp(0.0, 1.0) * count as f64).ceil() as u64).max(1);
        self.cumulative()
            .find(|(_, total)| *total >= rank)
            .and_then(|(bound, _)| bound)
    }
}

/// The bucket `ms` falls into.
fn bucket(ms: u64) -> usize {
    BUCKET_BOUNDS_MS.partition_point(|bound| *bound < ms)
}

/// The live histogram: written by the driver task only, read from any
/// thread. Relaxed atomics: a reader during a write may see the new
/// sample in the sum and not yet in its bucket (statistics, not state).
#[derive(Debug, Default)]
pub(crate) struct AtomicHistogram {
    counts: [AtomicU64; BUCKETS],
    sum_ms: AtomicU64,
}

impl AtomicHistogram {
    /// Driver only: counts one duration.
    pub(crate) fn record(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.counts[bucket(ms)].fetch_add(1, Ordering::Relaxed);
        self.sum_ms.fetch_add(ms, Ordering::Relaxed);
    }

    /// A copy of the current counts.
    pub(crate) fn snapshot(&self) -> Histogram {
        Histogram {
            counts: std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed)),
            sum_ms: self.sum_ms.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_fall_into_their_buckets() {
        let h = AtomicHistogram::default();
        for ms in [0, 10, 11, 250, 400_000] {
            h.record(Duration::from_millis(ms));
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 5);
        assert_eq!(s.sum(), Duration::from_millis(400_271));
        let counts: Vec<u64> = s.buckets().map(|(_, n)| n).collect();
        // 0 and 10 in "<= 10 ms", 11 in "<= 50 ms", 250 in "<= 250 ms", the rest over 300 s.
        assert_eq!(counts, [2, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(s.quantile(0.5), Some(Duration::from_millis(50)));
        assert_eq!(s.quantile(0.0), Some(Duration::from_millis(10)));
        assert_eq!(s.quantile(1.0), None, "the largest is above every bound");
        assert_eq!(s.cumulative().last(), Some((None, 5)));
        assert_eq!(Histogram::default().mean(), None);
    }
}
