//! Loom models of the handle's shared state.
//!
//! Each model runs the real [`Shared`] and a real [`Machine`], driven by a
//! small driver that does what `driver.rs` does for one wake-up: take the
//! reports and commands (`Shared::take_work`, which the driver calls too),
//! feed them, drain the outputs, publish the snapshot. The driver blocks on [`Shared::poll_work`] with
//! `loom::future::block_on`, so a lost wake-up shows up as a loom deadlock.
//! Time is a fixed `Instant`: timers never fire inside a model, which keeps
//! the machine's timers out of the interleavings.
//!
//! Run them (about a minute on two cores; each model sets its own
//! preemption bound, see [`model`]):
//!
//! ```text
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test --lib --release runtime::loom_tests -- --test-threads=1
//! ```

use std::future::poll_fn;
use std::time::{Duration, Instant};

use loom::future::block_on;
use loom::sync::Arc;
use loom::sync::atomic::Ordering;
use loom::thread;

use crate::machine::{Config, ErrorKind, Generation, Input, Machine, Output, StateKind};
use crate::runtime::shared::{Batch, LinkEvent, Report, Shared};

const LOST: LinkEvent = LinkEvent::Lost(ErrorKind::Transient);

/// What the model driver did, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    Open(Generation),
    Close(Generation),
    /// The machine was fed `Shutdown`.
    Shutdown,
}

/// The driver of `driver.rs`, minus tokio: opens complete when the model
/// says so, closes complete at once.
struct ModelDriver {
    machine: Machine,
    shared: Arc<Shared>,
    now: Instant,
    log: Vec<Act>,
    opening: Option<Generation>,
    link: Option<Generation>,
    /// Batches taken that held an event that wakes the driver.
    waking_batches: u64,
}

impl ModelDriver {
    /// A driver whose link 1 is up, then time moves past the stable period
    /// so that a loss starts a fresh outage (immediate first retry).
    fn connected(config: Config) -> Self {
        let t0 = Instant::now();
        let machine = Machine::new(config);
        let shared = Arc::new(Shared::new(machine.generation(), machine.kind()));
        let mut d = Self {
            machine,
            shared,
            now: t0,
            log: Vec::new(),
            opening: None,
            link: None,
            waking_batches: 0,
        };
        d.feed(Input::Start);
        d.complete_open();
        d.now = t0 + Duration::from_secs(3600);
        d.log.clear();
        assert_eq!(d.machine.kind(), StateKind::Connected);
        d
    }

    /// Blocks until `Shared` says there is work; the reporter must wake us.
    fn wait(&self) {
        block_on(poll_fn(|cx| self.shared.poll_work(cx)));
    }

    /// One wake-up of `driver.rs`'s `take_work`.
    fn step(&mut self) -> Batch {
        let (commands, batch) = self.shared.take_work();
        if is_waking(&batch) {
            self.waking_batches += 1;
        }
        if commands.shutdown {
            self.log.push(Act::Shutdown);
            self.feed(Input::Shutdown);
        } else if commands.reconnect {
            self.feed(Input::ReconnectNow);
        }
        for input in batch.inputs() {
            self.feed(input);
        }
        batch
    }

    /// The pending open succeeds.
    fn complete_open(&mut self) {
        let generation = self.opening.take().expect("an open is running");
        self.link = Some(generation);
        self.feed(Input::AttemptSucceeded { generation });
    }

    /// `driver.rs`'s `feed`: handle, publish, then run the opens and
    /// closes (the new generation is public before the old link closes).
    fn feed(&mut self, input: Input) {
        self.machine.handle(self.now, input);
        self.publish();
        loop {
            let mut actions = Vec::new();
            while let Some(output) = self.machine.poll(self.now) {
                if matches!(output, Output::Open { .. } | Output::Close { .. }) {
                    actions.push(output);
                }
            }
            self.publish();
            for action in actions {
                self.execute(action);
            }
            if self.machine.kind() == StateKind::Closing
                && self.opening.is_none()
                && self.link.is_none()
            {
                self.machine.handle(self.now, Input::CloseCompleted);
                self.publish();
                continue;
            }
            break;
        }
    }

    fn execute(&mut self, output: Output) {
        match output {
            Output::Open { generation, .. } => {
                assert!(self.opening.is_none() && self.link.is_none(), "S17");
                self.log.push(Act::Open(generation));
                self.opening = Some(generation);
            }
            Output::Close { generation } => {
                self.log.push(Act::Close(generation));
                if self.opening == Some(generation) {
                    self.opening = None;
                }
                if self.link == Some(generation) {
                    self.link = None;
                }
            }
            Output::StateChanged { .. } | Output::LivenessLost { .. } | Output::GaveUp { .. } => {}
        }
    }

    fn publish(&self) {
        self.shared
            .publish(self.machine.generation(), self.machine.kind());
    }

    fn opens(&self) -> Vec<Generation> {
        self.log
            .iter()
            .filter_map(|a| match a {
                Act::Open(g) => Some(*g),
                _ => None,
            })
            .collect()
    }

    fn closes(&self) -> Vec<Generation> {
        self.log
            .iter()
            .filter_map(|a| match a {
                Act::Close(g) => Some(*g),
                _ => None,
            })
            .collect()
    }

    /// One wake-up per batch: every report that woke the driver is matched
    /// by exactly one batch taken (call after a final drain).
    fn assert_one_wakeup_per_batch(&self) {
        let wakeups = self.shared.counters.wakeups.load(Ordering::Relaxed);
        assert_eq!(wakeups, self.waking_batches, "wake-ups vs batches");
    }
}

/// Whether the batch holds an event that wakes the driver (all but activity).
fn is_waking(batch: &Batch) -> bool {
    batch.inputs().any(|i| !matches!(i, Input::Activity { .. }))
}

fn has_lost(batch: &Batch) -> bool {
    batch.inputs().any(|i| matches!(i, Input::LinkLost { .. }))
}

fn has_resumed(batch: &Batch) -> bool {
    batch
        .inputs()
        .any(|i| matches!(i, Input::LinkResumed { .. }))
}

fn config() -> Config {
    Config::builder()
        .seed(1)
        .liveness_timeout(None)
        .build()
        .unwrap()
}

fn config_with_grace() -> Config {
    Config::builder()
        .seed(1)
        .liveness_timeout(None)
        .resume_grace(Some(Duration::from_secs(5)))
        .build()
        .unwrap()
}

/// Runs `f` under loom with at most `bound` preemptions (`None`: every
/// interleaving). Each model's bound is tuned so that the whole run stays
/// near a minute on two cores; `LOOM_MAX_PREEMPTIONS` can only raise it
/// (for a deeper search), never lower it. `--nocapture` shows how many
/// executions each model explored.
fn model<F: Fn() + Sync + Send + 'static>(bound: Option<usize>, f: F) {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    // A plain atomic: it counts executions, it is not part of the model.
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    RUNS.store(0, Relaxed);
    let mut builder = loom::model::Builder::new();
    // `Builder::new` read `LOOM_MAX_PREEMPTIONS`.
    let bound = match (bound, builder.preemption_bound) {
        (Some(ours), Some(env)) => Some(ours.max(env)),
        _ => bound,
    };
    builder.preemption_bound = bound;
    builder.check(move || {
        RUNS.fetch_add(1, Relaxed);
        f();
    });
    eprintln!(
        "explored {} executions (preemption bound {bound:?})",
        RUNS.load(Relaxed)
    );
}

/// (a) S06/S43: two threads report the loss of the current link while the
/// driver runs: exactly one reconnect, one close, one wake-up per batch.
#[test]
fn two_losses_one_reconnect() {
    model(Some(4), || {
        let mut d = ModelDriver::connected(config());
        let g = d.machine.generation();
        let reporters: Vec<_> = (0..2)
            .map(|_| {
                let shared = d.shared.clone();
                thread::spawn(move || shared.report(g, LOST))
            })
            .collect();
        while d.machine.generation() == g {
            d.wait();
            d.step();
        }
        let reports: Vec<Report> = reporters.into_iter().map(|t| t.join().unwrap()).collect();
        d.step();
        assert!(reports.contains(&Report::Queued), "{reports:?}");
        assert_eq!(d.log, [Act::Close(g), Act::Open(g.next())]);
        assert_eq!(d.machine.kind(), StateKind::Connecting);
        assert_eq!(d.shared.snapshot(), (g.next(), StateKind::Connecting));
        d.assert_one_wakeup_per_batch();
    });
}

/// (b) S05: a loss report is queued, then the link resumes, then the queued
/// report is processed (or both are taken at once): no reconnect.
#[test]
fn loss_then_resume_does_not_reconnect() {
    model(None, || {
        let mut d = ModelDriver::connected(config_with_grace());
        let g = d.machine.generation();
        let shared = d.shared.clone();
        let sdk = thread::spawn(move || {
            shared.report(g, LOST);
            shared.report(g, LinkEvent::Resumed)
        });
        // The resume is the SDK's last report: a batch holding it holds everything.
        loop {
            d.wait();
            if has_resumed(&d.step()) {
                break;
            }
        }
        assert_eq!(sdk.join().unwrap(), Report::Queued);
        d.step();
        assert_eq!(d.log, []);
        assert_eq!(d.machine.kind(), StateKind::Connected);
        assert_eq!(d.shared.snapshot(), (g, StateKind::Connected));
        d.assert_one_wakeup_per_batch();
    });
}

/// (c) S08: the old link's own loss report (fired by our close of it)
/// arrives while the driver is reconnecting, and again once it has
/// reconnected: both are dropped at the handle and nothing happens. The
/// link's I/O thread also sends an unsynchronised duplicate, which may reach
/// the machine and must be dropped there.
#[test]
fn old_link_reports_change_nothing() {
    model(Some(3), || {
        let mut d = ModelDriver::connected(config());
        let g = d.machine.generation();
        let shared = d.shared.clone();
        let io = thread::spawn(move || {
            shared.report(g, LOST);
            shared.report(g, LOST);
        });
        while d.machine.generation() == g {
            d.wait();
            d.step();
        }
        // Our close of link g makes its SDK fire an interrupt from its own thread.
        assert_eq!(d.log, [Act::Close(g), Act::Open(g.next())]);
        let shared = d.shared.clone();
        let hangup = thread::spawn(move || {
            let during = shared.report(g, LOST);
            while shared.snapshot() != (g.next(), StateKind::Connected) {
                thread::yield_now();
            }
            let after = shared.report(g, LOST);
            (during, after)
        });
        d.complete_open();
        assert_eq!(hangup.join().unwrap(), (Report::Stale, Report::Stale));
        io.join().unwrap();
        d.step();
        assert_eq!(d.log, [Act::Close(g), Act::Open(g.next())]);
        assert_eq!(d.shared.snapshot(), (g.next(), StateKind::Connected));
        d.assert_one_wakeup_per_batch();
    });
}

/// (d) S16: a genuine loss right after a resume is never lost. The link
/// lingers after a first loss; the SDK resumes it and loses it again. The
/// driver waits for work until it has taken that loss: if the loss's
/// wake-up were lost, loom would report a deadlock.
#[test]
fn loss_after_resume_wakes_the_driver() {
    model(None, || {
        let mut d = ModelDriver::connected(config_with_grace());
        let g = d.machine.generation();
        d.shared.report(g, LOST);
        d.step();
        assert_eq!(d.machine.kind(), StateKind::BackingOff);
        let shared = d.shared.clone();
        let sdk = thread::spawn(move || {
            shared.report(g, LinkEvent::Resumed);
            shared.report(g, LOST);
        });
        // The loss is the SDK's last report.
        loop {
            d.wait();
            if has_lost(&d.step()) {
                break;
            }
        }
        sdk.join().unwrap();
        assert_eq!(d.log, [], "the link lingers: no close, no open yet");
        assert_eq!(d.shared.snapshot(), (g, StateKind::BackingOff));
        d.assert_one_wakeup_per_batch();
    });
}

/// (d') The new link's loss right after a reconnect is never lost, even
/// when the mailbox still holds the old link's events (the generation in
/// the mailbox moves on without a second wake-up) and the old link keeps
/// reporting.
#[test]
fn new_link_loss_after_reconnect_wakes_the_driver() {
    model(Some(3), || {
        let mut d = ModelDriver::connected(config());
        let g1 = d.machine.generation();
        let g2 = g1.next();
        let shared = d.shared.clone();
        let old = thread::spawn(move || {
            shared.report(g1, LOST);
            shared.report(g1, LOST);
        });
        while d.machine.generation() == g1 {
            d.wait();
            d.step();
        }
        d.complete_open();
        // Link g2's reporter exists once its open completed.
        let shared = d.shared.clone();
        let new = thread::spawn(move || shared.report(g2, LOST));
        while d.machine.generation() == g2 {
            d.wait();
            d.step();
        }
        assert_eq!(new.join().unwrap(), Report::Queued);
        old.join().unwrap();
        d.step();
        // Link g2 dropped before the stable period: backoff, no third open.
        assert_eq!(
            d.log,
            [Act::Close(g1), Act::Open(g2), Act::Close(g2)],
            "{:?}",
            d.log
        );
        assert_eq!(d.shared.snapshot(), (g2.next(), StateKind::BackingOff));
        d.assert_one_wakeup_per_batch();
    });
}

/// (e) S41: a loss reported after `shutdown` was requested (here by the
/// same thread, e.g. the interrupt our own disconnect causes) never opens a
/// link, even when the driver wakes on its own (a timer) in between.
#[test]
fn loss_after_shutdown_never_opens() {
    model(None, || {
        let mut d = ModelDriver::connected(config());
        let g = d.machine.generation();
        let shared = d.shared.clone();
        let user = thread::spawn(move || {
            shared.command(false, true);
            shared.report(g, LOST)
        });
        // A timer wake-up: `driver.rs` takes work then as well.
        d.step();
        while d.machine.kind() != StateKind::Closed {
            d.wait();
            d.step();
        }
        user.join().unwrap();
        d.step();
        assert_eq!(d.log, [Act::Shutdown, Act::Close(g)], "{:?}", d.log);
        assert_eq!(d.shared.snapshot(), (g.next(), StateKind::Closed));
    });
}

/// (e') S41: shutdown and a reconnect request race a genuine loss: once the
/// driver has seen the shutdown nothing opens, every link opened is closed,
/// and the engine ends closed.
#[test]
fn shutdown_racing_a_loss() {
    model(Some(3), || {
        let mut d = ModelDriver::connected(config());
        let g = d.machine.generation();
        let shared = d.shared.clone();
        let user = thread::spawn(move || {
            shared.command(false, true);
            shared.command(true, false);
        });
        let shared = d.shared.clone();
        let link = thread::spawn(move || shared.report(g, LOST));
        d.step();
        while d.machine.kind() != StateKind::Closed {
            d.wait();
            d.step();
        }
        user.join().unwrap();
        link.join().unwrap();
        d.step();
        let shutdown_at = d.log.iter().position(|a| *a == Act::Shutdown).unwrap();
        assert!(
            !d.log[shutdown_at..]
                .iter()
                .any(|a| matches!(a, Act::Open(_))),
            "{:?}",
            d.log
        );
        let opens = d.opens();
        assert!(opens.len() <= 1, "{:?}", d.log);
        let mut closes = d.closes();
        closes.sort();
        let mut expected = vec![g];
        expected.extend(opens);
        assert_eq!(closes, expected, "every link is closed once: {:?}", d.log);
        assert_eq!(d.machine.kind(), StateKind::Closed);
    });
}
