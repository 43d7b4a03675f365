//! Counters and gauges shared by every task, and the plain-data [`Snapshot`] that the admin
//! API, the `STATS` command and the autoscaler read.
//!
//! This is the only shared mutable state in the crate besides each machine's own gauges
//! (see [`crate::machine::MachineInfo`]), and it is made of atomics: nothing here is ever
//! locked, so reading stats never slows the request path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::watch;

use crate::core::{MachineState, Size, SizeCounts, StrategyKind, Units};
use crate::machine::MachineInfo;

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

/// Process-wide totals (SPEC §6 `totals`).
#[derive(Debug, Default)]
pub struct Totals {
    /// Connections placed on a machine.
    pub connections_admitted: AtomicU64,
    /// Connections refused with `overloaded` or `exhausted`.
    pub connections_rejected: AtomicU64,
    /// Connections currently open (admitted and not yet closed).
    pub connections_open: AtomicU64,
    /// Requests answered `OK`.
    pub requests_ok: AtomicU64,
    /// Requests answered with an error (`busy`, `shutting-down`, `bad-request`, `too-long`).
    pub requests_failed: AtomicU64,
    /// Σ weights of successful requests.
    pub weighted_ok: UnitsGauge,
    /// Σ weights of failed requests + reservations of refused connections.
    pub weighted_failed: UnitsGauge,
    /// Machines acquired by the autoscaler (including on-the-spot acquisitions).
    pub scale_ups: AtomicU64,
    /// Machines retired.
    pub scale_downs: AtomicU64,
}

impl Totals {
    /// Counts one successful request of `weight`.
    pub fn request_ok(&self, weight: Units) {
        self.requests_ok.fetch_add(1, Ordering::Relaxed);
        self.weighted_ok.add(weight);
    }

    /// Counts one failed request of `weight`.
    pub fn request_failed(&self, weight: Units) {
        self.requests_failed.fetch_add(1, Ordering::Relaxed);
        self.weighted_failed.add(weight);
    }

    /// Counts one refused connection holding `reservation`.
    pub fn connection_rejected(&self, reservation: Units) {
        self.connections_rejected.fetch_add(1, Ordering::Relaxed);
        self.weighted_failed.add(reservation);
    }

    /// A plain copy of the counters.
    pub fn snapshot(&self) -> TotalsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TotalsSnapshot {
            connections_admitted: get(&self.connections_admitted),
            connections_rejected: get(&self.connections_rejected),
            connections_open: get(&self.connections_open),
            requests_ok: get(&self.requests_ok),
            requests_failed: get(&self.requests_failed),
            weighted_ok: self.weighted_ok.get().as_f64(),
            weighted_failed: self.weighted_failed.get().as_f64(),
            scale_ups: get(&self.scale_ups),
            scale_downs: get(&self.scale_downs),
        }
    }
}

/// Plain copy of [`Totals`], with the JSON keys of SPEC §6.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[allow(missing_docs)]
pub struct TotalsSnapshot {
    pub connections_admitted: u64,
    pub connections_rejected: u64,
    pub connections_open: u64,
    pub requests_ok: u64,
    pub requests_failed: u64,
    pub weighted_ok: f64,
    pub weighted_failed: f64,
    pub scale_ups: u64,
    pub scale_downs: u64,
}

/// One machine as the admin API shows it (SPEC §6).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
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

/// Machines per size: the pool's free counts in [`Snapshot::pool`] (same shape as the
/// `[pool]` table).
pub type PoolSnapshot = SizeCounts;

/// What happened to a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScaleEventKind {
    /// Acquired from the pool (autoscaler or on the spot).
    Up,
    /// Started draining.
    Drain,
    /// Retired and returned to the pool.
    Down,
}

/// One scale event, as `GET /api/stats` lists it under `events` (newest last).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ScaleEvent {
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// What happened.
    pub kind: ScaleEventKind,
    /// The machine.
    pub machine: String,
    /// Its size.
    pub size: Size,
    /// Active + draining machines afterwards.
    pub machines: usize,
    /// Average load (percent) when it happened.
    pub avg_load: f64,
}

/// How many recent scale events are kept.
pub const RECENT_EVENTS: usize = 32;

/// Everything `GET /api/stats` returns (SPEC §6).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Snapshot {
    /// The strategy in force.
    pub strategy: String,
    /// `100 × Σ used / Σ capacity` over active machines.
    pub avg_load: f64,
    /// Active and draining machines in creation order.
    pub machines: Vec<MachineSnapshot>,
    /// Free machines per size.
    pub pool: PoolSnapshot,
    /// Process-wide totals.
    pub totals: TotalsSnapshot,
    /// Recent scale events, oldest first (at most [`RECENT_EVENTS`]).
    #[serde(default)]
    pub events: Vec<ScaleEvent>,
}

/// What the dispatcher publishes whenever the machine set, the pool or the strategy
/// changes. Loads are not copied in: readers get them live from each [`MachineInfo`].
#[derive(Debug, Clone)]
pub struct Topology {
    /// Active and draining machines, creation order.
    pub machines: Vec<Arc<MachineInfo>>,
    /// Free machines per size.
    pub pool: PoolSnapshot,
    /// The strategy in force.
    pub strategy: StrategyKind,
    /// Recent scale events, oldest first.
    pub events: Arc<Vec<ScaleEvent>>,
}

/// Read-only access to everything observable: totals plus the published [`Topology`].
///
/// Cheap to clone; reading never blocks a writer for longer than a pointer copy.
#[derive(Debug, Clone)]
pub struct StatsHandle {
    /// Process-wide counters.
    pub totals: Arc<Totals>,
    /// The latest topology; the dispatcher holds the sender.
    pub topology: watch::Receiver<Arc<Topology>>,
}

impl StatsHandle {
    /// The current topology.
    pub fn topology(&self) -> Arc<Topology> {
        self.topology.borrow().clone()
    }

    /// Loads (percent) of the active machines in creation order, for `STATS`.
    pub fn active_loads(&self) -> Vec<f64> {
        self.topology()
            .machines
            .iter()
            .filter(|m| m.is_active())
            .map(|m| m.load_percent())
            .collect()
    }

    /// Everything `GET /api/stats` returns.
    pub fn snapshot(&self) -> Snapshot {
        let topology = self.topology();
        let machines: Vec<MachineSnapshot> =
            topology.machines.iter().map(|m| m.snapshot()).collect();
        Snapshot {
            strategy: topology.strategy.to_string(),
            avg_load: average_load(topology.machines.iter().map(|m| &**m)),
            machines,
            pool: topology.pool,
            totals: self.totals.snapshot(),
            events: topology.events.to_vec(),
        }
    }
}

/// `100 × Σ used / Σ capacity` over the *active* machines among `machines` (0 when none).
pub fn average_load<'a>(machines: impl IntoIterator<Item = &'a MachineInfo>) -> f64 {
    let (used, capacity) = machines
        .into_iter()
        .filter(|m| m.is_active())
        .fold((Units::ZERO, Units::ZERO), |(u, c), m| {
            (u + m.used(), c + m.capacity)
        });
    used.percent_of(capacity)
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
}
