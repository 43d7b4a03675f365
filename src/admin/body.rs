//! The body of `GET /api/stats`: the SPEC §6 keys plus the extra keys the dashboard uses.

use serde::{Deserialize, Serialize};

use super::state::AdminState;
use crate::telemetry::{PoolSnapshot, Snapshot};

/// The autoscaler settings the dashboard draws (extra key `autoscaler` of `/api/stats`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoscalerLimits {
    /// `autoscaler.scale_up_threshold`, percent.
    pub scale_up_threshold: f64,
    /// `autoscaler.scale_down_threshold`, percent.
    pub scale_down_threshold: f64,
    /// `autoscaler.min_machines`.
    pub min_machines: usize,
    /// `autoscaler.max_machines`.
    pub max_machines: usize,
}

/// The body of `GET /api/stats`: the SPEC §6 keys (flattened [`Snapshot`], which also carries
/// `events`) plus two extra keys. Extra keys only ever get added, never renamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsBody {
    /// The SPEC §6 keys and `events`.
    #[serde(flatten)]
    pub snapshot: Snapshot,
    /// Thresholds and machine limits in force.
    pub autoscaler: AutoscalerLimits,
    /// Configured pool size per size (`pool` holds what is free of it).
    pub pool_size: PoolSnapshot,
}

impl StatsBody {
    /// The body for the current state.
    pub fn new(state: &AdminState) -> StatsBody {
        // One published topology: the strategy, the machines and the thresholds shown all
        // belong to the same configuration, even while reloads come in.
        let (snapshot, pool_size, config) = state.stats.consistent_snapshot();
        let a = &config.autoscaler;
        StatsBody {
            snapshot,
            autoscaler: AutoscalerLimits {
                scale_up_threshold: a.scale_up_threshold,
                scale_down_threshold: a.scale_down_threshold,
                min_machines: a.min_machines,
                max_machines: a.max_machines,
            },
            pool_size,
        }
    }
}
