//! `least-connections`: the fitting machine with the most free capacity (SPEC §5).
//!
//! Free capacity is `capacity − used` ([`MachineView::free`]) in exact fixed-point
//! [`Units`](crate::core::Units), so this favours big machines: a half-empty large machine
//! beats a nearly empty small one. (`least-load` compares percentages instead.)
//!
//! One pass over the views (`pick::least_fitting`) keeps the first of the machines with the
//! most free capacity, so ties go to the older machine (the one earlier in creation order).

use super::pick::{least_fitting, MachineView, PickRequest, Strategy};
use crate::core::StrategyKind;

/// Most free capacity among the fitting machines; ties to the older machine.
#[derive(Debug, Default)]
pub struct LeastConnections;

impl LeastConnections {
    /// Creates the strategy (it has no state).
    pub fn new() -> Self {
        LeastConnections
    }
}

impl Strategy for LeastConnections {
    fn kind(&self) -> StrategyKind {
        StrategyKind::LeastConnections
    }

    fn pick(&self, machines: &[MachineView], _request: &PickRequest) -> Option<usize> {
        // More free capacity orders first; an equal younger machine never displaces the older.
        least_fitting(machines, |a, b| b.free().cmp(&a.free()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::testing::{request, view, views};

    fn pick(machines: &[MachineView]) -> Option<usize> {
        LeastConnections::new().pick(machines, &request())
    }

    #[test]
    fn picks_the_most_free_capacity_with_mixed_capacities() {
        // Free: 60, 140, 90. The 200-capacity machine wins although it is 30% used.
        let machines = views(&[(100, 40, true), (200, 60, true), (100, 10, true)]);
        assert_eq!(pick(&machines), Some(1));
        // Free: 80, 200: the big machine wins even at 50% load against 20%.
        let machines = views(&[(100, 20, true), (400, 200, true)]);
        assert_eq!(pick(&machines), Some(1));
    }

    #[test]
    fn ties_go_to_the_older_machine() {
        // Free 50 everywhere.
        let machines = views(&[(100, 50, true), (50, 0, true), (200, 150, true)]);
        assert_eq!(pick(&machines), Some(0));
        // A more free younger machine still wins, and ties after it go to it.
        let machines = views(&[(100, 50, true), (100, 0, true), (300, 200, true)]);
        assert_eq!(pick(&machines), Some(1));
    }

    #[test]
    fn compares_exact_milli_units() {
        let mut a = view(1, 100, 50, true);
        let b = view(2, 100, 50, true);
        // One milli-unit less used on the younger machine is enough.
        a.used.0 += 1;
        assert_eq!(pick(&[a, b]), Some(1));
    }

    #[test]
    fn never_picks_a_machine_that_does_not_fit() {
        // The machine with the most free capacity does not fit (a big reservation).
        let machines = views(&[(100, 90, true), (1000, 0, false), (100, 50, true)]);
        assert_eq!(pick(&machines), Some(2));
    }

    #[test]
    fn returns_none_when_nothing_fits() {
        assert_eq!(pick(&[]), None);
        let machines = views(&[(100, 100, false), (1000, 0, false)]);
        assert_eq!(pick(&machines), None);
    }
}
