//! Loom models of what submitting threads and the flush task share: the
//! outbox behind its mutex and the work signal (`shared.rs`), and the flush
//! task's loop around the shipped [`FlushStep`] (`flush.rs`).
//!
//! Each model sets its preemption bound; `LOOM_MAX_PREEMPTIONS` can raise
//! it (see [`model`]). Run with `RUSTFLAGS="--cfg loom"
//! CARGO_TARGET_DIR=target/loom cargo test --lib --release --features tokio
//! outbox::loom -- --nocapture`.

use std::future::poll_fn;
use std::time::Instant;

use loom::future::block_on;
use loom::sync::Arc;
use loom::thread;

use crate::loom::model;
use crate::loom::mutant::{self, Mutant};
use crate::machine::{FailCause, Generation, StateKind};
use crate::outbox::core::{OutboxCore, Submit};
use crate::outbox::deliver::DeliveryError;
use crate::outbox::flush::{FlushStep, NoneReady, Plan, View};
use crate::outbox::shared::Shared;
use crate::outbox::{MessageId, OutboxConfig, PublishErrorKind, SubmitOptions};

type Core = OutboxCore<u32>;

fn shared() -> Arc<Shared<Core>> {
    Arc::new(Shared::new(OutboxCore::new(OutboxConfig::default())))
}

/// Drains every outcome and checks that each message resolved once.
fn outcomes(shared: &Shared<Core>) -> Vec<(u32, Option<PublishErrorKind>)> {
    let mut core = shared.lock();
    core.check_invariants().expect("invariants");
    let out: Vec<_> = std::iter::from_fn(|| core.poll_resolved())
        .map(|r| (r.message, r.outcome.err().map(|e| e.kind())))
        .collect();
    let mut ids: Vec<_> = out.iter().map(|(m, _)| *m).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), out.len(), "a message resolved twice: {out:?}");
    out
}

/// Two threads submit while the flush task sleeps on the work signal: no
/// wake-up is lost (a lost one deadlocks the model), every message is sent
/// once, in each thread's order, and confirmed once.
#[test]
fn loom_submitters_wake_the_flusher_and_keep_their_order() {
    model(Some(2), || {
        let shared = shared();
        let t = Instant::now();
        let threads: Vec<_> = (0..2u32)
            .map(|k| {
                let shared = shared.clone();
                thread::spawn(move || {
                    for i in 0..2 {
                        let answer = shared.lock().submit(t, k * 10 + i, SubmitOptions::new());
                        assert!(matches!(answer, Submit::Queued(_)));
                        shared.notify();
                    }
                })
            })
            .collect();
        let mut sent = Vec::new();
        block_on(async {
            while sent.len() < 4 {
                poll_fn(|cx| shared.poll_work(cx)).await;
                loop {
                    let next = shared
                        .lock()
                        .next_to_send(t, Generation(1))
                        .map(|(id, m)| (id, *m));
                    let Some((id, m)) = next else { break };
                    sent.push(m);
                    assert!(shared.lock().confirmed(Generation(1), id));
                }
            }
        });
        for th in threads {
            th.join().unwrap();
        }
        for k in 0..2 {
            let mine: Vec<_> = sent.iter().filter(|m| **m / 10 == k).collect();
            assert_eq!(mine, [&(k * 10), &(k * 10 + 1)], "{sent:?}");
        }
        let out = outcomes(&shared);
        assert_eq!(out.len(), 4);
        assert!(out.iter().all(|(_, e)| e.is_none()));
    });
}

/// A cancel races the flush task's take: the message ends exactly once,
/// cancelled or confirmed, never both.
#[test]
fn loom_cancel_races_the_flush() {
    model(Some(2), || {
        let shared = shared();
        let t = Instant::now();
        let Submit::Queued(id) = shared.lock().submit(t, 7, SubmitOptions::new()) else {
            panic!("queued");
        };
        let canceller = {
            let shared = shared.clone();
            thread::spawn(move || shared.lock().cancel(id))
        };
        let taken = shared
            .lock()
            .next_to_send(t, Generation(1))
            .map(|(id, _)| id);
        if let Some(taken) = taken {
            assert!(shared.lock().confirmed(Generation(1), taken));
        }
        let cancelled = canceller.join().unwrap();
        assert_eq!(cancelled, taken.is_none());
        let out = outcomes(&shared);
        let expected = if cancelled {
            Some(PublishErrorKind::Cancelled)
        } else {
            None
        };
        assert_eq!(out, [(7, expected)]);
    });
}

/// The engine gives up (observed by one thread) while another submits and
/// the flush task sends and loses its link: every message resolves once,
/// and nothing is reported confirmed after its link was lost.
#[test]
fn loom_give_up_races_submit_and_link_loss() {
    model(Some(2), || {
        let shared = shared();
        let t = Instant::now();
        shared.lock().submit(t, 1, SubmitOptions::new());
        let submitter = {
            let shared = shared.clone();
            thread::spawn(move || {
                shared.lock().submit(t, 2, SubmitOptions::new());
                shared.notify();
            })
        };
        let observer = {
            let shared = shared.clone();
            thread::spawn(move || shared.lock().give_up(FailCause::RetriesExhausted, None))
        };
        let sent = shared
            .lock()
            .next_to_send(t, Generation(1))
            .map(|(id, _)| id);
        shared.lock().link_lost(Generation(1));
        if let Some(id) = sent {
            assert!(
                !shared.lock().confirmed(Generation(1), id),
                "stale confirm applied"
            );
        }
        submitter.join().unwrap();
        observer.join().unwrap();
        let out = outcomes(&shared);
        // Message 1 always ends with GaveUp; message 2 too (queued before the
        // give-up, or refused after it).
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(
            out.iter()
                .all(|(_, e)| *e == Some(PublishErrorKind::GaveUp)),
            "{out:?}"
        );
    });
}

/// What the model engine shows the flush task: its link and state.
struct ModelEngine {
    view: loom::sync::Mutex<View>,
}

impl ModelEngine {
    fn on(generation: Generation) -> Arc<Self> {
        Arc::new(Self {
            view: loom::sync::Mutex::new(View {
                link: Some(generation),
                confirm_timeout: None,
                state: StateKind::Connected,
                generation,
                outages: 0,
            }),
        })
    }

    fn view(&self) -> View {
        *self.view.lock().unwrap()
    }

    /// The link went down and the engine replaced it.
    fn replace(&self, generation: Generation) {
        let mut view = self.view.lock().unwrap();
        view.link = Some(generation);
        view.generation = generation;
        view.outages += 1;
    }
}

/// One write the model flush task made: on which link, which message, and
/// whether that link was still the engine's when it was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Write {
    generation: Generation,
    message: u32,
    current: bool,
}

/// The flush task's loop around the real [`FlushStep`], as `publisher.rs`
/// runs it, with the model's I/O: a write to the engine's current link
/// succeeds and its confirm arrives when the task has nothing else to do;
/// a write to a replaced link fails with `LinkLost`. Unlike the tokio
/// shell, it keeps the confirms of a replaced link and feeds them late, so
/// the step's own check of old answers is exercised. A link change wakes
/// it through the work signal (the tokio task watches the link channel).
fn flush(shared: &Shared<Core>, engine: &ModelEngine, t: Instant) -> (Vec<Write>, Vec<Generation>) {
    let mut step = FlushStep::new();
    let mut awaited: Vec<(Generation, MessageId)> = Vec::new();
    let mut wire = Vec::new();
    let mut reported = Vec::new();
    block_on(async {
        loop {
            let view = engine.view();
            let plan = {
                let mut core = shared.lock();
                let plan = step.plan(&mut core, t, &view, |m| *m);
                for (generation, id) in &awaited {
                    assert!(
                        view.link == Some(*generation)
                            || core.in_flight_generation(*id) != Some(*generation),
                        "message {id:?} still in flight on replaced link {generation:?}"
                    );
                }
                plan
            };
            match plan {
                Plan::Finish => break,
                Plan::Write {
                    generation,
                    id,
                    message,
                } => {
                    let current = engine.view().link == Some(generation);
                    wire.push(Write {
                        generation,
                        message,
                        current,
                    });
                    if !current {
                        let error = DeliveryError::LinkLost;
                        step.write_failed(&mut shared.lock(), generation, id, error, NoneReady);
                    } else if step.wrote(generation) {
                        awaited.push((generation, id));
                    }
                }
                Plan::Wait { .. } if !awaited.is_empty() => {
                    let (generation, id) = awaited.remove(0);
                    step.answer(&mut shared.lock(), generation, id, Ok(()), NoneReady);
                }
                Plan::Wait { .. } => poll_fn(|cx| shared.poll_work(cx)).await,
            }
            if let Some(generation) = step.report(|| engine.view().outages) {
                reported.push(generation);
            }
        }
    });
    (wire, reported)
}

/// Every outcome, each message's exactly once.
fn resolved(shared: &Shared<Core>) -> Vec<(u32, Result<Generation, PublishErrorKind>)> {
    let mut core = shared.lock();
    core.check_invariants().expect("invariants");
    assert_eq!(core.pending(), 0, "a receipt never resolved");
    let mut out: Vec<_> = std::iter::from_fn(|| core.poll_resolved())
        .map(|r| {
            (
                r.message,
                r.outcome.map(|c| c.generation).map_err(|e| e.kind()),
            )
        })
        .collect();
    out.sort_unstable_by_key(|(m, _)| *m);
    let mut ids: Vec<_> = out.iter().map(|(m, _)| *m).collect();
    ids.dedup();
    assert_eq!(ids.len(), out.len(), "a message resolved twice: {out:?}");
    out
}

/// The flush task runs the shipped step while a thread publishes and
/// closes the outbox and the engine replaces link 1 by link 2: no wake-up
/// is lost (a lost one deadlocks the model), the writes never go back to
/// an older link, a message caught on link 1 is replayed on link 2, a late
/// confirm of link 1 changes nothing, and every receipt resolves once,
/// confirmed, before the task ends.
#[test]
fn loom_flush_step_follows_a_link_change_under_publishes() {
    model(Some(3), || {
        let shared = shared();
        let engine = ModelEngine::on(Generation(1));
        let t = Instant::now();
        shared.lock().submit(t, 1, SubmitOptions::new());
        let publisher = {
            let shared = shared.clone();
            thread::spawn(move || {
                shared.lock().submit(t, 2, SubmitOptions::new());
                shared.notify();
                shared.lock().close();
                shared.notify();
            })
        };
        let replacer = {
            let (shared, engine) = (shared.clone(), engine.clone());
            thread::spawn(move || {
                engine.replace(Generation(2));
                shared.notify();
            })
        };
        let (wire, reported) = flush(&shared, &engine, t);
        publisher.join().unwrap();
        replacer.join().unwrap();
        assert!(
            wire.windows(2).all(|w| w[0].generation <= w[1].generation),
            "a write went back to a replaced link: {wire:?}"
        );
        // Only a write that raced the replacement can find link 1 gone, and
        // only link 1 is ever reported.
        assert!(reported.iter().all(|g| *g == Generation(1)), "{reported:?}");
        let out = resolved(&shared);
        assert_eq!(out.len(), 2, "{out:?}");
        for (message, outcome) in &out {
            let generation = outcome.expect("every message is confirmed");
            assert!(
                wire.contains(&Write {
                    generation,
                    message: *message,
                    current: true
                }),
                "message {message} confirmed on link {generation:?} without a write there: {wire:?}"
            );
        }
    });
}

/// A shutdown (drain over: close, then resolve what is left) races a
/// publish and the flush task's writes and confirms: the task ends, every
/// receipt resolves once (confirmed only after a write), and nothing is
/// written after the outbox was shut down.
#[test]
fn loom_flush_step_ends_on_shutdown_with_every_receipt_resolved() {
    model(Some(3), || {
        let shared = shared();
        let engine = ModelEngine::on(Generation(1));
        let t = Instant::now();
        shared.lock().submit(t, 1, SubmitOptions::new());
        shared.lock().submit(t, 2, SubmitOptions::new());
        let publisher = {
            let shared = shared.clone();
            thread::spawn(move || {
                shared.lock().submit(t, 3, SubmitOptions::new());
                shared.notify();
            })
        };
        let stopper = {
            let shared = shared.clone();
            thread::spawn(move || {
                shared.lock().close();
                shared.notify();
                shared.lock().shutdown();
                shared.notify();
            })
        };
        let (wire, reported) = flush(&shared, &engine, t);
        publisher.join().unwrap();
        stopper.join().unwrap();
        assert!(reported.is_empty(), "{reported:?}");
        let out = resolved(&shared);
        assert_eq!(out.len(), 3, "{out:?}");
        for (message, outcome) in &out {
            match outcome {
                Ok(_) => assert!(wire.iter().any(|w| w.message == *message), "{wire:?}"),
                Err(kind) => assert_eq!(*kind, PublishErrorKind::ShutDown, "{out:?}"),
            }
        }
    });
}

/// The flush model is not vacuous: a step that keeps a replaced link's
/// messages in flight on it is caught (left alone, it would leave their
/// receipts unresolved and the task waiting forever).
#[test]
#[should_panic(expected = "still in flight on replaced link")]
fn loom_mutant_keep_retired_flight_is_caught() {
    let _mutant = mutant::activate(Mutant::KeepRetiredFlight);
    loom_flush_step_follows_a_link_change_under_publishes();
}
