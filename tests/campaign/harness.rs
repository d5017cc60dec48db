//! The part of a run both adapters share: the publishing task, the redial
//! consumer, the event recorder, the sampler, the fault player and the
//! final settling. An adapter driver sets up its broker objects, its
//! witness and its transport, then hands everything to [`drive`].

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use redial::machine::StateKind;
use redial::outbox::{Deliver, Publisher, SubmitOptions};
use redial::runtime::{Engine, Event, EventStream};
use tokio::sync::Notify;

use super::Settings;
use super::record::{
    Applied, Bounds, ConsumerLog, Kind, Publish, Publishes, Resolver, Run, Sample, SharedConsumer,
    SharedWitness,
};
use super::schedule::{Fault, Schedule};
use crate::support::chaos::ChaosProxy;

/// Switches the fault player flips and the tasks read.
#[derive(Default)]
pub struct Knobs {
    /// One bad publish in this many (0: none).
    pub bad_every: AtomicU32,
    /// The consumer is slow.
    pub slow: AtomicBool,
    /// Stop publishing.
    pub stop: AtomicBool,
    /// Asks the consumer to count what its stream holds.
    pub sample: Notify,
    /// The consumer counted.
    pub sampled: Notify,
}

/// The redial consumer's stream, as the harness consumes it.
pub trait Inbound: Send + 'static {
    /// One delivery.
    type Item: Send + 'static;
    /// The next delivery (`None`: the stream ended).
    fn next(&mut self) -> impl Future<Output = Option<Self::Item>> + Send;
    /// How many deliveries the stream holds, read without taking any (taking
    /// one makes room the link refills at once, so a drain over-counts).
    fn buffered(&self) -> usize;
    /// The campaign payload of a delivery.
    fn payload(item: &Self::Item) -> &[u8];
    /// Acknowledges it (`Ok` also when the adapter says it is stale and
    /// the broker will redeliver it).
    fn ack(item: Self::Item) -> impl Future<Output = Result<(), String>> + Send;
}

/// Adapter-specific faults (broker-side close, memory alarm, poison).
pub trait Special: Send + Sync {
    /// Applies `fault` for `hold`; returns when it started and ended, or
    /// why it could not be applied.
    fn hold(
        &self,
        fault: Fault,
        hold: Duration,
    ) -> BoxFuture<'_, Result<(Instant, Instant), String>>;
}

/// Everything [`drive`] needs from an adapter driver.
pub struct Drive<T: Deliver, I: Inbound, S: Special> {
    /// The schedule.
    pub schedule: Schedule,
    /// The run's tag (payload prefix).
    pub tag: String,
    /// The engine (already spawned) and its first events.
    pub engine: Engine<T>,
    /// Events subscribed before the driver started.
    pub events: EventStream,
    /// The publisher on it.
    pub publisher: Publisher<T>,
    /// The proxy the transport connects through.
    pub proxy: ChaosProxy,
    /// The redial consumer's stream.
    pub inbound: I,
    /// The witness's log (its task already runs).
    pub witness: SharedWitness,
    /// Builds message `seq`: valid, or bad when the knob says so.
    pub message: Box<dyn Fn(u64, bool) -> (T::Message, Kind) + Send + Sync>,
    /// Adapter-specific faults.
    pub special: S,
    /// The bounds.
    pub bounds: Bounds,
    /// The campaign settings.
    pub settings: Settings,
    /// Notes from setup.
    pub notes: Vec<String>,
}

/// Engine events with the time each was seen.
type Timeline = Arc<Mutex<Vec<(Instant, Event)>>>;

/// Records events from `rx`; the flag says whether any were lost.
fn record_events(mut rx: EventStream) -> (Timeline, Arc<AtomicBool>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let lagged = Arc::new(AtomicBool::new(false));
    let (out, lag) = (log.clone(), lagged.clone());
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Some(Ok(e)) => log.lock().unwrap().push((Instant::now(), e)),
                Some(Err(_lagged)) => lagged.store(true, Ordering::Relaxed),
                None => break,
            }
        }
    });
    (out, lag)
}

fn sample_every(
    period: Duration,
    publisher: Publisher<impl Deliver>,
    stop: Arc<AtomicBool>,
) -> Arc<Mutex<Vec<Sample>>> {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let out = samples.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            samples.lock().unwrap().push(Sample {
                outbox: publisher.stats(),
            });
        }
    });
    out
}

fn consume<I: Inbound>(
    mut inbound: I,
    tag: String,
    knobs: Arc<Knobs>,
    pause: Duration,
) -> SharedConsumer {
    let log: SharedConsumer = Arc::new(Mutex::new(ConsumerLog::default()));
    let out = log.clone();
    let note = move |item: &I::Item| {
        if let Some(seq) = super::record::parse_payload(&tag, I::payload(item)) {
            *log.lock().unwrap().seen.entry(seq).or_default() += 1;
        }
    };
    let errors = out.clone();
    tokio::spawn(async move {
        let handle = |item: I::Item| {
            note(&item);
            let errors = errors.clone();
            async move {
                if let Err(e) = I::ack(item).await {
                    errors.lock().unwrap().ack_errors.push(e);
                }
            }
        };
        loop {
            tokio::select! {
                biased;
                () = knobs.sample.notified() => {
                    errors.lock().unwrap().buffered.push((Instant::now(), inbound.buffered()));
                    knobs.sampled.notify_one();
                }
                item = inbound.next() => match item {
                    Some(item) => {
                        handle(item).await;
                        if knobs.slow.load(Ordering::Relaxed) {
                            tokio::time::sleep(pause).await;
                        }
                    }
                    None => break,
                },
            }
        }
    });
    out
}

/// Plays the schedule's windows through the proxy, the knobs and the
/// adapter's own faults.
async fn play(
    schedule: &Schedule,
    proxy: &ChaosProxy,
    knobs: &Knobs,
    special: &dyn Special,
) -> Vec<Applied> {
    let mut applied = Vec::new();
    tokio::time::sleep(schedule.lead).await;
    for w in &schedule.windows {
        let start = Instant::now();
        let mut skipped = None;
        let (start, end) = match w.fault {
            Fault::Sever => {
                proxy.sever();
                (start, Instant::now())
            }
            Fault::Blackhole => {
                proxy.blackhole(true);
                tokio::time::sleep(w.hold).await;
                proxy.blackhole(false);
                (start, Instant::now())
            }
            Fault::DropClientToBroker => {
                proxy.drop_client_to_broker(true);
                tokio::time::sleep(w.hold).await;
                proxy.drop_client_to_broker(false);
                (start, Instant::now())
            }
            Fault::Refuse => {
                proxy.refuse(true);
                proxy.sever();
                tokio::time::sleep(w.hold).await;
                proxy.refuse(false);
                (start, Instant::now())
            }
            Fault::ChannelErrors { every } => {
                knobs.bad_every.store(every, Ordering::Relaxed);
                tokio::time::sleep(w.hold).await;
                knobs.bad_every.store(0, Ordering::Relaxed);
                (start, Instant::now())
            }
            Fault::SlowConsumer => {
                knobs.slow.store(true, Ordering::Relaxed);
                tokio::time::sleep(w.hold).await;
                knobs.slow.store(false, Ordering::Relaxed);
                let counted = knobs.sampled.notified();
                knobs.sample.notify_one();
                if tokio::time::timeout(Duration::from_secs(5), counted)
                    .await
                    .is_err()
                {
                    skipped = Some("the consumer did not count its stream".to_owned());
                }
                (start, Instant::now())
            }
            Fault::BrokerClose | Fault::MemoryAlarm | Fault::Poison => {
                match special.hold(w.fault, w.hold).await {
                    Ok(span) => span,
                    Err(why) => {
                        skipped = Some(why);
                        (start, Instant::now())
                    }
                }
            }
        };
        applied.push(Applied {
            fault: w.fault,
            start,
            end,
            skipped,
        });
        tokio::time::sleep(w.gap).await;
    }
    applied
}

/// Runs the publishers, the consumer and the schedule, settles, and
/// returns the record (the driver then cleans up its broker objects).
pub async fn drive<T: Deliver, I: Inbound, S: Special>(d: Drive<T, I, S>) -> Run {
    let Drive {
        schedule,
        tag,
        engine,
        events,
        publisher,
        proxy,
        inbound,
        witness,
        message,
        special,
        bounds,
        settings,
        mut notes,
    } = d;
    let handle = engine.handle();
    let started = Instant::now();
    let (events, lagged) = record_events(events);
    let mut harness = Vec::new();
    let knobs = Arc::new(Knobs::default());
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let samples = sample_every(
        Duration::from_millis(50),
        publisher.clone(),
        stop_sampling.clone(),
    );
    let consumer = consume(inbound, tag.clone(), knobs.clone(), settings.slow_pause);

    if tokio::time::timeout(
        Duration::from_secs(20),
        handle.wait_for(StateKind::Connected),
    )
    .await
    .is_err()
    {
        harness.push(format!(
            "the engine did not connect at the start ({:?})",
            handle.state()
        ));
    }

    // Publishing: one task, so the k-th publish gets outbox id k.
    let publishes = Publishes::default();
    let resolver = Resolver::start(&publishes);
    let publishing = {
        let publisher = publisher.clone();
        let publishes = publishes.clone();
        let knobs = knobs.clone();
        let burst = u64::from(schedule.burst.max(1));
        let period = Duration::from_micros(burst * 1_000_000 / settings.rate_per_sec.max(1));
        let ttl = settings.ttl;
        tokio::spawn(async move {
            let mut errors = Vec::new();
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut seq = 0u64;
            while !knobs.stop.load(Ordering::Relaxed) {
                tick.tick().await;
                for _ in 0..burst {
                    seq += 1;
                    let every = u64::from(knobs.bad_every.load(Ordering::Relaxed));
                    let (m, kind) = message(seq, every > 0 && seq.is_multiple_of(every));
                    let submitted = Instant::now();
                    let receipt = publisher
                        .publish_with(m, SubmitOptions::new().publish_timeout(ttl))
                        .await;
                    if receipt.id().0 != seq && errors.is_empty() {
                        errors.push(format!("publish {seq} got outbox id {}", receipt.id()));
                    }
                    let p = Publish {
                        seq,
                        kind,
                        submitted,
                        ttl: Some(ttl),
                        ended: None,
                    };
                    publishes.track(&resolver, p, receipt);
                }
            }
            errors
        })
    };

    let applied = play(&schedule, &proxy, &knobs, &special).await;
    knobs.stop.store(true, Ordering::Relaxed);
    let final_state = handle.state();
    harness.extend(
        publishing
            .await
            .unwrap_or_else(|e| vec![format!("publisher task: {e}")]),
    );

    // Settle: every receipt resolves within ttl + detection + one attempt.
    let settle =
        settings.ttl + settings.liveness * 2 + settings.connect_timeout + Duration::from_secs(5);
    let deadline = Instant::now() + settle;
    while publishes.pending() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let snapshot = publishes.snapshot();
    // Then give the witness and the consumer time to see every confirm.
    let confirmed: Vec<u64> = snapshot
        .iter()
        .filter(|p| matches!(p.ended, Some((_, super::record::Ended::Confirmed { .. }))))
        .map(|p| p.seq)
        .collect();
    let deadline = Instant::now() + settings.witness_wait;
    let all_seen = || {
        let w = witness.lock().unwrap();
        let w: std::collections::HashSet<u64> = w.arrivals.iter().copied().collect();
        let c = consumer.lock().unwrap();
        confirmed
            .iter()
            .all(|s| w.contains(s) && c.seen.contains_key(s))
    };
    while !all_seen() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let attempts = handle.stats().attempts;
    let outbox = publisher.stats();
    stop_sampling.store(true, Ordering::Relaxed);
    let _ = publisher.shutdown(Duration::from_secs(1)).await;
    engine.shutdown().await;
    drop(proxy);
    if lagged.load(Ordering::Relaxed) {
        harness.push("the event recorder lagged (events were lost)".to_owned());
    }
    let consumer = consumer.lock().unwrap().clone();
    if !consumer.ack_errors.is_empty() {
        notes.push(format!(
            "{} consumer acks failed (e.g. {})",
            consumer.ack_errors.len(),
            consumer.ack_errors[0]
        ));
    }
    for a in &applied {
        if let Some(why) = &a.skipped {
            notes.push(format!("{} skipped: {why}", a.fault));
        }
    }
    let events = events.lock().unwrap().clone();
    let samples = samples.lock().unwrap().clone();
    let witness = witness.lock().unwrap().clone();
    Run {
        schedule,
        tag,
        started,
        final_state,
        bounds,
        publishes: snapshot,
        witness,
        consumer,
        events,
        samples,
        applied,
        attempts,
        outbox,
        harness,
        notes,
    }
}
