//! Per-upstream `max_connections` and the admission queue (`backend.queue_timeout`) over
//! real sockets: the N+1-th client waits, gets through when one closes, is refused after
//! the deadline, and nothing is dropped under a burst.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{fixed_reservation, http_get, start_lb, within, TIMEOUT};
use elastic_lb::config::{BackendMode, Config, UpstreamConfig};
use elastic_lb::core::Size;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// An echo upstream that tracks how many proxied connections (ones that sent bytes; the
/// health probes send none) it has open at once, and the most it ever had.
struct Upstream {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    /// Proxied connections so far (ones that sent bytes).
    served: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    async fn start() -> Upstream {
        Upstream::start_on("127.0.0.1:0".parse().expect("addr")).await
    }

    async fn start_on(addr: SocketAddr) -> Upstream {
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (open, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let served = Arc::new(AtomicUsize::new(0));
        let (o, p, n) = (open.clone(), peak.clone(), served.clone());
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((mut s, _)) = listener.accept().await {
                let (o, p, served) = (o.clone(), p.clone(), n.clone());
                conns.spawn(async move {
                    let mut buf = [0u8; 4096];
                    let Ok(n) = s.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return; // a health probe
                    }
                    served.fetch_add(1, Ordering::SeqCst);
                    let now = o.fetch_add(1, Ordering::SeqCst) + 1;
                    p.fetch_max(now, Ordering::SeqCst);
                    if s.write_all(&buf[..n]).await.is_ok() {
                        let (mut r, mut w) = s.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    }
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Upstream {
            addr,
            open,
            peak,
            served,
            task,
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn config(upstream: &Upstream, max_connections: u32, queue_timeout: Duration) -> Config {
    let mut cfg = fixed_reservation(1.0);
    cfg.backend.mode = BackendMode::Proxy;
    cfg.backend.health_check_interval = Duration::from_millis(50);
    cfg.backend.queue_timeout = queue_timeout;
    cfg.backend.upstreams = vec![UpstreamConfig {
        address: upstream.addr,
        size: Size::Medium,
        max_connections: Some(max_connections),
    }];
    cfg
}

/// Connects and completes one echo round trip.
async fn echoing(addr: SocketAddr) -> TcpStream {
    let mut c = TcpStream::connect(addr).await.expect("connect");
    c.write_all(b"hi\n").await.expect("write");
    let mut back = [0u8; 3];
    within("echo", c.read_exact(&mut back)).await.expect("read");
    assert_eq!(&back, b"hi\n");
    c
}

#[tokio::test]
async fn the_client_past_max_connections_waits_and_gets_through_when_one_closes() {
    let up = Upstream::start().await;
    let lb = start_lb(config(&up, 2, Duration::from_secs(5))).await;
    let first = echoing(lb.addr).await;
    let _second = echoing(lb.addr).await;

    // The third is accepted by the balancer but waits: no upstream connection, no bytes.
    let mut third = TcpStream::connect(lb.addr).await.expect("connect");
    third.write_all(b"hi\n").await.expect("write");
    let s = lb
        .wait_stats("the third is queued", |s| s.queued_connections == 1)
        .await;
    assert_eq!(s.totals.connections_rejected, 0);
    assert_eq!(s.machines.iter().map(|m| m.connections).sum::<u64>(), 2);
    let (status, metrics) = http_get(lb.admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("elastic_lb_connections_queued 1"),
        "queued gauge in /metrics: {metrics}"
    );
    let mut buf = [0u8; 3];
    let early = tokio::time::timeout(Duration::from_millis(300), third.read_exact(&mut buf)).await;
    assert!(
        early.is_err(),
        "no answer while the upstream is at its limit"
    );
    assert_eq!(up.open.load(Ordering::SeqCst), 2);

    // One closes: the queued client is placed at once and its bytes go through.
    drop(first);
    within("queued client's echo", third.read_exact(&mut buf))
        .await
        .expect("read");
    assert_eq!(&buf, b"hi\n");
    let s = lb
        .wait_stats("the queue is empty", |s| s.queued_connections == 0)
        .await;
    assert_eq!(s.totals.connections_rejected, 0);
    assert_eq!(
        up.peak.load(Ordering::SeqCst),
        2,
        "never above max_connections"
    );
}

/// A client that resets its connection while it waits in the queue is gone: when its turn
/// comes, what it sent is not delivered to the upstream, and the next one is served.
#[tokio::test]
async fn a_client_that_resets_while_queued_is_not_forwarded() {
    let up = Upstream::start().await;
    let lb = start_lb(config(&up, 1, Duration::from_secs(5))).await;
    let first = echoing(lb.addr).await;
    let mut gone = TcpStream::connect(lb.addr).await.expect("connect");
    gone.write_all(b"gone\n").await.expect("write");
    lb.wait_stats("it is queued", |s| s.queued_connections == 1)
        .await;
    gone.set_zero_linger().expect("SO_LINGER 0");
    drop(gone); // a reset
    let mut next = TcpStream::connect(lb.addr).await.expect("connect");
    next.write_all(b"hi\n").await.expect("write");
    lb.wait_stats("the next is queued behind it", |s| {
        s.queued_connections == 2
    })
    .await;

    drop(first);
    let mut buf = [0u8; 3];
    within("the next client's echo", next.read_exact(&mut buf))
        .await
        .expect("read");
    assert_eq!(&buf, b"hi\n");
    assert_eq!(
        up.served.load(Ordering::SeqCst),
        2,
        "the first and the next client only: the reset one's bytes were not delivered"
    );
    let s = lb
        .wait_stats("the queue is empty", |s| s.queued_connections == 0)
        .await;
    assert_eq!(s.totals.connections_rejected, 0);
}

#[tokio::test]
async fn a_queued_client_is_refused_after_queue_timeout() {
    let up = Upstream::start().await;
    let timeout = Duration::from_millis(400);
    let lb = start_lb(config(&up, 1, timeout)).await;
    let _held = echoing(lb.addr).await;

    let started = Instant::now();
    let mut waiting = TcpStream::connect(lb.addr).await.expect("connect");
    waiting.write_all(b"hi\n").await.expect("write");
    let mut buf = Vec::new();
    let read = within("refusal", waiting.read_to_end(&mut buf)).await;
    let waited = started.elapsed();
    // An orderly close (FIN), not a reset although its bytes were never read (`ab`, for
    // one, aborts its whole run on a reset).
    assert!(
        matches!(read, Ok(0)),
        "refused with a bare close, no bytes added, no reset: {read:?} {buf:?}"
    );
    assert!(
        waited >= timeout - Duration::from_millis(50),
        "waited the queue timeout first: {waited:?}"
    );
    assert!(waited < TIMEOUT, "refused around the deadline: {waited:?}");
    let s = lb
        .wait_stats("counted rejected", |s| s.totals.connections_rejected == 1)
        .await;
    assert_eq!(s.queued_connections, 0);
    assert_eq!(up.peak.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_burst_past_max_connections_is_queued_and_nothing_is_dropped() {
    let up = Upstream::start().await;
    let lb = start_lb(config(&up, 4, Duration::from_secs(5))).await;
    let mut clients = JoinSet::new();
    for i in 0..40u32 {
        let addr = lb.addr;
        clients.spawn(async move {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            let msg = format!("client {i} says hello\n");
            c.write_all(msg.as_bytes()).await.expect("write");
            let mut back = vec![0u8; msg.len()];
            within("echo", c.read_exact(&mut back)).await.expect("read");
            assert_eq!(back, msg.as_bytes());
            // Hold the upstream a moment so that the others have to queue.
            tokio::time::sleep(Duration::from_millis(20)).await;
        });
    }
    let mut served = 0;
    while let Some(done) = clients.join_next().await {
        done.expect("client task");
        served += 1;
    }
    assert_eq!(served, 40);
    let s = lb
        .wait_stats("every connection closed", |s| {
            s.totals.connections_open == 0
        })
        .await;
    assert_eq!(s.totals.connections_rejected, 0, "{s:#?}");
    assert_eq!(s.queued_connections, 0);
    assert_eq!(s.totals.connections_admitted, 40);
    let peak = up.peak.load(Ordering::SeqCst);
    assert!(peak <= 4, "upstream saw {peak} connections at once");
}

#[tokio::test]
async fn an_upstream_at_its_limit_makes_room_by_activating_another() {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    let mut cfg = config(&a, 1, Duration::from_secs(5));
    cfg.backend.upstreams.push(UpstreamConfig {
        address: b.addr,
        size: Size::Medium,
        max_connections: Some(1),
    });
    let lb = start_lb(cfg).await;
    assert_eq!(lb.snapshot().machines.len(), 1);
    let _first = echoing(lb.addr).await;
    // The only machine is at its limit, not at its capacity: the next client does not
    // wait, a machine on the second upstream is acquired for it on the spot.
    let _second = echoing(lb.addr).await;
    let s = lb.http_stats().await;
    assert_eq!(s.machines.len(), 2);
    assert_eq!(s.totals.connections_rejected, 0);
    assert_eq!(a.peak.load(Ordering::SeqCst), 1);
    assert_eq!(b.peak.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_queued_client_is_placed_when_another_upstream_comes_up() {
    let a = Upstream::start().await;
    // B's address is known but nothing listens there yet.
    let b_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("reserve a port");
        l.local_addr().expect("addr")
    };
    let mut cfg = config(&a, 1, Duration::from_secs(5));
    cfg.backend.upstreams.push(UpstreamConfig {
        address: b_addr,
        size: Size::Medium,
        max_connections: Some(1),
    });
    let lb = start_lb(cfg).await;
    let _held = echoing(lb.addr).await;
    let mut waiting = TcpStream::connect(lb.addr).await.expect("connect");
    waiting.write_all(b"hi\n").await.expect("write");
    lb.wait_stats("queued", |s| s.queued_connections == 1).await;

    // B comes up: once its probes pass, the queued client is placed there.
    let b = Upstream::start_on(b_addr).await;
    let mut buf = [0u8; 3];
    within("queued client's echo", waiting.read_exact(&mut buf))
        .await
        .expect("read");
    assert_eq!(&buf, b"hi\n");
    assert_eq!(b.peak.load(Ordering::SeqCst), 1);
    let s = lb.http_stats().await;
    assert_eq!(
        (s.queued_connections, s.totals.connections_rejected),
        (0, 0)
    );
}
