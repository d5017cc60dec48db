//! Property tests of endpoint selection (docs/spec.md, section 12.1): the
//! promises a cluster user relies on, stated directly rather than through
//! the reference model of `machine_props.rs`.
//!
//! - With k >= 1 of n endpoints up, a link is up within one round (at most
//!   n attempts) and without any wait, at the start and after a stable
//!   link's node dies.
//! - No endpoint is tried twice in a row while another is untried: every n
//!   consecutive failed tries of an outage name n distinct endpoints, also
//!   across backoff waits and probe rounds.
//! - The shuffle spreads a fleet: every endpoint is some engines' first.
//!
//! Every step also runs the invariant checker (`endpoint_rounds` among them).
//! `PROPTEST_CASES` overrides the number of cases (default 1,000).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use redial::machine::{Config, ErrorKind, Input, Machine, Output, ProbeOutcome};
use redial::unstable::invariants::Checker;

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000)
}

/// A machine under the checker, fed at one instant unless told otherwise.
struct Run {
    machine: Machine,
    checker: Checker,
    now: Instant,
}

impl Run {
    fn new(config: Config) -> Self {
        let machine = Machine::new(config);
        let checker = Checker::new(&machine);
        Self {
            machine,
            checker,
            now: Instant::now(),
        }
    }

    fn feed(&mut self, input: Input) -> Vec<Output> {
        self.checker
            .drive(&mut self.machine, self.now, input)
            .unwrap_or_else(|v| panic!("{v}"))
    }

    /// Moves to the next timer and fires it.
    fn wait(&mut self) -> Vec<Output> {
        self.now = self.machine.poll_timeout().expect("a timer is armed");
        self.feed(Input::Timeout)
    }

    /// Answers every open at once (up endpoints succeed) until a link is up
    /// or the machine waits; returns the endpoints opened.
    fn answer_opens(&mut self, mut outputs: Vec<Output>, up: &BTreeSet<u32>) -> Vec<u32> {
        let mut opened = Vec::new();
        while let Some(endpoint) = outputs.iter().find_map(|o| match o {
            Output::Open { endpoint, .. } => Some(*endpoint),
            _ => None,
        }) {
            opened.push(endpoint);
            let generation = self.machine.generation();
            outputs = if up.contains(&endpoint) {
                self.feed(Input::AttemptSucceeded { generation })
            } else {
                self.feed(Input::failed(generation, ErrorKind::Transient))
            };
        }
        opened
    }
}

/// n endpoints and a non-empty set of them that is up.
fn cluster() -> impl Strategy<Value = (u32, BTreeSet<u32>)> {
    (2..=7u32).prop_flat_map(|n| {
        let up = prop::collection::btree_set(0..n, 1..=n as usize);
        (Just(n), up)
    })
}

fn config(n: u32, seed: u64, probes: bool) -> Config {
    let builder = Config::builder().endpoints(n as usize).seed(seed);
    let builder = if probes {
        builder.probe_interval(ms(500))
    } else {
        builder.no_probe_interval()
    };
    builder.build().expect("a valid configuration")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// k of n up: connected within one round, without waiting, at the start
    /// and again when the node of a stable link dies.
    #[test]
    fn k_of_n_up_connects_within_one_round(
        (n, up) in cluster(),
        seed in any::<u64>(),
        probes in any::<bool>(),
        dies in any::<bool>(),
    ) {
        let mut run = Run::new(config(n, seed, probes));
        let out = run.feed(Input::Start);
        let opened = run.answer_opens(out, &up);
        prop_assert!(run.machine.is_connected(), "not connected after {opened:?}");
        prop_assert!(opened.len() <= n as usize, "{opened:?} exceeds one round of {n}");
        let home = run.machine.endpoint();
        prop_assert!(up.contains(&home));

        // The link stays up past the stable period, then its node dies (or
        // the link just drops while the node stays up).
        run.now += ms(60_000);
        let mut up_now = up.clone();
        if dies && up.len() > 1 {
            up_now.remove(&home);
        }
        let generation = run.machine.generation();
        let out = run.feed(Input::lost(generation, ErrorKind::Transient));
        let opened = run.answer_opens(out, &up_now);
        prop_assert!(run.machine.is_connected(), "not reconnected after {opened:?}");
        prop_assert!(opened.len() <= n as usize, "{opened:?} exceeds one round of {n}");
        prop_assert_eq!(opened[0], home, "the first try returns to the healthy node");
        if up_now.contains(&home) {
            prop_assert_eq!(opened.len(), 1);
        }
    }

    /// With every endpoint down for several rounds, every n consecutive
    /// tries that failed name n distinct endpoints; with probes, each probe
    /// round answers `unreachable` at once or not at all.
    #[test]
    fn no_endpoint_tried_twice_while_another_is_untried(
        n in 2..=6u32,
        seed in any::<u64>(),
        probes in any::<bool>(),
        silent_probes in prop::collection::vec(any::<bool>(), 40),
    ) {
        let mut run = Run::new(config(n, seed, probes));
        let down = BTreeSet::new();
        let mut tries: Vec<u32> = Vec::new();
        let mut out = run.feed(Input::Start);
        for silent in silent_probes {
            tries.extend(run.answer_opens(out, &down));
            // Waiting: a backoff, or a probe in flight.
            out = match run.machine.state() {
                redial::machine::State::BackingOff { probe: Some(probe), .. } => {
                    let probe = *probe;
                    tries.push(run.machine.endpoint());
                    if silent {
                        run.wait()
                    } else {
                        run.feed(Input::Probed { probe, outcome: ProbeOutcome::Unreachable })
                    }
                }
                _ => run.wait(),
            };
            if let Some(Output::Probe { endpoint, .. }) = out.last() {
                prop_assert_eq!(*endpoint, run.machine.endpoint());
            }
        }
        for window in tries.windows(n as usize) {
            let distinct: BTreeSet<u32> = window.iter().copied().collect();
            prop_assert_eq!(distinct.len(), n as usize, "tries {:?}", tries);
        }
        prop_assert!(tries.len() >= n as usize);
    }
}

/// A fleet with the same endpoint list spreads its first attempts over every
/// endpoint, about evenly.
#[test]
fn the_shuffle_spreads_a_fleet_over_the_endpoints() {
    let n = 3;
    let engines = 3_000;
    let mut firsts = [0u32; 3];
    for seed in 0..engines {
        let machine = Machine::new(config(n, seed, false));
        firsts[machine.endpoint() as usize] += 1;
    }
    for count in firsts {
        assert!(
            (800..=1_200).contains(&count),
            "first endpoints of {engines} engines: {firsts:?}"
        );
    }
}

/// One endpoint: the order is [0] and every open names endpoint 0.
#[test]
fn a_single_endpoint_is_always_endpoint_zero() {
    let mut run = Run::new(config(1, 9, false).clone());
    assert_eq!(run.machine.endpoint_order(), &[0]);
    let out = run.feed(Input::Start);
    assert!(matches!(out.last(), Some(Output::Open { endpoint: 0, .. })));
    let mut none_up = BTreeSet::new();
    let opened = run.answer_opens(out, &none_up);
    assert_eq!(opened, vec![0]);
    none_up.insert(0);
    let out = run.wait();
    assert_eq!(run.answer_opens(out, &none_up), vec![0]);
}
