//! Switches the shared-state primitives to loom's models under `--cfg loom`,
//! so the handle's concurrency is checked exhaustively (see the README's
//! contributing section).

pub(crate) mod sync {
    pub(crate) mod atomic {
        #[cfg(all(test, loom))]
        pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
        #[cfg(not(all(test, loom)))]
        pub(crate) use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
    }

    #[cfg(all(test, loom))]
    pub(crate) use loom::sync::{Mutex, MutexGuard};
    #[cfg(not(all(test, loom)))]
    pub(crate) use std::sync::{Mutex, MutexGuard};
}

pub(crate) mod task {
    #[cfg(not(all(test, loom)))]
    pub(crate) use futures::task::AtomicWaker;
    #[cfg(all(test, loom))]
    pub(crate) use loom::future::AtomicWaker;
}

/// Deliberate bugs the loom models must catch, so that they cannot pass
/// vacuously (`runtime::loom_tests::mutant_*`). Outside the loom models no
/// mutant is ever active and the checks compile to `false`.
pub(crate) mod mutant {
    /// One deliberate bug.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[cfg_attr(not(all(test, loom)), allow(dead_code))]
    pub(crate) enum Mutant {
        /// The handle queues reports of a generation that is not current.
        StaleReports = 1,
        /// The driver takes the commands before the reports.
        CommandsFirst = 2,
        /// The flush task leaves a replaced link's messages in flight on it.
        KeepRetiredFlight = 3,
    }

    #[cfg(all(test, loom))]
    static ACTIVE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

    /// Whether `m` is active (only ever in a loom model that asked for it).
    #[inline(always)]
    pub(crate) fn active(m: Mutant) -> bool {
        #[cfg(all(test, loom))]
        return ACTIVE.load(std::sync::atomic::Ordering::Relaxed) == m as u8;
        #[cfg(not(all(test, loom)))]
        {
            let _ = m;
            false
        }
    }

    /// Activates `m` until the guard drops (also when a model panics).
    #[cfg(all(test, loom))]
    pub(crate) fn activate(m: Mutant) -> impl Drop {
        struct Guard;
        impl Drop for Guard {
            fn drop(&mut self) {
                ACTIVE.store(0, std::sync::atomic::Ordering::Relaxed);
            }
        }
        ACTIVE.store(m as u8, std::sync::atomic::Ordering::Relaxed);
        Guard
    }
}

#[cfg(all(test, loom))]
/// Runs `f` under loom with at most `bound` preemptions (`None`: every
/// interleaving). Each model's bound is tuned so that the whole run stays
/// near a minute on two cores; `LOOM_MAX_PREEMPTIONS` can only raise it
/// (for a deeper search), never lower it. `--nocapture` shows how many
/// executions each model explored.
pub(crate) fn model<F: Fn() + Sync + Send + 'static>(bound: Option<usize>, f: F) {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    // A plain atomic: it counts executions, it is not part of the model.
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    RUNS.store(0, Relaxed);
    let mut builder = loom::model::Builder::new();
    // `Builder::new` read `LOOM_MAX_PREEMPTIONS`.
    let bound = match (bound, builder.preemption_bound) {
        (Some(ours), Some(env)) => Some(ours.max(env)),
        _ => bound,
    };
    builder.preemption_bound = bound;
    builder.check(move || {
        RUNS.fetch_add(1, Relaxed);
        f();
    });
    eprintln!(
        "explored {} executions (preemption bound {bound:?})",
        RUNS.load(Relaxed)
    );
}
