//! The machine's vocabulary: generations, inputs, outputs and reasons.
//!
//! Everything here is plain data (`Copy`, no strings, no pointers), so each
//! enum maps 1:1 onto a tagged union in another language; with the `serde`
//! feature they serialise exactly as the conformance vectors spell them.

use std::fmt;

/// The identity of one link. Every link the machine asks for gets a fresh,
/// strictly increasing generation; an input naming any other generation than
/// the current one changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(transparent))]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Generation(pub u64);

impl Generation {
    /// The generation that follows this one.
    #[must_use]
    pub const fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Whether a failure is worth retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum ErrorKind {
    /// Network trouble, timeouts, a broker restarting: retry with backoff.
    Transient,
    /// Bad credentials, an unknown vhost, a TLS verification failure:
    /// retrying cannot help, so by default the machine gives up at once.
    Permanent,
}

/// What a reachability probe found (see [`Output::Probe`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum ProbeOutcome {
    /// The broker answered: an attempt now would reach it.
    Reachable,
    /// Refused, reset, or no answer: an attempt now would fail.
    Unreachable,
    /// The transport cannot probe: the machine stops probing for good and
    /// makes its attempts on the backoff schedule alone.
    Unsupported,
}

/// Everything that can happen to the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(tag = "type", rename_all = "snake_case"))]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum Input {
    /// Begin connecting (only meaningful in `Idle`).
    Start,
    /// The application opened link `generation` (the current one) itself
    /// and hands it over: the machine supervises it from now on as if it
    /// had opened it (only meaningful in `Idle`; docs/spec.md, 12).
    Adopt {
        /// The link: the machine's current generation.
        generation: Generation,
    },
    /// The open of link `generation` completed: the link is ready for traffic.
    AttemptSucceeded {
        /// The link.
        generation: Generation,
    },
    /// The open of link `generation` failed.
    AttemptFailed {
        /// The link.
        generation: Generation,
        /// Whether to retry.
        kind: ErrorKind,
        /// A code of the driver's choosing (an errno, a reply code), copied
        /// onto the outputs the failure causes; the machine never reads it.
        #[cfg_attr(
            feature = "serde",
            serde(default, skip_serializing_if = "Option::is_none")
        )]
        detail: Option<u32>,
    },
    /// Link `generation` died (socket error, broker close, an SDK's interrupt callback).
    LinkLost {
        /// The link.
        generation: Generation,
        /// Whether to retry.
        kind: ErrorKind,
        /// As in [`Input::AttemptFailed`].
        #[cfg_attr(
            feature = "serde",
            serde(default, skip_serializing_if = "Option::is_none")
        )]
        detail: Option<u32>,
    },
    /// Link `generation`, reported lost earlier, was restored by the transport itself
    /// (SDKs that reconnect underneath).
    LinkResumed {
        /// The link.
        generation: Generation,
        /// False when the broker kept no session for the link: the machine
        /// then asks for [`Output::Restore`].
        #[cfg_attr(
            feature = "serde",
            serde(default = "yes", skip_serializing_if = "is_true")
        )]
        session_present: bool,
    },
    /// Inbound traffic was seen on link `generation` since the last liveness check.
    Activity {
        /// The link.
        generation: Generation,
    },
    /// The broker stopped accepting publishes on link `generation` (flow control).
    Blocked {
        /// The link.
        generation: Generation,
    },
    /// The broker accepts publishes on link `generation` again.
    Unblocked {
        /// The link.
        generation: Generation,
    },
    /// The answer to [`Output::Probe`] number `probe`.
    Probed {
        /// The probe's number, as the output gave it.
        probe: u64,
        /// What it found.
        outcome: ProbeOutcome,
    },
    /// The user asks for a new link now (skips a backoff wait; leaves `Failed`).
    ReconnectNow,
    /// The user asks to stop: close the link and never reconnect.
    Shutdown,
    /// The driver finished closing the last link after a shutdown.
    CloseCompleted,
    /// Time passed: process whatever timer is due at `now`.
    Timeout,
}

impl Input {
    /// A loss report without a detail.
    pub const fn lost(generation: Generation, kind: ErrorKind) -> Self {
        Input::LinkLost {
            generation,
            kind,
            detail: None,
        }
    }

    /// A failed attempt without a detail.
    pub const fn failed(generation: Generation, kind: ErrorKind) -> Self {
        Input::AttemptFailed {
            generation,
            kind,
            detail: None,
        }
    }

    /// A resume that kept its session.
    pub const fn resumed(generation: Generation) -> Self {
        Input::LinkResumed {
            generation,
            session_present: true,
        }
    }

    /// The detail the input carries, if any.
    pub fn detail(&self) -> Option<u32> {
        match *self {
            Input::AttemptFailed { detail, .. } | Input::LinkLost { detail, .. } => detail,
            _ => None,
        }
    }

    /// The generation this input names, if any.
    pub fn generation(&self) -> Option<Generation> {
        match *self {
            Input::Adopt { generation }
            | Input::AttemptSucceeded { generation }
            | Input::AttemptFailed { generation, .. }
            | Input::LinkLost { generation, .. }
            | Input::LinkResumed { generation, .. }
            | Input::Activity { generation }
            | Input::Blocked { generation }
            | Input::Unblocked { generation } => Some(generation),
            Input::Start
            | Input::Probed { .. }
            | Input::ReconnectNow
            | Input::Shutdown
            | Input::CloseCompleted
            | Input::Timeout => None,
        }
    }
}

/// What the machine asks its driver to do, or tells its observers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(tag = "type", rename_all = "snake_case"))]
#[non_exhaustive]
pub enum Output {
    /// Open link `generation`; answer with `AttemptSucceeded` or `AttemptFailed`.
    #[non_exhaustive]
    Open {
        /// The fresh generation of the new link.
        generation: Generation,
        /// The attempt number within the current outage (1-based).
        attempt: u32,
        /// The endpoint to open it to: an index into the driver's endpoint
        /// list (always 0 with one endpoint; JSON omits a 0).
        #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "is_zero"))]
        endpoint: u32,
    },
    /// Release everything that belongs to link `generation`, aborting its open if it
    /// is still in progress. Emitted exactly once per `Open`, always before
    /// the next `Open`.
    #[non_exhaustive]
    Close {
        /// The retired link.
        generation: Generation,
        /// Why it is retired: [`Reason::Shutdown`] asks for a graceful
        /// close; any other reason means the link is replaced or dead.
        reason: Reason,
    },
    /// Link `generation` resumed without its session: restore what the
    /// broker forgot (subscriptions, consumers); if that fails, report the
    /// link lost.
    #[non_exhaustive]
    Restore {
        /// The resumed link.
        generation: Generation,
    },
    /// The state changed.
    #[non_exhaustive]
    StateChanged {
        /// The state before.
        from: StateKind,
        /// The state after.
        to: StateKind,
        /// The machine's current generation after the change.
        generation: Generation,
        /// Why.
        reason: Reason,
        /// The detail of the failure that caused the change (only for
        /// [`Reason::AttemptFailed`] and [`Reason::LinkLost`]).
        #[cfg_attr(
            feature = "serde",
            serde(default, skip_serializing_if = "Option::is_none")
        )]
        detail: Option<u32>,
    },
    /// Check, cheaply and without opening a link, whether the broker answers
    /// now (a TCP connect and the protocol's first exchange); answer with
    /// `Probed` carrying the same number. Emitted only while backing off,
    /// once the backoff delay has passed, and never while another probe is
    /// unanswered. A probe has until the next one is due: an answer after
    /// that is ignored, so the driver may drop an older probe's work.
    #[non_exhaustive]
    Probe {
        /// The probe's number (strictly increasing).
        probe: u64,
        /// The endpoint to probe (as in [`Output::Open`]).
        #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "is_zero"))]
        endpoint: u32,
    },
    /// No inbound traffic on link `generation` for the liveness timeout: it is dead.
    #[non_exhaustive]
    LivenessLost {
        /// The link.
        generation: Generation,
    },
    /// The machine stopped retrying and entered `Failed`.
    #[non_exhaustive]
    GaveUp {
        /// Why.
        cause: FailCause,
        /// Attempts the outage made (opens and resumes).
        attempts: u32,
        /// The detail of the failure that made it give up, if it had one.
        #[cfg_attr(
            feature = "serde",
            serde(default, skip_serializing_if = "Option::is_none")
        )]
        detail: Option<u32>,
    },
}

#[cfg(feature = "serde")]
#[allow(clippy::trivially_copy_pass_by_ref)] // serde passes a reference
fn is_zero(v: &u32) -> bool {
    *v == 0
}

#[cfg(feature = "serde")]
#[allow(clippy::trivially_copy_pass_by_ref)] // serde passes a reference
fn is_true(v: &bool) -> bool {
    *v
}

#[cfg(feature = "serde")]
fn yes() -> bool {
    true
}

/// The name of a state, without its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum StateKind {
    /// Built, not started.
    Idle,
    /// A link is being opened.
    Connecting,
    /// A link is open and ready.
    Connected,
    /// A link is open but the broker refuses publishes (flow control).
    Blocked,
    /// No link; waiting for the next attempt.
    BackingOff,
    /// Shutting down: the last link is being closed.
    Closing,
    /// Shut down (terminal).
    Closed,
    /// Gave up (sticky until the user asks to reconnect or shuts down).
    Failed,
}

impl StateKind {
    /// Every state, in the order of the spec's transition table (a slice:
    /// its length grows with the states).
    pub const ALL: &'static [StateKind] = &[
        StateKind::Idle,
        StateKind::Connecting,
        StateKind::Connected,
        StateKind::Blocked,
        StateKind::BackingOff,
        StateKind::Closing,
        StateKind::Closed,
        StateKind::Failed,
    ];

    /// The state's name as the spec and the vectors write it.
    pub const fn as_str(self) -> &'static str {
        match self {
            StateKind::Idle => "idle",
            StateKind::Connecting => "connecting",
            StateKind::Connected => "connected",
            StateKind::Blocked => "blocked",
            StateKind::BackingOff => "backing_off",
            StateKind::Closing => "closing",
            StateKind::Closed => "closed",
            StateKind::Failed => "failed",
        }
    }

    /// Stable small integer, used to pack the state into an atomic (the
    /// runtime's; internal, so the numbering may change).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) const fn to_u8(self) -> u8 {
        self as u8
    }

    /// Inverse of [`StateKind::to_u8`].
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(StateKind::Idle),
            1 => Some(StateKind::Connecting),
            2 => Some(StateKind::Connected),
            3 => Some(StateKind::Blocked),
            4 => Some(StateKind::BackingOff),
            5 => Some(StateKind::Closing),
            6 => Some(StateKind::Closed),
            7 => Some(StateKind::Failed),
            _ => None,
        }
    }

    /// A link is up (connected, possibly flow-blocked).
    pub const fn is_link_up(self) -> bool {
        matches!(self, StateKind::Connected | StateKind::Blocked)
    }

    /// The "actively reconnecting" flag that callback-SDK clients keep by
    /// hand ([report 003](crate#scenario-ids-and-failure-reports)), derived from the state.
    pub const fn is_reconnecting(self) -> bool {
        matches!(self, StateKind::Connecting | StateKind::BackingOff)
    }

    /// `Closing` or `Closed`: the user asked to stop.
    pub const fn is_shutting_down(self) -> bool {
        matches!(self, StateKind::Closing | StateKind::Closed)
    }
}

impl fmt::Display for StateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the state changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum Reason {
    /// `Start` was handled.
    Start,
    /// The application handed over a link it opened itself.
    Adopted,
    /// An attempt succeeded.
    AttemptSucceeded,
    /// An attempt failed.
    AttemptFailed,
    /// An attempt exceeded the connect timeout.
    ConnectTimeout,
    /// The link reported its own loss.
    LinkLost,
    /// The transport restored the link by itself.
    LinkResumed,
    /// The liveness watchdog declared the link dead.
    LivenessLost,
    /// The broker blocked publishing.
    Blocked,
    /// The broker unblocked publishing.
    Unblocked,
    /// The link stayed blocked longer than the blocked timeout.
    BlockedTooLong,
    /// The user asked to reconnect.
    ReconnectRequested,
    /// The backoff wait ended.
    BackoffElapsed,
    /// The user asked to shut down.
    Shutdown,
    /// The driver finished closing.
    CloseCompleted,
    /// Closing took longer than the close timeout.
    CloseTimeout,
    /// The machine gave up (see the `GaveUp` output for the cause).
    GaveUp,
}

/// Why the machine gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum FailCause {
    /// `max_attempts` attempts failed in one outage.
    RetriesExhausted,
    /// The outage lasted longer than `max_elapsed`.
    DeadlineExhausted,
    /// A permanent error (bad credentials, unknown vhost, TLS).
    Permanent,
}

impl fmt::Display for FailCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailCause::RetriesExhausted => "retries exhausted",
            FailCause::DeadlineExhausted => "reconnect deadline exhausted",
            FailCause::Permanent => "permanent error",
        })
    }
}
