//! The machine's states, each carrying the data it needs.

use std::time::Instant;

use super::io::{FailCause, Generation, StateKind};

/// The state of the machine. Read it with [`crate::machine::Machine::state`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum State {
    /// Built, not started.
    Idle,
    /// Link `generation` is being opened as attempt `attempt` of the outage.
    Connecting {
        /// The link being opened.
        generation: Generation,
        /// Attempt number within the outage (1-based).
        attempt: u32,
        /// When the attempt times out (`None`: no connect timeout).
        deadline: Option<Instant>,
    },
    /// A link is open and ready.
    Connected(Link),
    /// A link is open but the broker refuses publishes.
    Blocked {
        /// The open link.
        link: Link,
        /// When the link is replaced if still blocked (`None`: never).
        deadline: Option<Instant>,
    },
    /// Waiting until `until` before attempt `attempt`.
    BackingOff {
        /// The attempt that will be made (1-based).
        attempt: u32,
        /// When it will be made; with probes, when the next probe starts
        /// (the backoff wait is over once one was sent).
        until: Instant,
        /// A lost link that may still resume by itself during the wait
        /// (only with a resume grace); it is closed before the next open.
        lingering: Option<Generation>,
        /// The unanswered probe, if any: its answer opens the attempt.
        probe: Option<u64>,
    },
    /// Shutting down: the driver is closing the last link.
    Closing {
        /// When the machine stops waiting for the close.
        deadline: Instant,
    },
    /// Shut down. Terminal: every input is ignored.
    Closed,
    /// Gave up. Transport inputs and timers are ignored; only `ReconnectNow`
    /// and `Shutdown` leave this state.
    Failed {
        /// Why.
        cause: FailCause,
    },
}

/// An open link and its liveness bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Link {
    /// The link's generation.
    pub generation: Generation,
    /// The attempt that opened it.
    pub attempt: u32,
    /// When it came up (or resumed); the stable period counts from here.
    pub since: Instant,
    /// The watchdog, when a liveness timeout is configured.
    pub liveness: Option<Liveness>,
}

/// The liveness watchdog of one link: checked every half timeout; two
/// checks in a row without inbound activity declare the link dead, so death
/// comes between 1x and 1.5x the timeout after the last inbound frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Liveness {
    /// When the next check runs.
    pub next_check: Instant,
    /// Checks in a row that saw no activity.
    pub missed: u8,
    /// Activity was reported since the last check.
    pub seen: bool,
}

impl State {
    /// The state's name.
    pub fn kind(&self) -> StateKind {
        match self {
            State::Idle => StateKind::Idle,
            State::Connecting { .. } => StateKind::Connecting,
            State::Connected(_) => StateKind::Connected,
            State::Blocked { .. } => StateKind::Blocked,
            State::BackingOff { .. } => StateKind::BackingOff,
            State::Closing { .. } => StateKind::Closing,
            State::Closed => StateKind::Closed,
            State::Failed { .. } => StateKind::Failed,
        }
    }

    /// The link that is open or being opened, if any (a lingering link counts).
    pub fn live_link(&self) -> Option<Generation> {
        match self {
            State::Connecting { generation, .. } => Some(*generation),
            State::Connected(link) | State::Blocked { link, .. } => Some(link.generation),
            State::BackingOff { lingering, .. } => *lingering,
            _ => None,
        }
    }

    /// The attempt number the state refers to (0 when none).
    pub fn attempt(&self) -> u32 {
        match self {
            State::Connecting { attempt, .. } | State::BackingOff { attempt, .. } => *attempt,
            State::Connected(link) | State::Blocked { link, .. } => link.attempt,
            _ => 0,
        }
    }
}
