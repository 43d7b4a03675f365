//! `first`: the oldest fitting machine below the scale-up threshold (HAProxy's `first`).
//!
//! HAProxy's `balance first` fills the first server up to its `maxconn` before using the
//! next, so that the servers at the end of the list stay idle and can be stopped. Here the
//! "slot limit" is the scale-up threshold: the oldest fitting machine whose load is below
//! `autoscaler.scale_up_threshold` gets the work, so load packs onto the oldest machines and
//! scale-down can retire the newest ones, instead of being spread thin over all of them.
//!
//! When every fitting machine is at or above the threshold, the least-loaded fitting machine
//! is picked (ties to the older), so a full set still shares the excess evenly while the
//! autoscaler adds capacity.

use super::least_load::cmp_load;
use super::pick::{least_fitting, MachineView, PickRequest, Strategy};
use crate::core::StrategyKind;

/// Packs load onto the oldest machines, up to `pack_below` percent each.
#[derive(Debug)]
pub struct First {
    /// Load (percent) below which a machine still takes work first.
    pack_below: f64,
}

impl First {
    /// Creates the strategy packing machines up to `pack_below` percent.
    pub fn new(pack_below: f64) -> Self {
        First { pack_below }
    }
}

impl Strategy for First {
    fn kind(&self) -> StrategyKind {
        StrategyKind::First
    }

    fn pick(&self, machines: &[MachineView], _request: &PickRequest) -> Option<usize> {
        machines
            .iter()
            .position(|m| m.fits && m.load_percent() < self.pack_below)
            // As `least-load`: the least loaded fitting machine, ties to the older.
            .or_else(|| least_fitting(machines, cmp_load))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::testing::{request, views};

    #[test]
    fn packs_the_oldest_machine_below_the_threshold() {
        let first = First::new(50.0);
        // m1 at 60 % is past the threshold, m2 at 40 % is not, m3 is idle.
        let machines = views(&[(100, 60, true), (100, 40, true), (100, 0, true)]);
        assert_eq!(first.pick(&machines, &request()), Some(1));
    }

    #[test]
    fn skips_machines_that_do_not_fit() {
        let first = First::new(50.0);
        let machines = views(&[(100, 10, false), (100, 30, true)]);
        assert_eq!(first.pick(&machines, &request()), Some(1));
    }

    #[test]
    fn falls_back_to_the_least_loaded_when_all_are_past_the_threshold() {
        let first = First::new(50.0);
        let machines = views(&[(100, 90, true), (100, 70, true), (100, 70, true)]);
        assert_eq!(
            first.pick(&machines, &request()),
            Some(1),
            "ties go to the older"
        );
        assert_eq!(first.pick(&views(&[(100, 90, false)]), &request()), None);
    }
}
