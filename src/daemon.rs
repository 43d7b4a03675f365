//! The daemon: one running balancer, wired from the layers below (SPEC §5 lifecycle).
//!
//! [`Server::start`] takes already-bound sockets (so tests bind `127.0.0.1:0`) and starts,
//! in order: the backend (and its health checks), the dispatcher actor with the initial
//! machines, the summary log, the accept loop and — when given a socket — the admin
//! endpoint. [`Server::reload`], [`Server::set_strategy`] and [`Server::shutdown`] are
//! what `main` calls on SIGHUP and SIGINT/SIGTERM. This is the top of the library: it
//! depends on every layer, and no layer depends on it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::admin;
use crate::backend::upstream::UpstreamPool;
use crate::backend::{self, BackendContext};
use crate::balancer::{self, Command, DispatcherHandle};
use crate::config::{AdminAddress, Config};
use crate::core::StrategyKind;
use crate::server::bind::Listening;
use crate::server::listener::{self, Listener};
use crate::server::ring_loop::{self, Engine};
use crate::server::session::SessionContext;
use crate::telemetry::{StatsHandle, Totals};

/// A running balancer. Call [`Server::shutdown`] to stop it; dropping it only stops the
/// accept loops (and so ends the event-loop threads once their connections close).
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
    /// Set just before `shutdown` fires (see `SessionContext::shutdown_begun`).
    shutdown_begun: Arc<AtomicBool>,
    /// End of the grace period: machines answer what is still queued with
    /// `ERR shutting-down`.
    hard_stop: CancellationToken,
    /// Connection tasks (and refusals); shutdown waits for them.
    tracker: TaskTracker,
    /// Proxy mode: the run-time upstream list.
    upstreams: Option<UpstreamPool>,
}

impl Drop for Server {
    fn drop(&mut self) {
        // Event-loop threads outlive the runtime that started them; without this they would
        // keep accepting for a server nobody can reach any more.
        self.shutdown.cancel();
    }
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
        listener: impl Into<Listening>,
        admin_listener: Option<TcpListener>,
    ) -> std::io::Result<Server> {
        let listening = listener.into();
        let local_addr = listening.local_addr()?;
        let admin_addr = admin_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?;
        let config = Arc::new(config);
        let (config_tx, config_rx) = watch::channel(config.clone());
        let totals = Arc::new(Totals::default());
        let shutdown = CancellationToken::new();
        let shutdown_begun = Arc::new(AtomicBool::new(false));
        let hard_stop = CancellationToken::new();
        let backend_ctx = BackendContext {
            config: config_rx.clone(),
            totals: totals.clone(),
            hard_stop: hard_stop.clone(),
        };
        let backend = backend::start(&config, backend_ctx, shutdown.clone()).await;
        let upstreams = backend.upstreams.clone();
        let balancer::Spawned {
            handle: dispatcher,
            topology,
            router,
        } = balancer::spawn(
            config.clone(),
            backend.factory,
            totals.clone(),
            shutdown.clone(),
        );
        let stats = StatsHandle { totals, topology };
        admin::summary::spawn(stats.clone(), shutdown.clone());

        let tracker = TaskTracker::new();
        let ctx = Arc::new(SessionContext {
            config: config_rx,
            stats: stats.clone(),
            dispatcher: dispatcher.clone(),
            router,
            shutdown: shutdown.clone(),
            shutdown_begun: shutdown_begun.clone(),
            hard_stop: hard_stop.clone(),
            refusing: Arc::default(),
        });
        match listening {
            Listening::Shared(listener) => {
                info!(addr = %local_addr, "listening");
                tokio::spawn(
                    Listener {
                        listener,
                        open: Arc::default(),
                        ctx,
                        session: backend.session,
                        tracker: tracker.clone(),
                        shutdown: shutdown.clone(),
                        balance: None,
                    }
                    .run(),
                );
            }
            Listening::Loops(sockets) => {
                let threads = sockets.len();
                let pinned = config.listener.pin_threads;
                let open = Arc::default();
                let engine = ring_loop::engine(config.listener.io, backend.session);
                let io = match engine {
                    Ok(Engine::IoUring) => "io_uring",
                    _ => "epoll",
                };
                let spawned = match engine {
                    Ok(Engine::IoUring) => {
                        ring_loop::spawn_ring_loops(
                            sockets, pinned, &open, &ctx, &tracker, &shutdown,
                        )
                        .await
                    }
                    Ok(Engine::Epoll) => {
                        listener::spawn_loops(
                            sockets,
                            pinned,
                            &open,
                            &ctx,
                            backend.session,
                            &tracker,
                            &shutdown,
                        )
                        .await
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = spawned {
                    shutdown.cancel();
                    if let Some(upstreams) = &upstreams {
                        // Upstreams a provider created for the initial machines go back.
                        upstreams.release_provided().await;
                    }
                    return Err(e);
                }
                info!(addr = %local_addr, threads, io, pinned, "listening on event-loop threads");
            }
        }

        if let Some(admin_listener) = admin_listener {
            let state = admin::AdminState {
                stats: stats.clone(),
                dispatcher: dispatcher.clone(),
                config: config_tx.subscribe(),
                upstreams: upstreams.clone(),
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
            shutdown_begun,
            hard_stop,
            tracker,
            upstreams,
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

    /// Proxy mode: the run-time upstream list (what `/api/upstreams` shows and changes).
    pub fn upstreams(&self) -> Option<&UpstreamPool> {
        self.upstreams.as_ref()
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.config_tx.borrow().clone()
    }

    /// Applies an already-validated configuration at run time (SIGHUP). Listen addresses
    /// are not changed (`main` keeps the running values of every key that needs a restart,
    /// see [`crate::config::keep_restart_keys`]). Warns again when the admin endpoint is
    /// open beyond loopback and the new configuration has no `admin.token`.
    pub async fn reload(&self, config: Config) {
        if let Some(addr) = self.admin_addr {
            if admin::auth::exposed(addr, &config.admin) {
                warn!(%addr, "{}", admin::exposure_warning(AdminAddress::Addr(addr)));
            }
        }
        let config = Arc::new(config);
        self.config_tx.send_replace(config.clone());
        // Returns once the dispatcher applied it (upstream limits included), so that a
        // connection accepted after a reload meets the new configuration.
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        if self
            .dispatcher
            .send(Command::Reconfigure(config, Some(done_tx)))
            .await
            .is_ok()
        {
            let _ = done_rx.await;
        }
    }

    /// Switches the strategy at run time; returns once the dispatcher uses it.
    pub async fn set_strategy(&self, kind: StrategyKind) {
        // Nothing to report: the only failure is a dispatcher that has stopped.
        let _ = self.dispatcher.set_strategy(kind, Duration::MAX).await;
    }

    /// Graceful shutdown (SPEC §5): stop accepting, let connections finish what they have
    /// read, wait up to `grace`, then answer what is still queued with `ERR shutting-down`.
    pub async fn shutdown(self, grace: Duration) {
        info!(?grace, "shutting down");
        self.shutdown_begun.store(true, Ordering::SeqCst);
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
        if let Some(upstreams) = &self.upstreams {
            // Upstreams the provider created for this run go back (SPEC §8).
            upstreams.release_provided().await;
        }
        info!("shutdown complete");
    }
}
