//! Events broadcast by the driver.

use std::sync::Arc;

use crate::machine::{ErrorKind, FailCause, Generation, Reason, StateKind};

/// A transport error, shared between event subscribers.
pub type SharedError = Arc<dyn std::error::Error + Send + Sync>;

/// Something the engine did or saw, in the order it happened.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// The state changed.
    StateChanged {
        /// Before.
        from: StateKind,
        /// After.
        to: StateKind,
        /// The current generation after the change.
        generation: Generation,
        /// Why.
        reason: Reason,
        /// The error behind a change caused by a failure, when one is
        /// known: the open's error for `AttemptFailed` and
        /// `ConnectTimeout`, the error a loss was reported with
        /// ([`crate::runtime::LinkReporter::lost_because`]) for `LinkLost`.
        error: Option<SharedError>,
    },
    /// The driver started opening a link.
    AttemptStarted {
        /// The link.
        generation: Generation,
        /// The attempt number within the outage.
        attempt: u32,
        /// The endpoint it goes to (an index into the transport's list).
        endpoint: usize,
    },
    /// An open failed.
    AttemptFailed {
        /// The link.
        generation: Generation,
        /// The attempt number within the outage.
        attempt: u32,
        /// The endpoint it went to.
        endpoint: usize,
        /// Transient or permanent.
        kind: ErrorKind,
        /// The transport's error.
        error: SharedError,
    },
    /// The watchdog declared a link dead.
    LivenessLost {
        /// The link.
        generation: Generation,
    },
    /// The engine gave up.
    GaveUp {
        /// Why.
        cause: FailCause,
        /// Attempts the outage made (opens, and resumes by the transport).
        attempts: u32,
        /// The last transport error, if one caused it.
        error: Option<SharedError>,
    },
}
