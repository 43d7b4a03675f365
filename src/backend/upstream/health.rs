//! An upstream server and its health: active checks (a TCP connect to every upstream, once
//! at start and then every `backend.health_check_interval`) and the state they set.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::core::Size;

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
