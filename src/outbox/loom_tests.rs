//! Loom models of what submitting threads and the flush task share: the
//! outbox behind its mutex and the work signal (`shared.rs`).
//!
//! Run with `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2
//! CARGO_TARGET_DIR=target/loom cargo test --lib --release outbox`.

use std::future::poll_fn;
use std::time::Instant;

use loom::future::block_on;
use loom::sync::Arc;
use loom::thread;

use crate::machine::{FailCause, Generation};
use crate::outbox::shared::Shared;
use crate::outbox::{OutboxConfig, OutboxCore, PublishErrorKind, Submit, SubmitOptions};

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
    loom::model(|| {
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
    loom::model(|| {
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
    loom::model(|| {
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
