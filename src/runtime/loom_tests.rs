//! Loom models of the handle's shared state and the driver's step.
//!
//! Each model runs the real [`Shared`], the real [`Step`] (the code the
//! tokio driver runs for every wake-up: which inputs, in which order, the
//! rounds of reports and actions, the shutdown's completion) and a real
//! [`Machine`]. Only the execution of `Open` and `Close` is the model's
//! own: an open completes when the model says so, a close at once. The
//! driver blocks on [`Shared::poll_work`] with `loom::future::block_on`, so
//! a lost wake-up shows up as a loom deadlock. Time is the model's clock:
//! fixed, or moved by a thread of its own so that timers fire inside
//! `Machine::poll` at any point of a step.
//!
//! Run them (about a minute on two cores; each model sets its own
//! preemption bound, which `LOOM_MAX_PREEMPTIONS` can raise, see [`model`]):
//!
//! ```text
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test --lib --release --features tokio runtime::loom_tests -- --test-threads=1
//! ```

use std::future::poll_fn;
use std::time::{Duration, Instant};

use loom::future::block_on;
use loom::sync::Arc;
use loom::sync::atomic::{AtomicU64, Ordering};
use loom::thread;

use crate::loom::model;
use crate::loom::mutant::{self, Mutant};
use crate::machine::{
    Config, ErrorKind, Generation, Input, Machine, Output, ProbeOutcome, StateKind,
};
use crate::runtime::shared::{Batch, LinkEvent, Report, Shared};
use crate::runtime::step::{Effects, Step, Work};

const LOST: LinkEvent = LinkEvent::Lost(ErrorKind::Transient);

/// What the model driver did, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    Open(Generation),
    Close(Generation),
    /// A probe was sent.
    Probe(u64),
    /// A link that resumed without its session is restored.
    Restore(Generation),
    /// The machine was fed `Shutdown`.
    Shutdown,
}

/// The model's time: fixed, or moved forward by another thread.
#[derive(Clone)]
enum Clock {
    Fixed(Instant),
    Moving {
        base: Instant,
        /// Milliseconds since `base`; the clock thread stores, the step loads.
        ms: Arc<AtomicU64>,
    },
}

impl Clock {
    fn now(&self) -> Instant {
        match self {
            Clock::Fixed(t) => *t,
            Clock::Moving { base, ms } => *base + Duration::from_millis(ms.load(Ordering::Acquire)),
        }
    }
}

/// The model's side of [`Effects`]: it records instead of doing I/O.
struct ModelIo {
    shared: Arc<Shared>,
    clock: Clock,
    log: Vec<Act>,
    opening: Option<Generation>,
    link: Option<Generation>,
    /// The probe in flight (answered by the model driver when it says so).
    probing: Option<u64>,
}

impl Effects for ModelIo {
    fn now(&self) -> Instant {
        self.clock.now()
    }

    fn publish(&mut self, machine: &Machine) {
        self.shared.publish(machine.generation(), machine.kind());
    }

    fn report(&mut self, _machine: &Machine, _output: Output) {}

    fn notify(&mut self) {}

    fn stale_input(&mut self) {}

    fn idle(&self) -> bool {
        self.opening.is_none() && self.link.is_none()
    }
}

impl ModelIo {
    fn execute(&mut self, output: Output) {
        match output {
            Output::Open { generation, .. } => {
                assert!(
                    self.opening.is_none() && self.link.is_none(),
                    "S17: one attempt at a time: {:?}",
                    self.log
                );
                self.log.push(Act::Open(generation));
                self.opening = Some(generation);
            }
            Output::Restore { generation } => self.log.push(Act::Restore(generation)),
            Output::Close { generation, .. } => {
                self.log.push(Act::Close(generation));
                if self.opening == Some(generation) {
                    self.opening = None;
                }
                if self.link == Some(generation) {
                    self.link = None;
                }
            }
            // As `driver.rs`: a new probe replaces the one in flight.
            Output::Probe { probe, .. } => {
                self.log.push(Act::Probe(probe));
                self.probing = Some(probe);
            }
            Output::StateChanged { .. } | Output::LivenessLost { .. } | Output::GaveUp { .. } => {
                unreachable!("the step reports these through `Effects::report`")
            }
        }
    }
}

/// `driver.rs` minus tokio, around the shared [`Step`].
struct ModelDriver {
    step: Step,
    io: ModelIo,
    /// Batches taken that held an event that wakes the driver.
    waking_batches: u64,
}

impl ModelDriver {
    /// A driver whose link 1 is up, then time moves past the stable period
    /// so that a loss starts a fresh outage (immediate first retry).
    fn connected(config: Config) -> Self {
        Self::connected_on(config, |t0| Clock::Fixed(t0 + Duration::from_secs(3600)))
    }

    /// Like [`ModelDriver::connected`], with the clock `clock` makes of the
    /// connect time once link 1 is up.
    fn connected_on(config: Config, clock: impl FnOnce(Instant) -> Clock) -> Self {
        let t0 = Instant::now();
        let machine = Machine::new(config);
        let shared = Arc::new(Shared::new(machine.generation(), machine.kind()));
        let mut d = Self {
            step: Step::new(machine),
            io: ModelIo {
                shared,
                clock: Clock::Fixed(t0),
                log: Vec::new(),
                opening: None,
                link: None,
                probing: None,
            },
            waking_batches: 0,
        };
        d.feed(Input::Start);
        d.complete_open();
        d.io.clock = clock(t0);
        d.io.log.clear();
        assert_eq!(d.machine().kind(), StateKind::Connected);
        d
    }

    fn machine(&self) -> &Machine {
        self.step.machine()
    }

    fn shared(&self) -> Arc<Shared> {
        self.io.shared.clone()
    }

    /// Blocks until `Shared` says there is work; the reporter must wake us.
    fn wait(&self) {
        block_on(poll_fn(|cx| self.io.shared.poll_work(cx)));
    }

    /// One wake-up of `driver.rs`'s `take_work`.
    fn step(&mut self) -> Batch {
        let work = Work::take(&self.io.shared);
        if is_waking(&work.batch) {
            self.waking_batches += 1;
        }
        for input in work.inputs() {
            if input == Input::Shutdown {
                self.io.log.push(Act::Shutdown);
            }
            self.feed(input);
        }
        work.batch
    }

    /// A timer wake-up of `driver.rs`: the work first, then `Timeout`.
    fn timer(&mut self) {
        self.step();
        self.feed(Input::Timeout);
    }

    /// The pending open succeeds.
    fn complete_open(&mut self) {
        let generation = self.io.opening.take().expect("an open is running");
        self.io.link = Some(generation);
        self.feed(Input::AttemptSucceeded { generation });
    }

    /// The probe in flight answers (`driver.rs` feeds it as its own wake-up).
    fn answer_probe(&mut self, outcome: ProbeOutcome) {
        if let Some(probe) = self.io.probing.take() {
            self.feed(Input::Probed { probe, outcome });
        }
    }

    /// `driver.rs`'s `feed`: the step's rounds, each round's actions run.
    fn feed(&mut self, input: Input) {
        let mut actions = self.step.feed(input, &mut self.io);
        loop {
            for action in actions.drain(..) {
                self.io.execute(action);
            }
            match self.step.settle(&mut self.io) {
                Some(next) => {
                    self.step.recycle(actions);
                    actions = next;
                }
                None => break,
            }
        }
        self.step.recycle(actions);
    }

    fn opens(&self) -> Vec<Generation> {
        self.io
            .log
            .iter()
            .filter_map(|a| match a {
                Act::Open(g) => Some(*g),
                _ => None,
            })
            .collect()
    }

    fn closes(&self) -> Vec<Generation> {
        self.io
            .log
            .iter()
            .filter_map(|a| match a {
                Act::Close(g) => Some(*g),
                _ => None,
            })
            .collect()
    }

    /// Steps on every wake-up until the engine is closed.
    fn run_until_closed(&mut self) {
        while self.machine().kind() != StateKind::Closed {
            self.wait();
            self.step();
        }
    }

    /// S41 and a clean end: nothing opened after the shutdown was fed,
    /// every link opened (`first`, then each open) closed once, closed.
    fn assert_clean_shutdown(&self, first: Generation) {
        let log = &self.io.log;
        let shutdown_at = log.iter().position(|a| *a == Act::Shutdown).unwrap();
        assert!(
            !log[shutdown_at..].iter().any(|a| matches!(a, Act::Open(_))),
            "S41: opened after shutdown: {log:?}"
        );
        let mut closes = self.closes();
        closes.sort();
        let mut opened = vec![first];
        opened.extend(self.opens());
        assert_eq!(closes, opened, "every link is closed once: {log:?}");
        assert_eq!(self.machine().kind(), StateKind::Closed);
        self.assert_published();
    }

    /// The handle shows what the machine is.
    fn assert_published(&self) {
        assert_eq!(
            self.io.shared.snapshot(),
            (self.machine().generation(), self.machine().kind()),
            "the snapshot lags the machine"
        );
    }

    /// One wake-up per batch: every report that woke the driver is matched
    /// by exactly one batch taken (call after a final drain).
    fn assert_one_wakeup_per_batch(&self) {
        let wakeups = self.io.shared.counters.wakeups.load(Ordering::Relaxed);
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
        .no_liveness_timeout()
        .build()
        .unwrap()
}

/// Without the retry budget: a link lost before the stable period always
/// waits a backoff delay (the models about that wait use it).
fn config_without_budget() -> Config {
    Config::builder()
        .seed(1)
        .no_liveness_timeout()
        .no_retry_budget()
        .build()
        .unwrap()
}

fn config_with_grace() -> Config {
    Config::builder()
        .seed(1)
        .no_liveness_timeout()
        .resume_grace(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// (a) S06/S43: two threads report the loss of the current link while the
/// driver runs: exactly one reconnect, one close, one wake-up per batch.
#[test]
fn two_losses_one_reconnect() {
    model(Some(4), || {
        let mut d = ModelDriver::connected(config());
        let g = d.machine().generation();
        let reporters: Vec<_> = (0..2)
            .map(|_| {
                let shared = d.shared();
                thread::spawn(move || shared.report(g, LOST))
            })
            .collect();
        while d.machine().generation() == g {
            d.wait();
            d.step();
        }
        let reports: Vec<Report> = reporters.into_iter().map(|t| t.join().unwrap()).collect();
        d.step();
        assert!(reports.contains(&Report::Queued), "{reports:?}");
        assert_eq!(d.io.log, [Act::Close(g), Act::Open(g.next())]);
        assert_eq!(d.machine().kind(), StateKind::Connecting);
        assert_eq!(d.io.shared.snapshot(), (g.next(), StateKind::Connecting));
        d.assert_one_wakeup_per_batch();
    });
}

/// An SDK thread reports the link lost, then resumed with `resume`; the
/// driver takes the reports in any split. The link stays, with no open and
/// no close, and is restored once when `restores`.
fn loss_then_resume(resume: LinkEvent, restores: bool) {
    model(None, move || {
        let mut d = ModelDriver::connected(config_with_grace());
        let g = d.machine().generation();
        let shared = d.shared();
        let sdk = thread::spawn(move || {
            shared.report(g, LOST);
            shared.report(g, resume)
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
        let expected = if restores {
            vec![Act::Restore(g)]
        } else {
            vec![]
        };
        assert_eq!(d.io.log, expected);
        assert_eq!(d.machine().kind(), StateKind::Connected);
        assert_eq!(d.io.shared.snapshot(), (g, StateKind::Connected));
        d.assert_one_wakeup_per_batch();
    });
}

/// (b) S05: a loss report is queued, then the link resumes, then the queued
/// report is processed (or both are taken at once): no reconnect.
#[test]
fn loss_then_resume_does_not_reconnect() {
    loss_then_resume(LinkEvent::Resumed, false);
}

/// A resume without its session is restored once, whether the driver takes
/// the loss before it or both in one batch (where the resume alone would be
/// ignored by a connected machine, and nothing restored).
#[test]
fn resume_without_session_is_restored_once() {
    loss_then_resume(LinkEvent::ResumedWithoutSession, true);
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
        let g = d.machine().generation();
        let shared = d.shared();
        let io = thread::spawn(move || {
            shared.report(g, LOST);
            shared.report(g, LOST);
        });
        while d.machine().generation() == g {
            d.wait();
            d.step();
        }
        // Our close of link g makes its SDK fire an interrupt from its own thread.
        assert_eq!(d.io.log, [Act::Close(g), Act::Open(g.next())]);
        let shared = d.shared();
        let hangup = thread::spawn(move || {
            let during = shared.report(g, LOST);
            while shared.snapshot() != (g.next(), StateKind::Connected) {
                thread::yield_now();
            }
            let after = shared.report(g, LOST);
            (during, after)
        });
        d.complete_open();
        assert_eq!(
            hangup.join().unwrap(),
            (Report::Stale, Report::Stale),
            "S08: an old link's report was not dropped at the handle"
        );
        io.join().unwrap();
        d.step();
        assert_eq!(d.io.log, [Act::Close(g), Act::Open(g.next())]);
        assert_eq!(d.io.shared.snapshot(), (g.next(), StateKind::Connected));
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
        let g = d.machine().generation();
        d.io.shared.report(g, LOST);
        d.step();
        assert_eq!(d.machine().kind(), StateKind::BackingOff);
        let shared = d.shared();
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
        assert_eq!(d.io.log, [], "the link lingers: no close, no open yet");
        assert_eq!(d.io.shared.snapshot(), (g, StateKind::BackingOff));
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
        let mut d = ModelDriver::connected(config_without_budget());
        let g1 = d.machine().generation();
        let g2 = g1.next();
        let shared = d.shared();
        let old = thread::spawn(move || {
            shared.report(g1, LOST);
            shared.report(g1, LOST);
        });
        while d.machine().generation() == g1 {
            d.wait();
            d.step();
        }
        d.complete_open();
        // Link g2's reporter exists once its open completed.
        let shared = d.shared();
        let new = thread::spawn(move || shared.report(g2, LOST));
        while d.machine().generation() == g2 {
            d.wait();
            d.step();
        }
        assert_eq!(new.join().unwrap(), Report::Queued);
        old.join().unwrap();
        d.step();
        // Link g2 dropped before the stable period: backoff, no third open.
        assert_eq!(
            d.io.log,
            [Act::Close(g1), Act::Open(g2), Act::Close(g2)],
            "{:?}",
            d.io.log
        );
        assert_eq!(d.io.shared.snapshot(), (g2.next(), StateKind::BackingOff));
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
        let g = d.machine().generation();
        let shared = d.shared();
        let user = thread::spawn(move || {
            shared.command(false, true);
            shared.report(g, LOST)
        });
        // A timer wake-up: `driver.rs` takes work then as well.
        d.step();
        d.run_until_closed();
        user.join().unwrap();
        d.step();
        assert_eq!(
            d.io.log,
            [Act::Shutdown, Act::Close(g)],
            "S41: a loss after shutdown changed what the driver did"
        );
        assert_eq!(d.io.shared.snapshot(), (g.next(), StateKind::Closed));
    });
}

/// (e') S41: shutdown and a reconnect request race a genuine loss: once the
/// driver has seen the shutdown nothing opens, every link opened is closed,
/// and the engine ends closed.
#[test]
fn shutdown_racing_a_loss() {
    model(Some(3), || {
        let mut d = ModelDriver::connected(config());
        let g = d.machine().generation();
        let shared = d.shared();
        let user = thread::spawn(move || {
            shared.command(false, true);
            shared.command(true, false);
        });
        let shared = d.shared();
        let link = thread::spawn(move || shared.report(g, LOST));
        d.step();
        d.run_until_closed();
        user.join().unwrap();
        link.join().unwrap();
        d.step();
        assert!(d.opens().len() <= 1, "{:?}", d.io.log);
        d.assert_clean_shutdown(g);
    });
}

/// (f) Activity and flow control mixed with a loss, from two threads:
/// activity never wakes the driver, blocked/unblocked never open or close
/// anything, and the loss still yields exactly one reconnect.
#[test]
fn activity_and_flow_mixed_with_a_loss() {
    model(Some(2), || {
        let mut d = ModelDriver::connected(config());
        let g = d.machine().generation();
        let shared = d.shared();
        let flow = thread::spawn(move || {
            shared.report(g, LinkEvent::Activity);
            shared.report(g, LinkEvent::Blocked);
            shared.report(g, LinkEvent::Unblocked);
        });
        let shared = d.shared();
        let link = thread::spawn(move || shared.report(g, LOST));
        while d.machine().generation() == g {
            d.wait();
            d.step();
        }
        flow.join().unwrap();
        assert_eq!(link.join().unwrap(), Report::Queued);
        d.step();
        assert_eq!(d.io.log, [Act::Close(g), Act::Open(g.next())]);
        assert_eq!(d.machine().kind(), StateKind::Connecting);
        d.assert_published();
        d.assert_one_wakeup_per_batch();
    });
}

/// (g) S17: the backoff timer fires inside `Machine::poll` while a step
/// runs (the clock moves on another thread) and races a reconnect request:
/// whichever comes first opens the next link, the other opens nothing.
#[test]
fn backoff_timer_racing_a_reconnect_request() {
    model(None, || {
        let ms = Arc::new(AtomicU64::new(0));
        let clock_ms = ms.clone();
        let mut d = ModelDriver::connected_on(config_without_budget(), |t0| Clock::Moving {
            base: t0,
            ms: clock_ms,
        });
        // Lost before the stable period: the next attempt waits a backoff.
        let g = d.machine().generation();
        d.io.shared.report(g, LOST);
        d.step();
        assert_eq!(d.machine().kind(), StateKind::BackingOff);
        assert_eq!(d.io.log, [Act::Close(g)]);
        let due = d.machine().poll_timeout().expect("a backoff deadline");
        let jump = u64::try_from((due - d.io.clock.now()).as_millis()).unwrap() + 1;
        let clock = thread::spawn(move || ms.store(jump, Ordering::Release));
        let shared = d.shared();
        let user = thread::spawn(move || shared.command(true, false));
        // The driver wakes on its timer or on the request, as `driver.rs`.
        while d.opens().is_empty() {
            d.timer();
            thread::yield_now();
        }
        clock.join().unwrap();
        user.join().unwrap();
        d.timer();
        d.step();
        assert_eq!(
            d.io.log,
            [Act::Close(g), Act::Open(g.next())],
            "S17: exactly one attempt"
        );
        assert_eq!(d.machine().kind(), StateKind::Connecting);
        d.assert_published();
    });
}

/// A probe's answer (the driver's own wake-up) races the user's reconnect
/// request and shutdown from another thread: whichever comes first opens
/// at most one link, the answer of a probe the machine moved past opens
/// nothing, nothing opens after the shutdown, and the engine ends closed.
#[test]
fn probe_answer_racing_a_reconnect_request_and_a_shutdown() {
    model(Some(2), || {
        let ms = Arc::new(AtomicU64::new(0));
        let clock_ms = ms.clone();
        let config = Config::builder()
            .seed(1)
            .no_liveness_timeout()
            .no_retry_budget()
            .probe_interval(Duration::from_millis(500))
            .build()
            .unwrap();
        let mut d = ModelDriver::connected_on(config, |t0| Clock::Moving {
            base: t0,
            ms: clock_ms,
        });
        // Lost early, no budget: a backoff wait; at its end, a probe.
        let g = d.machine().generation();
        d.io.shared.report(g, LOST);
        d.step();
        let due = d.machine().poll_timeout().expect("a backoff deadline");
        let jump = u64::try_from((due - d.io.clock.now()).as_millis()).unwrap() + 1;
        ms.store(jump, Ordering::Release);
        d.timer();
        assert_eq!(d.io.log, [Act::Close(g), Act::Probe(1)]);
        let shared = d.shared();
        let user = thread::spawn(move || {
            shared.command(true, false);
            shared.command(false, true);
        });
        d.answer_probe(ProbeOutcome::Reachable);
        d.run_until_closed();
        user.join().unwrap();
        d.step();
        let opens = d.opens();
        assert!(opens.len() <= 1, "S17: one attempt: {:?}", d.io.log);
        d.assert_clean_shutdown(g);
    });
}

/// (h) An open completes while the new link reports its loss as soon as
/// it is up and the user shuts down: nothing opens after the shutdown,
/// every link opened is closed once, and the engine ends closed.
#[test]
fn open_completing_while_reports_and_shutdown_arrive() {
    model(Some(2), || {
        let mut d = ModelDriver::connected(config_without_budget());
        let g1 = d.machine().generation();
        let g2 = g1.next();
        d.io.shared.report(g1, LOST);
        d.step();
        assert_eq!(d.io.log, [Act::Close(g1), Act::Open(g2)]);
        let shared = d.shared();
        let user = thread::spawn(move || shared.command(false, true));
        let shared = d.shared();
        let new = thread::spawn(move || {
            loop {
                match shared.snapshot() {
                    (g, StateKind::Connected) if g == g2 => return Some(shared.report(g2, LOST)),
                    (_, kind) if kind.is_shutting_down() || kind == StateKind::Closed => {
                        return None;
                    }
                    _ => thread::yield_now(),
                }
            }
        });
        d.complete_open();
        d.run_until_closed();
        user.join().unwrap();
        new.join().unwrap();
        d.step();
        d.assert_clean_shutdown(g1);
    });
}

/// The models catch a handle that queues stale reports.
#[test]
#[should_panic(expected = "S08")]
fn mutant_queueing_stale_reports_is_caught() {
    let _mutant = mutant::activate(Mutant::StaleReports);
    old_link_reports_change_nothing();
}

/// The models catch a driver that takes commands before reports.
#[test]
#[should_panic(expected = "S41")]
fn mutant_taking_commands_first_is_caught() {
    let _mutant = mutant::activate(Mutant::CommandsFirst);
    loss_after_shutdown_never_opens();
}
