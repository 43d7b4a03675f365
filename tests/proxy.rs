//! Proxy mode (SPEC §8) over real sockets: in-process echo upstreams behind the balancer.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::echo::{
    assert_burst_counted, echo_burst, proxy_config, round_trip, wait_every_connection_released,
    Echo,
};
use common::{start_lb, within, Lb, TIMEOUT};
use elastic_lb::core::Size;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// A test upstream: runs `serve` on every connection `listener` accepts, each in a task of
/// its own, until the returned task is aborted.
fn serve_each<F, Fut>(listener: TcpListener, serve: F) -> tokio::task::JoinHandle<()>
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve(s));
        }
    })
}

#[tokio::test]
async fn bytes_pass_through_unchanged_both_ways() {
    let echo = Echo::start().await;
    let lb = start_lb(proxy_config(10.0, &[echo.addr])).await;
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
    let mut cfg = proxy_config(30.0, &[a.addr, b.addr, c.addr]);
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
    let lb = start_lb(proxy_config(10.0, &[a.addr, b.addr])).await;
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
    let mut cfg = proxy_config(60.0, &[echo.addr]);
    cfg.autoscaler.max_machines = 1;
    // The second client waits in the admission queue this long before it is refused.
    cfg.backend.queue_timeout = Duration::from_millis(200);
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
    let mut cfg = proxy_config(10.0, &[echo.addr]);
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
    let lb = start_lb(proxy_config(10.0, &[echo.addr])).await;
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

/// An echo upstream whose listener can be closed and opened again on the same port while
/// the connections it accepted stay up (an outage of new connections only).
struct Flaky {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    listening: Option<tokio::task::JoinHandle<()>>,
}

impl Flaky {
    async fn start() -> Flaky {
        let mut f = Flaky {
            addr: "127.0.0.1:0".parse().expect("addr"),
            accepted: Arc::default(),
            listening: None,
        };
        f.open().await;
        f
    }

    async fn open(&mut self) {
        let listener = TcpListener::bind(self.addr).await.expect("bind flaky");
        self.addr = listener.local_addr().expect("addr");
        let count = self.accepted.clone();
        self.listening = Some(tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                // Detached: the connection outlives a closed listener.
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        }));
    }

    fn close(&mut self) {
        if let Some(task) = self.listening.take() {
            task.abort();
        }
    }
}

impl Drop for Flaky {
    fn drop(&mut self) {
        self.close();
    }
}

/// New clients one after another (`pause` apart, when given) until one gets `hi` echoed
/// within 300 ms; panics if none is by 2 × `interval` + 100 ms after `back` (the moment the
/// upstream came back).
async fn first_client_served(
    lb: &Lb,
    back: tokio::time::Instant,
    interval: Duration,
    pause: Option<Duration>,
) {
    let deadline = back + 2 * interval + Duration::from_millis(100);
    loop {
        let mut c = TcpStream::connect(lb.addr).await.expect("connect");
        let mut got = [0u8; 2];
        let served = c.write_all(b"hi").await.is_ok()
            && matches!(
                tokio::time::timeout(Duration::from_millis(300), c.read_exact(&mut got)).await,
                Ok(Ok(_))
            );
        if served {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no client served {:?} after the upstream came back: {:#?}",
            back.elapsed(),
            lb.snapshot()
        );
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_outage_does_not_outlive_the_upstreams_recovery() {
    let mut up = Flaky::start().await;
    let mut cfg = proxy_config(10.0, &[up.addr]);
    let interval = Duration::from_millis(200);
    cfg.backend.health_check_interval = interval;
    cfg.backend.health_check_timeout = Duration::from_millis(100);
    let lb = start_lb(cfg).await;
    // A long-lived client holds the only machine through the outage.
    let mut holder = TcpStream::connect(lb.addr).await.expect("connect");
    assert_eq!(round_trip(&mut holder, b"hold").await, b"hold");

    // The upstream stops accepting for 0.8 s: three failed probes take it down.
    up.close();
    lb.wait_stats("the machine drains", |s| {
        s.machines
            .iter()
            .any(|m| m.state == elastic_lb::core::MachineState::Draining)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    up.open().await;
    let back = tokio::time::Instant::now();

    // Every new client is served within 2 × health_check_interval of the recovery.
    first_client_served(&lb, back, interval, Some(Duration::from_millis(20))).await;
    for i in 0..12u8 {
        let mut c = TcpStream::connect(lb.addr).await.expect("connect");
        assert_eq!(round_trip(&mut c, &[i; 4]).await, vec![i; 4], "client {i}");
    }
    // The machine never retired: it is active again with the holder still on it.
    let s = lb.snapshot();
    assert_eq!(s.machines.len(), 1, "{s:#?}");
    assert_eq!(s.machines[0].state, elastic_lb::core::MachineState::Active);
    assert_eq!(round_trip(&mut holder, b"still").await, b"still");
}

/// Clients that arrive during a 0.6 s outage of the only upstream see their connects
/// refused: `max_fails` of them eject it. The first good probe after the recovery ends that
/// ejection, so new clients are served within 2 × health_check_interval, not `eject_for`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_during_a_short_outage_do_not_outlive_the_recovery() {
    let mut up = Flaky::start().await;
    let mut cfg = proxy_config(10.0, &[up.addr]);
    let interval = Duration::from_millis(200);
    cfg.backend.health_check_interval = interval;
    cfg.backend.health_check_timeout = Duration::from_millis(100);
    cfg.backend.eject_for = Duration::from_secs(30);
    let lb = start_lb(cfg).await;
    let mut holder = TcpStream::connect(lb.addr).await.expect("connect");
    assert_eq!(round_trip(&mut holder, b"hold").await, b"hold");

    up.close();
    common::echo::wait_port_closed(up.addr).await;
    // Three clients meanwhile: three refused connects (max_fails) eject the upstream.
    let mut refused = Vec::new();
    for _ in 0..3 {
        let mut c = TcpStream::connect(lb.addr).await.expect("connect");
        c.write_all(b"x").await.expect("write");
        refused.push(c);
    }
    lb.wait_stats("the ejected upstream's machine drains", |s| {
        s.machines
            .iter()
            .any(|m| m.state == elastic_lb::core::MachineState::Draining)
    })
    .await;
    up.open().await;
    let back = tokio::time::Instant::now();
    first_client_served(&lb, back, interval, None).await;
    assert_eq!(round_trip(&mut holder, b"still").await, b"still");
}

/// One upstream (probed every `probe_every`, `queue_timeout` 8 s) behind a balancer, a
/// first client served, then the upstream's listener closed and a second client sent:
/// its connect is refused and, with no other upstream, its retry waits in the queue.
/// Returns the upstream, the balancer, the first client and the queued one (which has
/// sent `r`).
async fn retry_queued_in_an_outage(probe_every: Duration) -> (Flaky, Lb, TcpStream, TcpStream) {
    let mut up = Flaky::start().await;
    let mut cfg = proxy_config(10.0, &[up.addr]);
    cfg.backend.health_check_interval = probe_every;
    cfg.backend.queue_timeout = Duration::from_secs(8);
    let lb = start_lb(cfg).await;
    let mut first = TcpStream::connect(lb.addr).await.expect("connect");
    assert_eq!(round_trip(&mut first, b"one").await, b"one");
    up.close();
    common::echo::wait_port_closed(up.addr).await;
    let mut retried = TcpStream::connect(lb.addr).await.expect("connect");
    retried.write_all(b"r").await.expect("write");
    lb.wait_stats("the retry is queued", |s| s.queued_connections == 1)
        .await;
    (up, lb, first, retried)
}

/// A client whose connect was refused during a short outage waits in the queue for another
/// upstream; the clients after it, which the recovered upstream can take, are not held up
/// until its `queue_timeout` runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_waiting_for_another_upstream_does_not_hold_up_new_clients() {
    // Probes play no part: only the start-up one runs.
    let (mut up, lb, _first, _retried) = retry_queued_in_an_outage(Duration::from_secs(60)).await;

    // Back 1 connection failure later (below max_fails): a new client is served at once.
    up.open().await;
    let mut fresh = TcpStream::connect(lb.addr).await.expect("connect");
    fresh.write_all(b"new").await.expect("write");
    let mut back = [0u8; 3];
    let served = tokio::time::timeout(Duration::from_secs(2), fresh.read_exact(&mut back)).await;
    assert!(
        matches!(served, Ok(Ok(_))),
        "a new client waited behind the queued retry: {:#?}",
        lb.snapshot()
    );
    assert_eq!(&back, b"new");
    assert_eq!(lb.snapshot().queued_connections, 1, "the retry still waits");
}

/// A client whose connect was refused during a short outage of the only upstream is sent
/// there again once a probe connects (HAProxy retries the same server): it does not wait
/// out its `queue_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_goes_back_to_its_upstream_once_a_probe_connects() {
    let (mut up, lb, _first, mut retried) =
        retry_queued_in_an_outage(Duration::from_millis(200)).await;

    let back = tokio::time::Instant::now();
    up.open().await;
    let mut echoed = [0u8; 1];
    let served =
        tokio::time::timeout(Duration::from_secs(3), retried.read_exact(&mut echoed)).await;
    assert!(
        matches!(served, Ok(Ok(_))),
        "the retry waited for its queue_timeout: {:#?}",
        lb.snapshot()
    );
    assert_eq!(&echoed, b"r");
    // Within two probe intervals (plus scheduling slack), not 8 s.
    assert!(
        back.elapsed() < Duration::from_millis(1500),
        "{:?}",
        back.elapsed()
    );
    assert_eq!(lb.snapshot().queued_connections, 0);
}

/// An upstream that accepts connections and never answers (a frozen process: its kernel
/// still completes handshakes, so probes pass).
async fn frozen() -> (SocketAddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind frozen");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    (addr, accepted, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_upstream_is_ejected_and_gets_no_new_clients() {
    let good = Echo::start().await;
    let (frozen_addr, frozen_accepted, frozen_task) = frozen().await;
    let mut cfg = proxy_config(10.0, &[good.addr, frozen_addr]);
    cfg.dispatcher.strategy = elastic_lb::core::StrategyKind::RoundRobin;
    cfg.autoscaler.initial = vec![Size::Medium, Size::Medium];
    let interval = Duration::from_millis(100);
    cfg.backend.health_check_interval = interval;
    let server_timeout = Duration::from_millis(300);
    cfg.backend.server_timeout = server_timeout;
    let lb = start_lb(cfg).await;

    // Clients alternate between the two; those on the frozen one are closed after the
    // server timeout, and after three of them it is ejected.
    let mut clients = JoinSet::new();
    for i in 0..8u8 {
        let addr = lb.addr;
        clients.spawn(async move {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            c.write_all(&[i; 2]).await.expect("write");
            let mut got = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(2), c.read_to_end(&mut got)).await;
            got
        });
    }
    while clients.join_next().await.is_some() {}
    tokio::time::sleep(server_timeout + interval).await;
    let frozen_before = frozen_accepted.load(Ordering::SeqCst);
    assert!(
        frozen_before >= 3,
        "the frozen upstream got its share first"
    );
    for i in 0..10u8 {
        let mut c = TcpStream::connect(lb.addr).await.expect("connect");
        assert_eq!(round_trip(&mut c, &[i; 3]).await, vec![i; 3], "client {i}");
    }
    // Probes keep connecting (they are not clients); proxied clients would be answered by
    // nobody. Every client above was served, so none went there.
    assert!(good.accepted() >= 10);
    let s = lb.snapshot();
    assert!(
        s.machines
            .iter()
            .filter(|m| m.state == elastic_lb::core::MachineState::Active)
            .count()
            >= 1
    );
    frozen_task.abort();
}

/// Clients trickling in, one at a time, under every strategy: after the frozen upstream's
/// first server timeout (plus one health interval) no new client is sent there while the
/// healthy one can take it. With least-connections the frozen machine used to get the
/// next client each time its stuck one timed out (a tie, won by the older machine), one
/// lost client per `server_timeout`, until `max_fails` of them ejected it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_upstream_gets_no_client_after_its_first_server_timeout() {
    use elastic_lb::core::StrategyKind;
    let server_timeout = Duration::from_millis(300);
    let interval = Duration::from_millis(100);
    let settled = server_timeout + interval + Duration::from_millis(400);
    for strategy in [
        StrategyKind::LeastConnections,
        StrategyKind::LeastLoad,
        StrategyKind::RoundRobin,
        StrategyKind::PowerOfTwo,
        StrategyKind::ConsistentHash,
        StrategyKind::First,
    ] {
        let good = Echo::start().await;
        let (frozen_addr, frozen_accepted, frozen_task) = frozen().await;
        // The frozen one is m1, the older machine, which wins ties.
        let mut cfg = proxy_config(10.0, &[frozen_addr, good.addr]);
        cfg.dispatcher.strategy = strategy;
        cfg.autoscaler.initial = vec![Size::Medium, Size::Medium];
        cfg.backend.health_check_interval = interval;
        cfg.backend.server_timeout = server_timeout;
        let lb = start_lb(cfg).await;

        let started = tokio::time::Instant::now();
        let mut clients = JoinSet::new();
        for i in 0..40u8 {
            let addr = lb.addr;
            clients.spawn(async move {
                let offset = started.elapsed();
                let mut c = TcpStream::connect(addr).await.expect("connect");
                c.write_all(&[i; 2]).await.expect("write");
                let mut back = [0u8; 2];
                let read =
                    tokio::time::timeout(Duration::from_secs(1), c.read_exact(&mut back)).await;
                (i, offset, matches!(read, Ok(Ok(_))) && back == [i; 2])
            });
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        let mut lost_late = Vec::new();
        while let Some(done) = clients.join_next().await {
            let (i, offset, echoed) = done.expect("client task");
            if !echoed && offset > settled {
                lost_late.push((i, offset));
            }
        }
        assert!(
            lost_late.is_empty(),
            "{strategy:?}: clients started after {settled:?} got no answer: {lost_late:?} \
             (the frozen upstream accepted {})",
            frozen_accepted.load(Ordering::SeqCst)
        );
        frozen_task.abort();
    }
}

/// A suspect upstream is the last resort, not out of service: alone, it still takes the
/// next client, and answering it clears the suspicion (`/api/upstreams` shows both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspect_upstream_alone_still_serves_and_an_answer_clears_it() {
    // Holds its first connection unanswered, echoes every later one.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let mut first = None;
        while let Ok((mut s, _)) = listener.accept().await {
            // Probes connect and close at once; the first client is the first to send.
            let mut byte = [0u8; 1];
            if first.is_none() {
                if let Ok(Ok(1)) =
                    tokio::time::timeout(Duration::from_secs(1), s.peek(&mut byte)).await
                {
                    first = Some(s);
                    continue;
                }
            }
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let mut cfg = proxy_config(10.0, &[addr]);
    cfg.backend.server_timeout = Duration::from_millis(200);
    let lb = start_lb(cfg).await;
    let suspect = || async {
        let (_, body) = common::http_get(lb.admin, "/api/upstreams").await;
        body.contains("\"suspect\":true")
    };
    let mut held = TcpStream::connect(lb.addr).await.expect("connect");
    held.write_all(b"x").await.expect("write");
    let mut got = Vec::new();
    let _ = within("the server timeout", held.read_to_end(&mut got)).await;
    assert!(got.is_empty(), "{got:?}");
    assert!(suspect().await, "unanswered for server_timeout: suspect");
    let mut next = TcpStream::connect(lb.addr).await.expect("connect");
    assert_eq!(round_trip(&mut next, b"hello").await, b"hello");
    drop(next);
    common::wait_until(TIMEOUT, "the answered client clears the suspicion", || {
        lb.snapshot().totals.connections_open == 0
    })
    .await;
    assert!(!suspect().await, "answered a client: not suspect");
    server.abort();
}

/// A keep-alive connection the upstream answered before and then left unanswered (the
/// process froze since) is a failure, not a success: it makes the upstream suspect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_timing_out_makes_its_upstream_suspect() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    // Answers each connection's first bytes, then never again.
    let server = serve_each(listener, |mut s| async move {
        let mut buf = [0u8; 64];
        if let Ok(n @ 1..) = s.read(&mut buf).await {
            let _ = s.write_all(&buf[..n]).await;
        }
        std::future::pending::<()>().await;
        drop(s);
    });
    let mut cfg = proxy_config(10.0, &[addr]);
    cfg.backend.server_timeout = Duration::from_millis(200);
    let lb = start_lb(cfg).await;
    let mut c = TcpStream::connect(lb.addr).await.expect("connect");
    assert_eq!(round_trip(&mut c, b"a").await, b"a");
    c.write_all(b"b").await.expect("write");
    let mut got = Vec::new();
    let _ = within("the server timeout", c.read_to_end(&mut got)).await;
    assert!(got.is_empty(), "{got:?}");
    common::wait_until(TIMEOUT, "the connection is closed", || {
        lb.snapshot().totals.connections_open == 0
    })
    .await;
    let (_, body) = common::http_get(lb.admin, "/api/upstreams").await;
    assert!(body.contains("\"suspect\":true"), "{body}");
    server.abort();
}

/// Connections are placed by their own task while that changes nothing else (proxy
/// machines never move a connection), and by the dispatcher past the scale-up point: a
/// burst crossing it from many tasks at once is admitted, counted and released exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_across_the_scale_up_point_is_counted_exactly() {
    let (a, b, c) = (
        Echo::start().await,
        Echo::start().await,
        Echo::start().await,
    );
    // 150 × 0.6 = 90 units: past 50 % of one medium machine, under 50 % of three.
    let lb = start_lb(proxy_config(0.6, &[a.addr, b.addr, c.addr])).await;
    let clients = echo_burst(lb.addr, 150, |i| i.to_be_bytes().to_vec()).await;
    let s = assert_burst_counted(&lb, 150, 90.0);
    assert!(
        s.machines.iter().all(|m| m.used <= 100.0),
        "no machine over capacity: {s:#?}"
    );
    drop(clients);
    wait_every_connection_released(&lb).await;
}

/// A per-upstream `max_connections` holds when many connections race for the last places.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_under_a_burst() {
    let echo = Echo::start().await;
    let mut cfg = proxy_config(0.0, &[echo.addr]);
    cfg.backend.upstreams[0].max_connections = Some(5);
    cfg.backend.queue_timeout = Duration::from_millis(300);
    let lb = start_lb(cfg).await;
    let mut tasks = JoinSet::new();
    for _ in 0..40 {
        let addr = lb.addr;
        tasks.spawn(async move { TcpStream::connect(addr).await.expect("connect") });
    }
    let mut clients = Vec::new();
    while let Some(client) = tasks.join_next().await {
        clients.push(client.expect("client task"));
    }
    // Let every admission settle (queued ones are refused after queue_timeout).
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..20 {
        let s = lb.snapshot();
        assert!(s.machines[0].connections <= 5, "{s:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(lb.snapshot().machines[0].connections, 5);
    drop(clients);
}

/// `server_timeout` is an inactivity limit (HAProxy's `timeout server`): an upload the
/// upstream keeps reading is not cut after `server_timeout` just because the answer comes
/// at the end, and it costs the upstream no failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_longer_than_server_timeout_is_not_cut() {
    // Reads until the client's FIN, then answers with the byte count.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = serve_each(listener, |mut s| async move {
        let mut got = Vec::new();
        if s.read_to_end(&mut got).await.is_ok() {
            let _ = s.write_all(format!("{}\n", got.len()).as_bytes()).await;
        }
    });
    let mut cfg = proxy_config(10.0, &[addr]);
    let server_timeout = Duration::from_millis(300);
    cfg.backend.server_timeout = server_timeout;
    cfg.backend.max_fails = 1;
    let lb = start_lb(cfg).await;
    let mut c = TcpStream::connect(lb.addr).await.expect("connect");
    // 1 KiB every 50 ms for 4 × server_timeout: bytes keep moving, no answer yet.
    let chunks = 4 * server_timeout.as_millis() / 50;
    for _ in 0..chunks {
        c.write_all(&[7; 1024]).await.expect("upload write");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.shutdown().await.expect("half-close");
    let mut reply = String::new();
    within("the answer after the upload", c.read_to_string(&mut reply))
        .await
        .expect("read answer");
    assert_eq!(reply, format!("{}\n", chunks * 1024));
    let up = &lb.snapshot().machines;
    assert_eq!(up.len(), 1, "the upstream was not ejected: {up:#?}");
    assert_eq!(up[0].state, elastic_lb::core::MachineState::Active);
    task.abort();
}

/// An upstream that reads slowly is busy, not silent: the client's upload waits in the
/// balancer's send buffer towards it (up to megabytes) long before the upstream has read
/// it, so the client's last bytes are read by the balancer early. While the upstream keeps
/// taking what the balancer sent it, `server_timeout` does not cut the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_the_upstream_reads_slowly_after_the_client_is_done_is_not_cut() {
    // Reads 16 KiB every 20 ms (about 800 KB/s) until the client's FIN, then answers. Its
    // receive buffer is small (fixed), so what it has not read waits on the balancer's side.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(64 * 1024).expect("SO_RCVBUF");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(64).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let task = serve_each(listener, |mut s| async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut total = 0usize;
        loop {
            match s.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(_) => return,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = s.write_all(format!("{total}\n").as_bytes()).await;
    });
    let mut cfg = proxy_config(10.0, &[addr]);
    cfg.backend.server_timeout = Duration::from_millis(300);
    cfg.backend.max_fails = 1;
    let lb = start_lb(cfg).await;
    let mut c = TcpStream::connect(lb.addr).await.expect("connect");
    const TOTAL: usize = 2 << 20;
    let started = std::time::Instant::now();
    c.write_all(&vec![9u8; TOTAL]).await.expect("upload");
    c.shutdown().await.expect("half-close");
    let sent_in = started.elapsed();
    let mut reply = String::new();
    within("the answer after the upload", c.read_to_string(&mut reply))
        .await
        .expect("read answer");
    assert_eq!(
        reply,
        format!("{TOTAL}\n"),
        "answered, not cut (the client was done after {sent_in:?}, the answer came after {:?})",
        started.elapsed()
    );
    let up = &lb.snapshot().machines;
    assert_eq!(up.len(), 1, "the upstream was not ejected: {up:#?}");
    assert_eq!(up[0].state, elastic_lb::core::MachineState::Active);
    task.abort();
}

/// A client that keeps sending but does not read its answers yet is a slow *client*, not a
/// silent upstream: the upstream answered and only waits for the balancer to take more,
/// which it does not while the client's side is full. `server_timeout` must not cut the
/// connection or count a failure against a healthy upstream (HAProxy arms `timeout server`
/// only while it wants to read from the server); `idle_timeout` governs the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_late_is_not_a_server_timeout() {
    let echo = Echo::start().await;
    let mut cfg = proxy_config(10.0, &[echo.addr]);
    let server_timeout = Duration::from_millis(300);
    cfg.backend.server_timeout = server_timeout;
    cfg.backend.max_fails = 1;
    let lb = start_lb(cfg).await;
    let c = TcpStream::connect(lb.addr).await.expect("connect");
    let (mut r, mut w) = c.into_split();
    // More than every socket buffer on the way holds: the echo backs up to the client.
    const TOTAL: usize = 48 << 20;
    let writer = tokio::spawn(async move {
        let chunk = vec![5u8; 64 * 1024];
        let mut sent = 0;
        while sent < TOTAL {
            if w.write_all(&chunk).await.is_err() {
                break;
            }
            sent += chunk.len();
        }
        let _ = w.shutdown().await;
        sent
    });
    // The client reads nothing for 4 × server_timeout while its bytes are stuck.
    tokio::time::sleep(4 * server_timeout).await;
    let mut got = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    let reading = async {
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), reading)
        .await
        .expect("the echo ends");
    let sent = writer.await.expect("writer");
    assert_eq!(sent, TOTAL, "the client could send everything");
    assert_eq!(
        got, TOTAL,
        "every byte came back: the connection was not cut"
    );
    let s = lb.snapshot();
    assert_eq!(s.machines.len(), 1, "the upstream was not ejected: {s:#?}");
    assert_eq!(s.machines[0].state, elastic_lb::core::MachineState::Active);
}
