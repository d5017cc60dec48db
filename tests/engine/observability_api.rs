//! The observability contract of docs/observability.md: the spans the
//! engine's tasks log in, with their fields, and (feature `metrics`) the
//! metrics an engine and its outbox export, on the in-memory transport with
//! paused time.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};

use redial::machine::{Config, Generation, ProbeOutcome, Reason, StateKind};
use redial::outbox::{Deliver, DeliveryError, MessageId, OutboxConfig, Publisher};
use redial::runtime::{Engine, Handle, OpenContext, Transport};
use redial::testing::{MemoryError, MemoryLink, MemoryTransport};
use tracing::Instrument;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// The in-memory transport, naming its endpoints and logging from its own
/// calls, as an adapter's tasks would.
#[derive(Clone)]
struct Named(MemoryTransport);

impl Transport for Named {
    type Link = MemoryLink;
    type Error = MemoryError;

    fn open(
        &self,
        ctx: OpenContext,
    ) -> impl Future<Output = Result<MemoryLink, MemoryError>> + Send + 'static {
        let open = self.0.open(ctx);
        async move {
            tracing::info!("transport opening");
            // A link task, spawned as the adapters spawn theirs.
            tokio::spawn(async { tracing::info!("link task") }.in_current_span());
            open.await
        }
    }

    fn close(&self, link: MemoryLink, reason: Reason) -> impl Future<Output = ()> + Send + 'static {
        let close = self.0.close(link, reason);
        async move {
            tracing::info!("transport closing");
            close.await
        }
    }

    fn probe(&self, endpoint: usize) -> impl Future<Output = ProbeOutcome> + Send + 'static {
        self.0.probe(endpoint)
    }

    fn peer(&self, endpoint: usize) -> Option<String> {
        Some(format!("memory:{endpoint}"))
    }
}

impl Deliver for Named {
    type Message = String;
    type Confirm = <MemoryTransport as Deliver>::Confirm;

    fn send(
        &self,
        link: &MemoryLink,
        message: &String,
        id: MessageId,
    ) -> impl Future<Output = Result<Self::Confirm, DeliveryError>> + Send {
        tracing::info!("transport sending");
        self.0.send(link, message, id)
    }
}

/// An event and the fields of every span around it, innermost first.
#[derive(Debug, Clone)]
struct Seen {
    message: String,
    spans: Vec<(&'static str, HashMap<String, String>)>,
}

impl Seen {
    /// The value of `field` in the innermost span that has it.
    fn field(&self, field: &str) -> Option<&str> {
        self.spans
            .iter()
            .find_map(|(_, fields)| fields.get(field).map(String::as_str))
    }

    fn in_span(&self, name: &str) -> bool {
        self.spans.iter().any(|(n, _)| *n == name)
    }
}

/// A span's recorded fields, kept in its extensions.
#[derive(Default)]
struct Fields(HashMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

/// Captures every event with its spans' fields.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Seen>>>);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<Fields>()
        {
            values.record(fields);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut message = Fields::default();
        event.record(&mut message);
        let spans = ctx
            .event_scope(event)
            .into_iter()
            .flatten()
            .map(|span| {
                let fields = span
                    .extensions()
                    .get::<Fields>()
                    .map(|f| f.0.clone())
                    .unwrap_or_default();
                (span.name(), fields)
            })
            .collect();
        let message = message.0.remove("message").unwrap_or_default();
        self.0.lock().unwrap().push(Seen { message, spans });
    }
}

impl Capture {
    fn find(&self, message: &str) -> Vec<Seen> {
        let seen = self.0.lock().unwrap();
        seen.iter()
            .filter(|s| s.message == message)
            .cloned()
            .collect()
    }
}

/// Makes `subscriber` this thread's default for the guard's life.
///
/// With a single dispatcher registered, tracing-core decides a new
/// callsite's interest from the registering thread's default alone: a test
/// on another thread, with no subscriber, would cache the callsite as never
/// wanted, and this thread's spans from it would stay disabled. A second,
/// permanent dispatcher (wanting nothing) makes it ask every registered one.
fn capture_here(
    subscriber: impl Subscriber + Send + Sync + 'static,
) -> tracing::subscriber::DefaultGuard {
    static SECOND: OnceLock<tracing::Dispatch> = OnceLock::new();
    SECOND.get_or_init(|| tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default()));
    tracing::subscriber::set_default(subscriber)
}

/// Waits until link `after` was replaced by a new one, and returns it.
async fn reconnected(handle: &Handle, after: Generation) -> Generation {
    let mut rx = handle.watch();
    let snapshot = rx
        .wait_for(|s| s.state == StateKind::Connected && s.generation != after)
        .await
        .expect("the engine runs");
    snapshot.generation
}

/// The transport's open and close, run in the driver's tasks, and the
/// deliverer, run in the outbox's flush task, log inside the engine's span
/// (`engine`), the link's (`generation`, `attempt`, `peer`) and the
/// outbox's; the engine span nests under the caller's current span.
#[tokio::test(start_paused = true)]
async fn spawned_tasks_log_in_the_engine_span() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    let _guard = capture_here(subscriber);

    let transport = Named(MemoryTransport::new());
    let control = transport.0.control();
    let app = tracing::info_span!("app", tenant = "t1");
    let engine = app.in_scope(|| {
        Engine::prepare(
            Config::builder().seed(7).build().unwrap(),
            transport.clone(),
        )
        .name("orders")
        .start()
    });
    let handle = engine.handle();
    assert_eq!(handle.name(), Some("orders"));
    let first = handle
        .wait_connected(std::time::Duration::from_secs(30))
        .await
        .unwrap();
    control.sever();
    let second = reconnected(&handle, first).await;

    let opens = capture.find("transport opening");
    assert_eq!(opens.len(), 2, "{opens:?}");
    for (open, generation) in opens.iter().zip([first, second]) {
        assert!(open.in_span("redial.link"), "{open:?}");
        assert_eq!(open.field("engine"), Some("orders"), "{open:?}");
        assert_eq!(
            open.field("generation"),
            Some(generation.0.to_string().as_str())
        );
        assert_eq!(open.field("peer"), Some("memory:0"), "{open:?}");
        assert!(open.field("attempt").is_some(), "{open:?}");
        assert_eq!(
            open.field("tenant"),
            Some("t1"),
            "the caller's span is the parent"
        );
    }
    let tasks = capture.find("link task");
    assert_eq!(tasks.len(), 2, "{tasks:?}");
    for (task, generation) in tasks.iter().zip([first, second]) {
        assert_eq!(task.field("engine"), Some("orders"), "{task:?}");
        assert_eq!(
            task.field("generation"),
            Some(generation.0.to_string().as_str())
        );
    }
    let closes = capture.find("transport closing");
    assert_eq!(closes.len(), 1, "{closes:?}");
    assert_eq!(closes[0].field("engine"), Some("orders"));
    assert_eq!(
        closes[0].field("generation"),
        Some(first.0.to_string().as_str()),
        "the close carries the closed link's generation"
    );

    let publisher = Publisher::new(&engine, transport, OutboxConfig::default());
    let receipt = publisher.publish("m1".to_owned()).await;
    receipt.await.expect("confirmed");
    let sends = capture.find("transport sending");
    assert_eq!(sends.len(), 1, "{sends:?}");
    assert!(sends[0].in_span("redial.outbox"), "{sends:?}");
    assert_eq!(sends[0].field("engine"), Some("orders"));

    engine.shutdown().await;
}

/// An unnamed engine's span has no `engine` field; its links' still carry
/// their generation.
#[tokio::test(start_paused = true)]
async fn an_unnamed_engine_logs_without_a_name() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    let _guard = capture_here(subscriber);

    let engine = Engine::spawn(
        Config::builder().seed(8).build().unwrap(),
        Named(MemoryTransport::new()),
    );
    let handle = engine.handle();
    assert_eq!(handle.name(), None);
    let generation = handle
        .wait_connected(std::time::Duration::from_secs(30))
        .await
        .unwrap();
    let opens = capture.find("transport opening");
    assert_eq!(opens.len(), 1, "{opens:?}");
    assert!(opens[0].in_span("redial"));
    assert_eq!(opens[0].field("engine"), None);
    assert_eq!(
        opens[0].field("generation"),
        Some(generation.0.to_string().as_str())
    );
    engine.shutdown().await;
}

/// `connect_once` opens in the caller's task, inside the engine's span
/// and the first link's (attempt 0), and the engine it returns keeps the
/// name.
#[tokio::test(start_paused = true)]
async fn connect_once_opens_in_the_engine_span() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(capture.clone());
    let _guard = capture_here(subscriber);

    let prepared = Engine::prepare(
        Config::builder().seed(10).build().unwrap(),
        Named(MemoryTransport::new()),
    )
    .name("once");
    let generation = prepared.generation();
    let engine = prepared.connect_once().await.expect("connected");
    assert_eq!(engine.handle().name(), Some("once"));
    let opens = capture.find("transport opening");
    assert_eq!(opens.len(), 1, "{opens:?}");
    assert_eq!(opens[0].field("engine"), Some("once"));
    assert_eq!(opens[0].field("attempt"), Some("0"));
    assert_eq!(opens[0].field("peer"), Some("memory:0"));
    assert_eq!(
        opens[0].field("generation"),
        Some(generation.0.to_string().as_str())
    );
    engine.shutdown().await;
}

#[cfg(feature = "metrics")]
mod metrics_feature {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Mutex, OnceLock};

    use metrics::{
        Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata,
        Recorder, SharedString, Unit,
    };

    use redial::machine::ErrorKind;
    use redial::testing::Plan;

    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    enum Kind {
        Counter,
        Gauge,
        Histogram,
    }

    /// One metric's value: whichever of the three its kind uses.
    #[derive(Default)]
    struct Cell {
        count: AtomicU64,
        gauge: Mutex<f64>,
        samples: Mutex<Vec<f64>>,
    }

    impl CounterFn for Cell {
        fn increment(&self, value: u64) {
            self.count.fetch_add(value, Ordering::Relaxed);
        }
        fn absolute(&self, value: u64) {
            self.count.fetch_max(value, Ordering::Relaxed);
        }
    }

    impl GaugeFn for Cell {
        fn increment(&self, value: f64) {
            *self.gauge.lock().unwrap() += value;
        }
        fn decrement(&self, value: f64) {
            *self.gauge.lock().unwrap() -= value;
        }
        fn set(&self, value: f64) {
            *self.gauge.lock().unwrap() = value;
        }
    }

    impl HistogramFn for Cell {
        fn record(&self, value: f64) {
            self.samples.lock().unwrap().push(value);
        }
    }

    type Labels = Vec<(String, String)>;

    /// A recorder that keeps every metric in memory, by kind, name and labels.
    #[derive(Default)]
    struct Recorded {
        cells: Mutex<HashMap<(Kind, String, Labels), Arc<Cell>>>,
    }

    impl Recorded {
        fn cell(&self, kind: Kind, key: &Key) -> Arc<Cell> {
            let labels = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            let mut cells = self.cells.lock().unwrap();
            let entry = cells.entry((kind, key.name().to_owned(), labels));
            entry.or_default().clone()
        }
    }

    impl Recorder for Recorded {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            Counter::from_arc(self.cell(Kind::Counter, key))
        }
        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::from_arc(self.cell(Kind::Gauge, key))
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::from_arc(self.cell(Kind::Histogram, key))
        }
    }

    /// The process's recorder: this binary's tests share it, and each
    /// labels its engine with its own name.
    fn recorded() -> &'static Recorded {
        static RECORDED: OnceLock<&'static Recorded> = OnceLock::new();
        RECORDED.get_or_init(|| {
            let recorded: &'static Recorded = Box::leak(Box::default());
            metrics::set_global_recorder(recorded).expect("the only recorder");
            recorded
        })
    }

    /// Every metric of engine `engine` now: (kind, name, other labels) -> cell.
    type Values = HashMap<(Kind, String, Labels), Arc<Cell>>;

    fn values(engine: &str) -> Values {
        let cells = recorded().cells.lock().unwrap();
        let mut out = HashMap::new();
        for ((kind, name, labels), cell) in cells.iter() {
            if !labels.iter().any(|(k, v)| k == "engine" && v == engine) {
                continue;
            }
            let rest = labels
                .iter()
                .filter(|(k, _)| k != "engine")
                .cloned()
                .collect();
            out.insert((*kind, name.clone(), rest), cell.clone());
        }
        out
    }

    fn lookup<'a>(
        values: &'a Values,
        kind: Kind,
        name: &str,
        labels: &[(&str, &str)],
    ) -> Option<&'a Arc<Cell>> {
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        values.get(&(kind, name.to_owned(), labels))
    }

    fn counter(values: &Values, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        lookup(values, Kind::Counter, name, labels).map(|c| c.count.load(Ordering::Relaxed))
    }

    fn gauge(values: &Values, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        lookup(values, Kind::Gauge, name, labels).map(|c| *c.gauge.lock().unwrap())
    }

    fn histogram(values: &Values, name: &str) -> Vec<f64> {
        lookup(values, Kind::Histogram, name, &[])
            .map(|c| c.samples.lock().unwrap().clone())
            .unwrap_or_default()
    }

    /// Connect, lose the link, reconnect, publish: every engine and outbox
    /// metric says so, under the engine's name, and matches `Stats`.
    #[tokio::test(start_paused = true)]
    async fn engine_and_outbox_metrics_follow_a_recovery() {
        recorded();
        let transport = MemoryTransport::new();
        let control = transport.control();
        // The first connect, then one failed attempt in the outage.
        control.plan([
            Plan::Succeed,
            Plan::Fail(ErrorKind::Transient),
            Plan::Succeed,
        ]);
        let engine = Engine::prepare(
            Config::builder().seed(9).build().unwrap(),
            transport.clone(),
        )
        .name("metrics-recovery")
        .start();
        let handle = engine.handle();
        let first = handle
            .wait_connected(std::time::Duration::from_secs(30))
            .await
            .unwrap();
        let down_at = tokio::time::Instant::now();
        control.sever();
        reconnected(&handle, first).await;
        let recovery = down_at.elapsed().as_secs_f64();

        let publisher = Publisher::new(&engine, transport, OutboxConfig::default());
        let receipt = publisher.publish("m1".to_owned()).await;
        receipt.await.expect("confirmed");

        let v = values("metrics-recovery");
        let stats = handle.stats();
        let engine_counters = [
            ("redial_engine_attempts_total", stats.attempts),
            ("redial_engine_connects_total", stats.connects),
            ("redial_engine_losses_total", stats.losses),
            ("redial_engine_outages_total", stats.outages),
        ];
        for (name, expected) in engine_counters {
            assert_eq!(counter(&v, name, &[]), Some(expected), "{name}");
        }
        assert_eq!(
            (stats.attempts, stats.connects, stats.losses, stats.outages),
            (3, 2, 1, 1)
        );
        assert_eq!(counter(&v, "redial_engine_resumes_total", &[]), None);
        assert_eq!(
            counter(&v, "redial_engine_attempts_failed_total", &[]),
            Some(1)
        );
        assert_eq!(
            gauge(&v, "redial_engine_state", &[("state", "connected")]),
            Some(1.0)
        );
        for left in ["idle", "connecting", "backing_off"] {
            assert_eq!(
                gauge(&v, "redial_engine_state", &[("state", left)]),
                Some(0.0),
                "{left}"
            );
        }
        let recoveries = histogram(&v, "redial_engine_recovery_seconds");
        assert_eq!(recoveries.len(), 1, "{recoveries:?}");
        assert!(
            (recoveries[0] - recovery).abs() < 0.002,
            "{recoveries:?} vs {recovery}"
        );
        assert_eq!(histogram(&v, "redial_engine_outage_seconds"), recoveries);

        assert_eq!(counter(&v, "redial_outbox_submitted_total", &[]), Some(1));
        assert_eq!(counter(&v, "redial_outbox_confirmed_total", &[]), Some(1));
        assert_eq!(
            counter(&v, "redial_outbox_failed_total", &[("reason", "nacked")]),
            Some(0)
        );
        assert_eq!(gauge(&v, "redial_outbox_queued", &[]), Some(0.0));
        assert_eq!(gauge(&v, "redial_outbox_in_flight", &[]), Some(0.0));

        engine.shutdown().await;
        let v = values("metrics-recovery");
        assert_eq!(
            gauge(&v, "redial_engine_state", &[("state", "closed")]),
            Some(1.0)
        );
    }
}
