//! The machine's pseudo-random generator: SplitMix64.
//!
//! Chosen because it is four lines in any language with 64-bit wrapping
//! arithmetic, so a port reproduces the exact same jittered delays from the
//! same seed (see `docs/spec.md`, "PRNG").

/// SplitMix64 (Steele, Lea, Flood 2014), as published by Vigna.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose first output is derived from `seed`.
    pub const fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform draw from the inclusive range `[lo, hi]` (`lo` when `hi <= lo`).
    ///
    /// Uses `lo + next % (hi - lo + 1)`: the modulo bias is below 2^-23 for
    /// the millisecond ranges the backoff uses, and the formula is trivial to
    /// port exactly.
    pub fn uniform_inclusive(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        let span = hi - lo;
        let r = self.next_u64();
        match span.checked_add(1) {
            Some(n) => lo + r % n,
            None => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_reference_outputs() {
        // Reference values of SplitMix64 seeded with 1234567.
        let mut rng = SplitMix64::new(1_234_567);
        let got: Vec<u64> = (0..3).map(|_| rng.next_u64()).collect();
        assert_eq!(
            got,
            vec![
                6_457_827_717_110_365_317,
                3_203_168_211_198_807_973,
                9_817_491_932_198_370_423
            ]
        );
    }

    #[test]
    fn uniform_stays_in_range() {
        let mut rng = SplitMix64::new(7);
        for _ in 0..10_000 {
            let v = rng.uniform_inclusive(10, 20);
            assert!((10..=20).contains(&v));
        }
        assert_eq!(rng.uniform_inclusive(5, 5), 5);
        assert_eq!(rng.uniform_inclusive(9, 3), 9);
    }
}
