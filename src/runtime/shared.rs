//! The state shared between the handle (any thread) and the driver.
//!
//! This is the only concurrent code in the crate, and it is small on
//! purpose: three atomics and a waker, checked by loom (`src/runtime/loom_tests.rs`).
//!
//! * `snapshot`: the machine's generation and state, written by the driver
//!   after every step; readers make one load.
//! * `mailbox`: the reports about one generation that the driver has not
//!   taken yet, merged in place. Its size is fixed, so a storm of reports
//!   costs one compare-and-swap each and never grows a queue.
//! * `commands`: reconnect and shutdown requests from the user.
//!
//! A report wakes the driver only when it turns an empty mailbox into a
//! non-empty one: one wake-up per batch, however many threads report.

use std::task::{Context, Poll};

use crate::loom::mutant::{self, Mutant};
use crate::loom::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use crate::loom::task::AtomicWaker;
use crate::machine::{ErrorKind, Generation, Input, StateKind};

// Mailbox word: generation in the high 56 bits, events in the low 8.
const LINK_MASK: u64 = 0b11;
const LINK_LOST: u64 = 0b01;
const LINK_RESUMED: u64 = 0b10;
const LOST_PERMANENT: u64 = 0b100;
const FLOW_MASK: u64 = 0b1_1000;
const FLOW_BLOCKED: u64 = 0b0_1000;
const FLOW_UNBLOCKED: u64 = 0b1_0000;
const ACTIVITY: u64 = 0b10_0000;
/// With `LINK_RESUMED`: the broker kept no session for the link.
const NO_SESSION: u64 = 0b100_0000;
const EVENT_BITS: u32 = 8;
const EVENT_MASK: u64 = (1 << EVENT_BITS) - 1;
/// Events that need the driver now; activity waits for the next liveness check.
const WAKE_MASK: u64 = LINK_MASK | FLOW_MASK;

/// Largest generation the packed words can carry (2^56 - 1).
pub(crate) const MAX_GENERATION: u64 = (1 << 56) - 1;

const CMD_RECONNECT: u32 = 0b01;
const CMD_SHUTDOWN: u32 = 0b10;

/// One report from a link or an SDK callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkEvent {
    /// The link died.
    Lost(ErrorKind),
    /// The link came back by itself, with its session.
    Resumed,
    /// The link came back by itself, but the broker kept no session for it:
    /// subscriptions and consumers must be restored.
    ResumedWithoutSession,
    /// Inbound traffic arrived.
    Activity,
    /// The broker blocked publishing.
    Blocked,
    /// The broker unblocked publishing.
    Unblocked,
}

/// What happened to a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Report {
    /// It names a generation that is not current: dropped without waking anyone.
    Stale,
    /// It changed nothing the driver had not been told already (a duplicate).
    Coalesced,
    /// It is queued for the driver, which was woken if it needed to be.
    Queued,
}

/// The events the driver takes from the mailbox in one go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Batch {
    word: u64,
}

impl Batch {
    pub(crate) fn generation(&self) -> Generation {
        Generation(self.word >> EVENT_BITS)
    }

    /// The machine inputs, in the order the driver must feed them:
    /// activity and flow control first, then the link's fate (the latest
    /// report about it wins: lost-then-resumed is resumed). A resume without
    /// its session is fed after a loss: the session's end is a loss, and a
    /// loss merged away would leave the resume ignored by a connected
    /// machine, with nothing restored.
    pub(crate) fn inputs(&self) -> impl Iterator<Item = Input> {
        let generation = self.generation();
        let w = self.word;
        let activity = (w & ACTIVITY != 0).then_some(Input::Activity { generation });
        let flow = match w & FLOW_MASK {
            FLOW_BLOCKED => Some(Input::Blocked { generation }),
            FLOW_UNBLOCKED => Some(Input::Unblocked { generation }),
            _ => None,
        };
        let lost_session = (w & LINK_MASK == LINK_RESUMED && w & NO_SESSION != 0)
            .then(|| Input::lost(generation, ErrorKind::Transient));
        let link = match w & LINK_MASK {
            LINK_LOST => Some(Input::lost(
                generation,
                if w & LOST_PERMANENT != 0 {
                    ErrorKind::Permanent
                } else {
                    ErrorKind::Transient
                },
            )),
            LINK_RESUMED => Some(Input::LinkResumed {
                generation,
                session_present: w & NO_SESSION == 0,
            }),
            _ => None,
        };
        activity
            .into_iter()
            .chain(flow)
            .chain(lost_session)
            .chain(link)
    }
}

/// The user's pending requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Commands {
    pub(crate) reconnect: bool,
    pub(crate) shutdown: bool,
}

/// Counters updated on the report path (relaxed: they are statistics).
/// On their own cache lines: every report writes them, and sharing a line
/// with `snapshot` and `mailbox`, which every report reads, made reports
/// from several threads contend (benches/handle.rs).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct ReportCounters {
    pub(crate) reports: AtomicU64,
    pub(crate) stale: AtomicU64,
    pub(crate) coalesced: AtomicU64,
    pub(crate) wakeups: AtomicU64,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Shared {
    snapshot: AtomicU64,
    mailbox: AtomicU64,
    commands: AtomicU32,
    waker: AtomicWaker,
    pub(crate) counters: ReportCounters,
}

pub(crate) fn pack_snapshot(generation: Generation, kind: StateKind) -> u64 {
    (generation.0.min(MAX_GENERATION) << EVENT_BITS) | u64::from(kind.to_u8())
}

pub(crate) fn unpack_snapshot(word: u64) -> (Generation, StateKind) {
    let kind = StateKind::from_u8((word & 0xff) as u8).unwrap_or(StateKind::Idle);
    (Generation(word >> EVENT_BITS), kind)
}

impl Shared {
    pub(crate) fn new(generation: Generation, kind: StateKind) -> Self {
        Self {
            snapshot: AtomicU64::new(pack_snapshot(generation, kind)),
            mailbox: AtomicU64::new(generation.0 << EVENT_BITS),
            commands: AtomicU32::new(0),
            waker: AtomicWaker::new(),
            counters: ReportCounters::default(),
        }
    }

    /// One atomic load.
    #[inline]
    pub(crate) fn snapshot(&self) -> (Generation, StateKind) {
        unpack_snapshot(self.snapshot.load(Ordering::Acquire))
    }

    /// Driver only: publishes the machine's state after a step.
    pub(crate) fn publish(&self, generation: Generation, kind: StateKind) {
        self.snapshot
            .store(pack_snapshot(generation, kind), Ordering::Release);
    }

    /// Any thread: records a report. O(1), lock-free, never allocates, never
    /// blocks; wakes the driver at most once per batch.
    // Inlined so that each `Handle::report_*` merges its own event in
    // place (a constant), without matching on it at run time.
    #[inline]
    pub(crate) fn report(&self, generation: Generation, event: LinkEvent) -> Report {
        self.counters.reports.fetch_add(1, Ordering::Relaxed);
        let (current, _) = self.snapshot();
        let stale = generation != current && !mutant::active(Mutant::StaleReports);
        if stale || generation.0 > MAX_GENERATION {
            self.counters.stale.fetch_add(1, Ordering::Relaxed);
            return Report::Stale;
        }
        let mut cur = self.mailbox.load(Ordering::Acquire);
        loop {
            let boxed = cur >> EVENT_BITS;
            let base = match boxed.cmp(&generation.0) {
                std::cmp::Ordering::Equal => cur,
                // Events about an older link are stale by now: replace them.
                std::cmp::Ordering::Less => generation.0 << EVENT_BITS,
                std::cmp::Ordering::Greater => {
                    self.counters.stale.fetch_add(1, Ordering::Relaxed);
                    return Report::Stale;
                }
            };
            let new = merge(base, event);
            if new == cur {
                self.counters.coalesced.fetch_add(1, Ordering::Relaxed);
                return Report::Coalesced;
            }
            match self
                .mailbox
                .compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    if cur & WAKE_MASK == 0 && new & WAKE_MASK != 0 {
                        self.counters.wakeups.fetch_add(1, Ordering::Relaxed);
                        self.waker.wake();
                    } else if cur & EVENT_MASK != 0 && boxed == generation.0 {
                        // Merged into a batch the driver has not taken yet.
                        self.counters.coalesced.fetch_add(1, Ordering::Relaxed);
                    }
                    return Report::Queued;
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// Any thread: asks the driver to reconnect or shut down.
    pub(crate) fn command(&self, reconnect: bool, shutdown: bool) {
        let bits =
            (if reconnect { CMD_RECONNECT } else { 0 }) | (if shutdown { CMD_SHUTDOWN } else { 0 });
        let before = self.commands.fetch_or(bits, Ordering::AcqRel);
        if before & bits != bits {
            self.waker.wake();
        }
    }

    /// Driver only: takes the pending reports, then the pending commands.
    ///
    /// Reports first: a report made after a shutdown request (by the same
    /// thread, or one that saw it) is then always taken with that request
    /// or after it, so the machine handles `Shutdown` before the loss and
    /// opens nothing. Commands first would let such a loss slip in between
    /// the two takes and open a link after shutdown began (S41; found by
    /// `loom_tests::loss_after_shutdown_never_opens`).
    pub(crate) fn take_work(&self) -> (Commands, Batch) {
        if mutant::active(Mutant::CommandsFirst) {
            let commands = self.take_commands();
            return (commands, self.take_reports());
        }
        let batch = self.take_reports();
        let commands = self.take_commands();
        (commands, batch)
    }

    /// Driver only: takes every pending report (clears the event bits,
    /// keeps the generation, atomically).
    pub(crate) fn take_reports(&self) -> Batch {
        let word = self.mailbox.fetch_and(!EVENT_MASK, Ordering::AcqRel);
        Batch { word }
    }

    /// Any thread: whether a reconnect request waits for the driver.
    pub(crate) fn reconnect_pending(&self) -> bool {
        self.commands.load(Ordering::SeqCst) & CMD_RECONNECT != 0
    }

    /// Driver only: takes the pending commands.
    pub(crate) fn take_commands(&self) -> Commands {
        let bits = self.commands.swap(0, Ordering::AcqRel);
        Commands {
            reconnect: bits & CMD_RECONNECT != 0,
            shutdown: bits & CMD_SHUTDOWN != 0,
        }
    }

    /// Driver only: registers for a wake-up, then says whether work is
    /// already waiting (register first, so no report can slip in between).
    pub(crate) fn poll_work(&self, cx: &mut Context<'_>) -> Poll<()> {
        // loom's model takes the waker by value, futures' by reference.
        #[cfg(all(test, loom))]
        self.waker.register(cx.waker().clone());
        #[cfg(not(all(test, loom)))]
        self.waker.register(cx.waker());
        let pending_reports = self.mailbox.load(Ordering::Acquire) & WAKE_MASK != 0;
        let pending_commands = self.commands.load(Ordering::Acquire) != 0;
        if pending_reports || pending_commands {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

fn merge(word: u64, event: LinkEvent) -> u64 {
    match event {
        LinkEvent::Lost(kind) => {
            let permanent = if kind == ErrorKind::Permanent {
                LOST_PERMANENT
            } else {
                0
            };
            (word & !(LINK_MASK | LOST_PERMANENT | NO_SESSION)) | LINK_LOST | permanent
        }
        // Keeps NO_SESSION (only ever set with LINK_RESUMED; a loss clears it).
        LinkEvent::Resumed => (word & !(LINK_MASK | LOST_PERMANENT)) | LINK_RESUMED,
        // A resume without a session stays one until a loss replaces it:
        // a duplicate "resumed" callback must not hide the restore.
        LinkEvent::ResumedWithoutSession => {
            (word & !(LINK_MASK | LOST_PERMANENT)) | LINK_RESUMED | NO_SESSION
        }
        LinkEvent::Blocked => (word & !FLOW_MASK) | FLOW_BLOCKED,
        LinkEvent::Unblocked => (word & !FLOW_MASK) | FLOW_UNBLOCKED,
        LinkEvent::Activity => word | ACTIVITY,
    }
}
