//! `round-robin`: the next fitting machine in turn (SPEC §5).
//!
//! The cursor is the [`MachineId`] of the last machine picked, not an index: each pick takes
//! the fitting machine with the smallest id greater than the cursor, wrapping around to the
//! smallest fitting id when there is none. Because ids are stable and never reused, adding or
//! retiring machines does not skew the rotation: a new machine simply joins the cycle at its
//! place in id order, and a retired one drops out of it, even when it held the cursor.
//!
//! Machines that do not fit are skipped without consuming a turn. There are no ties: ids are
//! unique, and the cycle runs from the older machines to the newer ones.

use std::sync::atomic::{AtomicU32, Ordering};

use super::pick::{MachineView, PickRequest, Strategy};
use crate::core::MachineId;
use crate::core::StrategyKind;

/// Round-robin over the fitting machines, in id order.
///
/// NOTE: the cursor is one atomic. Two threads picking at the same instant may both start
/// from the same cursor and pick the same machine; the rotation stays fair over many
/// picks, which is all round-robin promises, and no lock is taken.
#[derive(Debug, Default)]
pub struct RoundRobin {
    /// The id of the last machine picked; 0 (no machine has it) before the first pick.
    last: AtomicU32,
}

impl RoundRobin {
    /// Creates the strategy; the first pick goes to the oldest fitting machine.
    pub fn new() -> Self {
        RoundRobin::default()
    }
}

impl Strategy for RoundRobin {
    fn kind(&self) -> StrategyKind {
        StrategyKind::RoundRobin
    }

    fn pick(&self, machines: &[MachineView], _request: &PickRequest) -> Option<usize> {
        // NOTE: the views come in ascending id order, but taking the minimum id (rather than the
        // first match) keeps the rotation correct even if a caller passed them in another order.
        let fitting = || machines.iter().enumerate().filter(|(_, m)| m.fits);
        let last = MachineId(self.last.load(Ordering::Relaxed));
        let after_cursor = fitting()
            .filter(|(_, m)| m.id > last)
            .min_by_key(|(_, m)| m.id);
        let (index, machine) = after_cursor.or_else(|| fitting().min_by_key(|(_, m)| m.id))?;
        self.last.store(machine.id.0, Ordering::Relaxed);
        Some(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::testing::{idle, request, view, views};

    fn picks(rr: &RoundRobin, machines: &[MachineView], n: usize) -> Vec<Option<usize>> {
        (0..n).map(|_| rr.pick(machines, &request())).collect()
    }

    #[test]
    fn cycles_over_fitting_machines_in_id_order() {
        let rr = RoundRobin::new();
        let got = picks(&rr, &idle(3), 7);
        let want = [0, 1, 2, 0, 1, 2, 0].map(Some);
        assert_eq!(got, want);
    }

    #[test]
    fn skips_machines_that_do_not_fit() {
        let rr = RoundRobin::new();
        let machines = views(&[(100, 0, true), (100, 100, false), (100, 0, true)]);
        let got = picks(&rr, &machines, 4);
        assert_eq!(got, [0, 2, 0, 2].map(Some));
    }

    #[test]
    fn never_picks_a_machine_that_does_not_fit() {
        let rr = RoundRobin::new();
        let machines = views(&[
            (100, 100, false),
            (100, 0, true),
            (100, 100, false),
            (100, 100, false),
            (100, 0, true),
        ]);
        for _ in 0..100 {
            let i = rr.pick(&machines, &request()).expect("two machines fit");
            assert!(machines[i].fits);
        }
    }

    #[test]
    fn returns_none_when_nothing_fits() {
        let rr = RoundRobin::new();
        assert_eq!(rr.pick(&[], &request()), None);
        let machines = views(&[(100, 100, false), (50, 50, false)]);
        assert_eq!(rr.pick(&machines, &request()), None);
    }

    #[test]
    fn a_machine_that_fits_again_rejoins_the_cycle_in_its_place() {
        let rr = RoundRobin::new();
        let mut machines = idle(3);
        machines[1].fits = false;
        assert_eq!(picks(&rr, &machines, 2), [0, 2].map(Some));
        machines[1].fits = true;
        assert_eq!(picks(&rr, &machines, 3), [0, 1, 2].map(Some));
    }

    #[test]
    fn survives_a_machine_being_removed() {
        let rr = RoundRobin::new();
        let machines = idle(3);
        assert_eq!(picks(&rr, &machines, 2), [0, 1].map(Some)); // m1, m2
                                                                // m2 (the cursor) retires: the next turn is still m3, now at index 1.
        let without_m2 = [machines[0], machines[2]];
        assert_eq!(picks(&rr, &without_m2, 3), [1, 0, 1].map(Some)); // m3, m1, m3
                                                                     // m3 (the cursor, and the newest) retires: wrap around to m1.
        assert_eq!(picks(&rr, &[machines[0]], 1), [Some(0)]);
    }

    #[test]
    fn survives_a_machine_being_added() {
        let rr = RoundRobin::new();
        let mut machines = idle(3);
        assert_eq!(picks(&rr, &machines, 3), [0, 1, 2].map(Some)); // m1, m2, m3
                                                                   // m4 joins after m3 picked: it is next, before the wrap to m1.
        machines.push(view(4, 100, 0, true));
        assert_eq!(picks(&rr, &machines, 5), [3, 0, 1, 2, 3].map(Some));
    }

    #[test]
    fn each_fitting_machine_gets_an_equal_share() {
        let rr = RoundRobin::new();
        let machines = idle(4);
        let mut counts = [0u32; 4];
        for _ in 0..400 {
            let i = rr.pick(&machines, &request()).expect("all machines fit");
            counts[i] += 1;
        }
        assert_eq!(counts, [100; 4]);
    }
}
