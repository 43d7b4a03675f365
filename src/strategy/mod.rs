//! Placement strategies: which machine gets a new connection, or a request (SPEC §5, §9).
//!
//! One strategy instance (an `Arc<dyn Strategy>`) is shared by the dispatcher, which calls
//! [`Strategy::pick`] once per admission, and by every connection task, which calls it once
//! per request line under per-request routing. Both pass a view of every *active* machine in
//! creation order. Each view says whether the work fits on that machine — for a connection,
//! `used + reservation ≤ capacity`; for a request, room in the machine's queue — and a
//! strategy must only ever return a fitting machine. Strategies never touch the machines
//! themselves: they are functions of the views plus their own state (a round-robin cursor,
//! an RNG, a hash ring), held in atomics or behind an `ArcSwap` so that `pick` takes `&self`
//! and never a lock ([`rng`] has the shared random source). Seeded, they stay reproducible
//! for a single caller, which keeps them unit-testable with fixed seeds.
//!
//! Ties (equal free capacity or equal load) always go to the older machine, i.e. the one
//! that comes first in the slice, so results are reproducible.
//!
//! | kind | file | picks |
//! | --- | --- | --- |
//! | `round-robin` | [`round_robin`] | the next fitting machine in turn |
//! | `random` | [`random`] | a uniformly random fitting machine |
//! | `least-connections` | [`least_connections`] | most free capacity (capacity − used) |
//! | `least-load` | [`least_load`] | lowest load % |
//! | `power-of-two` | [`power_of_two`] | two random fitting machines, the less loaded |
//! | `consistent-hash` | [`consistent_hash`] | client IP on a hash ring, next fitting clockwise |
//! | `first` | [`first`] | the oldest fitting machine below the scale-up threshold (packs load) |
//!
//! Power-of-two-choices follows Mitzenmacher, "The Power of Two Choices in Randomized Load
//! Balancing" (2001), as tower's `balance::p2c` does: sampling two candidates gets most of the
//! benefit of a full scan at O(1) cost.

use std::sync::Arc;

use crate::core::StrategyKind;

pub mod consistent_hash;
pub mod first;
pub mod least_connections;
pub mod least_load;
pub mod pick;
pub mod power_of_two;
pub mod random;
pub mod rng;
pub mod round_robin;

pub use pick::{MachineView, PickRequest, Strategy};

/// Builds a strategy of `kind`. `seed` seeds its RNG (strategies without randomness ignore
/// it); the dispatcher passes `dispatcher.seed`, or an OS-random seed when that is 0.
/// `pack_below` is the load (percent) up to which `first` packs a machine: the scale-up
/// threshold.
pub fn build(kind: StrategyKind, seed: u64, pack_below: f64) -> Arc<dyn Strategy> {
    match kind {
        StrategyKind::RoundRobin => Arc::new(round_robin::RoundRobin::new()),
        StrategyKind::Random => Arc::new(random::Random::new(seed)),
        StrategyKind::LeastConnections => Arc::new(least_connections::LeastConnections::new()),
        StrategyKind::LeastLoad => Arc::new(least_load::LeastLoad::new()),
        StrategyKind::PowerOfTwo => Arc::new(power_of_two::PowerOfTwo::new(seed)),
        StrategyKind::ConsistentHash => Arc::new(consistent_hash::ConsistentHash::new()),
        StrategyKind::First => Arc::new(first::First::new(pack_below)),
    }
}

/// Helpers shared by the strategy unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::net::{IpAddr, Ipv4Addr};

    use super::pick::{MachineView, PickRequest};
    use crate::core::{MachineId, Units};

    /// A view of machine `m<id>` with `capacity` and `used` in whole load units.
    pub(crate) fn view(id: u32, capacity: u64, used: u64, fits: bool) -> MachineView {
        MachineView {
            id: MachineId(id),
            capacity: Units::from_whole(capacity),
            used: Units::from_whole(used),
            fits,
        }
    }

    /// Views of `m1`, `m2`, … (creation order) from `(capacity, used, fits)` triples.
    pub(crate) fn views(specs: &[(u64, u64, bool)]) -> Vec<MachineView> {
        specs
            .iter()
            .zip(1..)
            .map(|(&(capacity, used, fits), id)| view(id, capacity, used, fits))
            .collect()
    }

    /// `n` idle, fitting machines `m1..=mn` of capacity 100.
    pub(crate) fn idle(n: u32) -> Vec<MachineView> {
        (1..=n).map(|id| view(id, 100, 0, true)).collect()
    }

    /// A request for one load unit from `ip`.
    pub(crate) fn request_from(ip: IpAddr) -> PickRequest {
        PickRequest {
            client_ip: ip,
            reservation: Units::from_whole(1),
        }
    }

    /// A request for one load unit from 192.0.2.1 (TEST-NET-1).
    pub(crate) fn request() -> PickRequest {
        request_from(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in StrategyKind::ALL {
            assert_eq!(k.as_str().parse::<StrategyKind>(), Ok(k));
        }
    }

    #[test]
    fn unknown_name_lists_the_valid_ones() {
        let err = "fastest".parse::<StrategyKind>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown strategy \"fastest\" (expected one of round-robin, random, \
             least-connections, least-load, power-of-two, consistent-hash, first)"
        );
    }
}
