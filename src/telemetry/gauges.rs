//! Per-machine gauges: a machine's identity and its lock-free load accounting.
//!
//! Shared (as `Arc<MachineInfo>`) by the dispatcher (placement), every connection placed on
//! the machine (its reservation), the machine's own worker (served weights) and the stats
//! readers (admin API, `STATS`, autoscaler). Nobody locks it to read a load.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::core::{MachineId, MachineState, Size, Units};

/// A gauge of [`Units`] that many tasks add to and subtract from.
#[derive(Debug, Default)]
pub struct UnitsGauge(AtomicU64);

impl UnitsGauge {
    /// Adds `u`.
    pub fn add(&self, u: Units) {
        self.0.fetch_add(u.0, Ordering::Relaxed);
    }

    /// Subtracts `u`. Every `sub` pairs with an earlier `add` of the same amount.
    pub fn sub(&self, u: Units) {
        self.0.fetch_sub(u.0, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> Units {
        Units(self.0.load(Ordering::Relaxed))
    }
}

/// A machine's identity and lock-free gauges. See the module docs for who shares it.
#[derive(Debug)]
pub struct MachineInfo {
    /// Creation-order identity.
    pub id: MachineId,
    /// `m<id>`.
    pub name: String,
    /// Size it was acquired as.
    pub size: Size,
    /// Capacity in load units.
    pub capacity: Units,
    /// Queue bound (waiting requests, not counting the one in service).
    pub queue_depth: usize,
    /// Σ reservations of the connections placed here.
    reserved: UnitsGauge,
    /// Σ weights of requests queued or in service here.
    pending: UnitsGauge,
    /// Open connections placed here.
    connections: AtomicU64,
    /// Requests waiting plus the one in service.
    queued: AtomicU64,
    /// Σ weight × time held (queued or in service) of the requests answered here, in
    /// milli-unit·µs, wrapping: the integral of the pending weights over time, counted when
    /// each request leaves. Differences of two readings give the request work over a span.
    work_held: AtomicU64,
    state: AtomicU8,
}

impl MachineInfo {
    /// A fresh, active machine with no load.
    pub fn new(id: MachineId, size: Size, capacity: Units, queue_depth: usize) -> Self {
        MachineInfo {
            id,
            name: id.to_string(),
            size,
            capacity,
            queue_depth,
            reserved: UnitsGauge::default(),
            pending: UnitsGauge::default(),
            connections: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            work_held: AtomicU64::new(0),
            state: AtomicU8::new(MachineState::Active as u8),
        }
    }

    // === connections ===

    /// A connection holding `reservation` is now placed here.
    pub fn reserve(&self, reservation: Units) {
        self.reserved.add(reservation);
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection holding `reservation` left (closed or moved away). Pairs with
    /// [`Self::reserve`].
    pub fn release(&self, reservation: Units) {
        self.reserved.sub(reservation);
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }

    // === requests ===

    /// Takes a queue slot for a request of `weight`, whose weight counts toward `used` from
    /// now until [`Self::finish`]. False (and nothing counted) when `queue_depth + 1`
    /// requests are queued or in service already.
    ///
    /// The bound is on waiting + in service, not on a channel: a request that reaches an
    /// idle machine is in service at once, even before its worker has taken it off the
    /// channel.
    pub fn try_enqueue(&self, weight: Units) -> bool {
        let limit = self.queue_depth as u64 + 1;
        let taken = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            });
        if taken.is_err() {
            return false;
        }
        // Counted before the job is sent: the worker may serve and subtract it at once.
        self.pending.add(weight);
        true
    }

    /// Takes the service slot of an idle machine (nothing queued or in service) for a
    /// request of `weight`, as [`Self::try_enqueue`] would; false (and nothing counted) when
    /// the machine is not idle. Pairs with [`Self::finish`]. A request served this way
    /// cannot overtake one that was queued before it.
    pub fn try_start(&self, weight: Units) -> bool {
        if self
            .queued
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        self.pending.add(weight);
        true
    }

    /// A request of `weight` left the queue: answered, or handed back unsent. Pairs with
    /// a successful [`Self::try_enqueue`].
    pub fn finish(&self, weight: Units) {
        self.pending.sub(weight);
        self.queued.fetch_sub(1, Ordering::AcqRel);
    }

    /// A request of `weight` that was counted in `used` for `held` was answered: adds
    /// `weight × held` to [`Self::work_held`]. Called by the machine's worker next to
    /// [`Self::finish`]; it does not change `used` or the load.
    pub fn record_held(&self, weight: Units, held: Duration) {
        let micros = u64::try_from(held.as_micros()).unwrap_or(u64::MAX);
        self.work_held
            .fetch_add(weight.0.wrapping_mul(micros), Ordering::Relaxed);
    }

    // === readings ===

    /// The cumulative request work answered here, milli-unit·µs (wrapping; see
    /// [`Self::record_held`]). `b.wrapping_sub(a)` of two readings is the work of the
    /// requests answered between them.
    pub fn work_held(&self) -> u64 {
        self.work_held.load(Ordering::Relaxed)
    }

    /// Used capacity: reservations plus pending request weights (SPEC §1).
    pub fn used(&self) -> Units {
        self.reserved.get() + self.pending.get()
    }

    /// Σ reservations of the connections placed here.
    pub fn reserved(&self) -> Units {
        self.reserved.get()
    }

    /// Open connections placed here.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Requests waiting plus the one in service.
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// `100 × used / capacity`.
    pub fn load_percent(&self) -> f64 {
        self.used().percent_of(self.capacity)
    }

    /// The lifecycle state.
    pub fn state(&self) -> MachineState {
        match self.state.load(Ordering::Acquire) {
            0 => MachineState::Active,
            1 => MachineState::Draining,
            _ => MachineState::Retired,
        }
    }

    /// Sets the lifecycle state (the dispatcher only).
    pub fn set_state(&self, state: MachineState) {
        self.state.store(state as u8, Ordering::Release);
    }

    /// Whether it takes new connections.
    pub fn is_active(&self) -> bool {
        self.state() == MachineState::Active
    }

    /// A plain copy for the admin API.
    pub fn snapshot(&self) -> MachineSnapshot {
        let used = self.used();
        MachineSnapshot {
            name: self.name.clone(),
            size: self.size,
            capacity: self.capacity.as_f64(),
            used: used.as_f64(),
            load: used.percent_of(self.capacity),
            connections: self.connections(),
            queued: self.queued(),
            state: self.state(),
        }
    }
}

/// One machine as the admin API shows it (SPEC §6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineSnapshot {
    /// `m1`, `m2`, …
    pub name: String,
    /// Size name.
    pub size: Size,
    /// Capacity in load units.
    pub capacity: f64,
    /// Used capacity in load units.
    pub used: f64,
    /// `100 × used / capacity`.
    pub load: f64,
    /// Open connections placed on it.
    pub connections: u64,
    /// Requests waiting plus the one in service.
    pub queued: u64,
    /// `active` or `draining`.
    pub state: MachineState,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_round_trip_exactly() {
        let r = Units::from_f64(7.3456);
        assert_eq!(r, Units(7346));
        let g = UnitsGauge::default();
        g.add(r);
        g.add(Units::from_whole(5));
        g.sub(r);
        g.sub(Units::from_whole(5));
        assert_eq!(g.get(), Units::ZERO);
    }

    #[test]
    fn paired_methods_return_used_to_zero() {
        let m = MachineInfo::new(MachineId(1), Size::Medium, Units::from_whole(100), 1);
        m.reserve(Units::from_f64(7.5));
        assert!(m.try_enqueue(Units::from_whole(5)));
        assert!(m.try_enqueue(Units::from_whole(5)));
        assert!(
            !m.try_enqueue(Units::from_whole(5)),
            "queue_depth + 1 at most"
        );
        assert_eq!(m.used(), Units::from_f64(17.5));
        assert_eq!((m.connections(), m.queued()), (1, 2));
        m.finish(Units::from_whole(5));
        m.finish(Units::from_whole(5));
        m.release(Units::from_f64(7.5));
        assert_eq!(m.used(), Units::ZERO);
        assert_eq!((m.connections(), m.queued()), (0, 0));
    }

    #[test]
    fn work_held_adds_weight_times_time_and_leaves_used_alone() {
        let m = MachineInfo::new(MachineId(1), Size::Medium, Units::from_whole(100), 1);
        assert_eq!(m.work_held(), 0);
        m.record_held(Units::from_whole(100), Duration::from_millis(10));
        m.record_held(Units::from_f64(0.5), Duration::from_micros(3));
        // 100 000 milli-units × 10 000 µs + 500 × 3.
        assert_eq!(m.work_held(), 1_000_000_000 + 1_500);
        assert_eq!(m.used(), Units::ZERO);
    }
}
