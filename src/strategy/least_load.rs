//! `least-load`: the fitting machine with the lowest load % (SPEC §5).
//!
//! Load is `used / capacity` ([`MachineView::load_percent`]), so unlike `least-connections`
//! this treats machines of different sizes alike: a 200-unit machine with 60 used (30%) beats
//! a 100-unit machine with 40 used (40%), and a 100-unit machine with 20 used (20%) beats a
//! 400-unit one with 200 used (50%) even though the latter has more free capacity.
//!
//! Loads are compared exactly by `cmp_load`, which cross-multiplies the fixed-point
//! milli-units in `u128` (`used_a × capacity_b` against `used_b × capacity_a`) instead of
//! dividing in floating point, so equal ratios such as 1/3 and 7/21 are real ties. Ties go to
//! the older machine: `pick::least_fitting` keeps the first of equally loaded machines.

use std::cmp::Ordering;

use super::pick::{least_fitting, MachineView, PickRequest, Strategy};
use crate::core::StrategyKind;

/// Lowest load % among the fitting machines; ties to the older machine.
#[derive(Debug, Default)]
pub struct LeastLoad;

impl LeastLoad {
    /// Creates the strategy (it has no state).
    pub fn new() -> Self {
        LeastLoad
    }
}

impl Strategy for LeastLoad {
    fn kind(&self) -> StrategyKind {
        StrategyKind::LeastLoad
    }

    fn pick(&self, machines: &[MachineView], _request: &PickRequest) -> Option<usize> {
        // Only strictly less loaded displaces the older machine.
        least_fitting(machines, cmp_load)
    }
}

/// Compares the loads (`used / capacity`) of two machines exactly.
///
/// A zero capacity counts as load 0, as in [`MachineView::load_percent`].
pub(crate) fn cmp_load(a: &MachineView, b: &MachineView) -> Ordering {
    // (numerator, denominator) with a non-zero denominator; u64 × u64 always fits in u128.
    let ratio = |m: &MachineView| match m.capacity.0 {
        0 => (0u128, 1u128),
        capacity => (u128::from(m.used.0), u128::from(capacity)),
    };
    let (used_a, capacity_a) = ratio(a);
    let (used_b, capacity_b) = ratio(b);
    (used_a * capacity_b).cmp(&(used_b * capacity_a))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::least_connections::LeastConnections;
    use crate::strategy::testing::{request, view, views};

    fn pick(machines: &[MachineView]) -> Option<usize> {
        LeastLoad::new().pick(machines, &request())
    }

    #[test]
    fn picks_the_lowest_load_percent_with_mixed_capacities() {
        // 40% and 30%: the 200-capacity machine wins with more used units.
        let machines = views(&[(100, 40, true), (200, 60, true)]);
        assert_eq!(pick(&machines), Some(1));
        // 50%, 20%, 25%.
        let machines = views(&[(400, 200, true), (100, 20, true), (40, 10, true)]);
        assert_eq!(pick(&machines), Some(1));
    }

    #[test]
    fn differs_from_least_connections_when_capacities_differ() {
        // 20% used with 80 free against 50% used with 200 free.
        let machines = views(&[(100, 20, true), (400, 200, true)]);
        assert_eq!(pick(&machines), Some(0));
        let by_free = LeastConnections::new().pick(&machines, &request());
        assert_eq!(by_free, Some(1));
    }

    #[test]
    fn ties_go_to_the_older_machine() {
        // 1/3 and 7/21 are the same load; compare exactly, not as rounded floats.
        let machines = views(&[(3, 1, true), (21, 7, true), (300, 100, true)]);
        assert_eq!(pick(&machines), Some(0));
        // Idle machines of any size tie at 0%.
        let machines = views(&[(100, 100, false), (50, 0, true), (400, 0, true)]);
        assert_eq!(pick(&machines), Some(1));
    }

    #[test]
    fn compares_loads_exactly() {
        let a = view(1, 3, 1, true);
        let b = view(2, 21, 7, true);
        assert_eq!(cmp_load(&a, &b), Ordering::Equal);
        let mut c = b;
        c.used.0 -= 1; // one milli-unit less
        assert_eq!(cmp_load(&c, &a), Ordering::Less);
        assert_eq!(pick(&[a, c]), Some(1));
        // Huge values do not overflow.
        let mut big = view(3, 0, 0, true);
        big.capacity.0 = u64::MAX;
        big.used.0 = u64::MAX - 1;
        let mut full = big;
        full.used.0 = u64::MAX;
        assert_eq!(cmp_load(&big, &full), Ordering::Less);
    }

    #[test]
    fn zero_capacity_counts_as_idle() {
        let zero = view(1, 0, 0, true);
        let busy = view(2, 100, 1, true);
        assert_eq!(cmp_load(&zero, &busy), Ordering::Less);
        assert_eq!(cmp_load(&zero, &view(3, 100, 0, true)), Ordering::Equal);
    }

    #[test]
    fn never_picks_a_machine_that_does_not_fit() {
        // The least loaded machine does not fit (a reservation bigger than its capacity).
        let machines = views(&[(100, 90, true), (10, 0, false), (100, 50, true)]);
        assert_eq!(pick(&machines), Some(2));
    }

    #[test]
    fn returns_none_when_nothing_fits() {
        assert_eq!(pick(&[]), None);
        let machines = views(&[(100, 100, false), (1000, 0, false)]);
        assert_eq!(pick(&machines), None);
    }
}
