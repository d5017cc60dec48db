//! Consumers that survive reconnects, and deliveries that know their link.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use tokio::sync::mpsc;

use crate::amqp::Shared;
use crate::amqp::error::AckError;
use crate::amqp::probe::Probe;
use crate::machine::Generation;

/// Where a consumer's forwarders put deliveries.
pub(crate) type Sink = mpsc::Sender<Delivery>;

/// What a delivery needs to decide whether its ack may still be sent.
#[derive(Debug)]
pub(crate) struct ConsumeState {
    pub(crate) probe: Arc<Probe>,
    /// Bumped every time the link's consumer channel is reopened.
    pub(crate) epoch: AtomicU64,
}

impl ConsumeState {
    fn check(&self, generation: Generation, epoch: u64) -> Result<(), AckError> {
        let reporter = self.probe.reporter();
        let current = reporter.handle().generation();
        if reporter.is_current()
            && !self.probe.is_lost()
            && !self.probe.is_killed()
            && self.epoch.load(Ordering::Acquire) == epoch
        {
            Ok(())
        } else {
            Err(AckError::Stale {
                delivery: generation,
                delivery_epoch: epoch,
                current,
            })
        }
    }
}

/// One message from a [`Consumer`], tagged with the link (generation) and
/// consumer channel (epoch) it came on.
///
/// Acknowledging a delivery from an older link or channel returns
/// [`AckError::Stale`] and sends nothing: its delivery tag would name
/// another message, or none, on the current channel (and an unknown tag
/// makes the broker close that channel). The broker redelivers it.
#[derive(Debug)]
pub struct Delivery {
    generation: Generation,
    epoch: u64,
    inner: lapin::message::Delivery,
    state: Arc<ConsumeState>,
}

impl Delivery {
    pub(crate) fn new(
        generation: Generation,
        epoch: u64,
        inner: lapin::message::Delivery,
        state: Arc<ConsumeState>,
    ) -> Self {
        Self {
            generation,
            epoch,
            inner,
            state,
        }
    }

    /// The link it arrived on.
    pub fn generation(&self) -> Generation {
        self.generation
    }
    /// The body.
    pub fn data(&self) -> &[u8] {
        &self.inner.data
    }
    /// The properties (`message_id`, headers, ...).
    pub fn properties(&self) -> &BasicProperties {
        &self.inner.properties
    }
    /// The `message_id` property, if set (redial sets it on every publish).
    pub fn message_id(&self) -> Option<&str> {
        self.inner
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str())
    }
    /// The exchange it was published to.
    pub fn exchange(&self) -> &str {
        self.inner.exchange.as_str()
    }
    /// Its routing key.
    pub fn routing_key(&self) -> &str {
        self.inner.routing_key.as_str()
    }
    /// Whether the broker delivered it before (to this or another consumer).
    pub fn redelivered(&self) -> bool {
        self.inner.redelivered
    }
    /// Its delivery tag on its own channel.
    pub fn delivery_tag(&self) -> u64 {
        self.inner.delivery_tag
    }
    /// Whether an ack would still be sent (same link, same channel, link alive).
    pub fn is_current(&self) -> bool {
        self.state.check(self.generation, self.epoch).is_ok()
    }
    /// The lapin delivery (an escape hatch; its acker does not check the link).
    pub fn into_inner(self) -> lapin::message::Delivery {
        self.inner
    }

    /// Acknowledges it.
    ///
    /// # Errors
    /// [`AckError::Stale`] when it came on an older link or channel (nothing
    /// is sent), [`AckError::Unusable`] when already acknowledged,
    /// [`AckError::Failed`] when the broker or the connection failed.
    pub async fn ack(&self) -> Result<(), AckError> {
        self.state.check(self.generation, self.epoch)?;
        settled(self.inner.acker.ack(BasicAckOptions::default()).await)
    }

    /// Negatively acknowledges it (`requeue`: put it back in the queue).
    ///
    /// # Errors
    /// As [`Delivery::ack`].
    pub async fn nack(&self, requeue: bool) -> Result<(), AckError> {
        self.state.check(self.generation, self.epoch)?;
        settled(
            self.inner
                .acker
                .nack(BasicNackOptions {
                    requeue,
                    ..BasicNackOptions::default()
                })
                .await,
        )
    }

    /// Rejects it (`requeue`: put it back in the queue).
    ///
    /// # Errors
    /// As [`Delivery::ack`].
    pub async fn reject(&self, requeue: bool) -> Result<(), AckError> {
        self.state.check(self.generation, self.epoch)?;
        settled(
            self.inner
                .acker
                .reject(BasicRejectOptions { requeue })
                .await,
        )
    }
}

fn settled(result: lapin::Result<bool>) -> Result<(), AckError> {
    match result {
        Ok(true) => Ok(()),
        Ok(false) => Err(AckError::Unusable),
        Err(e) => Err(AckError::Failed(e)),
    }
}

/// A consumer that survives reconnects: every link's replay starts it again
/// on the same queue (for a server-named queue, under its new name) and its
/// deliveries keep arriving on this stream, each tagged with its link.
///
/// Dropping it cancels the consumer (best effort, on the current link) and
/// removes it from the topology log; [`Consumer::cancel`] does so and waits.
#[derive(Debug)]
pub struct Consumer {
    pub(crate) id: u64,
    pub(crate) rx: mpsc::Receiver<Delivery>,
    pub(crate) shared: Weak<Shared>,
}

impl Consumer {
    /// The next delivery (`None` once cancelled and drained).
    pub async fn recv(&mut self) -> Option<Delivery> {
        self.rx.recv().await
    }

    /// Deliveries waiting in the buffer (at most
    /// [`AmqpConfig::consumer_buffer`](crate::amqp::AmqpConfig::consumer_buffer)).
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Whether no delivery is waiting in the buffer.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Cancels the consumer on the current link and removes it from the log.
    /// Deliveries already buffered are dropped (the broker redelivers them).
    pub async fn cancel(mut self) {
        self.rx.close();
        if let Some(shared) = self.shared.upgrade() {
            shared.cancel_consumer(self.id).await;
        }
    }
}

impl Stream for Consumer {
    type Item = Delivery;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            let id = self.id;
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(tracing::Instrument::in_current_span(async move {
                    shared.cancel_consumer(id).await
                }));
            }
        }
    }
}

/// Why a forwarder stopped.
pub(crate) enum ForwardEnd {
    /// The consumer stream is gone: cancel and forget the consumer.
    ReceiverGone,
    /// The lapin consumer ended (channel or connection closed, or cancelled
    /// by the broker).
    ChannelEnded,
}

/// Moves one link's deliveries of one consumer into its stream.
pub(crate) async fn forward(
    mut consumer: lapin::Consumer,
    sink: Sink,
    generation: Generation,
    epoch: u64,
    state: Arc<ConsumeState>,
) -> ForwardEnd {
    loop {
        let next = tokio::select! {
            next = consumer.next() => next,
            () = sink.closed() => return ForwardEnd::ReceiverGone,
        };
        match next {
            Some(Ok(delivery)) => {
                let delivery = Delivery::new(generation, epoch, delivery, state.clone());
                if sink.send(delivery).await.is_err() {
                    return ForwardEnd::ReceiverGone;
                }
            }
            Some(Err(e)) => {
                tracing::debug!(generation = generation.0, %e, "consumer ended");
                return ForwardEnd::ChannelEnded;
            }
            None => return ForwardEnd::ChannelEnded,
        }
    }
}
