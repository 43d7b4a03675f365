//! A seedable random source that many threads can draw from through `&self`.
//!
//! Strategies are shared by every connection task (per-request routing) and by the
//! dispatcher, so they pick through `&self`. The generator is splitmix64 over an atomic
//! counter (Steele, Lea & Flood, 2014): each draw is one `fetch_add` and a mixing function,
//! never a lock. From one seed, the sequence of draws is fixed, so single-threaded callers
//! (the dispatcher, unit tests) get reproducible picks; concurrent callers each get distinct
//! draws of that sequence.

use std::sync::atomic::{AtomicU64, Ordering};

/// splitmix64's increment (the golden ratio in 64 bits).
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The splitmix64 output function: a bijection on `u64` with full avalanche. Its output is
/// fixed forever (unlike std's hashers), so seeded runs and hash rings never change.
pub fn mix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A lock-free splitmix64 generator.
#[derive(Debug)]
pub struct AtomicRng {
    state: AtomicU64,
}

impl AtomicRng {
    /// A generator whose sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        AtomicRng {
            state: AtomicU64::new(mix64(seed)),
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&self) -> u64 {
        mix64(self.state.fetch_add(GOLDEN, Ordering::Relaxed))
    }

    /// A uniform draw from `0..n` (`n > 0`), by multiply-shift (Lemire, 2019); the bias is
    /// below `n / 2^64`, far under anything measurable here.
    pub fn below(&self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_stay_in_range_and_repeat_per_seed() {
        let (a, b) = (AtomicRng::new(5), AtomicRng::new(5));
        for _ in 0..1000 {
            let x = a.below(7);
            assert!(x < 7);
            assert_eq!(x, b.below(7));
        }
        assert_ne!(AtomicRng::new(1).next_u64(), AtomicRng::new(2).next_u64());
    }
}
