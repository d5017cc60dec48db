//! What the submitting threads and the flush task share: the outbox behind a
//! mutex, and a work signal that wakes the flush task at most once per batch.
//!
//! The mutex is held only for short, synchronous sections (never across an
//! await), so a submitter never waits for the network and the driver (which
//! never takes it) never waits for a publisher. Checked by loom
//! (`src/outbox/loom_tests.rs`).

use std::task::{Context, Poll};

use crate::loom::sync::atomic::{AtomicBool, Ordering};
use crate::loom::sync::{Mutex, MutexGuard};
use crate::loom::task::AtomicWaker;

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Shared<S> {
    state: Mutex<S>,
    work: AtomicBool,
    waker: AtomicWaker,
}

impl<S> Shared<S> {
    pub(crate) fn new(state: S) -> Self {
        Self {
            state: Mutex::new(state),
            work: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        }
    }

    /// Any thread: the state, for a short synchronous section.
    pub(crate) fn lock(&self) -> MutexGuard<'_, S> {
        // A panic while holding it cannot leave the outbox half-updated in a
        // way that matters more than stopping every publisher would.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Any thread, after changing the state: wakes the flush task unless a
    /// wake-up is already pending.
    pub(crate) fn notify(&self) {
        if !self.work.swap(true, Ordering::AcqRel) {
            self.waker.wake();
        }
    }

    /// Flush task only: registers for a wake-up, then takes the signal
    /// (register first, so no notification can slip in between).
    pub(crate) fn poll_work(&self, cx: &mut Context<'_>) -> Poll<()> {
        // loom's model takes the waker by value, futures' by reference.
        #[cfg(all(test, loom))]
        self.waker.register(cx.waker().clone());
        #[cfg(not(all(test, loom)))]
        self.waker.register(cx.waker());
        if self.work.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}
