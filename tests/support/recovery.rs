//! Scenarios B (half-open) and C (outage) of issue 11, shared by
//! `amqp_recovery.rs` and `mqtt_recovery.rs`: the schedules, what a run
//! measured, and the checks, which assert only what noise cannot break.

use std::time::Duration;

use redial::machine::Reason;

use super::chaos::ChaosProxy;

/// The heartbeat / keep-alive every run sets (the only non-default setting).
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// One scenario: publish `messages` at `rate` per second; the fault is on
/// from `from` to `to` after the first publish.
pub struct Scenario {
    pub name: &'static str,
    pub messages: u64,
    pub rate: u64,
    pub from: Duration,
    pub to: Duration,
    pub fault: fn(&ChaosProxy, bool),
}

/// B: from 2 s to 22 s nothing is forwarded either way, and connections
/// made meanwhile are swallowed (they stay dead after it lifts).
pub const HALF_OPEN: Scenario = Scenario {
    name: "half-open B",
    messages: 3_000,
    rate: 300,
    from: Duration::from_secs(2),
    to: Duration::from_secs(22),
    fault: |p, on| p.blackhole_swallowing(on),
};

/// C: from 2 s to 12 s every connection is reset and new ones refused.
pub const OUTAGE: Scenario = Scenario {
    name: "outage C",
    messages: 2_000,
    rate: 200,
    from: Duration::from_secs(2),
    to: Duration::from_secs(12),
    fault: |p, on| {
        p.refuse(on);
        if on {
            p.sever();
        }
    },
};

/// What one run measured.
#[derive(Debug)]
pub struct Figures {
    pub adapter: &'static str,
    pub resolved: usize,
    pub failed: usize,
    /// Confirmed but never seen by the witness.
    pub lost: usize,
    /// Fault start to the first change out of `connected`, and its reason.
    pub left_connected: Option<(Duration, Reason)>,
    /// Fault end to the first confirm on a link that came up after it.
    pub recovery: Option<Duration>,
    pub attempts_in_fault: u64,
    pub probes_in_fault: u64,
}

impl Figures {
    fn print(&self, s: &Scenario) {
        println!(
            "{} {}: {} resolved, {} failed, {} lost; left connected {:?}; first confirm {:?} \
             after the fault ended; {} attempts and {} probes during the fault",
            self.adapter,
            s.name,
            self.resolved,
            self.failed,
            self.lost,
            self.left_connected,
            self.recovery,
            self.attempts_in_fault,
            self.probes_in_fault,
        );
    }

    /// Every publish confirmed, and seen.
    fn check_delivery(&self, s: &Scenario) {
        assert_eq!(self.resolved as u64, s.messages, "every publish resolved");
        assert_eq!(self.failed, 0, "failed publishes");
        assert_eq!(self.lost, 0, "confirmed but never delivered");
    }

    /// The return was noticed by a probe within a bound far below the
    /// schedule's next attempt (1 s, then 2, 4... after a failure): the
    /// target is 1 s, the slack is for a loaded 2-core machine.
    fn check_recovery(&self) {
        let recovery = self
            .recovery
            .expect("a confirm on a new link after the fault");
        assert!(
            recovery <= Duration::from_secs(3),
            "first confirm {recovery:?} after the fault ended"
        );
    }
}

/// B's checks.
pub fn check_half_open(f: &Figures) {
    let s = &HALF_OPEN;
    f.print(s);
    f.check_delivery(s);
    // A watchdog, not TCP: the blackholed sockets stay open and TCP would
    // take many minutes to give up, so a loss within 1.5 x the heartbeat (+
    // 1.5 s for a loaded machine) was found by the engine's watchdog
    // (liveness_lost) or the adapter's own heartbeat check (link_lost).
    let (detection, reason) = f.left_connected.expect("the link was found dead");
    assert!(
        matches!(reason, Reason::LivenessLost | Reason::LinkLost),
        "left connected by {reason:?}"
    );
    assert!(
        detection <= HEARTBEAT * 3 / 2 + Duration::from_millis(1_500),
        "detection took {detection:?}"
    );
    assert!(f.probes_in_fault > 0, "no probe was sent");
    f.check_recovery();
}

/// C's checks: the immediate retry, then probes only (the schedule alone
/// makes 5 attempts in 10 s).
pub fn check_outage(f: &Figures) {
    let s = &OUTAGE;
    f.print(s);
    f.check_delivery(s);
    assert!(
        f.attempts_in_fault <= 2,
        "{} attempts during the outage",
        f.attempts_in_fault
    );
    assert!(
        f.probes_in_fault >= 10,
        "{} probes during the outage",
        f.probes_in_fault
    );
    f.check_recovery();
}
