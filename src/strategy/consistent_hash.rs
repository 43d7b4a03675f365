//! `consistent-hash`: the client's IP address on a hash ring (SPEC §5).
//!
//! Every active machine owns `VNODES_PER_MACHINE` (160) points on a 64-bit ring, at
//! `mix64(id << 32 | vnode)`. A connection's key is `mix64` of its client IP, and it goes to
//! the owner of the first ring point at or after the key (clockwise, wrapping around). So one
//! client keeps its machine for as long as the set of machines is unchanged, and adding or
//! retiring a machine moves only the clients whose arc changes owner, about `1/n` of them,
//! instead of reshuffling everyone as `hash % n` would. Many virtual nodes per machine keep
//! the arcs, and so the shares, even (within a few percent at 160).
//!
//! When the owner does not fit, the walk continues clockwise to the next point whose machine
//! fits. That spreads an overloaded machine's clients over the others rather than piling them
//! on one neighbour, and they return to it as soon as it fits again.
//!
//! The hash is the splitmix64 output function (Steele, Lea & Flood, "Fast Splittable
//! Pseudorandom Number Generators", 2014; the variant in Vigna's `splitmix64.c`): a bijection
//! on `u64` with full avalanche, so even consecutive ids and addresses land far apart. Unlike
//! std's `DefaultHasher` its output is fixed forever, so placements do not change between
//! builds. IPv4-mapped IPv6 addresses hash as their IPv4 form.
//!
//! The ring is rebuilt only when the list of machine ids changes (it is cached alongside the
//! ids, behind an `ArcSwap` so that many connection tasks read it without a lock and the
//! first one to see a new machine set swaps in the new ring); load changes never move a
//! client. There are no ties in the usual sense: two points
//! with the same hash (vanishingly rare) are ordered by machine age, the older first.

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::pick::{MachineView, PickRequest, Strategy};
use super::rng::mix64;
use crate::core::MachineId;
use crate::core::StrategyKind;

/// Points each machine owns on the ring (SPEC §5 asks for at least 100).
const VNODES_PER_MACHINE: u32 = 160;

/// A consistent-hash ring keyed by client IP.
#[derive(Debug, Default)]
pub struct ConsistentHash {
    /// The ring for the latest machine set seen.
    ring: ArcSwap<Ring>,
}

/// A ring and the machine ids it was built from.
#[derive(Debug, Default)]
struct Ring {
    /// The machine ids the ring was built from, in the order of the views.
    ids: Vec<MachineId>,
    /// Ring points sorted by hash, each naming the index of its machine in the views. The
    /// indices stay valid exactly as long as the views list the same ids in the same order.
    points: Vec<RingPoint>,
}

/// One virtual node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct RingPoint {
    /// Position on the ring.
    hash: u64,
    /// Index of the owning machine in the views (= age order).
    index: usize,
}

impl ConsistentHash {
    /// Creates the strategy with an empty ring; it is built on the first pick.
    pub fn new() -> Self {
        ConsistentHash::default()
    }

    /// The ring for `machines`: the cached one, or a new one (cached from now on) when the
    /// machine ids differ from the ones it was built from.
    fn ring_for(&self, machines: &[MachineView]) -> Arc<Ring> {
        let ring = self.ring.load_full();
        let unchanged = ring.ids.len() == machines.len()
            && ring.ids.iter().zip(machines).all(|(id, m)| *id == m.id);
        if unchanged {
            return ring;
        }
        let mut points: Vec<RingPoint> = machines
            .iter()
            .enumerate()
            .flat_map(|(index, m)| {
                (0..VNODES_PER_MACHINE).map(move |vnode| RingPoint {
                    hash: point_hash(m.id, vnode),
                    index,
                })
            })
            .collect();
        points.sort_unstable();
        let ring = Arc::new(Ring {
            ids: machines.iter().map(|m| m.id).collect(),
            points,
        });
        // Two tasks that see the new set at once build the same ring; either may win.
        self.ring.store(ring.clone());
        ring
    }
}

impl Strategy for ConsistentHash {
    fn kind(&self) -> StrategyKind {
        StrategyKind::ConsistentHash
    }

    fn pick(&self, machines: &[MachineView], request: &PickRequest) -> Option<usize> {
        // Also keeps the walk below from circling the whole ring for nothing.
        if !machines.iter().any(|m| m.fits) {
            return None;
        }
        let ring = self.ring_for(machines);
        let key = key_hash(request.client_ip);
        // First point at or after the key; past the last point, wrap to the first.
        let start = ring.points.partition_point(|p| p.hash < key);
        let (wrapped, clockwise) = ring.points.split_at(start);
        clockwise
            .iter()
            .chain(wrapped)
            .find(|p| machines.get(p.index).is_some_and(|m| m.fits))
            .map(|p| p.index)
    }
}

/// The ring position of virtual node `vnode` of machine `id`.
fn point_hash(id: MachineId, vnode: u32) -> u64 {
    mix64((u64::from(id.0) << 32) | u64::from(vnode))
}

/// The ring position of a client address.
fn key_hash(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => mix64(u64::from(u32::from(v4))),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            // Truncating casts split the address into its two halves.
            mix64(mix64((bits >> 64) as u64) ^ bits as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::strategy::testing::{idle, request_from, view};

    /// `n` distinct client addresses, 10.0.0.0 onwards.
    fn ips(n: u32) -> impl Iterator<Item = IpAddr> {
        (0..n).map(|i| IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + i)))
    }

    fn pick(ch: &ConsistentHash, machines: &[MachineView], ip: IpAddr) -> Option<usize> {
        ch.pick(machines, &request_from(ip))
    }

    /// The machine id each address maps to.
    fn placement(ch: &ConsistentHash, machines: &[MachineView], n: u32) -> Vec<MachineId> {
        ips(n)
            .map(|ip| {
                let i = pick(ch, machines, ip).expect("all machines fit");
                machines[i].id
            })
            .collect()
    }

    #[test]
    fn the_same_ip_keeps_its_machine() {
        let ch = ConsistentHash::new();
        let mut machines = idle(4);
        let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
        let first = pick(&ch, &machines, ip);
        assert!(first.is_some());
        for round in 0..1000u64 {
            // Load changes (while it fits) never move a client.
            for m in &mut machines {
                m.used = crate::core::Units::from_whole(round % 90);
            }
            assert_eq!(pick(&ch, &machines, ip), first);
        }
        // A fresh ring over the same machines agrees: placement depends on ids alone.
        assert_eq!(pick(&ConsistentHash::new(), &machines, ip), first);
    }

    #[test]
    fn spreads_clients_evenly() {
        let ch = ConsistentHash::new();
        let machines = idle(4);
        let mut counts = [0u32; 4];
        for ip in ips(10_000) {
            counts[pick(&ch, &machines, ip).expect("all machines fit")] += 1;
        }
        for (i, &c) in counts.iter().enumerate() {
            assert!((1_000..=4_000).contains(&c), "machine {i}: {counts:?}");
        }
    }

    #[test]
    fn adding_a_machine_moves_only_a_minority_to_it() {
        let ch = ConsistentHash::new();
        let mut machines = idle(4);
        let before = placement(&ch, &machines, 1000);
        machines.push(view(5, 100, 0, true));
        let after = placement(&ch, &machines, 1000);
        let moved: Vec<_> = before.iter().zip(&after).filter(|(b, a)| b != a).collect();
        // About 1/5 is expected.
        assert!(moved.len() < 500, "{} of 1000 moved", moved.len());
        assert!(!moved.is_empty(), "the new machine gets clients");
        // Nobody moves between old machines: only onto the new one.
        assert!(moved.iter().all(|(_, a)| **a == MachineId(5)));
    }

    #[test]
    fn retiring_a_machine_moves_only_its_clients() {
        let ch = ConsistentHash::new();
        let machines = idle(4);
        let before = placement(&ch, &machines, 1000);
        // m2 retires: the views shift, and the ring must follow the ids, not the indices.
        let without_m2 = [machines[0], machines[2], machines[3]];
        let after = placement(&ch, &without_m2, 1000);
        assert_eq!(ch.ring.load().points.len(), 3 * VNODES_PER_MACHINE as usize);
        for (b, a) in before.iter().zip(&after) {
            if *b == MachineId(2) {
                assert_ne!(*a, MachineId(2));
            } else {
                assert_eq!(a, b);
            }
        }
    }

    #[test]
    fn falls_through_clockwise_when_the_target_does_not_fit() {
        let ch = ConsistentHash::new();
        let mut machines = idle(4);
        let before = placement(&ch, &machines, 1000);
        let ip = ips(1000)
            .zip(&before)
            .find(|(_, id)| **id == MachineId(3))
            .map(|(ip, _)| ip)
            .expect("some client maps to m3");

        machines[2].fits = false; // m3
        let got = pick(&ch, &machines, ip).expect("other machines fit");
        // The owner of the first point clockwise from the key that is not m3's.
        let key = key_hash(ip);
        let ring = ch.ring.load();
        let next = ring
            .points
            .iter()
            .filter(|p| p.hash >= key)
            .chain(&ring.points)
            .find(|p| p.index != 2)
            .expect("the ring has other machines");
        assert_eq!(got, next.index);
        assert!(machines[got].fits);

        // Clients of other machines stay put, and m3's come back once it fits again.
        let during = placement_allowing_unfit(&ch, &machines, 1000);
        for (b, d) in before.iter().zip(&during) {
            if *b != MachineId(3) {
                assert_eq!(b, d);
            }
        }
        machines[2].fits = true;
        assert_eq!(placement(&ch, &machines, 1000), before);
    }

    fn placement_allowing_unfit(
        ch: &ConsistentHash,
        machines: &[MachineView],
        n: u32,
    ) -> Vec<MachineId> {
        ips(n)
            .map(|ip| machines[pick(ch, machines, ip).expect("some machine fits")].id)
            .collect()
    }

    #[test]
    fn never_picks_a_machine_that_does_not_fit() {
        let ch = ConsistentHash::new();
        let mut machines = idle(6);
        for i in [0, 2, 3, 5] {
            machines[i].fits = false;
        }
        for ip in ips(2000) {
            let i = pick(&ch, &machines, ip).expect("two machines fit");
            assert!(machines[i].fits);
        }
    }

    #[test]
    fn returns_none_when_nothing_fits() {
        let ch = ConsistentHash::new();
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert_eq!(pick(&ch, &[], ip), None);
        let mut machines = idle(3);
        for m in &mut machines {
            m.fits = false;
        }
        assert_eq!(pick(&ch, &machines, ip), None);
    }

    #[test]
    fn builds_the_virtual_nodes_per_machine() {
        let ch = ConsistentHash::new();
        let machines = idle(5);
        pick(&ch, &machines, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(ch.ring.load().points.len(), 5 * VNODES_PER_MACHINE as usize);
        assert!(ch
            .ring
            .load()
            .points
            .windows(2)
            .all(|w| w[0].hash <= w[1].hash));
        for i in 0..5 {
            let owned = ch
                .ring
                .load()
                .points
                .iter()
                .filter(|p| p.index == i)
                .count();
            assert_eq!(owned, VNODES_PER_MACHINE as usize);
        }
    }

    #[test]
    fn ipv6_clients_are_sticky_and_mapped_ipv4_hashes_as_ipv4() {
        let ch = ConsistentHash::new();
        let machines = idle(4);
        let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        let first = pick(&ch, &machines, v6);
        for _ in 0..100 {
            assert_eq!(pick(&ch, &machines, v6), first);
        }
        let v4 = Ipv4Addr::new(198, 51, 100, 23);
        assert_eq!(
            key_hash(IpAddr::V4(v4)),
            key_hash(IpAddr::V6(v4.to_ipv6_mapped()))
        );
    }
}
