//! Backoff and retry-budget scenarios S23, S24, S34, S37, S38 and S40 of
//! `docs/scenarios.md`, on the engine with the in-memory transport and paused
//! time. Every expected schedule is computed from `BackoffState` with the
//! engine's seed and policy (see `Schedule` in `support/engine.rs`).

use crate::engine;

use std::collections::HashSet;
use std::time::Duration;

use engine::*;
use redial::backoff::{Backoff, Jitter};
use redial::machine::{Config, ConfigError, ErrorKind, FailCause, Generation, Reason, StateKind};
use redial::runtime::Report;
use redial::testing::{LogEntry, MemoryError, Plan};
use tokio::time::Instant;

use ErrorKind::{Permanent, Transient};
use StateKind::{Connected, Connecting, Failed};

/// S23: a 30-minute outage follows the backoff schedule to the
/// millisecond: delay k is min(d0 * 2^(k-1), dmax) * U(0.5, 1.5), capped
/// again at dmax, attempt numbers rise by exactly 1, and the first attempt
/// after the broker is back succeeds.
#[tokio::test(start_paused = true)]
async fn s23_thirty_minute_outage_follows_the_exact_backoff_schedule() {
    let mut rig = Rig::connected(config(), Probe::memory()).await;
    tokio::time::sleep(STABLE).await;
    rig.events.clear();
    rig.control.set_default(Plan::Fail(Transient));

    let lost_at = Instant::now();
    let back = lost_at + secs(30 * 60);
    rig.handle.report_lost(Generation(1), Transient);
    tokio::time::sleep_until(back).await;
    rig.control.set_default(Plan::Succeed);
    connected_after(&rig.handle, Generation(1)).await;

    let expected = outage_schedule(lost_at, back, &mut Schedule::default_policy());
    let got = rig.probe.open_times()[1..].to_vec();
    assert_eq!(got, expected);
    let n = expected.len() as u32;
    assert_eq!(rig.events.attempt_numbers(), (1..=n).collect::<Vec<_>>());
    let policy = Backoff::default();
    for (k, pair) in got.windows(2).enumerate() {
        let delay = pair[1] - pair[0];
        let base = ms(policy.base_ms(k as u32 + 1));
        assert!(delay <= DMAX, "delay {k} = {delay:?}");
        assert!(
            delay >= base / 2 && delay <= (base * 3 / 2).min(DMAX),
            "delay {k} = {delay:?}"
        );
    }
    assert!(n > 30, "the cap was reached: {n} attempts");
}

/// Connects `n` engines (seeds 0..n) and drops all their links at the same
/// instant; returns that instant and, per engine, the times of its opens
/// after it.
async fn fleet_after_simultaneous_loss(
    n: u64,
    immediate_first_retry: bool,
) -> (Instant, Vec<Vec<Instant>>) {
    let mut fleet = Vec::new();
    for seed in 0..n {
        let cfg = builder()
            .seed(seed)
            .immediate_first_retry(immediate_first_retry)
            .build()
            .unwrap();
        let probe = Probe::memory();
        // The first retry is refused, so that the second one is timed too.
        probe
            .control()
            .plan([Plan::Succeed, Plan::Fail(Transient), Plan::Succeed]);
        fleet.push(Rig::spawn(cfg, probe));
    }
    for rig in &fleet {
        connected_on(&rig.handle, Generation(1)).await;
    }
    tokio::time::sleep(STABLE).await;
    let lost_at = Instant::now();
    for rig in &fleet {
        rig.handle.report_lost(Generation(1), Transient);
    }
    tokio::time::sleep(secs(10)).await;
    let times = fleet
        .iter()
        .map(|rig| {
            assert_eq!(rig.handle.state(), Connected);
            rig.probe.open_times()[1..].to_vec()
        })
        .collect();
    (lost_at, times)
}

fn spread(times: &[Instant]) -> Duration {
    *times.iter().max().unwrap() - *times.iter().min().unwrap()
}

/// S23 fleet: 1000 engines lose their links at the same instant. Without
/// the immediate first retry, their first attempts spread over >= 0.8 d0,
/// each within [0.5, 1.5] d0 of the loss. With it (the default, NATS
/// ADR-40) the first retries all go at once by design, and the spread
/// starts at the first drawn delay: the second attempts spread over
/// >= 0.8 d0.
#[tokio::test(start_paused = true)]
async fn s23_a_fleet_disconnected_at_once_spreads_its_attempts() {
    let d0 = Backoff::default().initial();

    let (lost_at, fleet) = fleet_after_simultaneous_loss(1000, false).await;
    let first: Vec<Instant> = fleet.iter().map(|times| times[0]).collect();
    assert!(spread(&first) >= d0 * 8 / 10, "{:?}", spread(&first));
    assert!(
        first
            .iter()
            .all(|a| *a - lost_at >= d0 / 2 && *a - lost_at <= d0 * 3 / 2)
    );

    let (lost_at, fleet) = fleet_after_simultaneous_loss(1000, true).await;
    assert!(
        fleet.iter().all(|times| times[0] == lost_at),
        "immediate first retries"
    );
    let second: Vec<Instant> = fleet.iter().map(|times| times[1]).collect();
    assert!(spread(&second) >= d0 * 8 / 10, "{:?}", spread(&second));

    // A fleet that sets no seed spreads too: every engine draws its own seed.
    let seeds: HashSet<u64> = (0..1000)
        .map(|_| Config::builder().build().unwrap().seed())
        .collect();
    assert_eq!(seeds.len(), 1000);
}

/// S23: a configuration that cannot work is rejected when it is built, with
/// a typed error. (redial has no deep-reconnect threshold; its zero case is
/// `max_attempts = 0`. Negative durations cannot be expressed.)
#[test]
fn s23_invalid_configs_are_rejected_with_typed_errors() {
    let j = Jitter::Proportional { fraction: 0.5 };
    assert!(matches!(
        Backoff::builder()
            .initial(secs(1))
            .multiplier(0.5)
            .max(secs(60))
            .jitter(j)
            .build(),
        Err(ConfigError::MultiplierBelowOne { .. })
    ));
    assert!(matches!(
        Backoff::builder()
            .initial(secs(1))
            .multiplier(f64::NAN)
            .max(secs(60))
            .jitter(j)
            .build(),
        Err(ConfigError::MultiplierBelowOne { .. })
    ));
    assert_eq!(
        Backoff::builder()
            .initial(secs(60))
            .multiplier(2.0)
            .max(secs(1))
            .jitter(j)
            .build(),
        Err(ConfigError::CapBelowInitial {
            initial_ms: 60_000,
            max_ms: 1_000
        })
    );
    assert!(matches!(
        Backoff::builder()
            .initial(Duration::ZERO)
            .multiplier(2.0)
            .max(secs(60))
            .jitter(j)
            .build(),
        Err(ConfigError::Zero { .. })
    ));
    assert!(matches!(
        Backoff::builder()
            .initial(secs(1))
            .multiplier(2.0)
            .max(secs(60))
            .jitter(Jitter::Proportional { fraction: 1.5 })
            .build(),
        Err(ConfigError::JitterOutOfRange { .. })
    ));
    assert_eq!(
        Config::builder().max_attempts(0).build(),
        Err(ConfigError::ZeroAttempts)
    );
    assert!(matches!(
        Config::builder().stable_period(Duration::ZERO).build(),
        Err(ConfigError::Zero { .. })
    ));
}

/// S24: credential refresh is the transport's business (it happens inside
/// `open`), so the engine's part of single-flight is that only one attempt
/// ever runs at a time. Five callers asking at once (the link's loss, three
/// application threads, a periodic poll), and four more while the attempt
/// runs, give exactly one open.
#[tokio::test(start_paused = true)]
async fn s24_only_one_attempt_runs_at_a_time() {
    let probe = Probe::memory();
    probe
        .control()
        .plan([Plan::Succeed, Plan::SucceedAfter(secs(2))]);
    let rig = Rig::connected(config(), probe).await;
    tokio::time::sleep(STABLE).await;

    rig.handle.report_lost(Generation(1), Transient);
    let apps: Vec<_> = (0..3)
        .map(|_| {
            let h = rig.handle.clone();
            std::thread::spawn(move || h.reconnect_now())
        })
        .collect();
    for app in apps {
        app.join().unwrap().unwrap();
    }
    let h = rig.handle.clone();
    let poll = tokio::spawn(async move { h.reconnect_now() });
    poll.await.unwrap().unwrap();
    wait_until(&rig.handle, |s| s.state == Connecting).await;
    for _ in 0..4 {
        rig.handle.reconnect_now().unwrap();
    }
    connected_on(&rig.handle, Generation(2)).await;
    tokio::time::sleep(10 * DMAX).await;

    assert_eq!(rig.control.connect_calls(), 2);
    assert_eq!(rig.probe.max_in_flight(), 1);
    assert_eq!(rig.generation(), Generation(2));
}

/// S34: with a budget of 3 attempts, a 5-minute outage ends in
/// `Failed(RetriesExhausted)`, announced exactly once, sticky (no further
/// attempts: redial documents no slow probe) and visible to publishers;
/// once the broker is back, `reconnect_now` resets the counter and succeeds
/// in one attempt.
#[tokio::test(start_paused = true)]
async fn s34_exhausted_budget_fails_visibly_and_reconnect_now_recovers() {
    let cfg = builder().max_attempts(3).build().unwrap();
    let mut rig = Rig::connected(cfg, Probe::memory()).await;
    tokio::time::sleep(STABLE).await;
    rig.events.clear();
    rig.control.set_default(Plan::Fail(Transient));
    let mut schedule = Schedule::default_policy();

    let lost_at = Instant::now();
    rig.handle.report_lost(Generation(1), Transient);
    let s = wait_until(&rig.handle, |s| s.state == Failed).await;
    let (d1, d2) = (schedule.next(), schedule.next());
    assert_eq!(Instant::now(), lost_at + d1 + d2);
    assert_eq!(
        rig.probe.open_times()[1..],
        [lost_at, lost_at + d1, lost_at + d1 + d2]
    );
    assert_eq!(s.failure, Some(FailCause::RetriesExhausted));
    assert!(
        rig.engine.links().borrow().is_none(),
        "publishers see no link"
    );

    tokio::time::sleep(secs(5 * 60)).await;
    assert_eq!(rig.control.connect_calls(), 4);
    let error = MemoryError { kind: Transient }.to_string();
    assert_eq!(
        rig.events.gave_up(),
        [(FailCause::RetriesExhausted, Some(error))]
    );
    assert_eq!(rig.handle.state(), Failed);

    rig.control.set_default(Plan::Succeed);
    rig.events.clear();
    rig.handle.reconnect_now().unwrap();
    connected_after(&rig.handle, Generation(1)).await;
    assert_eq!(rig.events.attempt_numbers(), [1]);
    assert_eq!(
        rig.events.states(),
        [
            (Failed, Connecting, Reason::ReconnectRequested),
            (Connecting, Connected, Reason::AttemptSucceeded),
        ]
    );
    assert_eq!(rig.handle.snapshot().failure, None);
}

/// S37: state queries only read: 1000 rounds of every query while the
/// broker refuses connections add no connect; the attempts follow the
/// schedule exactly.
#[tokio::test(start_paused = true)]
async fn s37_state_queries_never_connect() {
    let rig = Rig::connected(config(), Probe::memory()).await;
    tokio::time::sleep(STABLE).await;
    rig.control.set_default(Plan::Fail(Transient));
    let lost_at = Instant::now();
    rig.handle.report_lost(Generation(1), Transient);
    let refuses_until = lost_at + secs(60);

    while Instant::now() < refuses_until {
        let connects = rig.control.connect_calls();
        for _ in 0..1000 {
            std::hint::black_box((
                rig.handle.is_connected(),
                rig.handle.is_reconnecting(),
                rig.handle.state(),
                rig.handle.generation(),
                rig.handle.snapshot(),
                rig.handle.stats(),
                *rig.handle.watch().borrow(),
                rig.engine.links().borrow().is_some(),
            ));
        }
        assert_eq!(rig.control.connect_calls(), connects);
        tokio::time::sleep(secs(5)).await;
    }
    rig.control.set_default(Plan::Succeed);
    connected_after(&rig.handle, Generation(1)).await;
    let expected = outage_schedule(lost_at, refuses_until, &mut Schedule::default_policy());
    assert_eq!(rig.probe.open_times()[1..], expected);
}

/// S37: 1000 flaps, with refused, hanging (connect timeout) and slow opens
/// mixed in, leak nothing: one link open at the end and at most one ever,
/// every other link closed exactly once, attempts numbered without gaps;
/// after shutdown no link is open.
#[tokio::test(start_paused = true)]
async fn s37_no_transport_leaks_after_1000_flaps() {
    let cfg = builder().connect_timeout(secs(5)).build().unwrap();
    let mut rig = Rig::connected(cfg, Probe::memory()).await;
    let mut attempts = rig.events.attempt_numbers();
    rig.events.clear();
    for flap in 0..1000u32 {
        match flap % 4 {
            1 => rig.control.plan([Plan::Fail(Transient)]),
            2 => rig.control.plan([Plan::Hang]),
            3 => rig.control.plan([Plan::SucceedAfter(secs(10))]),
            _ => {}
        }
        let g = rig.generation();
        assert_eq!(rig.handle.report_lost(g, Transient), Report::Queued);
        connected_after(&rig.handle, g).await;
        attempts.extend(rig.events.attempt_numbers());
        rig.events.clear();
    }
    let n = attempts.len() as u32;
    assert_eq!(attempts, (1..=n).collect::<Vec<_>>(), "one outage, no gaps");
    let up = links_up(&rig.control);
    assert_eq!(up.len(), 1001);
    assert_eq!(rig.control.open_links(), 1);
    assert_eq!(rig.control.max_open_links(), 1);
    assert_eq!(rig.probe.max_in_flight(), 1);
    assert_eq!(links_closed(&rig.control), up[..1000].to_vec());

    rig.engine.shutdown().await;
    assert_eq!(rig.control.open_links(), 0);
    assert_eq!(links_closed(&rig.control), up);
}

/// S38: a permanent error (bad credentials) stops at once: one connect
/// over 10 x dmax, `Failed(Permanent)` with one `GaveUp` carrying the
/// transport's error; only an explicit reconnect leaves it.
#[tokio::test(start_paused = true)]
async fn s38_permanent_error_stops_at_once_and_is_surfaced() {
    let probe = Probe::memory();
    probe.control().plan([Plan::Fail(Permanent)]);
    let mut rig = Rig::spawn(config(), probe);
    let s = wait_until(&rig.handle, |s| s.state == Failed).await;
    assert_eq!(s.failure, Some(FailCause::Permanent));
    tokio::time::sleep(10 * DMAX).await;

    assert_eq!(rig.control.connect_calls(), 1);
    let error = MemoryError { kind: Permanent }.to_string();
    assert_eq!(
        rig.events.failures(),
        [(Generation(1), 1, Permanent, error.clone())]
    );
    assert_eq!(rig.events.gave_up(), [(FailCause::Permanent, Some(error))]);
    assert!(rig.engine.links().borrow().is_none());

    rig.handle.reconnect_now().unwrap();
    connected_after(&rig.handle, Generation(1)).await;
    assert_eq!(rig.control.connect_calls(), 2);
}

/// S38 with `permanent_retries(2)`: K = 3 connects in all, at the
/// scheduled times, then `Failed(Permanent)`; transient errors around it
/// keep retrying (S20).
#[tokio::test(start_paused = true)]
async fn s38_configured_permanent_retries_bound_the_attempts() {
    let cfg = builder().permanent_retries(2).build().unwrap();
    let probe = Probe::memory();
    probe.control().set_default(Plan::Fail(Permanent));
    let start = Instant::now();
    let mut rig = Rig::spawn(cfg, probe);
    wait_until(&rig.handle, |s| s.state == Failed).await;
    tokio::time::sleep(10 * DMAX).await;

    let mut schedule = Schedule::default_policy();
    let (d1, d2) = (schedule.next(), schedule.next());
    assert_eq!(rig.probe.open_times(), [start, start + d1, start + d1 + d2]);
    assert_eq!(rig.events.gave_up().len(), 1);

    let probe = Probe::memory();
    probe.control().plan([
        Plan::Fail(Transient),
        Plan::Fail(Permanent),
        Plan::Fail(Transient),
        Plan::Fail(Transient),
    ]);
    let cfg = builder().permanent_retries(1).build().unwrap();
    let rig = Rig::spawn(cfg, probe);
    connected_on(&rig.handle, Generation(5)).await;
}

/// S38: a permanent loss reported by the link (a broker's access-refused
/// close) gives up too, and the `GaveUp` event does not carry an unrelated
/// transport error from an earlier, transient, failed attempt.
#[tokio::test(start_paused = true)]
async fn s38_permanent_link_loss_gives_up_without_a_stale_error() {
    let probe = Probe::memory();
    probe.control().plan([Plan::Fail(Transient), Plan::Succeed]);
    let mut rig = Rig::spawn(config(), probe);
    connected_on(&rig.handle, Generation(2)).await;
    rig.events.clear();
    rig.handle.report_lost(Generation(2), Permanent);
    wait_until(&rig.handle, |s| s.state == Failed).await;
    assert_eq!(rig.events.gave_up(), [(FailCause::Permanent, None)]);
}

/// S40: the broker flaps, up 100 ms / down 100 ms for 10 s (a link that
/// came up dies at the end of its window; opens fail while down), then
/// stays up. A link lost before the stable period is a failed attempt, so
/// the delays keep growing and the opens stay within what the schedule
/// allows; one open at a time; every link but the live one is closed; and
/// the engine is connected within one delay after the flapping stops.
/// Without a retry budget, so that the schedule alone decides (the next
/// test has the default budget).
#[tokio::test(start_paused = true)]
async fn s40_flapping_link_backs_off_and_settles() {
    const WINDOW: u64 = 100;
    const FLAPS: u64 = 50;
    let config = builder().no_retry_budget().build().unwrap();
    let rig = Rig::connected(config, Probe::memory()).await;
    let f = Instant::now();
    let calm = f + ms(2 * WINDOW * FLAPS);

    // Reference: every loss or failure draws the next delay of one outage.
    let mut schedule = Schedule::default_policy();
    let mut expected = Vec::new();
    let mut t = f + ms(WINDOW);
    let mut last_delay;
    loop {
        last_delay = schedule.next();
        let at = t + last_delay;
        let offset = (at - f).as_millis() as u64;
        assert_ne!(
            offset % WINDOW,
            0,
            "pick another seed: a tie with the chaos"
        );
        expected.push(at);
        if at >= calm {
            break;
        }
        // Up windows are [200k, 200k + 100) ms after f.
        t = if offset % (2 * WINDOW) < WINDOW {
            f + ms(offset - offset % (2 * WINDOW) + WINDOW)
        } else {
            at
        };
    }

    for k in 0..FLAPS {
        tokio::time::sleep_until(f + ms(2 * WINDOW * k + WINDOW)).await;
        rig.control.set_default(Plan::Fail(Transient));
        if rig.handle.is_connected() {
            rig.handle.report_lost(rig.generation(), Transient);
        }
        tokio::time::sleep_until(f + ms(2 * WINDOW * (k + 1))).await;
        rig.control.set_default(Plan::Succeed);
    }
    let s = connected_after(&rig.handle, Generation(1)).await;
    let settled = Instant::now();

    assert_eq!(rig.probe.open_times()[1..], expected);
    assert!(settled - calm <= last_delay, "connected within one delay");
    let during = expected.iter().filter(|t| **t < calm).count() as u32;
    assert!(
        during <= 10f64.log2() as u32 + 2,
        "{during} opens while flapping"
    );
    assert_eq!(rig.probe.max_in_flight(), 1);
    assert_eq!(rig.control.max_open_links(), 1);
    let up = links_up(&rig.control).len() as u64;
    assert_eq!(rig.control.close_calls(), up - 1);
    let attempts: Vec<u32> = rig.probe.opens().iter().map(|o| o.attempt).collect();
    assert_eq!(attempts, (1..=attempts.len() as u32).collect::<Vec<_>>());

    // Once a link stays up for the stable period, its loss starts afresh.
    tokio::time::sleep(STABLE).await;
    rig.handle.report_lost(s.generation, Transient);
    connected_after(&rig.handle, s.generation).await;
    let last = *rig.probe.opens().last().unwrap();
    assert_eq!(last.attempt, 1);
    assert!(rig.control.log().ends_with(&[
        LogEntry::Close(s.generation),
        LogEntry::Open(last.generation, 1),
        LogEntry::Up(last.generation),
    ]));
}

/// S40 with the default configuration, retry budget included: the broker
/// flaps, up 100 ms / down 100 ms for 10 s. Early losses are retried at once
/// only while the budget lasts (3 at once, one more per 2 s); every other
/// attempt waits its backoff delay, and those delays keep growing. One open
/// at a time, attempts counted without gaps, and the engine settles once the
/// flapping stops.
#[tokio::test(start_paused = true)]
async fn s40_flapping_with_the_default_retry_budget_stays_gentle() {
    const WINDOW: u64 = 100;
    const FLAPS: u64 = 50;
    let budget = config().retry_budget().expect("a budget by default");
    let rig = Rig::connected(config(), Probe::memory()).await;
    let f = Instant::now();
    let calm = f + ms(2 * WINDOW * FLAPS);
    let mut losses = Vec::new();
    for k in 0..FLAPS {
        tokio::time::sleep_until(f + ms(2 * WINDOW * k + WINDOW)).await;
        rig.control.set_default(Plan::Fail(Transient));
        if rig.handle.is_connected() {
            losses.push(Instant::now());
            rig.handle.report_lost(rig.generation(), Transient);
        }
        tokio::time::sleep_until(f + ms(2 * WINDOW * (k + 1))).await;
        rig.control.set_default(Plan::Succeed);
    }
    connected_after(&rig.handle, Generation(1)).await;

    let opens: Vec<Instant> = rig.probe.open_times()[1..]
        .iter()
        .copied()
        .filter(|t| *t < calm)
        .collect();
    // An open at the instant of a loss is an immediate retry; any other
    // waited for its backoff delay.
    let (immediate, waited): (Vec<Instant>, Vec<Instant>) =
        opens.iter().partition(|t| losses.contains(t));
    let flapping = calm - f;
    let earned = (flapping.as_millis() / budget.refill.as_millis()) as usize;
    assert!(
        immediate.len() <= budget.burst as usize + earned,
        "{} immediate retries in {flapping:?}: the budget allows {} + {earned}",
        immediate.len(),
        budget.burst
    );
    assert!(
        immediate.len() >= budget.burst as usize,
        "the burst was used"
    );
    assert!(
        waited.len() <= 10f64.log2() as u32 as usize + 2,
        "{} backoff opens while flapping",
        waited.len()
    );
    // Each waited open follows its loss or failure by a delay; the delays
    // grow: the last one is longer than the first two together could be
    // with the largest jitter (1 s and 2 s at +50 %).
    let delays: Vec<Duration> = waited
        .iter()
        .map(|at| {
            let since = losses.iter().rev().find(|l| *l < at).copied().unwrap_or(f);
            // After a failed open the wait starts at that open's failure.
            let failed = opens.iter().rev().find(|o| *o < at).copied().unwrap_or(f);
            *at - since.max(failed)
        })
        .collect();
    assert!(delays.len() >= 3, "{delays:?}");
    assert!(
        *delays.last().unwrap() > ms(4_500),
        "delays grow: {delays:?}"
    );
    assert_eq!(rig.probe.max_in_flight(), 1);
    assert_eq!(rig.control.max_open_links(), 1);
    let attempts: Vec<u32> = rig.probe.opens().iter().map(|o| o.attempt).collect();
    assert_eq!(attempts, (1..=attempts.len() as u32).collect::<Vec<_>>());
}
