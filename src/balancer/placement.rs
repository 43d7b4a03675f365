//! A connection's binding to a machine, with the reservation it holds there.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use crate::backend::Machine;
use crate::core::Units;
use crate::telemetry::Totals;

/// Wakes the dispatcher when a placement closes while connections are queued for a
/// machine, so the head of the admission queue gets the freed room at once rather than at
/// the next tick.
#[derive(Debug, Default)]
pub struct CapacityFreed {
    pub(super) notify: tokio::sync::Notify,
}

/// A connection's binding to a machine, with the reservation it holds there.
///
/// Owned by the connection task. Dropping it releases the reservation from whichever
/// machine the connection is on at that moment (the dispatcher may have moved it while its
/// machine drained), so reservations can never leak.
#[derive(Debug)]
pub struct Placement {
    shared: Arc<PlacementShared>,
}

#[derive(Debug)]
pub(super) struct PlacementShared {
    pub(super) peer: SocketAddr,
    pub(super) reservation: Units,
    totals: Arc<Totals>,
    /// Nudged on close while connections are queued for a machine.
    freed: Arc<CapacityFreed>,
    /// The current machine; swapped by the dispatcher during a drain. `None` once closed.
    ///
    /// NOTE: a std mutex held for a few instructions, never across an `.await`. Both the
    /// connection's close and the dispatcher's migration take it, which is what makes
    /// "move the reservation" and "release the reservation" mutually exclusive.
    machine: Mutex<Option<Machine>>,
}

impl PlacementShared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Option<Machine>> {
        // A poisoned lock only means a panic elsewhere while holding it; the Option inside
        // is still consistent (every critical section is a single assignment).
        self.machine.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Placement {
    /// The machine the connection is on now.
    ///
    /// # Panics
    ///
    /// Never: the machine is only taken by `Drop`.
    pub fn machine(&self) -> Machine {
        self.shared
            .lock()
            .clone()
            .expect("a live placement always has a machine")
    }

    /// The reservation held.
    pub fn reservation(&self) -> Units {
        self.shared.reservation
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.shared.peer
    }
}

impl Drop for Placement {
    fn drop(&mut self) {
        if let Some(machine) = self.shared.lock().take() {
            machine.info.release(self.shared.reservation);
        }
        self.shared.totals.connection_closed();
        // One relaxed load per close; the dispatcher is woken only while someone waits.
        if self.shared.totals.queued() > 0 {
            self.shared.freed.notify.notify_one();
        }
    }
}

impl Placement {
    /// Binds a new connection from `peer` holding `reservation` to `machine`, counting it
    /// there and in `totals`. The weak reference lets the dispatcher find the connection
    /// again when `machine` drains.
    pub(super) fn bind(
        peer: SocketAddr,
        reservation: Units,
        machine: Machine,
        totals: Arc<Totals>,
        freed: Arc<CapacityFreed>,
    ) -> (Placement, Weak<PlacementShared>) {
        machine.info.reserve(reservation);
        let placement = Placement::adopt(peer, reservation, machine, totals, freed);
        let weak = Arc::downgrade(&placement.shared);
        (placement, weak)
    }

    /// Binds a new connection from `peer` to `machine`, where `reservation` is already
    /// reserved, and counts it in `totals`.
    pub(super) fn adopt(
        peer: SocketAddr,
        reservation: Units,
        machine: Machine,
        totals: Arc<Totals>,
        freed: Arc<CapacityFreed>,
    ) -> Placement {
        totals.connection_admitted();
        let shared = Arc::new(PlacementShared {
            peer,
            reservation,
            totals,
            freed,
            machine: Mutex::new(Some(machine)),
        });
        Placement { shared }
    }
}

impl PlacementShared {
    /// The machine the connection is on now; `None` once it closed.
    pub(super) fn machine_id(&self) -> Option<crate::core::MachineId> {
        self.lock().as_ref().map(|m| m.info.id)
    }

    /// Moves the connection to `target` if it is still on `from`, with its reservation.
    /// False when it closed or is elsewhere already.
    ///
    /// Holding the placement's lock while moving makes the move and a concurrent close of
    /// the connection mutually exclusive: the reservation is released from exactly the
    /// machine it is on.
    pub(super) fn move_from(
        &self,
        from: &Machine,
        target: impl FnOnce() -> Option<Machine>,
    ) -> bool {
        let mut slot = self.lock();
        if !matches!(&*slot, Some(m) if m.info.id == from.info.id) {
            return false;
        }
        let Some(target) = target() else {
            return false;
        };
        from.info.release(self.reservation);
        target.info.reserve(self.reservation);
        *slot = Some(target);
        true
    }
}
