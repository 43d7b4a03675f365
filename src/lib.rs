//! elastic-lb: an asynchronous, elastic TCP load balancer.
//!
//! Module map (one module per concept):
//!
//! - [`config`] — the TOML configuration, defaults and validation (SPEC §3)
//! - [`listener`] — accept loop, connection cap, accept backoff
//! - [`connection`] — one client connection: framing, ordered replies, timeouts
//! - [`protocol`] — line framing, request parsing, reply lines (SPEC §4)
//! - [`dispatcher`] — owns the machine table; places connections; scales; drains
//! - [`strategy`] — placement algorithms behind one trait (SPEC §5)
//! - [`machine`] — a backend machine: bounded FIFO queue served by a task (SPEC §1)
//! - [`factory`] — the finite machine pool
//! - [`autoscaler`] — scale-up / scale-down policy and the periodic tick
//! - [`proxy`] — proxy mode: upstream pool, health checks, byte forwarding (SPEC §8)
//! - [`admin`] — the HTTP admin endpoint (SPEC §6) and the `stats` command
//! - [`loadgen`] — the `load` command (SPEC §7)
//! - [`stats`] — lock-free counters and the `Snapshot` the admin API serves
//!
//! ```text
//!  client ─TCP─► listener ──admit──► dispatcher ──(strategy, factory, autoscaler)
//!                   │                    │ Placement
//!                   ▼                    ▼
//!               connection ──jobs──► machine m1 / m2 / …  (bounded queues)
//!                   ▲                    │
//!                   └────── replies ─────┘
//! ```
//!
//! [`Server::start`] takes already-bound listeners, so tests bind `127.0.0.1:0`.
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

pub mod admin;
pub mod autoscaler;
pub mod config;
pub mod connection;
pub mod core;
pub mod dispatcher;
pub mod factory;
pub mod listener;
pub mod loadgen;
pub mod machine;
pub mod protocol;
pub mod proxy;
pub mod stats;
pub mod strategy;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::config::BackendMode;
use crate::config::Config;
use crate::core::StrategyKind;
use crate::dispatcher::{Command, DispatcherHandle};
use crate::factory::{LocalFactory, MachineFactory};
use crate::machine::MachineContext;
use crate::stats::{StatsHandle, Totals};

/// A running balancer. Dropping it does not stop it; call [`Server::shutdown`].
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    stats: StatsHandle,
    dispatcher: DispatcherHandle,
    /// Sender of the live configuration; machines and connections hold receivers.
    config_tx: watch::Sender<Arc<Config>>,
    /// Graceful shutdown: the listener, the autoscaler and the admin server stop; every
    /// connection winds down (SPEC §5).
    shutdown: CancellationToken,
    /// End of the grace period: machines answer what is still queued with
    /// `ERR shutting-down`.
    hard_stop: CancellationToken,
    /// Connection tasks (and refusals); shutdown waits for them.
    tracker: TaskTracker,
}

impl Server {
    /// Starts the balancer on already-bound sockets: machines of `autoscaler.initial`, the
    /// dispatcher, the autoscaler, the accept loop and (if given) the admin endpoint.
    ///
    /// # Errors
    ///
    /// When a listener's local address cannot be read.
    pub async fn start(
        config: Config,
        listener: TcpListener,
        admin_listener: Option<TcpListener>,
    ) -> std::io::Result<Server> {
        let local_addr = listener.local_addr()?;
        let admin_addr = admin_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?;
        let config = Arc::new(config);
        let (config_tx, config_rx) = watch::channel(config.clone());
        let totals = Arc::new(Totals::default());
        let shutdown = CancellationToken::new();
        let hard_stop = CancellationToken::new();
        let machine_ctx = MachineContext {
            config: config_rx.clone(),
            totals: totals.clone(),
            hard_stop: hard_stop.clone(),
        };
        let factory: Box<dyn MachineFactory> = match config.backend.mode {
            BackendMode::Simulated => Box::new(LocalFactory::new(&config, machine_ctx)),
            BackendMode::Proxy => {
                let upstreams = proxy::ProxyFactory::upstreams_of(&config);
                // Probe once before the initial machines are acquired, then keep probing.
                proxy::probe_all(&upstreams).await;
                proxy::spawn_health_checker(
                    upstreams.clone(),
                    config.backend.health_check_interval,
                    shutdown.clone(),
                );
                Box::new(proxy::ProxyFactory::new(upstreams, &config, machine_ctx))
            }
        };
        let (dispatcher, topology_rx) = dispatcher::spawn(config.clone(), factory, totals.clone());
        let stats = StatsHandle {
            totals,
            topology: topology_rx,
        };
        autoscaler::spawn(dispatcher.sender(), config_rx.clone(), shutdown.clone());
        admin::summary::spawn(stats.clone(), shutdown.clone());

        let tracker = TaskTracker::new();
        let ctx = Arc::new(connection::ConnectionContext {
            config: config_rx,
            stats: stats.clone(),
            dispatcher: dispatcher.clone(),
            shutdown: shutdown.clone(),
            hard_stop: hard_stop.clone(),
        });
        let accept_loop = listener::Listener {
            listener,
            open: Arc::default(),
            ctx,
            tracker: tracker.clone(),
            shutdown: shutdown.clone(),
        };
        tokio::spawn(accept_loop.run());

        if let Some(admin_listener) = admin_listener {
            let state = admin::AdminState {
                stats: stats.clone(),
                dispatcher: dispatcher.clone(),
                config: config_tx.subscribe(),
            };
            tokio::spawn(admin::serve(admin_listener, state, shutdown.clone()));
        }

        Ok(Server {
            local_addr,
            admin_addr,
            stats,
            dispatcher,
            config_tx,
            shutdown,
            hard_stop,
            tracker,
        })
    }

    /// The balancer's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin endpoint's address, if enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Read access to counters and machines.
    pub fn stats(&self) -> &StatsHandle {
        &self.stats
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.config_tx.borrow().clone()
    }

    /// Applies an already-validated configuration at run time (SIGHUP). Listen addresses
    /// are not changed.
    pub async fn reload(&self, config: Config) {
        let config = Arc::new(config);
        self.config_tx.send_replace(config.clone());
        let _ = self.dispatcher.send(Command::Reconfigure(config)).await;
    }

    /// Switches the strategy at run time; returns once the dispatcher uses it.
    pub async fn set_strategy(&self, kind: StrategyKind) {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        if self
            .dispatcher
            .send(Command::SetStrategy(kind, Some(done_tx)))
            .await
            .is_ok()
        {
            let _ = done_rx.await;
        }
    }

    /// Graceful shutdown (SPEC §5): stop accepting, let connections finish what they have
    /// read, wait up to `grace`, then answer what is still queued with `ERR shutting-down`.
    pub async fn shutdown(self, grace: Duration) {
        info!(?grace, "shutting down");
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            info!("grace period over; failing what is still queued");
            self.hard_stop.cancel();
            // Writers now get their last replies promptly; give them a moment to send.
            let _ = tokio::time::timeout(Duration::from_secs(2), self.tracker.wait()).await;
        }
        info!("shutdown complete");
    }
}
