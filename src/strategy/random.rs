//! `random`: a uniformly random fitting machine (SPEC §5).
//!
//! Each pick counts the fitting machines, draws `k` uniformly from `0..count` and returns the
//! `k`-th fitting machine, so every fitting machine has the same chance and a machine that
//! does not fit has none. Two passes over the views avoid allocating on the admission path.
//! There are no ties to break.
//!
//! The RNG is an [`AtomicRng`] seeded from `dispatcher.seed`, so a fixed seed gives a
//! reproducible sequence of picks for the same sequence of views.

use super::pick::{nth_fitting, MachineView, PickRequest, Strategy};
use super::rng::AtomicRng;
use crate::core::StrategyKind;

/// Uniformly random choice among the fitting machines.
#[derive(Debug)]
pub struct Random {
    /// The source of the draws.
    rng: AtomicRng,
}

impl Random {
    /// Creates the strategy with an RNG seeded from `seed`.
    pub fn new(seed: u64) -> Self {
        Random {
            rng: AtomicRng::new(seed),
        }
    }
}

impl Strategy for Random {
    fn kind(&self) -> StrategyKind {
        StrategyKind::Random
    }

    fn pick(&self, machines: &[MachineView], _request: &PickRequest) -> Option<usize> {
        let count = machines.iter().filter(|m| m.fits).count();
        if count == 0 {
            return None;
        }
        nth_fitting(machines, self.rng.below(count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::testing::{request, views};

    #[test]
    fn spreads_uniformly_over_fitting_machines() {
        let random = Random::new(42);
        // Three fitting machines of different sizes and loads, and two that do not fit.
        let machines = views(&[
            (100, 0, true),
            (100, 100, false),
            (400, 300, true),
            (50, 50, false),
            (100, 99, true),
        ]);
        let mut counts = [0u32; 5];
        for _ in 0..30_000 {
            let i = random
                .pick(&machines, &request())
                .expect("three machines fit");
            counts[i] += 1;
        }
        assert_eq!((counts[1], counts[3]), (0, 0));
        for i in [0, 2, 4] {
            // 1/3 of 30_000 = 10_000, ±5%.
            assert!(
                (9_500..=10_500).contains(&counts[i]),
                "machine {i} got {} of 30000: {counts:?}",
                counts[i]
            );
        }
    }

    #[test]
    fn same_seed_gives_the_same_picks() {
        let machines = views(&[(100, 0, true); 7]);
        let run = |seed| {
            let random = Random::new(seed);
            (0..1000)
                .map(|_| random.pick(&machines, &request()))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn never_picks_a_machine_that_does_not_fit() {
        let random = Random::new(1);
        let machines = views(&[
            (100, 100, false),
            (100, 0, true),
            (100, 100, false),
            (100, 0, true),
            (100, 100, false),
        ]);
        for _ in 0..10_000 {
            let i = random
                .pick(&machines, &request())
                .expect("two machines fit");
            assert!(machines[i].fits);
        }
    }

    #[test]
    fn returns_the_only_fitting_machine() {
        let random = Random::new(3);
        let machines = views(&[(100, 100, false), (100, 100, false), (100, 0, true)]);
        for _ in 0..100 {
            assert_eq!(random.pick(&machines, &request()), Some(2));
        }
    }

    #[test]
    fn returns_none_when_nothing_fits() {
        let random = Random::new(3);
        assert_eq!(random.pick(&[], &request()), None);
        let machines = views(&[(100, 100, false), (100, 100, false)]);
        assert_eq!(random.pick(&machines, &request()), None);
    }
}
