//! The flush task's decisions without I/O: which link it writes to, when it
//! may write, and what each answer does to the outbox. The tokio flush task
//! (`publisher.rs`) and the loom models (`loom_tests.rs`) both run this
//! code; only how writes and confirms travel differs between them.
//!
//! The shell calls [`FlushStep::plan`] under the outbox's lock, executes the
//! plan (a write, or a wait), and feeds back what became of each write and
//! confirm. Every answer names the link it came from, so an answer of a
//! link the step has left behind changes nothing.

use std::time::{Duration, Instant};

use crate::loom::mutant::{self, Mutant};
use crate::machine::{Generation, StateKind};
use crate::outbox::Gate;
use crate::outbox::core::{MessageId, OutboxCore, PublishError};
use crate::outbox::deliver::DeliveryError;

/// What the flush task sees of the engine when it plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct View {
    /// The engine's current link, if any.
    pub(crate) link: Option<Generation>,
    /// The confirm timeout on that link (see `ConfirmTimeout::resolve`).
    pub(crate) confirm_timeout: Option<Duration>,
    /// The engine's state and generation, as its snapshot says.
    pub(crate) state: StateKind,
    pub(crate) generation: Generation,
    /// How many times an up link went down so far.
    pub(crate) outages: u64,
}

/// What the flush task does next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Plan<M> {
    /// The outbox is closed and empty: the flush task ends.
    Finish,
    /// Write `message` on link `generation`, then report with
    /// [`FlushStep::wrote`] or [`FlushStep::write_failed`].
    Write {
        generation: Generation,
        id: MessageId,
        message: M,
    },
    /// Nothing to write now: wait for a wake-up, a write's or confirm's
    /// answer, or a deadline (`expire_at`: call `OutboxCore::expire`;
    /// `overdue_at`: call [`FlushStep::overdue`]).
    Wait {
        expire_at: Option<Instant>,
        overdue_at: Option<Instant>,
    },
}

/// The answers that arrived but were not fed yet: drained only when a
/// channel closes, since those answers preceded the close.
pub(crate) trait Ready {
    /// Every answer ready now, with the link it came from.
    fn drain(self) -> Vec<(Generation, MessageId, Result<(), DeliveryError>)>;
}

impl<F: FnOnce() -> Vec<(Generation, MessageId, Result<(), DeliveryError>)>> Ready for F {
    fn drain(self) -> Vec<(Generation, MessageId, Result<(), DeliveryError>)> {
        self()
    }
}

/// No answer is waiting (a shell that feeds every answer at once).
pub(crate) struct NoneReady;

impl Ready for NoneReady {
    fn drain(self) -> Vec<(Generation, MessageId, Result<(), DeliveryError>)> {
        Vec::new()
    }
}

/// What an answer asks of the shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    Continue,
    /// The publishing channel closed: drop the write under way and every
    /// confirm awaited (their messages went back to the queue).
    ChannelReset,
}

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct FlushStep {
    /// The link written to.
    link: Option<Generation>,
    confirm_timeout: Option<Duration>,
    /// A write is under way on `link`.
    writing: bool,
    /// Confirms awaited on `link`.
    awaited: usize,
    /// The engine's outage count when a write said the link died: nothing
    /// is written until the engine replaced it (or it resumed by itself).
    broken_at: Option<u64>,
    /// A write answered `NotWritten` while confirms of its channel were
    /// awaited: that channel is closing, so nothing is written until they
    /// are answered (or their channel's close is applied).
    hold: bool,
    /// The link to report lost ([`FlushStep::report`]).
    report: Option<Generation>,
}

impl FlushStep {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Follows the engine's link, then decides. When the link changed, the
    /// old one's messages go back to the queue, and the shell must drop
    /// what it awaits of the old link (answers of it are ignored anyway).
    /// `message` picks what a write needs of a queued entry.
    pub(crate) fn plan<E, M>(
        &mut self,
        core: &mut OutboxCore<E>,
        now: Instant,
        view: &View,
        message: impl FnOnce(&E) -> M,
    ) -> Plan<M> {
        if view.link != self.link {
            if let Some(old) = self.link
                && !mutant::active(Mutant::KeepRetiredFlight)
            {
                core.link_lost(old);
            }
            *self = Self {
                link: view.link,
                confirm_timeout: view.confirm_timeout,
                ..Self::default()
            };
        }
        if matches!(core.gate(), Gate::Closed) && core.pending() == 0 {
            return Plan::Finish;
        }
        if self.broken_at.is_some_and(|at| view.outages > at) {
            // The link went down and came back by itself (a resume).
            self.broken_at = None;
        }
        if self.awaited == 0 {
            self.hold = false;
        }
        if let Some(generation) = self.link
            && !self.writing
            && self.broken_at.is_none()
            && !self.hold
            && view.state == StateKind::Connected
            && view.generation == generation
            && let Some((id, entry)) = core.next_to_send(now, generation)
        {
            self.writing = true;
            return Plan::Write {
                generation,
                id,
                message: message(entry),
            };
        }
        let overdue_at = self
            .confirm_timeout
            .filter(|_| self.link.is_some() && self.broken_at.is_none())
            .and_then(|t| core.confirm_deadline(t));
        Plan::Wait {
            expire_at: core.poll_timeout(),
            overdue_at,
        }
    }

    /// A write on `generation` is done and its confirm is awaited. False
    /// when that link was left behind: drop the confirm.
    pub(crate) fn wrote(&mut self, generation: Generation) -> bool {
        if self.link != Some(generation) || !self.writing {
            return false;
        }
        self.writing = false;
        self.awaited += 1;
        true
    }

    /// The write of `id` on `generation` failed. `ready` drains the
    /// confirms that already arrived (see [`Ready`]).
    pub(crate) fn write_failed<E>(
        &mut self,
        core: &mut OutboxCore<E>,
        generation: Generation,
        id: MessageId,
        error: DeliveryError,
        ready: impl Ready,
    ) -> Next {
        if self.link != Some(generation) || !self.writing {
            return Next::Continue;
        }
        self.writing = false;
        self.apply(core, generation, id, Err(error), ready)
    }

    /// The answer to an awaited confirm of `id` on `generation`. `ready`
    /// drains the confirms that already arrived (see [`Ready`]).
    pub(crate) fn answer<E>(
        &mut self,
        core: &mut OutboxCore<E>,
        generation: Generation,
        id: MessageId,
        result: Result<(), DeliveryError>,
        ready: impl Ready,
    ) -> Next {
        if self.link != Some(generation) || self.awaited == 0 {
            return Next::Continue;
        }
        self.awaited -= 1;
        self.apply(core, generation, id, result, ready)
    }

    /// The broker closed the publishing channel of `generation` while `id`
    /// was unconfirmed on it. The answers of that channel that had already
    /// arrived are applied first (a confirm received before the close is a
    /// confirm); then the core decides (the culprit alone, or suspects).
    /// Every other answer of the channel is dropped with it, since its
    /// message went back to the queue.
    fn channel_closed<E>(
        &mut self,
        core: &mut OutboxCore<E>,
        generation: Generation,
        id: MessageId,
        reason: String,
        ready: impl Ready,
    ) -> Next {
        for (from, other, result) in ready.drain() {
            if from == generation
                && !matches!(
                    result,
                    Err(DeliveryError::ChannelClosed { .. } | DeliveryError::NotWritten)
                )
            {
                self.apply(core, generation, other, result, NoneReady);
            }
        }
        let decided = core.channel_closed(generation, id, reason);
        tracing::debug!(
            generation = generation.0,
            id = id.0,
            ?decided,
            "publishing channel closed by the broker"
        );
        self.writing = false;
        self.awaited = 0;
        self.hold = false;
        Next::ChannelReset
    }

    /// A confirm deadline passed: when a message written on the link went
    /// unconfirmed past the confirm timeout, the link confirms nothing
    /// (heartbeats may well flow) and is reported lost; its messages go
    /// back to the queue when the engine replaces it.
    pub(crate) fn overdue<E>(&mut self, core: &mut OutboxCore<E>, now: Instant) {
        let Some(timeout) = self.confirm_timeout else {
            return;
        };
        if let Some(generation) = core.confirm_overdue(now, timeout) {
            tracing::warn!(
                generation = generation.0,
                ?timeout,
                "no publisher confirm within the confirm timeout: replacing the link"
            );
            self.report = Some(generation);
        }
    }

    /// The link to report lost to the engine, if an answer asked for it.
    /// `outages` is read only then: the link counts as broken, and nothing
    /// is written to it, until the engine's outage count passes it.
    pub(crate) fn report(&mut self, outages: impl FnOnce() -> u64) -> Option<Generation> {
        let generation = self.report.take()?;
        if self.broken_at.is_none() {
            self.broken_at = Some(outages());
        }
        Some(generation)
    }

    fn apply<E>(
        &mut self,
        core: &mut OutboxCore<E>,
        generation: Generation,
        id: MessageId,
        result: Result<(), DeliveryError>,
        ready: impl Ready,
    ) -> Next {
        let failure = match result {
            Ok(()) => {
                core.confirmed(generation, id);
                return Next::Continue;
            }
            Err(DeliveryError::LinkLost | DeliveryError::Timeout) => {
                core.requeue(generation, id);
                // The link is dead or half-open: have the engine replace it.
                self.report = Some(generation);
                return Next::Continue;
            }
            Err(DeliveryError::NotWritten) => {
                core.requeue(generation, id);
                // Its channel is closing: wait for the answers of the
                // messages still on it before writing on a new one.
                self.hold = self.awaited > 0;
                return Next::Continue;
            }
            Err(DeliveryError::ChannelClosed { code, text }) => {
                let reason = format!("{code} {text}");
                return self.channel_closed(core, generation, id, reason, ready);
            }
            Err(DeliveryError::Nacked) => PublishError::Nacked,
            Err(DeliveryError::Unroutable) => PublishError::Unroutable,
            Err(DeliveryError::Rejected(reason)) => PublishError::Rejected(reason),
        };
        core.failed(generation, id, failure);
        Next::Continue
    }
}
