//! Proxy mode (SPEC §8) over real sockets: in-process echo upstreams behind the balancer.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{fixed_reservation, start_lb, within, TIMEOUT};
use elastic_lb::config::{BackendMode, Config, UpstreamConfig};
use elastic_lb::core::Size;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// An echo server on 127.0.0.1:0 that counts the connections it accepted. Dropping it (or
/// calling `kill`) closes the listener and every connection.
struct Echo {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Echo {
    async fn start() -> Echo {
        Echo::start_on("127.0.0.1:0".parse().expect("addr")).await
    }

    async fn start_on(addr: SocketAddr) -> Echo {
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

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn kill(&self) {
        self.task.abort();
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn proxy_config(reservation: f64, upstreams: &[&Echo]) -> Config {
    let mut cfg = fixed_reservation(reservation);
    cfg.backend.mode = BackendMode::Proxy;
    cfg.backend.health_check_interval = Duration::from_millis(50);
    cfg.backend.upstreams = upstreams
        .iter()
        .map(|e| UpstreamConfig {
            address: e.addr,
            size: Size::Medium,
        })
        .collect();
    cfg
}

/// Writes `data` and reads back exactly as many bytes.
async fn round_trip(s: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    s.write_all(data).await.expect("write");
    let mut back = vec![0; data.len()];
    within("echo reply", s.read_exact(&mut back))
        .await
        .expect("read echo");
    back
}

#[tokio::test]
async fn bytes_pass_through_unchanged_both_ways() {
    let echo = Echo::start().await;
    let lb = start_lb(proxy_config(10.0, &[&echo])).await;
    let mut c = TcpStream::connect(lb.addr).await.expect("connect");
    // Not the line protocol: binary, no newline, invalid UTF-8 — nothing is parsed or added.
    let data: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    assert_eq!(round_trip(&mut c, &data).await, data);
    assert_eq!(round_trip(&mut c, b"PING\n").await, b"PING\n");
    assert!(
        echo.accepted() >= 2,
        "a health probe plus the proxied connection"
    );
    let s = lb.snapshot();
    assert_eq!(s.machines.len(), 1);
    assert_eq!(s.machines[0].connections, 1);
    assert_eq!(s.machines[0].used, 10.0);
    // Client closes: the upstream side closes too and the reservation is released.
    drop(c);
    lb.wait_stats("reservation released", |s| s.machines[0].used == 0.0)
        .await;
}

#[tokio::test]
async fn scaling_up_activates_the_next_upstream() {
    let (a, b, c) = (
        Echo::start().await,
        Echo::start().await,
        Echo::start().await,
    );
    let mut cfg = proxy_config(30.0, &[&a, &b, &c]);
    // Only the start-up probe: the accept counts below are exact.
    cfg.backend.health_check_interval = Duration::from_secs(60);
    let lb = start_lb(cfg).await;
    assert_eq!(lb.snapshot().pool.medium, 2, "two idle healthy upstreams");
    let mut clients = Vec::new();
    for i in 0..4u8 {
        let mut s = TcpStream::connect(lb.addr).await.expect("connect");
        assert_eq!(round_trip(&mut s, &[i; 3]).await, vec![i; 3]);
        clients.push(s);
    }
    // 30 → 60 % (m2 added) → 90/200 → 120/200 = 60 % (m3 added): 120/300 = 40 %.
    let snap = lb.snapshot();
    assert_eq!(snap.machines.len(), 3, "{snap:#?}");
    assert_eq!(snap.avg_load, 40.0);
    assert_eq!(snap.pool.medium, 0);
    assert_eq!(snap.totals.scale_ups, 2);
    // Every upstream carries proxied connections, beyond its health probes.
    assert_eq!(c.accepted(), 1, "m3 has only been probed so far");
    // A fifth connection goes to the machine with the most free capacity: m3 (upstream c).
    let mut s = TcpStream::connect(lb.addr).await.expect("connect");
    assert_eq!(round_trip(&mut s, b"fifth").await, b"fifth");
    clients.push(s);
    assert_eq!(c.accepted(), 2);
    assert_eq!(lb.snapshot().avg_load, 50.0);
    assert!(a.accepted() >= 2 && b.accepted() >= 2);
    drop(clients);
    lb.wait_stats("all reservations released", |s| {
        s.machines.iter().all(|m| m.used == 0.0)
    })
    .await;
}

#[tokio::test]
async fn a_failing_upstream_is_marked_down_and_replaced() {
    let (a, b) = (Echo::start().await, Echo::start().await);
    let lb = start_lb(proxy_config(10.0, &[&a, &b])).await;
    let mut first = TcpStream::connect(lb.addr).await.expect("connect");
    assert_eq!(round_trip(&mut first, b"hi").await, b"hi");
    drop(first);

    a.kill();
    // The health checker notices, m1 drains and retires, m2 takes over on upstream b.
    lb.wait_stats("m1 replaced by m2", |s| {
        s.machines.len() == 1 && s.machines[0].name == "m2"
    })
    .await;
    let mut second = TcpStream::connect(lb.addr).await.expect("connect");
    assert_eq!(round_trip(&mut second, b"still here").await, b"still here");
    let snap = lb.snapshot();
    assert_eq!(
        snap.pool.medium, 0,
        "the dead upstream is not offered: {snap:#?}"
    );
    assert_eq!(snap.totals.scale_downs, 1);
}

#[tokio::test]
async fn exhausted_pool_closes_the_connection_without_adding_bytes() {
    let echo = Echo::start().await;
    let mut cfg = proxy_config(60.0, &[&echo]);
    cfg.autoscaler.max_machines = 1;
    let lb = start_lb(cfg).await;
    let mut first = TcpStream::connect(lb.addr).await.expect("connect");
    assert_eq!(round_trip(&mut first, b"x").await, b"x");

    let mut second = TcpStream::connect(lb.addr).await.expect("connect");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(TIMEOUT, second.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "no bytes added: {:?}", &buf[..n]);
    let t = lb.snapshot().totals;
    assert_eq!((t.connections_rejected, t.weighted_failed), (1, 60.0));
}

#[tokio::test]
async fn an_idle_proxied_stream_is_closed_after_idle_timeout() {
    let echo = Echo::start().await;
    let mut cfg = proxy_config(10.0, &[&echo]);
    cfg.listener.idle_timeout = Duration::from_millis(300);
    let lb = start_lb(cfg).await;
    let mut c = TcpStream::connect(lb.addr).await.expect("connect");
    let started = tokio::time::Instant::now();
    // Traffic keeps it open past one idle period...
    for _ in 0..8 {
        assert_eq!(round_trip(&mut c, b"tick").await, b"tick");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(400));
    // ... silence closes it (orderly EOF, no bytes added), and the reservation goes back.
    let mut buf = [0u8; 8];
    let n = within("idle close", c.read(&mut buf)).await.unwrap_or(0);
    assert_eq!(n, 0);
    lb.wait_stats("reservation released", |s| s.machines[0].used == 0.0)
        .await;
}

#[tokio::test]
async fn machines_come_back_to_min_machines_when_an_upstream_recovers() {
    let echo = Echo::start().await;
    let addr = echo.addr;
    let lb = start_lb(proxy_config(10.0, &[&echo])).await;
    echo.kill();
    drop(echo);
    lb.wait_stats("the only machine retired", |s| s.machines.is_empty())
        .await;
    // The upstream comes back on the same address: the next probe finds it and the
    // autoscaler tops the set back up to min_machines = 1 without waiting for a client.
    let _revived = Echo::start_on(addr).await;
    lb.wait_stats("a machine is active again", |s| s.machines.len() == 1)
        .await;
    let mut c = TcpStream::connect(lb.addr).await.expect("connect");
    assert_eq!(round_trip(&mut c, b"back").await, b"back");
}
