//! Proxy mode (SPEC §8): machines front real upstream TCP servers.
//!
//! - [`Upstream`] — one `[[backend.upstreams]]` entry plus its health, shared by the
//!   factory (which activates only healthy idle upstreams), the health checker (which
//!   probes them), the dispatcher (which drains machines whose upstream went down, through
//!   [`Machine::is_healthy`]) and the connections proxied to it (a failed connect marks
//!   it down).
//! - [`UpstreamFactory`] — the pool is the list of upstreams ([`pool`]): acquiring a
//!   machine activates the next idle upstream of the wanted size whose latest TCP probe
//!   succeeded; when none is left, [`provider`] (`backend.provider`) may create one.
//! - [`pool`] — the run-time list: `[[backend.upstreams]]` on start and reload, the admin
//!   API's additions and removals, the provider's upstreams.
//! - [`health`] — probes every upstream each `backend.health_check_interval`.
//! - `forward()` — a placed connection is connected to its upstream and bytes are copied
//!   both ways until either side closes. No protocol parsing, no bytes added.
//!   The same function serves clients on io_uring event loops ([`ring`]).
//!
//! NOTE: acquisition trusts the most recent probe (at most one interval old) instead of
//! probing inline, so the dispatcher never waits on the network while placing connections.

mod activity;
pub mod forward;
pub mod health;
pub mod pool;
pub mod provider;
pub mod proxy_header;
mod pump;
pub mod ring;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::backend::factory::{FactoryError, MachineFactory};
use crate::backend::machine::Machine;
use crate::config::Config;
use crate::core::{MachineId, Size, SizeCounts, Units};
use crate::telemetry::MachineInfo;

pub use activity::{Forwarded, Limits};
pub(crate) use forward::{forward, Socket};
pub use health::{Failure, HealthPolicy, Upstream};
pub use pool::{AddError, Origin, RemoveError, Removed, UpstreamPool, UpstreamView};
pub use provider::Provider;

// === impl UpstreamFactory ===

/// The proxy-mode factory: the pool is the run-time list of upstreams ([`UpstreamPool`]).
#[derive(Debug)]
pub struct UpstreamFactory {
    pool: UpstreamPool,
    queue_depth: usize,
    config: Config,
}

impl UpstreamFactory {
    /// Probes the upstreams of `backend.upstreams` once, starts the health checker (it
    /// stops when `shutdown` fires) and returns the factory over them.
    pub async fn start(config: &Config, shutdown: CancellationToken) -> Self {
        let factory = Self::new(Self::upstreams_of(config), config);
        // Probe once before the initial machines are acquired, then keep probing.
        let backend = &config.backend;
        health::probe_initial(&factory.pool.upstreams(), backend.health_check_timeout).await;
        let pool = factory.pool.clone();
        health::spawn_health_checker(
            move || pool.upstreams(),
            backend.health_check_interval,
            backend.health_check_timeout,
            shutdown,
        );
        factory
    }

    /// A factory over `upstreams` (from `backend.upstreams`), not probed yet.
    pub fn new(upstreams: Vec<Arc<Upstream>>, config: &Config) -> Self {
        let backend = &config.backend;
        let provider = backend
            .provider
            .as_ref()
            .map(|p| Provider::new(p.command.clone(), backend.provider_timeout));
        let pool = UpstreamPool::new(
            upstreams.into_iter().map(|u| (u, Origin::Config)).collect(),
            HealthPolicy::of(backend),
            backend.health_check_timeout,
            provider,
        );
        UpstreamFactory {
            pool,
            queue_depth: config.machines.queue_depth,
            config: config.clone(),
        }
    }

    /// The shared upstream list (for the admin API and shutdown).
    pub fn pool(&self) -> UpstreamPool {
        self.pool.clone()
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

    /// Applies `[[backend.upstreams]]` of a reload: new addresses join (probed first),
    /// addresses no longer listed leave (draining their machine first).
    fn apply_upstreams(&self, config: &Config) {
        let wanted = &config.backend.upstreams;
        for address in self.pool.configured() {
            if !wanted.iter().any(|u| u.address == address) {
                let _ = self.pool.remove(address);
            }
        }
        for u in wanted {
            let added = self
                .pool
                .add(u.address, u.size, u.max_connections, Origin::Config);
            if added.is_err() {
                // Already there (added at run time, or listed before): it is configured
                // now, and its limit is the file's (HAProxy's `maxconn` on reload).
                self.pool.adopt(u.address, u.size, u.max_connections);
                self.pool.set_max_connections(u.address, u.max_connections);
            }
        }
    }
}

impl MachineFactory for UpstreamFactory {
    fn acquire(&mut self, size: Size, id: MachineId) -> Result<Machine, FactoryError> {
        let capacity = Units::from_whole(self.config.machines.capacity(size));
        let info = Arc::new(MachineInfo::new(id, size, capacity, self.queue_depth));
        let Some(upstream) = self.pool.take(size, &info) else {
            if self.provides(size) {
                self.pool.provide(size);
            }
            return Err(FactoryError::ResourceExhausted(size));
        };
        info!(machine = %id, upstream = %upstream.address, %size, "upstream activated");
        Ok(Machine::upstream_backed(info, upstream))
    }

    fn release(&mut self, machine: &Machine) {
        if let Some(upstream) = machine.upstream() {
            self.pool.give_back(upstream);
        }
    }

    fn retiring(&mut self) -> Vec<MachineId> {
        self.pool.take_retiring()
    }

    fn free(&self) -> SizeCounts {
        self.pool.free()
    }

    fn pool_size(&self) -> SizeCounts {
        // SPEC §8: the upstreams are the pool.
        self.pool.pool_size()
    }

    fn provides(&self, size: Size) -> bool {
        // Only the preferred size asks the provider: the fallbacks are tried right after
        // it in the same acquisition.
        self.pool.provider().is_some() && size == self.config.autoscaler.scale_up_size
    }

    fn queue_when_full(&self) -> bool {
        true
    }

    fn reconfigure(&mut self, config: &Config) {
        // Capacities and queue depth apply to machines acquired from now on; the upstream
        // list and each upstream's `max_connections` follow `[[backend.upstreams]]` (the
        // other [backend] keys need a restart).
        self.apply_upstreams(config);
        self.queue_depth = config.machines.queue_depth;
        self.config = config.clone();
    }
}
