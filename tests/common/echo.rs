//! An in-process echo upstream for the proxy-mode tests, and what those tests share: a
//! proxy-mode configuration in front of a list of upstreams, one echo round trip, and a
//! burst of echo clients with the checks of its accounting.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use std::time::Duration;

use elastic_lb::config::{BackendMode, Config, UpstreamConfig};
use elastic_lb::core::Size;
use elastic_lb::telemetry::Snapshot;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::{fixed_reservation, total_used, within, Lb};

/// One medium upstream entry at `address`, no connection limit.
pub fn upstream(address: SocketAddr) -> UpstreamConfig {
    UpstreamConfig {
        address,
        size: Size::Medium,
        max_connections: None,
    }
}

/// Proxy mode in front of `upstreams` (medium), a fixed `reservation` per connection and
/// health checks every 50 ms.
pub fn proxy_config(reservation: f64, upstreams: &[SocketAddr]) -> Config {
    let mut cfg = fixed_reservation(reservation);
    cfg.backend.mode = BackendMode::Proxy;
    cfg.backend.health_check_interval = Duration::from_millis(50);
    cfg.backend.upstreams = upstreams.iter().copied().map(upstream).collect();
    cfg
}

/// Writes `data` and reads back exactly as many bytes.
pub async fn round_trip(s: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    s.write_all(data).await.expect("write");
    let mut back = vec![0; data.len()];
    within("echo reply", s.read_exact(&mut back))
        .await
        .expect("read echo");
    back
}

/// An echo server on 127.0.0.1:0 that counts the connections it accepted. Dropping it (or
/// calling `kill`) closes the listener and every connection.
pub struct Echo {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Echo {
    pub async fn start() -> Echo {
        Echo::start_on("127.0.0.1:0".parse().expect("addr")).await
    }

    pub async fn start_on(addr: SocketAddr) -> Echo {
        let listener = TcpListener::bind(addr).await.expect("bind echo");
        let addr = listener.local_addr().expect("echo addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                conns.spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        Echo {
            addr,
            accepted,
            task,
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn kill(&self) {
        self.task.abort();
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `n` clients connect to `addr` at once; client `i` sends `payload(i)` and reads it back.
/// Returns the open streams once every echo came back.
pub async fn echo_burst(addr: SocketAddr, n: u32, payload: fn(u32) -> Vec<u8>) -> Vec<TcpStream> {
    let mut tasks = JoinSet::new();
    for i in 0..n {
        tasks.spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            let data = payload(i);
            assert_eq!(round_trip(&mut s, &data).await, data);
            s
        });
    }
    let mut clients = Vec::new();
    while let Some(client) = tasks.join_next().await {
        clients.push(client.expect("client task"));
    }
    clients
}

/// With the `n` clients of a burst still open: asserts that each was admitted, is open and
/// is placed on a machine exactly once, that the reservations add up to `used_total`, and
/// that the burst scaled the set up. Returns the snapshot it checked.
pub fn assert_burst_counted(lb: &Lb, n: u64, used_total: f64) -> Snapshot {
    let s = lb.snapshot();
    assert_eq!(s.totals.connections_admitted, n, "{s:#?}");
    assert_eq!(s.totals.connections_open, n);
    assert_eq!(s.machines.iter().map(|m| m.connections).sum::<u64>(), n);
    let used = total_used(&s);
    assert!((used - used_total).abs() < 1e-6, "used {used}: {s:#?}");
    assert!(s.machines.len() >= 2, "scaled up: {s:#?}");
    s
}

/// Waits until no connection is open and every machine is back to no reservation and no
/// connection.
pub async fn wait_every_connection_released(lb: &Lb) {
    lb.wait_stats("every connection released", |s| {
        s.totals.connections_open == 0
            && s.machines
                .iter()
                .all(|m| m.used == 0.0 && m.connections == 0)
    })
    .await;
}

/// Waits (bounded by [`super::TIMEOUT`]) until nothing accepts connections on `addr`.
pub async fn wait_port_closed(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + super::TIMEOUT;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the port stays open"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
