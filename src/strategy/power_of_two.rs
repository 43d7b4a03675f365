//! `power-of-two`: two random fitting machines, the less loaded of them (SPEC §5).
//!
//! Power of two choices (Mitzenmacher, "The Power of Two Choices in Randomized Load
//! Balancing", 2001; tower's `balance::p2c`): sample two *distinct* fitting machines uniformly
//! at random and take the one with the lower load %. Compared with `random` this avoids the
//! busiest machines at O(1) comparison cost; compared with `least-load` it does not send every
//! new connection to the same machine between load updates.
//!
//! Only fitting machines are sampled (as tower samples only ready endpoints), so the result
//! always fits. With a single fitting machine it is returned without drawing. The two
//! candidates are distinct: the second index is drawn from the `n − 1` remaining ones.
//! Loads are compared exactly with `cmp_load`; on a tie the older machine (lower index)
//! wins.
//!
//! The RNG is an [`AtomicRng`] seeded from `dispatcher.seed`, so picks are reproducible.

use std::cmp::Ordering;

use super::least_load::cmp_load;
use super::pick::{nth_fitting, MachineView, PickRequest, Strategy};
use super::rng::AtomicRng;
use crate::core::StrategyKind;

/// Power of two choices over the fitting machines; ties to the older machine.
#[derive(Debug)]
pub struct PowerOfTwo {
    /// The source of the samples.
    rng: AtomicRng,
}

impl PowerOfTwo {
    /// Creates the strategy with an RNG seeded from `seed`.
    pub fn new(seed: u64) -> Self {
        PowerOfTwo {
            rng: AtomicRng::new(seed),
        }
    }
}

impl Strategy for PowerOfTwo {
    fn kind(&self) -> StrategyKind {
        StrategyKind::PowerOfTwo
    }

    fn pick(&self, machines: &[MachineView], _request: &PickRequest) -> Option<usize> {
        let count = machines.iter().filter(|m| m.fits).count();
        match count {
            0 => return None,
            1 => return nth_fitting(machines, 0),
            _ => {}
        }
        // Two distinct ranks among the fitting machines: draw the second from the remaining
        // `count − 1` and shift it past the first.
        let first = self.rng.below(count);
        let mut second = self.rng.below(count - 1);
        if second >= first {
            second += 1;
        }
        let a = nth_fitting(machines, first)?;
        let b = nth_fitting(machines, second)?;
        // Order the pair by age so that a tie goes to the older machine.
        let (older, younger) = if a < b { (a, b) } else { (b, a) };
        match cmp_load(&machines[younger], &machines[older]) {
            Ordering::Less => Some(younger),
            Ordering::Equal | Ordering::Greater => Some(older),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::testing::{request, views};

    fn counts(p2c: &PowerOfTwo, machines: &[MachineView], n: usize) -> Vec<u32> {
        let mut counts = vec![0u32; machines.len()];
        for _ in 0..n {
            let i = p2c.pick(machines, &request()).expect("some machine fits");
            counts[i] += 1;
        }
        counts
    }

    #[test]
    fn prefers_less_loaded_machines() {
        let p2c = PowerOfTwo::new(42);
        // 10%, 50%, 90% loaded. Of the three equally likely pairs, the least loaded machine
        // is in two (2/3 of picks), the middle one wins one (1/3), the busiest never wins.
        let machines = views(&[(100, 50, true), (100, 90, true), (200, 20, true)]);
        let got = counts(&p2c, &machines, 30_000);
        assert_eq!(got[1], 0, "{got:?}");
        assert!((19_000..=21_000).contains(&got[2]), "{got:?}");
        assert!((9_000..=11_000).contains(&got[0]), "{got:?}");
    }

    #[test]
    fn samples_two_distinct_machines() {
        let p2c = PowerOfTwo::new(5);
        // With exactly two fitting machines both are always compared, so the busier one
        // (which would win if it could be drawn twice) is never picked.
        let machines = views(&[(100, 80, true), (100, 100, false), (100, 20, true)]);
        assert_eq!(counts(&p2c, &machines, 1_000), [0, 0, 1_000]);
    }

    #[test]
    fn ties_go_to_the_older_machine() {
        let p2c = PowerOfTwo::new(9);
        // Same load (25%) on different sizes: the older machine wins every time.
        let machines = views(&[(100, 100, false), (400, 100, true), (100, 25, true)]);
        assert_eq!(counts(&p2c, &machines, 1_000), [0, 1_000, 0]);
        // All equal among three: the youngest is never the older of a pair.
        let machines = views(&[(100, 50, true), (100, 50, true), (100, 50, true)]);
        let got = counts(&p2c, &machines, 3_000);
        assert_eq!(got[2], 0, "{got:?}");
    }

    #[test]
    fn never_picks_a_machine_that_does_not_fit() {
        let p2c = PowerOfTwo::new(11);
        // The idle machines do not fit (big reservation); the fitting ones are busier.
        let machines = views(&[
            (10, 0, false),
            (100, 70, true),
            (10, 0, false),
            (100, 60, true),
            (100, 90, true),
            (10, 0, false),
        ]);
        let got = counts(&p2c, &machines, 10_000);
        assert_eq!((got[0], got[2], got[5]), (0, 0, 0), "{got:?}");
        assert_eq!(got[4], 0, "the busiest machine never wins: {got:?}");
    }

    #[test]
    fn returns_the_only_fitting_machine() {
        let p2c = PowerOfTwo::new(2);
        let machines = views(&[(100, 100, false), (100, 99, true), (100, 0, false)]);
        assert_eq!(counts(&p2c, &machines, 100), [0, 100, 0]);
    }

    #[test]
    fn returns_none_when_nothing_fits() {
        let p2c = PowerOfTwo::new(2);
        assert_eq!(p2c.pick(&[], &request()), None);
        let machines = views(&[(100, 100, false), (100, 100, false)]);
        assert_eq!(p2c.pick(&machines, &request()), None);
    }

    #[test]
    fn same_seed_gives_the_same_picks() {
        let machines = views(&[
            (100, 10, true),
            (100, 10, true),
            (100, 10, true),
            (100, 5, true),
        ]);
        let run = |seed| {
            let p2c = PowerOfTwo::new(seed);
            (0..1000)
                .map(|_| p2c.pick(&machines, &request()))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
    }
}
