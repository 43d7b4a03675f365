//! What the admin handlers share.

use std::sync::Arc;

use tokio::sync::watch;

use crate::backend::upstream::UpstreamPool;
use crate::balancer::DispatcherHandle;
use crate::config::Config;
use crate::telemetry::StatsHandle;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Read side of all counters and the machine list.
    pub stats: StatsHandle,
    /// Where `PUT /api/strategy` switches the strategy.
    pub dispatcher: DispatcherHandle,
    /// The configuration in force (thresholds and pool sizes for the dashboard).
    pub config: watch::Receiver<Arc<Config>>,
    /// Proxy mode: the upstream list `/api/upstreams` reads and changes.
    pub upstreams: Option<UpstreamPool>,
}
