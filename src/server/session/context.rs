//! What every session reads: built once by the daemon and shared by all connections.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::balancer::{DispatcherHandle, Router};
use crate::config::Config;
use crate::telemetry::StatsHandle;

/// What every connection task needs. Built once and shared.
#[derive(Debug)]
pub struct SessionContext {
    /// Live configuration.
    pub config: watch::Receiver<Arc<Config>>,
    /// Counters and the machine list (`STATS`).
    pub stats: StatsHandle,
    /// Where connections ask for a machine.
    pub dispatcher: DispatcherHandle,
    /// Where each request line is placed.
    pub router: Router,
    /// Fires when graceful shutdown begins.
    pub shutdown: CancellationToken,
    /// Fires when the shutdown grace runs out (proxied streams are cut then).
    pub hard_stop: CancellationToken,
}
