//! Plain snapshots for readers, and the [`Topology`] the dispatcher publishes.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::Config;
use crate::core::{MachineState, Size, SizeCounts, StrategyKind, Units};

use super::gauges::{MachineInfo, MachineSnapshot};
use super::totals::{Totals, TotalsSnapshot};

/// Machines per size: the pool's free counts in [`Snapshot::pool`] (same shape as the
/// `[pool]` table).
pub type PoolSnapshot = SizeCounts;

/// What happened to a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScaleEventKind {
    /// Acquired from the pool (autoscaler or on the spot).
    Up,
    /// Started draining.
    Drain,
    /// Retired and returned to the pool.
    Retire,
}

/// One scale event, as `GET /api/stats` lists it under `events` (newest last).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Average load (percent) just before it, rounded to 2 decimals.
    pub avg_before: f64,
    /// Average load (percent) just after it, rounded to 2 decimals.
    pub avg_after: f64,
}

/// `x` rounded to 2 decimals (the precision every load is shown with).
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// How many recent scale events are kept.
pub const RECENT_EVENTS: usize = 32;

/// Everything `GET /api/stats` returns (SPEC §6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Extra key: connections waiting in the admission queue for a machine (proxy mode,
    /// `backend.queue_timeout`); absent in older answers.
    #[serde(default)]
    pub queued_connections: u64,
}

/// What the dispatcher publishes whenever the machine set, the pool or the strategy
/// changes. Loads are not copied in: readers get them live from each [`MachineInfo`].
#[derive(Debug, Clone)]
pub struct Topology {
    /// Active and draining machines, creation order.
    pub machines: Vec<Arc<MachineInfo>>,
    /// Free machines per size.
    pub pool: PoolSnapshot,
    /// Machines per size the pool holds in all (the backend's pool size).
    pub pool_size: PoolSnapshot,
    /// The strategy in force.
    pub strategy: StrategyKind,
    /// Recent scale events, oldest first.
    pub events: Arc<Vec<ScaleEvent>>,
    /// The configuration the dispatcher runs with, published together with the rest so
    /// that one answer never mixes two configurations (a reload in between).
    pub config: Arc<Config>,
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
        self.snapshot_with_pool_size().0
    }

    /// [`Self::snapshot`] plus the pool size per size, read from the same topology.
    pub fn snapshot_with_pool_size(&self) -> (Snapshot, PoolSnapshot) {
        let (snapshot, pool_size, _) = self.consistent_snapshot();
        (snapshot, pool_size)
    }

    /// [`Self::snapshot`], the pool size and the configuration in force, all read from one
    /// published topology: one configuration per answer.
    pub fn consistent_snapshot(&self) -> (Snapshot, PoolSnapshot, Arc<Config>) {
        let topology = self.topology();
        let machines: Vec<MachineSnapshot> =
            topology.machines.iter().map(|m| m.snapshot()).collect();
        // From the machines as listed (read once each), so that the answer agrees with itself.
        let (used, capacity) = machines
            .iter()
            .filter(|m| m.state == MachineState::Active)
            .fold((0.0, 0.0), |(u, c), m| (u + m.used, c + m.capacity));
        let snapshot = Snapshot {
            strategy: topology.strategy.to_string(),
            avg_load: if capacity > 0.0 {
                100.0 * used / capacity
            } else {
                0.0
            },
            machines,
            pool: topology.pool,
            totals: self.totals.snapshot(),
            events: topology.events.to_vec(),
            queued_connections: self.totals.queued(),
        };
        (snapshot, topology.pool_size, topology.config.clone())
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
