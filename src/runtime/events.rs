//! Events broadcast by the driver, and the [`EventStream`] that reads them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::broadcast::{self, error::RecvError};

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
        /// The current generation after the change: the live link's, or
        /// the one the next link will get (a change that retires a link
        /// moves on to the next generation at once).
        generation: Generation,
        /// The link this change took down: set when a link was up before
        /// (connected or blocked) and none is after, whatever the reason
        /// (a loss, a replacement, the engine's own shutdown).
        lost: Option<Generation>,
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

/// Events the [`EventStream`] could not keep up with: the ring holds the
/// last 1024 events and this many older ones were dropped before they were
/// read. The stream goes on with the oldest event still kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{missed} events were missed")]
#[non_exhaustive]
pub struct Lagged {
    /// How many events were skipped.
    pub missed: u64,
}

type Next = (Result<Event, RecvError>, broadcast::Receiver<Event>);

/// The engine's events as a [`futures::Stream`]: every event in order,
/// `Err(Lagged)` where a slow reader missed some (never a silent gap), and
/// the end once the engine is gone. Take it before the engine starts
/// ([`crate::runtime::Prepared::events`]) to see every event from the first.
pub struct EventStream {
    next: Pin<Box<dyn Future<Output = Next> + Send>>,
    missed: u64,
}

impl EventStream {
    pub(crate) fn new(rx: broadcast::Receiver<Event>) -> Self {
        Self {
            next: Box::pin(recv(rx)),
            missed: 0,
        }
    }

    /// How many events this stream missed so far, in total (the sum of the
    /// [`Lagged`] items it yielded).
    pub fn missed(&self) -> u64 {
        self.missed
    }
}

/// The next event, and the receiver back for the one after.
async fn recv(mut rx: broadcast::Receiver<Event>) -> Next {
    (rx.recv().await, rx)
}

impl futures::Stream for EventStream {
    type Item = Result<Event, Lagged>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let (result, rx) = std::task::ready!(self.next.as_mut().poll(cx));
        // One short-lived box per event: events are rare, and the
        // receiver's own `recv` future borrows it.
        self.next = Box::pin(recv(rx));
        Poll::Ready(match result {
            Ok(event) => Some(Ok(event)),
            Err(RecvError::Lagged(missed)) => {
                self.missed = self.missed.saturating_add(missed);
                Some(Err(Lagged { missed }))
            }
            Err(RecvError::Closed) => None,
        })
    }
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("missed", &self.missed)
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn liveness(n: u64) -> Event {
        Event::LivenessLost {
            generation: Generation(n),
        }
    }

    /// A reader that falls behind gets one `Lagged` item with the number
    /// it missed, then the oldest event still kept; the stream ends with
    /// the sender.
    #[tokio::test]
    async fn lagging_is_an_item_and_a_counter() {
        let (tx, rx) = broadcast::channel(2);
        let mut events = EventStream::new(rx);
        for n in 1..=5 {
            tx.send(liveness(n)).unwrap();
        }
        drop(tx);
        let lagged = events.next().await.expect("an item").expect_err("lagged");
        assert_eq!(lagged, Lagged { missed: 3 });
        assert_eq!(events.missed(), 3);
        for n in [4, 5] {
            let event = events.next().await.expect("kept").expect("in order");
            assert!(
                matches!(event, Event::LivenessLost { generation } if generation == Generation(n)),
                "{event:?}"
            );
        }
        assert!(events.next().await.is_none());
    }
}
