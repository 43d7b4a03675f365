//! Connection admission off the dispatcher, for machines whose connections never move.
//!
//! A proxied connection is a TCP stream to its machine's upstream: once placed it stays
//! there, so the dispatcher never needs to find it again (no migration, no rebalance). Such
//! connections are placed by their own task, like requests ([`super::routing`]): one load
//! of the published [`RoutingTable`], a view of every active machine, one `Strategy::pick`,
//! and the reservation taken with atomics. The dispatcher round trip — a message, a wake-up
//! of the actor, a reply, a wake-up of the connection — is saved on every connection.
//!
//! The fast path only places, and only where the dispatcher would do nothing else; anything
//! else goes to the dispatcher as before ([`super::DispatcherHandle::admit_avoiding`]): when
//! the table does not allow it (a simulated machine set, or a machine drained for health
//! that may be about to come back), when connections are queued (first come, first
//! served), when the connection would take its machine past the scale-up point (the
//! dispatcher admits and scales up in one step), when nothing fits (it acquires a machine
//! on the spot, queues or refuses), and on a retry after a failed upstream connect.
//!
//! Exactness: the reservation is taken first and checked after, so two connections racing
//! for the last room cannot both keep it — the loser gives it back and asks the dispatcher.
//! A `SeqCst` fence between taking the reservation and reading the machine's state pairs
//! with the one in `finish_drains`: either this connection sees the machine draining (and
//! gives the reservation back), or the dispatcher sees the connection (and does not retire
//! the machine under it).

use std::net::SocketAddr;
use std::sync::atomic::{fence, Ordering};

use super::placement::Placement;
use super::routing::{FastAdmission, Router, RoutingTable, VIEWS};
use crate::backend::Machine;
use crate::core::Units;
use crate::strategy::{MachineView, PickRequest};

impl Router {
    /// Places a connection from `peer` without the dispatcher, or `None` when the
    /// dispatcher must decide (see the module docs). A `Some` placement is admitted and
    /// counted exactly as one from the dispatcher.
    pub fn admit_fast(&self, peer: SocketAddr) -> Option<Placement> {
        let table = self.table.load();
        let rule = table.admission?;
        if self.totals.queued() > 0 {
            return None;
        }
        let reservation = self.draw(rule);
        let machine = VIEWS.with(|views| {
            let mut views = views.borrow_mut();
            pick(&table, peer, reservation, &mut views)
        })?;
        machine.info.reserve(reservation);
        fence(Ordering::SeqCst);
        // Past the scale-up point, admission and the scale-up check are one dispatcher
        // step (SPEC §1): the dispatcher places this connection and scales at once.
        let fast_ok = machine.info.is_active()
            && machine.is_healthy()
            && machine.info.used() <= machine.info.capacity
            && machine.info.load_percent() <= table.nudge_above
            && machine
                .upstream()
                .map_or(true, |u| machine.info.connections() <= u.max_connections());
        if !fast_ok {
            machine.info.release(reservation);
            return None;
        }
        Some(Placement::adopt(
            peer,
            reservation,
            machine,
            self.totals.clone(),
            self.freed.clone(),
        ))
    }

    /// A reservation in `[min, max)`, uniformly, from the router's own seeded generator.
    fn draw(&self, rule: FastAdmission) -> Units {
        let (min, max) = (rule.reservation_min, rule.reservation_max);
        if max > min {
            let unit = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            Units::from_f64(min + (max - min) * unit)
        } else {
            Units::from_f64(min)
        }
    }
}

/// The strategy's pick among the table's machines that `reservation` fits on.
fn pick(
    table: &RoutingTable,
    peer: SocketAddr,
    reservation: Units,
    views: &mut Vec<MachineView>,
) -> Option<Machine> {
    views.clear();
    views.extend(table.machines.iter().map(|m| MachineView {
        id: m.info.id,
        capacity: m.info.capacity,
        used: m.info.used(),
        // A suspect machine is left to the dispatcher, which uses it only as a last resort.
        fits: m.info.is_active()
            && m.is_healthy()
            && !m.is_suspect()
            && m.info.used() + reservation <= m.info.capacity
            && m.has_connection_room(),
    }));
    let request = PickRequest {
        client_ip: peer.ip(),
        reservation,
    };
    let i = table
        .strategy
        .pick(views, &request)
        .filter(|&i| i < views.len() && views[i].fits)?;
    Some(table.machines[i].clone())
}
