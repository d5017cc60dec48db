//! Events broadcast by the driver, and the [`EventStream`] that reads them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::broadcast::{
    self,
    error::{RecvError, TryRecvError},
};

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
///
/// Without `StreamExt` at hand, [`EventStream::recv`] waits for the next
/// item and [`EventStream::try_recv`] takes one already queued.
pub struct EventStream {
    /// The receiver, while no read waits (a waiting read holds it).
    rx: Option<broadcast::Receiver<Event>>,
    /// The read waiting for the next event, made only when none is queued:
    /// the receiver's own `recv` future borrows it, so it moves in here.
    waiting: Option<Pin<Box<dyn Future<Output = Next> + Send>>>,
    missed: u64,
}

impl EventStream {
    pub(crate) fn new(rx: broadcast::Receiver<Event>) -> Self {
        Self {
            rx: Some(rx),
            waiting: None,
            missed: 0,
        }
    }

    /// How many events this stream missed so far, in total (the sum of the
    /// [`Lagged`] items it yielded).
    pub fn missed(&self) -> u64 {
        self.missed
    }

    /// The next item, waiting for it: the same as `StreamExt::next`.
    /// `None` once the engine is gone. Cancel-safe (e.g. in `select!`):
    /// dropping the future loses no event.
    pub async fn recv(&mut self) -> Option<Result<Event, Lagged>> {
        futures::StreamExt::next(self).await
    }

    /// An item already queued, without waiting: `None` when there is none
    /// right now (or the engine is gone; [`EventStream::recv`] tells them
    /// apart). For draining what happened so far.
    pub fn try_recv(&mut self) -> Option<Result<Event, Lagged>> {
        let result = self.ready()?;
        self.item(result)
    }

    /// What the receiver has ready now, or `None` if nothing is queued.
    fn ready(&mut self) -> Option<Result<Event, RecvError>> {
        if let Some(waiting) = self.waiting.as_mut() {
            // A read already waits and holds the receiver: poll it once.
            // The no-op waker replaces the read's; the next `poll_next`
            // registers a real one again before anything waits on it.
            let mut cx = Context::from_waker(futures::task::noop_waker_ref());
            let Poll::Ready((result, rx)) = waiting.as_mut().poll(&mut cx) else {
                return None;
            };
            self.waiting = None;
            self.rx = Some(rx);
            return Some(result);
        }
        match self.rx.as_mut()?.try_recv() {
            Ok(event) => Some(Ok(event)),
            Err(TryRecvError::Lagged(missed)) => Some(Err(RecvError::Lagged(missed))),
            Err(TryRecvError::Closed) => Some(Err(RecvError::Closed)),
            Err(TryRecvError::Empty) => None,
        }
    }

    /// The stream's item for a receiver's result, counting what was missed.
    fn item(&mut self, result: Result<Event, RecvError>) -> Option<Result<Event, Lagged>> {
        match result {
            Ok(event) => Some(Ok(event)),
            Err(RecvError::Lagged(missed)) => {
                self.missed = self.missed.saturating_add(missed);
                Some(Err(Lagged { missed }))
            }
            Err(RecvError::Closed) => None,
        }
    }
}

/// The next event, and the receiver back for the one after.
async fn recv(mut rx: broadcast::Receiver<Event>) -> Next {
    (rx.recv().await, rx)
}

impl futures::Stream for EventStream {
    type Item = Result<Event, Lagged>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.waiting.is_none() {
            // An event already queued needs no future (and no box).
            if let Some(result) = this.ready() {
                return Poll::Ready(this.item(result));
            }
            if let Some(rx) = this.rx.take() {
                this.waiting = Some(Box::pin(recv(rx)));
            }
        }
        // Neither a receiver nor a read cannot happen; ending is the safe answer.
        let Some(waiting) = this.waiting.as_mut() else {
            return Poll::Ready(None);
        };
        let (result, rx) = std::task::ready!(waiting.as_mut().poll(cx));
        this.waiting = None;
        this.rx = Some(rx);
        Poll::Ready(this.item(result))
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

    /// `try_recv` takes what is queued without waiting, also while a read
    /// is waiting (cancelled in a `select!`), and loses nothing either way.
    #[tokio::test]
    async fn try_recv_drains_without_waiting() {
        let (tx, rx) = broadcast::channel(4);
        let mut events = EventStream::new(rx);
        assert!(events.try_recv().is_none(), "nothing queued yet");
        // A read that waits and is dropped leaves its receiver behind.
        assert!(futures::FutureExt::now_or_never(events.recv()).is_none());
        tx.send(liveness(1)).unwrap();
        tx.send(liveness(2)).unwrap();
        for n in [1, 2] {
            let event = events.try_recv().expect("queued").expect("no lag");
            assert!(
                matches!(event, Event::LivenessLost { generation } if generation == Generation(n)),
                "{event:?}"
            );
        }
        assert!(events.try_recv().is_none(), "drained");
        // A waiting read that `try_recv` polled still wakes the next reader.
        assert!(futures::FutureExt::now_or_never(events.recv()).is_none());
        assert!(events.try_recv().is_none());
        let sender = tokio::spawn(async move {
            tokio::task::yield_now().await;
            tx.send(liveness(3)).unwrap();
            tx
        });
        let woken = tokio::time::timeout(std::time::Duration::from_secs(5), events.recv()).await;
        assert!(matches!(woken, Ok(Some(Ok(_)))), "{woken:?}");
        drop(sender.await.unwrap());
        assert!(events.try_recv().is_none());
        assert!(events.recv().await.is_none(), "ends with the engine");
    }
}
