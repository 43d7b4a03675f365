//! Proxy mode (SPEC §8): machines front real upstream TCP servers.
//!
//! - [`Upstream`] — one `[[backend.upstreams]]` entry plus its health, shared by the
//!   factory (which activates only healthy idle upstreams), the health checker (which
//!   probes them), the dispatcher (which retires machines whose upstream went down) and the
//!   connections proxied to it (which mark it down when a connect fails).
//! - [`ProxyFactory`] — the pool is the list of upstreams: acquiring a machine activates
//!   the next idle upstream of the wanted size whose latest TCP probe succeeded.
//! - [`spawn_health_checker`] — probes every upstream each `backend.health_check_interval`.
//! - [`forward`] — a placed connection is connected to its upstream and bytes are copied
//!   both ways until either side closes. No protocol parsing, no bytes added.
//!
//! NOTE: acquisition trusts the most recent probe (at most one interval old) instead of
//! probing inline, so the dispatcher never waits on the network while placing connections.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::core::{MachineId, Size, Units};
use crate::factory::{FactoryError, MachineFactory};
use crate::machine::{self, MachineContext, MachineHandle, MachineInfo};
use crate::stats::PoolSnapshot;

/// How long a health probe or an upstream connect may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// One upstream server and its health.
#[derive(Debug)]
pub struct Upstream {
    /// Where it listens.
    pub address: SocketAddr,
    /// The size (capacity) it counts as.
    pub size: Size,
    /// Result of the latest probe (or of a failed connect since).
    healthy: AtomicBool,
}

impl Upstream {
    /// A new upstream, not yet known to be healthy.
    pub fn new(address: SocketAddr, size: Size) -> Self {
        Upstream {
            address,
            size,
            healthy: AtomicBool::new(false),
        }
    }

    /// Whether the latest probe succeeded and no connect has failed since.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Records a probe or connect result; logs transitions.
    pub fn set_healthy(&self, healthy: bool) {
        let was = self.healthy.swap(healthy, Ordering::AcqRel);
        match (was, healthy) {
            (true, false) => warn!(upstream = %self.address, "upstream down"),
            (false, true) => info!(upstream = %self.address, "upstream up"),
            _ => {}
        }
    }
}

/// A TCP health probe: can we connect within [`CONNECT_TIMEOUT`]?
pub async fn probe(address: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await,
        Ok(Ok(_))
    )
}

/// Probes every upstream once, concurrently.
pub async fn probe_all(upstreams: &[Arc<Upstream>]) {
    let probes = upstreams.iter().map(|u| {
        let u = u.clone();
        tokio::spawn(async move {
            let ok = probe(u.address).await;
            u.set_healthy(ok);
        })
    });
    for p in probes.collect::<Vec<_>>() {
        let _ = p.await;
    }
}

/// Probes every upstream each `interval` until `shutdown` fires.
pub fn spawn_health_checker(
    upstreams: Vec<Arc<Upstream>>,
    interval: Duration,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        // The first round runs one interval from now: `probe_all` ran just before start-up.
        let period = interval.max(Duration::from_millis(10));
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => probe_all(&upstreams).await,
            }
        }
    })
}

// === impl ProxyFactory ===

/// The proxy-mode factory: the pool is the list of upstreams.
#[derive(Debug)]
pub struct ProxyFactory {
    upstreams: Vec<Arc<Upstream>>,
    /// Whether each upstream currently backs a machine.
    in_use: Vec<bool>,
    queue_depth: usize,
    config: Config,
    ctx: MachineContext,
}

impl ProxyFactory {
    /// A factory over `upstreams` (from `backend.upstreams`).
    pub fn new(upstreams: Vec<Arc<Upstream>>, config: &Config, ctx: MachineContext) -> Self {
        ProxyFactory {
            in_use: vec![false; upstreams.len()],
            upstreams,
            queue_depth: config.machines.queue_depth,
            config: config.clone(),
            ctx,
        }
    }

    /// The upstreams of `config.backend.upstreams`.
    pub fn upstreams_of(config: &Config) -> Vec<Arc<Upstream>> {
        config
            .backend
            .upstreams
            .iter()
            .map(|u| Arc::new(Upstream::new(u.address, u.size)))
            .collect()
    }
}

impl MachineFactory for ProxyFactory {
    fn acquire(&mut self, size: Size, id: MachineId) -> Result<MachineHandle, FactoryError> {
        let index = (0..self.upstreams.len())
            .find(|&i| {
                !self.in_use[i] && self.upstreams[i].size == size && self.upstreams[i].is_healthy()
            })
            .ok_or(FactoryError::ResourceExhausted(size))?;
        self.in_use[index] = true;
        let upstream = self.upstreams[index].clone();
        info!(machine = %id, upstream = %upstream.address, %size, "upstream activated");
        let capacity = Units::from_whole(self.config.machines.capacity(size));
        let info = MachineInfo::new(id, size, capacity, self.queue_depth).with_upstream(upstream);
        Ok(machine::spawn_info(info, self.ctx.clone()))
    }

    fn release(&mut self, machine: &MachineInfo) {
        if let Some(upstream) = &machine.upstream {
            if let Some(i) = self.upstreams.iter().position(|u| Arc::ptr_eq(u, upstream)) {
                self.in_use[i] = false;
            }
        }
    }

    fn free(&self) -> PoolSnapshot {
        let mut free = PoolSnapshot::EMPTY;
        for (u, used) in self.upstreams.iter().zip(&self.in_use) {
            if !used && u.is_healthy() {
                *free.get_mut(u.size) += 1;
            }
        }
        free
    }

    fn reconfigure(&mut self, config: &Config) {
        // NOTE: the upstream list itself changes only on restart, like listen addresses;
        // capacities and queue depth apply to machines acquired from now on.
        self.queue_depth = config.machines.queue_depth;
        self.config = config.clone();
    }
}

// === forwarding ===

/// Connects `client` to `upstream` and copies bytes both ways until either side closes,
/// nothing has flowed either way for `idle` (zero = never; `listener.idle_timeout`, like
/// HAProxy's `timeout tunnel`), or `stop` fires (the end of the shutdown grace). A failed
/// connect marks the upstream down.
///
/// # Errors
///
/// The connect error (the caller may try another machine); errors while copying only end
/// the connection and are logged.
pub async fn forward(
    client: TcpStream,
    upstream: &Upstream,
    idle: Duration,
    stop: &CancellationToken,
) -> Result<(), (TcpStream, std::io::Error)> {
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(upstream.address))
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
    let server = match connected {
        Ok(server) => server,
        Err(e) => {
            upstream.set_healthy(false);
            return Err((client, e));
        }
    };
    let _ = server.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let activity = Activity::default();
    let mut client = Tracked::new(client, &activity);
    let mut server = Tracked::new(server, &activity);
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut server) => match copied {
            Ok((up, down)) => debug!(bytes_up = up, bytes_down = down, "proxied connection closed"),
            Err(e) => debug!(error = %e, "proxied connection ended"),
        },
        _ = activity.idle_for(idle), if !idle.is_zero() => {
            debug!(?idle, "proxied connection idle; closing");
            let _ = client.inner.shutdown().await;
            let _ = server.inner.shutdown().await;
        }
        _ = stop.cancelled() => {
            // The shutdown grace is over: stop forwarding; both sides see an orderly close.
            let _ = client.inner.shutdown().await;
            let _ = server.inner.shutdown().await;
        }
    }
    Ok(())
}

/// When bytes last moved on a proxied connection, in either direction.
#[derive(Debug)]
struct Activity {
    /// Reference point of `last_ms`.
    base: tokio::time::Instant,
    /// Milliseconds after `base` of the latest read that returned data.
    last_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            base: tokio::time::Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
}

impl Activity {
    fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Completes once nothing has moved for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last.checked_add(idle).unwrap_or(last);
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A stream that records every read that returns data in an [`Activity`].
#[derive(Debug)]
struct Tracked<'a> {
    inner: TcpStream,
    activity: &'a Activity,
}

impl<'a> Tracked<'a> {
    fn new(inner: TcpStream, activity: &'a Activity) -> Self {
        Tracked { inner, activity }
    }
}

impl AsyncRead for Tracked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Tracked<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
