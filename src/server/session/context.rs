//! What every session reads: built once by the daemon and shared by all connections.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::place::{ConnectionSlot, MAX_REFUSING};
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
    /// Set just before `shutdown` fires. A line session reads it after each read: waking
    /// every connection takes a while, and a line read after shutdown began is refused
    /// even when the wake-up has not reached its connection yet.
    pub shutdown_begun: Arc<AtomicBool>,
    /// Fires when the shutdown grace runs out (proxied streams are cut then).
    pub hard_stop: CancellationToken,
    /// Refused connections still being closed (reply, then the lingering close), on all
    /// loops together; at most [`MAX_REFUSING`].
    pub refusing: Arc<AtomicUsize>,
}

impl SessionContext {
    /// Whether graceful shutdown has begun (one load; see `shutdown_begun`).
    pub fn shutting_down(&self) -> bool {
        self.shutdown_begun.load(Ordering::SeqCst)
    }

    /// A place among the [`MAX_REFUSING`] refusals closing lingering, if one is free.
    pub fn refusing_place(&self) -> Option<ConnectionSlot> {
        ConnectionSlot::try_take(&self.refusing, MAX_REFUSING)
    }
}
