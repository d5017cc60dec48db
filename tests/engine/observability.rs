//! The counters of `Handle::stats()` (issue 3, item 7) across a scripted
//! outage with paused time, checked field by field against their docs.

use crate::engine;

use std::time::Duration;

use engine::*;
use redial::machine::{ErrorKind, Generation, StateKind};
use redial::runtime::{Report, Stats};
use redial::testing::Plan;

use ErrorKind::Transient;

/// Initial connect, a 3-attempt outage announced by a storm of three
/// reports, stale reports dropped at the handle, then a loss queued
/// together with `reconnect_now` (the loss is dropped by the machine).
#[tokio::test(start_paused = true)]
async fn counters_follow_a_scripted_outage() {
    let probe = Probe::memory();
    probe.control().plan([
        Plan::Succeed,
        Plan::Fail(Transient),
        Plan::Fail(Transient),
        Plan::SucceedAfter(ms(500)),
    ]);
    let rig = Rig::connected(config(), probe).await;
    let zero = Stats::default();
    let stats = rig.handle.stats();
    // Each expectation is the previous one with a few counters changed
    // (`Stats` is non-exhaustive: no struct literals outside redial).
    // `last_recovery` after the first connect: see the ignored test below.
    let mut base = zero;
    base.attempts = 1;
    base.connects = 1;
    base.last_recovery = stats.last_recovery;
    assert_eq!(stats, base);

    // The link drops after 20 s; three threads' worth of reports.
    tokio::time::sleep(secs(20)).await;
    let reports: Vec<Report> = (0..3)
        .map(|_| rig.handle.report_lost(Generation(1), Transient))
        .collect();
    assert_eq!(
        reports,
        [Report::Queued, Report::Coalesced, Report::Coalesced]
    );
    let mut storm = base;
    storm.reports = 3;
    storm.coalesced_reports = 2;
    storm.wakeups = 1;
    assert_eq!(rig.handle.stats(), storm);

    // Down: attempt 1 failed at once, attempt 2 is being waited for.
    wait_until(&rig.handle, |s| s.state == StateKind::BackingOff).await;
    let mut down = storm;
    down.attempts = 2;
    down.losses = 1;
    down.outages = 1;
    assert_eq!(
        rig.handle.stats(),
        down,
        "an ongoing outage is not in the totals yet"
    );

    // Attempt 3 opens after d1 + d2 and takes 500 ms.
    connected_on(&rig.handle, Generation(4)).await;
    let mut schedule = Schedule::default_policy();
    let recovery = schedule.next() + schedule.next() + ms(500);
    let now = rig.handle.stats();
    // One recovery, and it was an outage (no resume): in both histograms.
    for histogram in [now.recovery_time, now.outage_length] {
        assert_eq!((histogram.count(), histogram.sum()), (1, recovery));
    }
    let mut recovered = down;
    recovered.attempts = 4;
    recovered.connects = 2;
    recovered.last_recovery = Some(recovery);
    recovered.recovery_time = now.recovery_time;
    recovered.outage_length = now.outage_length;
    recovered.disconnected_total = recovery;
    assert_eq!(now, recovered);

    // Stale reports are dropped at the handle, without waking the driver.
    assert_eq!(
        rig.handle.report_lost(Generation(1), Transient),
        Report::Stale
    );
    assert_eq!(rig.handle.report_activity(Generation(9)), Report::Stale);
    let mut stale = recovered;
    stale.reports = 5;
    stale.stale_reports = 2;
    assert_eq!(rig.handle.stats(), stale);

    // A loss queued with a reconnect request: the reconnect retires link 4
    // first, so the machine drops the loss as stale. Recovery is immediate.
    tokio::time::sleep(secs(20)).await;
    assert_eq!(
        rig.handle.report_lost(Generation(4), Transient),
        Report::Queued
    );
    rig.handle.reconnect_now().unwrap();
    connected_on(&rig.handle, Generation(5)).await;
    let now = rig.handle.stats();
    assert_eq!(now.outage_length.count(), 2);
    let mut reconnected = stale;
    reconnected.attempts = 5;
    reconnected.connects = 3;
    reconnected.losses = 2;
    reconnected.outages = 2;
    reconnected.recovery_time = now.recovery_time;
    reconnected.outage_length = now.outage_length;
    reconnected.reports = 6;
    reconnected.stale_reports = 3;
    reconnected.wakeups = 2;
    reconnected.last_recovery = Some(Duration::ZERO);
    assert_eq!(now, reconnected);
}

/// Our own graceful shutdown is not an outage (nothing to recover from; the
/// machine's `MachineStats::outages` does not count it either), so it
/// leaves every counter alone: a worker rotation (S33) must not show up as
/// a broker outage on a dashboard.
#[tokio::test(start_paused = true)]
async fn shutdown_is_not_counted_as_an_outage() {
    let rig = Rig::connected(config(), Probe::memory()).await;
    let handle = rig.handle.clone();
    let before = handle.stats();
    rig.engine.shutdown().await;
    assert_eq!(handle.stats(), before);
}

/// `Stats::last_recovery` is documented as the duration of the last
/// completed outage (loss to reconnected); before any link was lost there
/// is none, even though the first connect took time.
#[tokio::test(start_paused = true)]
async fn last_recovery_is_none_before_the_first_outage() {
    let probe = Probe::memory();
    probe.control().plan([Plan::SucceedAfter(secs(2))]);
    let rig = Rig::connected(config(), probe).await;
    let stats = rig.handle.stats();
    assert_eq!(stats.outages, 0);
    assert_eq!(
        stats.disconnected_total,
        secs(2),
        "documented: includes the first connect"
    );
    assert_eq!(stats.last_recovery, None);
}

/// `Stats::coalesced_reports` is documented as reports merged into a batch
/// the driver had not taken yet, and `Report::Queued` as a report that was
/// queued: an activity report into an empty mailbox starts a batch, it
/// merges into nothing, so it should not count as coalesced.
#[tokio::test(start_paused = true)]
async fn first_activity_report_is_queued_not_coalesced() {
    let rig = Rig::connected(config(), Probe::memory()).await;
    idle().await;
    let before = rig.handle.stats();
    assert_eq!(rig.handle.report_activity(Generation(1)), Report::Queued);
    let after = rig.handle.stats();
    assert_eq!(after.reports, before.reports + 1);
    assert_eq!(after.coalesced_reports, before.coalesced_reports);
}
