//! Jitter seeds: random unless asked for, so that a fleet built from
//! defaults spreads its retries; a fixed seed still replays exactly.

use std::collections::HashSet;

use redial::backoff::BackoffState;
use redial::machine::Config;

/// `Config::default()` used to fix the seed at 0: every process jittered
/// identically.
#[test]
fn default_configs_draw_different_seeds() {
    let seeds: HashSet<u64> = (0..64).map(|_| Config::default().seed()).collect();
    assert_eq!(seeds.len(), 64, "every default config draws its own seed");
    assert!(!seeds.contains(&0));
    // The rest of the default is the builder's default.
    let (a, b) = (Config::default(), Config::builder().build().unwrap());
    assert_eq!(a.backoff(), b.backoff());
    assert_eq!(a.liveness_timeout(), b.liveness_timeout());
    assert_eq!(a.connect_timeout(), b.connect_timeout());
}

/// A fixed seed (as the conformance vectors use) stays deterministic.
#[test]
fn a_fixed_seed_draws_the_same_delays() {
    let draw = |config: &Config| {
        let mut s = BackoffState::new(config.backoff(), config.seed());
        (0..16)
            .map(|_| s.next_delay_ms(config.backoff()))
            .collect::<Vec<_>>()
    };
    let a = Config::builder().seed(0).build().unwrap();
    let b = Config::builder().seed(0).build().unwrap();
    assert_eq!(a.seed(), 0);
    assert_eq!(draw(&a), draw(&b));
}
