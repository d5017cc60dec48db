//! The `metrics` feature: the engine's and the outbox's counters, gauges and
//! histograms through the `metrics` facade, labelled with the engine's
//! name. The names are a stable contract (docs/observability.md).
//!
//! Without the feature every function here is empty and inlined away: the
//! driver calls them at state changes, attempts and probes only, never on
//! the report path or in `Handle::is_connected`.

use std::sync::Arc;
use std::time::Duration;

use crate::machine::StateKind;

/// The engine's state: 1 for the state it is in, 0 for the others
/// (label `state`: `StateKind::as_str`).
#[cfg(feature = "metrics")]
pub(crate) const ENGINE_STATE: &str = "redial_engine_state";
/// Links the driver asked the transport to open (`Stats::attempts`).
pub(crate) const ENGINE_ATTEMPTS: &str = "redial_engine_attempts_total";
/// Attempts that failed or timed out.
pub(crate) const ENGINE_ATTEMPTS_FAILED: &str = "redial_engine_attempts_failed_total";
/// New links up (`Stats::connects`).
pub(crate) const ENGINE_CONNECTS: &str = "redial_engine_connects_total";
/// Links the transport restored by itself (`Stats::resumes`).
pub(crate) const ENGINE_RESUMES: &str = "redial_engine_resumes_total";
/// Up links that went down (`Stats::losses`).
pub(crate) const ENGINE_LOSSES: &str = "redial_engine_losses_total";
/// Losses not undone by a resume (`Stats::outages`).
pub(crate) const ENGINE_OUTAGES: &str = "redial_engine_outages_total";
/// Reachability probes (`Stats::probes`).
pub(crate) const ENGINE_PROBES: &str = "redial_engine_probes_total";
/// Times the engine gave up (entered `Failed`).
pub(crate) const ENGINE_GIVE_UPS: &str = "redial_engine_give_ups_total";
/// Loss to link up again, in seconds (`Stats::recovery_time`).
pub(crate) const ENGINE_RECOVERY: &str = "redial_engine_recovery_seconds";
/// Loss to a new link up, in seconds (`Stats::outage_length`).
pub(crate) const ENGINE_OUTAGE: &str = "redial_engine_outage_seconds";

/// The label every metric carries: the engine's name.
#[cfg(feature = "metrics")]
pub(crate) const LABEL_ENGINE: &str = "engine";

/// Counts one occurrence of the engine counter `name`.
#[inline]
pub(crate) fn count(engine: Option<&Arc<str>>, name: &'static str) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!(name, LABEL_ENGINE => label(engine)).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = (engine, name);
}

/// Records one duration, in seconds, into the engine histogram `name`.
#[inline]
pub(crate) fn record(engine: Option<&Arc<str>>, name: &'static str, duration: Duration) {
    #[cfg(feature = "metrics")]
    ::metrics::histogram!(name, LABEL_ENGINE => label(engine)).record(duration.as_secs_f64());
    #[cfg(not(feature = "metrics"))]
    let _ = (engine, name, duration);
}

/// Moves the state gauge from `from` to `to`.
#[inline]
pub(crate) fn state_changed(engine: Option<&Arc<str>>, from: StateKind, to: StateKind) {
    #[cfg(feature = "metrics")]
    {
        let gauge = |state: StateKind| ::metrics::gauge!(ENGINE_STATE, LABEL_ENGINE => label(engine), "state" => state.as_str());
        gauge(from).set(0.0);
        gauge(to).set(1.0);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (engine, from, to);
}

/// The engine label's value: its name, empty when it has none.
#[cfg(feature = "metrics")]
fn label(engine: Option<&Arc<str>>) -> ::metrics::SharedString {
    engine.map_or(::metrics::SharedString::const_str(""), |name| {
        ::metrics::SharedString::from(Arc::clone(name))
    })
}

#[cfg(feature = "metrics")]
pub(crate) use outbox::OutboxMetrics;

/// The outbox's metrics: registered once per publisher, then set from its
/// [`crate::outbox::OutboxStats`] whenever messages resolve or are
/// submitted (a few relaxed stores through the recorder's handles).
#[cfg(feature = "metrics")]
mod outbox {
    use ::metrics::{Counter, Gauge, counter, gauge};

    use super::{Arc, LABEL_ENGINE, label};
    use crate::outbox::OutboxStats;

    /// See the module docs; names in docs/observability.md.
    pub(crate) struct OutboxMetrics {
        submitted: Counter,
        confirmed: Counter,
        /// By reason, in the order of `FailedCounts`' fields.
        failed: [Counter; 8],
        expired: Counter,
        dropped: Counter,
        replayed: Counter,
        requeued: Counter,
        queued: Gauge,
        in_flight: Gauge,
        pending_bytes: Gauge,
    }

    /// The `reason` label of `redial_outbox_failed_total`, in the order of
    /// `FailedCounts`' fields.
    const REASONS: [&str; 8] = [
        "nacked",
        "unroutable",
        "rejected",
        "overflow",
        "cancelled",
        "shut_down",
        "gave_up",
        "timeout",
    ];

    impl OutboxMetrics {
        /// Registers the outbox's metrics with the recorder installed now.
        pub(crate) fn new(engine: Option<&Arc<str>>) -> Self {
            let e = || label(engine);
            Self {
                submitted: counter!("redial_outbox_submitted_total", LABEL_ENGINE => e()),
                confirmed: counter!("redial_outbox_confirmed_total", LABEL_ENGINE => e()),
                failed: REASONS.map(|reason| {
                    counter!("redial_outbox_failed_total", LABEL_ENGINE => e(), "reason" => reason)
                }),
                expired: counter!("redial_outbox_expired_total", LABEL_ENGINE => e()),
                dropped: counter!("redial_outbox_dropped_total", LABEL_ENGINE => e()),
                replayed: counter!("redial_outbox_replayed_total", LABEL_ENGINE => e()),
                requeued: counter!("redial_outbox_requeued_total", LABEL_ENGINE => e()),
                queued: gauge!("redial_outbox_queued", LABEL_ENGINE => e()),
                in_flight: gauge!("redial_outbox_in_flight", LABEL_ENGINE => e()),
                pending_bytes: gauge!("redial_outbox_pending_bytes", LABEL_ENGINE => e()),
            }
        }

        /// Sets every metric from `s` (counters as absolute totals).
        pub(crate) fn export(&self, s: &OutboxStats) {
            self.submitted.absolute(s.submitted);
            self.confirmed.absolute(s.confirmed);
            let f = &s.failed;
            let failed = [
                f.nacked,
                f.unroutable,
                f.rejected,
                f.overflow,
                f.cancelled,
                f.shut_down,
                f.gave_up,
                f.timeout,
            ];
            for (counter, n) in self.failed.iter().zip(failed) {
                counter.absolute(n);
            }
            self.expired.absolute(s.expired);
            self.dropped.absolute(s.dropped);
            self.replayed.absolute(s.replayed);
            self.requeued.absolute(s.requeued);
            self.queued.set(s.queued as f64);
            self.in_flight.set(s.in_flight as f64);
            self.pending_bytes.set(s.pending_bytes as f64);
        }
    }

    impl std::fmt::Debug for OutboxMetrics {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("OutboxMetrics").finish_non_exhaustive()
        }
    }
}
