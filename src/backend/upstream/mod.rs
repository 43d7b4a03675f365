//! Proxy mode (SPEC §8): machines front real upstream TCP servers.
//!
//! - [`Upstream`] — one `[[backend.upstreams]]` entry plus its health, shared by the
//!   factory (which activates only healthy idle upstreams), the health checker (which
//!   probes them), the dispatcher (which drains machines whose upstream went down, through
//!   [`Machine::is_healthy`]) and the connections proxied to it (a failed connect marks
//!   it down).
//! - [`UpstreamFactory`] — the pool is the list of upstreams: acquiring a machine
//!   activates the next idle upstream of the wanted size whose latest TCP probe succeeded.
//! - [`health`] — probes every upstream each `backend.health_check_interval`.
//! - [`forward()`] — a placed connection is connected to its upstream and bytes are copied
//!   both ways until either side closes. No protocol parsing, no bytes added.
//!
//! NOTE: acquisition trusts the most recent probe (at most one interval old) instead of
//! probing inline, so the dispatcher never waits on the network while placing connections.

pub mod forward;
pub mod health;
pub mod proxy_header;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::backend::factory::{FactoryError, MachineFactory};
use crate::backend::machine::Machine;
use crate::config::Config;
use crate::core::{MachineId, Size, SizeCounts, Units};
use crate::telemetry::MachineInfo;

pub use forward::{forward, Forwarded, Limits};
pub use health::{HealthPolicy, Upstream};

// === impl UpstreamFactory ===

/// The proxy-mode factory: the pool is the list of upstreams.
#[derive(Debug)]
pub struct UpstreamFactory {
    upstreams: Vec<Arc<Upstream>>,
    /// Whether each upstream currently backs a machine.
    in_use: Vec<bool>,
    queue_depth: usize,
    config: Config,
}

impl UpstreamFactory {
    /// Probes the upstreams of `backend.upstreams` once, starts the health checker (it
    /// stops when `shutdown` fires) and returns the factory over them.
    pub async fn start(config: &Config, shutdown: CancellationToken) -> Self {
        let upstreams = Self::upstreams_of(config);
        // Probe once before the initial machines are acquired, then keep probing.
        let backend = &config.backend;
        health::probe_initial(&upstreams, backend.health_check_timeout).await;
        health::spawn_health_checker(
            upstreams.clone(),
            backend.health_check_interval,
            backend.health_check_timeout,
            shutdown,
        );
        Self::new(upstreams, config)
    }

    /// A factory over `upstreams` (from `backend.upstreams`), not probed yet.
    pub fn new(upstreams: Vec<Arc<Upstream>>, config: &Config) -> Self {
        UpstreamFactory {
            in_use: vec![false; upstreams.len()],
            upstreams,
            queue_depth: config.machines.queue_depth,
            config: config.clone(),
        }
    }

    /// The upstreams of `config.backend.upstreams`.
    pub fn upstreams_of(config: &Config) -> Vec<Arc<Upstream>> {
        config
            .backend
            .upstreams
            .iter()
            .map(|u| {
                let policy = HealthPolicy::of(&config.backend);
                Arc::new(
                    Upstream::new(u.address, u.size, policy)
                        .with_max_connections(u.max_connections),
                )
            })
            .collect()
    }
}

impl MachineFactory for UpstreamFactory {
    fn acquire(&mut self, size: Size, id: MachineId) -> Result<Machine, FactoryError> {
        let index = (0..self.upstreams.len())
            .find(|&i| {
                !self.in_use[i] && self.upstreams[i].size == size && self.upstreams[i].is_healthy()
            })
            .ok_or(FactoryError::ResourceExhausted(size))?;
        self.in_use[index] = true;
        let upstream = self.upstreams[index].clone();
        info!(machine = %id, upstream = %upstream.address, %size, "upstream activated");
        let capacity = Units::from_whole(self.config.machines.capacity(size));
        let info = MachineInfo::new(id, size, capacity, self.queue_depth);
        Ok(Machine::upstream_backed(Arc::new(info), upstream))
    }

    fn release(&mut self, machine: &Machine) {
        if let Some(upstream) = machine.upstream() {
            if let Some(i) = self.upstreams.iter().position(|u| Arc::ptr_eq(u, upstream)) {
                self.in_use[i] = false;
            }
        }
    }

    fn free(&self) -> SizeCounts {
        let mut free = SizeCounts::EMPTY;
        for (u, used) in self.upstreams.iter().zip(&self.in_use) {
            if !used && u.is_healthy() {
                *free.get_mut(u.size) += 1;
            }
        }
        free
    }

    fn pool_size(&self) -> SizeCounts {
        // SPEC §8: the upstreams are the pool.
        let mut sizes = SizeCounts::EMPTY;
        for u in &self.upstreams {
            *sizes.get_mut(u.size) += 1;
        }
        sizes
    }

    fn queue_when_full(&self) -> bool {
        true
    }

    fn reconfigure(&mut self, config: &Config) {
        // NOTE: the upstream list itself changes only on restart, like listen addresses;
        // capacities and queue depth apply to machines acquired from now on.
        self.queue_depth = config.machines.queue_depth;
        self.config = config.clone();
    }
}
