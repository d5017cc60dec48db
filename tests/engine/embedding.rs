//! Embedding a callback SDK (docs/embedding.md, "Embedding a callback SDK"):
//! epochs, connect-once, adoption, and the payloads of a resume without
//! session, on the engine with paused time.
//!
//! Under `start_paused`, the runtime moves the clock only when every task
//! is idle, so `sleep(d)` returns after everything that was ready (the
//! driver's work included) has run: "nothing happened during `d`" is a
//! deterministic statement here, not a hope.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redial::machine::{Config, ConfigBuilder, ErrorKind, FailCause, Generation, Reason, StateKind};
use redial::runtime::{
    Classify, Engine, Event, FirstConnectError, Handle, LinkReporter, OpenContext, Prepared,
    Report, Snapshot, Stats, Transport,
};
use redial::testing::{LogEntry, MemoryError, MemoryTransport, Plan};
use tokio::sync::watch;

use ErrorKind::Transient;
use StateKind::{BackingOff, Connected, Idle};

/// A fixed seed, and the watchdog off: the in-memory links send no
/// heartbeats, and these tests are about reports, not liveness.
fn builder() -> ConfigBuilder {
    Config::builder().seed(18).no_liveness_timeout()
}

fn config() -> Config {
    builder().build().expect("valid config")
}

/// Longer than anything the engine could still do by itself here (a
/// backoff wait, a retry): nothing may happen during it.
const QUIET: Duration = Duration::from_secs(600);

async fn wait_until(handle: &Handle, what: &str, f: impl FnMut(&Snapshot) -> bool) -> Snapshot {
    let mut rx = handle.watch();
    let seen = tokio::time::timeout(QUIET, rx.wait_for(f))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .map(|s| *s);
    seen.unwrap_or_else(|_| panic!("the driver stopped before {what}"))
}

async fn connected_on(handle: &Handle, generation: Generation) -> Snapshot {
    wait_until(handle, "the link to be up", |s| {
        s.state == Connected && s.generation == generation
    })
    .await
}

// ---- (a) epochs -----------------------------------------------------------

/// What a client-wide SDK callback that names its connection by a bare
/// number reaches: whichever engine is current when it runs. A client that
/// rebuilds its engine (`recover_connection()`) swaps the handle in here.
struct CurrentEngine(Mutex<Handle>);

impl CurrentEngine {
    fn set(&self, handle: Handle) {
        *self.0.lock().unwrap() = handle;
    }

    /// The SDK's "connection interrupted" for the connection built as
    /// `generation`.
    fn interrupted(&self, generation: u64) -> Report {
        let handle = self.0.lock().unwrap().clone();
        handle.report_lost(Generation(generation), Transient)
    }
}

/// The old engine's link, the router's handle swapped to a new engine
/// built with `epoch` (or with the default first generation), and the old
/// link's late interrupt delivered by its bare number.
struct Rebuilt {
    old_link: Generation,
    old_final: Generation,
    engine: Engine<MemoryTransport>,
    handle: Handle,
    control: redial::testing::MemoryControl,
    /// The new engine's stats just before the late report.
    before: Stats,
    late: Report,
}

async fn rebuild_then_late_interrupt(epoch: bool) -> Rebuilt {
    let old = Engine::spawn(config(), MemoryTransport::new());
    let old_handle = old.handle();
    let old_link = old_handle.generation();
    connected_on(&old_handle, old_link).await;
    let route = CurrentEngine(Mutex::new(old_handle.clone()));

    // recover_connection(): shut the old engine down, build its successor.
    old.shutdown().await;
    let old_final = old_handle.generation();
    let config = if epoch {
        builder().first_generation(old_final.next())
    } else {
        builder()
    }
    .build()
    .expect("valid config");
    let transport = MemoryTransport::new();
    let control = transport.control();
    let engine = Engine::spawn(config, transport);
    let handle = engine.handle();
    let first = if epoch {
        old_final.next()
    } else {
        Generation(1)
    };
    connected_on(&handle, first).await;
    route.set(handle.clone());

    // The old link's interrupt, queued in the SDK before the rebuild, runs now.
    let before = handle.stats();
    let late = route.interrupted(old_link.0);
    Rebuilt {
        old_link,
        old_final,
        engine,
        handle,
        control,
        before,
        late,
    }
}

/// With `first_generation(old.generation().next())`, every generation of
/// the old engine is below the new one's: the late report is stale and the
/// new engine keeps its link, its generation and its attempt count.
#[tokio::test(start_paused = true)]
async fn a_late_report_routed_by_number_to_a_rebuilt_engine_is_stale_with_an_epoch() {
    let r = rebuild_then_late_interrupt(true).await;
    let first = r.old_final.next();
    assert!(r.old_link < r.old_final, "the old engine retired its link");
    assert_eq!(r.handle.generation(), first);
    let before = r.before;
    assert_eq!(before.attempts, 1);

    assert_eq!(
        r.late,
        Report::Stale,
        "the old link's report names an old generation"
    );
    tokio::time::sleep(QUIET).await;
    assert_eq!(r.handle.state(), Connected);
    assert_eq!(r.handle.generation(), first, "same link");
    let after = r.handle.stats();
    assert_eq!(after.attempts, before.attempts, "no extra attempt");
    assert_eq!(after.outages, 0);
    assert_eq!(after.stale_reports, before.stale_reports + 1);
    assert_eq!(r.control.connect_calls(), 1);
    assert_eq!(r.control.close_calls(), 0);
    r.engine.shutdown().await;
}

/// The counter-case: both engines start at generation 1, so the same late
/// report names the new engine's healthy link and tears it down. The epoch,
/// not the timing, is what makes the report inert.
#[tokio::test(start_paused = true)]
async fn without_an_epoch_the_same_late_report_tears_down_the_new_link() {
    let r = rebuild_then_late_interrupt(false).await;
    assert_eq!(r.old_link, Generation(1));
    assert_ne!(
        r.late,
        Report::Stale,
        "generation 1 is the new engine's live link"
    );

    connected_on(&r.handle, Generation(2)).await;
    let stats = r.handle.stats();
    assert_eq!(
        stats.attempts,
        r.before.attempts + 1,
        "the healthy link was replaced"
    );
    assert_eq!(stats.outages, 1);
    // Lost before the stable period, the link counts as a failed attempt:
    // its replacement is attempt 2 of the same outage.
    assert_eq!(
        r.control.log(),
        [
            LogEntry::Open(Generation(1), 1),
            LogEntry::Up(Generation(1)),
            LogEntry::Close(Generation(1)),
            LogEntry::Open(Generation(2), 2),
            LogEntry::Up(Generation(2)),
        ]
    );
    r.engine.shutdown().await;
}

// ---- (b) connect once ------------------------------------------------------

/// A failing first connect is returned to the caller, once, and nothing is
/// left running that could retry it.
#[tokio::test(start_paused = true)]
async fn connect_once_returns_the_first_failure_and_starts_nothing() {
    let transport = MemoryTransport::new();
    let control = transport.control();
    control.plan([Plan::Fail(Transient)]);
    let result = Engine::connect_once(config(), transport).await;
    assert!(
        matches!(
            &result,
            Err(FirstConnectError::Failed(e)) if **e == MemoryError { kind: Transient }
        ),
        "the transport's error reaches the caller"
    );
    tokio::time::sleep(QUIET).await;
    assert_eq!(control.connect_calls(), 1, "no retry");
    assert_eq!(control.log(), [LogEntry::Open(Generation(1), 0)]);
    assert_eq!(control.open_links(), 0);

    // The same through `prepare`, keeping a handle: the engine never left `idle`.
    let transport = MemoryTransport::new();
    let control = transport.control();
    control.plan([Plan::Fail(ErrorKind::Permanent)]);
    let prepared = Engine::prepare(config(), transport);
    let handle = prepared.handle();
    let mut events = prepared.handle().events();
    let result = prepared.connect_once().await;
    assert!(matches!(
        &result,
        Err(FirstConnectError::Failed(e)) if e.kind == ErrorKind::Permanent
    ));
    // Subscribers see the first attempt too, as attempt 0.
    assert!(matches!(
        events.try_recv(),
        Some(Ok(Event::AttemptStarted { attempt: 0, .. }))
    ));
    assert!(matches!(
        events.try_recv(),
        Some(Ok(Event::AttemptFailed {
            attempt: 0,
            kind: ErrorKind::Permanent,
            ..
        }))
    ));
    tokio::time::sleep(QUIET).await;
    assert_eq!(handle.state(), Idle);
    assert_eq!(handle.stats().attempts, 0);
    assert_eq!(control.connect_calls(), 1);
}

/// A first connect that hangs is cut by the connect timeout and returned as
/// `TimedOut`; nothing retries it either.
#[tokio::test(start_paused = true)]
async fn connect_once_times_out_to_the_caller() {
    let transport = MemoryTransport::new();
    let control = transport.control();
    control.plan([Plan::Hang]);
    let config = builder()
        .connect_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    let result = Engine::connect_once(config, transport).await;
    let Err(FirstConnectError::TimedOut(timed_out)) = result else {
        panic!("expected a timeout");
    };
    assert_eq!(timed_out.after, Duration::from_secs(3));
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    tokio::time::sleep(QUIET).await;
    assert_eq!(control.connect_calls(), 1);
}

/// A successful first connect is adopted: attempt 0, not counted in
/// `stats().attempts`, and later losses are retried as usual (attempt 1).
#[tokio::test(start_paused = true)]
async fn connect_once_adopts_the_first_link_as_attempt_zero() {
    let transport = MemoryTransport::new();
    let control = transport.control();
    let engine = Engine::connect_once(config(), transport)
        .await
        .expect("the first connect succeeds");
    let handle = engine.handle();
    connected_on(&handle, Generation(1)).await;
    let stats = handle.stats();
    assert_eq!(
        stats.attempts, 0,
        "the first link was not an attempt of the engine"
    );
    assert_eq!(stats.connects, 1);
    assert_eq!(
        control.log(),
        [
            LogEntry::Open(Generation(1), 0),
            LogEntry::Up(Generation(1))
        ]
    );
    assert_eq!(
        engine.links().borrow().as_ref().map(|l| l.generation),
        Some(Generation(1))
    );

    // Once connected, a loss is the engine's business: one reconnect, attempt 1.
    control.sever();
    connected_on(&handle, Generation(2)).await;
    assert_eq!(
        control.log()[2..],
        [
            LogEntry::Close(Generation(1)),
            LogEntry::Open(Generation(2), 1),
            LogEntry::Up(Generation(2)),
        ]
    );
    assert_eq!(handle.stats().attempts, 1);
    engine.shutdown().await;
}

// ---- (c) adopting a link the application built ----------------------------

/// An SDK connection object the test builds itself: it takes its callbacks'
/// reporter when it is constructed.
#[derive(Debug, Clone)]
struct SdkLink {
    generation: Generation,
    callbacks: LinkReporter,
}

#[derive(Debug, thiserror::Error)]
#[error("the test transport refused")]
struct Refused;

impl Classify for Refused {
    fn kind(&self) -> ErrorKind {
        Transient
    }
}

/// Records what the engine asks of it; its opens succeed at once.
#[derive(Clone)]
struct Recorder {
    opens: Arc<Mutex<Vec<(Generation, u32)>>>,
    closes: Arc<Mutex<Vec<(Generation, Reason)>>>,
    restores: watch::Sender<Vec<Generation>>,
    /// What the next restores answer (`true`: restored).
    restore_ok: Arc<Mutex<bool>>,
}

impl Recorder {
    fn new() -> Self {
        Self {
            opens: Arc::default(),
            closes: Arc::default(),
            restores: watch::Sender::new(Vec::new()),
            restore_ok: Arc::new(Mutex::new(true)),
        }
    }
    fn opens(&self) -> Vec<(Generation, u32)> {
        self.opens.lock().unwrap().clone()
    }
    fn closes(&self) -> Vec<(Generation, Reason)> {
        self.closes.lock().unwrap().clone()
    }
}

impl Transport for Recorder {
    type Link = SdkLink;
    type Error = Refused;

    fn open(
        &self,
        ctx: OpenContext,
    ) -> impl Future<Output = Result<SdkLink, Refused>> + Send + 'static {
        self.opens
            .lock()
            .unwrap()
            .push((ctx.generation, ctx.attempt));
        std::future::ready(Ok(SdkLink {
            generation: ctx.generation,
            callbacks: ctx.reporter,
        }))
    }

    fn close(&self, link: SdkLink, reason: Reason) -> impl Future<Output = ()> + Send + 'static {
        self.closes.lock().unwrap().push((link.generation, reason));
        std::future::ready(())
    }

    fn restore(&self, link: SdkLink) -> impl Future<Output = Result<(), Refused>> + Send + 'static {
        self.restores.send_modify(|r| r.push(link.generation));
        let ok = *self.restore_ok.lock().unwrap();
        std::future::ready(if ok { Ok(()) } else { Err(Refused) })
    }
}

/// The test configuration with a 5 s resume grace, for links the SDK repairs.
fn with_grace() -> Config {
    builder()
        .resume_grace(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// The SDK reports the link lost; with a resume grace it lingers.
async fn lose_and_linger(handle: &Handle, link: &SdkLink) {
    link.callbacks.lost(Transient);
    wait_until(handle, "the link to linger", |s| s.state == BackingOff).await;
}

/// Adopts a link the test built for the prepared engine's first
/// generation, with callbacks bound to its reporter, and waits until the
/// engine is connected on it.
async fn adopt_connected(prepared: Prepared<Recorder>) -> (Engine<Recorder>, Handle, SdkLink) {
    let link = SdkLink {
        generation: prepared.generation(),
        callbacks: prepared.reporter(),
    };
    let engine = prepared.adopt(link.clone());
    let handle = engine.handle();
    connected_on(&handle, link.generation).await;
    (engine, handle, link)
}

/// `Prepared::adopt` of a link built outside the engine, then its loss:
/// exactly one reconnect, attempt 1, and the adopted link closed once, as
/// dead (not as a shutdown).
#[tokio::test(start_paused = true)]
async fn an_adopted_link_lost_is_replaced_once_by_attempt_one() {
    let transport = Recorder::new();
    let prepared = Engine::prepare(config(), transport.clone());
    let first = prepared.generation();
    assert_eq!(first, Generation(1));
    let link = SdkLink {
        generation: first,
        callbacks: prepared.reporter(),
    };
    let engine = prepared.adopt(link.clone());
    let handle = engine.handle();
    connected_on(&handle, first).await;
    assert!(
        transport.opens().is_empty(),
        "the engine opened nothing itself"
    );
    assert_eq!(handle.stats().attempts, 0);

    // The SDK's interrupt callback, bound when the link was built.
    assert_eq!(link.callbacks.lost(Transient), Report::Queued);
    connected_on(&handle, first.next()).await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        transport.opens(),
        [(first.next(), 1)],
        "one reconnect, attempt 1"
    );
    assert_eq!(transport.closes(), [(first, Reason::LinkLost)]);
    assert_eq!(handle.generation(), first.next());
    let stats = handle.stats();
    assert_eq!((stats.attempts, stats.connects, stats.outages), (1, 2, 1));
    // The adopted link's callbacks are stale from now on.
    assert_eq!(link.callbacks.lost(Transient), Report::Stale);

    engine.shutdown().await;
    assert_eq!(
        transport.closes(),
        [(first, Reason::LinkLost), (first.next(), Reason::Shutdown)]
    );
}

/// A loss the first link's callbacks report before `adopt` (the SDK fired
/// it while the client was still handing the connection over) is kept and
/// handled right after the adoption.
#[tokio::test(start_paused = true)]
async fn a_loss_reported_before_adopt_is_handled_after_it() {
    let transport = Recorder::new();
    let prepared = Engine::prepare(config(), transport.clone());
    let first = prepared.generation();
    let link = SdkLink {
        generation: first,
        callbacks: prepared.reporter(),
    };
    assert_eq!(link.callbacks.lost(Transient), Report::Queued);
    let engine = prepared.adopt(link);
    let handle = engine.handle();
    connected_on(&handle, first.next()).await;
    assert_eq!(transport.opens(), [(first.next(), 1)]);
    assert_eq!(transport.closes(), [(first, Reason::LinkLost)]);
    engine.shutdown().await;
}

// ---- payloads: a loss's error, a resume without session --------------------

/// With a resume grace: the loss's error reaches observers, a resume
/// without session is accepted on the same link and makes the engine call
/// `restore` once; a resume counts in `stats().resumes`, not `connects`.
#[tokio::test(start_paused = true)]
async fn a_resume_without_session_restores_the_same_link() {
    let transport = Recorder::new();
    let config = with_grace();
    let prepared = Engine::prepare(config, transport.clone());
    let mut events = prepared.handle().events();
    let link = SdkLink {
        generation: prepared.generation(),
        callbacks: prepared.reporter(),
    };
    let engine = prepared.adopt(link.clone());
    let handle = engine.handle();
    connected_on(&handle, link.generation).await;

    let error = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "peer reset");
    link.callbacks.lost_because(Transient, Arc::new(error));
    wait_until(&handle, "the link to linger", |s| s.state == BackingOff).await;
    let loss = loop {
        match events.recv().await.expect("events").expect("no lag") {
            Event::StateChanged {
                reason: Reason::LinkLost,
                error,
                ..
            } => break error,
            _ => continue,
        }
    };
    assert_eq!(loss.map(|e| e.to_string()).as_deref(), Some("peer reset"));

    link.callbacks.resumed_without_session();
    let mut restores = transport.restores.subscribe();
    restores.wait_for(|r| !r.is_empty()).await.unwrap();
    connected_on(&handle, link.generation).await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(*transport.restores.borrow(), [link.generation]);
    assert!(transport.opens().is_empty() && transport.closes().is_empty());
    let stats = handle.stats();
    assert_eq!((stats.attempts, stats.connects, stats.resumes), (0, 1, 1));

    // A resume without session reported while the link is up (its loss was
    // never reported) still means the broker forgot the session: the handle
    // feeds it as the loss it implies and the resume, so the same link is
    // restored again, still without a new connection.
    link.callbacks.resumed_without_session();
    restores.wait_for(|r| r.len() == 2).await.unwrap();
    tokio::time::sleep(QUIET).await;
    assert_eq!(*transport.restores.borrow(), [link.generation; 2]);
    assert_eq!(handle.state(), Connected);
    assert_eq!(handle.generation(), link.generation);
    assert!(transport.opens().is_empty());
    assert_eq!(handle.stats().resumes, 2);
    engine.shutdown().await;
}

/// A failed restore is the link's loss: the link is replaced.
#[tokio::test(start_paused = true)]
async fn a_failed_restore_replaces_the_link() {
    let transport = Recorder::new();
    *transport.restore_ok.lock().unwrap() = false;
    let config = with_grace();
    let (engine, handle, link) = adopt_connected(Engine::prepare(config, transport.clone())).await;

    lose_and_linger(&handle, &link).await;
    link.callbacks.resumed_without_session();
    connected_on(&handle, link.generation.next()).await;
    assert_eq!(*transport.restores.borrow(), [link.generation]);
    assert_eq!(transport.closes()[0].0, link.generation);
    assert_eq!(transport.opens().len(), 1);
    engine.shutdown().await;
}

/// A resume is an attempt of the outage: an adopted link (attempt 0) lost,
/// resumed by the SDK, then lost again before the stable period is
/// replaced by attempt 2.
#[tokio::test(start_paused = true)]
async fn a_resume_counts_as_an_attempt() {
    let transport = Recorder::new();
    let config = with_grace();
    let (engine, handle, link) = adopt_connected(Engine::prepare(config, transport.clone())).await;

    lose_and_linger(&handle, &link).await;
    link.callbacks.resumed();
    let resumed = connected_on(&handle, link.generation).await;
    assert_eq!(resumed.attempt, 1, "the resume was attempt 1");
    link.callbacks.lost(Transient);
    connected_on(&handle, link.generation.next()).await;
    assert_eq!(transport.opens(), [(link.generation.next(), 2)]);
    let stats = handle.stats();
    assert_eq!((stats.attempts, stats.resumes, stats.connects), (1, 1, 2));
    engine.shutdown().await;
}

// ---- counts: gave_up.attempts ----------------------------------------------

/// `GaveUp` says how many attempts the outage made; the adopted first link
/// is not one of them.
#[tokio::test(start_paused = true)]
async fn gave_up_counts_the_attempts_of_the_outage() {
    let transport = MemoryTransport::new();
    let control = transport.control();
    let config = builder().max_attempts(2).build().unwrap();
    let prepared = Engine::prepare(config, transport);
    let mut events = prepared.handle().events();
    let engine = prepared.connect_once().await.expect("first connect");
    let handle = engine.handle();
    connected_on(&handle, Generation(1)).await;

    control.set_default(Plan::Fail(Transient));
    control.sever();
    wait_until(&handle, "the give-up", |s| s.state == StateKind::Failed).await;
    let (cause, attempts) = loop {
        if let Event::GaveUp {
            cause, attempts, ..
        } = events.recv().await.expect("events").expect("no lag")
        {
            break (cause, attempts);
        }
    };
    assert_eq!((cause, attempts), (FailCause::RetriesExhausted, 2));
    assert_eq!(handle.stats().attempts, 2);
    assert_eq!(
        control.connect_calls(),
        3,
        "the first connect and two attempts"
    );
    engine.shutdown().await;
}
