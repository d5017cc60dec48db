//! The liveness watchdog (issue 3, item 6), beyond the scenario tests in
//! `scenarios_liveness.rs` (S22 half-open link, S26 busy threads, S29 bound).
//!
//! Why outbound writes can never reset the watchdog: the watchdog lives in
//! the machine and is reset only by `Input::Activity`. The driver produces
//! that input only from an activity report, i.e. `Handle::report_activity`
//! or `LinkReporter::activity` (the in-memory transport calls it for inbound
//! heartbeats). The `Transport` trait has no hook for outbound traffic, and
//! publishers write on the link they take from `Engine::links()`, which the
//! engine never observes. So the only way to postpone death is to report
//! inbound traffic; every other report (flow control, resume) leaves the
//! watchdog's clock alone, which the tests below check.

use crate::engine;

use std::time::Duration;

use engine::*;
use redial::machine::{Generation, Reason, StateKind};
use redial::runtime::Event;
use tokio::time::Instant;

const H: Duration = Duration::from_secs(60);

fn is_liveness_lost(e: &Event) -> bool {
    matches!(e, Event::LivenessLost { .. })
}

/// A link without heartbeats: the test reports inbound traffic itself.
async fn silent_rig() -> Rig {
    let cfg = builder().liveness_timeout(H).build().unwrap();
    Rig::connected(cfg, Probe::memory()).await
}

/// The last inbound frame at `offset` after the connect (checks run every
/// H/2 from the connect): just after a check, death comes 1.5 H - 1 ms
/// later; just before one, H + 1 ms later; with no frame at all, the connect
/// counts as the last one and death comes exactly H after it.
#[tokio::test(start_paused = true)]
async fn death_lands_at_h_to_1_5h_after_the_last_inbound_frame_exactly() {
    for (offset, expected) in [
        (Some(ms(30_001)), H * 3 / 2 - ms(1)),
        (Some(ms(59_999)), H + ms(1)),
        (None, H),
    ] {
        let mut rig = silent_rig().await;
        let mut last = Instant::now();
        if let Some(offset) = offset {
            tokio::time::sleep_until(last + offset).await;
            rig.handle.report_activity(Generation(1));
            last = Instant::now();
        }
        let (died, _) = rig.events.next_matching(is_liveness_lost).await;
        assert_eq!(died - last, expected, "last frame at {offset:?}");
    }
}

/// Runs one timeline: link up at t0, one inbound frame at t0 + 40 s, then
/// silence. With `noise`, the application meanwhile writes on the link
/// every second and the link reports blocked, unblocked and resumed over
/// and over. Returns how long after the frame death came.
async fn death_after_last_frame(noise: bool) -> Duration {
    let mut rig = silent_rig().await;
    tokio::time::sleep(secs(40)).await;
    rig.handle.report_activity(Generation(1));
    let last = Instant::now();
    let noisy = noise.then(|| {
        let (handle, links) = (rig.handle.clone(), rig.engine.links());
        tokio::spawn(async move {
            for i in 0u32.. {
                // A publisher takes the link to write on it: the engine never sees the write.
                drop(links.borrow().clone());
                match i % 3 {
                    0 => handle.report_blocked(Generation(1)),
                    1 => handle.report_unblocked(Generation(1)),
                    _ => handle.report_resumed(Generation(1)),
                };
                tokio::time::sleep(secs(1)).await;
            }
        })
    });
    let (died, _) = rig.events.next_matching(is_liveness_lost).await;
    if let Some(task) = noisy {
        task.abort();
        // The noise did reach the engine: the link went through Blocked.
        let blocked = rig
            .events
            .states()
            .iter()
            .any(|(_, to, _)| *to == StateKind::Blocked);
        assert!(blocked);
    }
    died - last
}

/// Issue 3 item 6 (c): only inbound activity resets the watchdog. The same
/// silent peer dies at the same instant whether or not the application
/// writes and the link reports everything else meanwhile.
#[tokio::test(start_paused = true)]
async fn outbound_traffic_and_other_reports_never_postpone_death() {
    let quiet = death_after_last_frame(false).await;
    let noisy = death_after_last_frame(true).await;
    // Frame at 40 s, seen by the check at 60 s; misses at 90 s and 120 s.
    assert_eq!(quiet, secs(80));
    assert_eq!(noisy, quiet);
}

/// A link that the broker blocked is still watched: a blocked broker may
/// delay heartbeats, but a silent one is still declared dead in the bound.
#[tokio::test(start_paused = true)]
async fn blocked_link_is_still_watched() {
    let mut rig = silent_rig().await;
    tokio::time::sleep(secs(40)).await;
    rig.handle.report_activity(Generation(1));
    rig.handle.report_blocked(Generation(1));
    let last = Instant::now();
    wait_until(&rig.handle, |s| s.state == StateKind::Blocked).await;
    let (died, _) = rig.events.next_matching(is_liveness_lost).await;
    assert_eq!(died - last, secs(80));
    let death = rig
        .events
        .states()
        .into_iter()
        .find(|(_, _, r)| *r == Reason::LivenessLost);
    assert_eq!(death.map(|(from, _, _)| from), Some(StateKind::Blocked));
}

/// A disabled watchdog (which must be asked for explicitly) never fires.
#[tokio::test(start_paused = true)]
async fn disabled_watchdog_never_declares_death() {
    let mut rig = Rig::connected(config(), Probe::memory()).await;
    assert_eq!(config().liveness_timeout(), None);
    tokio::time::sleep(secs(3600)).await;
    assert!(rig.events.liveness_lost().is_empty());
    assert_eq!(rig.generation(), Generation(1));
}
