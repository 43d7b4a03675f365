//! Proxy mode on event-loop threads of its own (`listener.threads`): connections accepted
//! and served by per-thread loops are counted, placed and shut down exactly as on the
//! shared runtime.

mod common;

use std::time::Duration;

use common::echo::{
    assert_burst_counted, echo_burst, proxy_config, round_trip, wait_every_connection_released,
    wait_port_closed, Echo,
};
use common::{start_lb, start_lb_loops, within, Lb, TIMEOUT};
use elastic_lb::config::IoEngine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// 120 clients on two loops (the kernel spreads them by port), through a scale-up: every
/// byte comes back, every admission and reservation is counted once, and closing them all
/// releases everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_loops_serve_count_and_release_every_connection() {
    let (a, b, c) = (
        Echo::start().await,
        Echo::start().await,
        Echo::start().await,
    );
    // 120 × 0.6 = 72 units: past 50 % of one medium machine.
    let lb = start_lb_loops(proxy_config(0.6, &[a.addr, b.addr, c.addr]), 2).await;
    let clients = echo_burst(lb.addr, 120, |i| {
        (0..4096u32).map(|k| (k * 7 + i) as u8).collect()
    })
    .await;
    assert_burst_counted(&lb, 120, 72.0);
    drop(clients);
    wait_every_connection_released(&lb).await;
}

/// Graceful shutdown waits for connections on the loops: an open stream keeps working
/// after shutdown began, the port closes, and shutdown returns once the client is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_streams_on_the_loops() {
    let echo = Echo::start().await;
    let lb = start_lb_loops(proxy_config(1.0, &[echo.addr]), 2).await;
    let addr = lb.addr;
    let mut clients = Vec::new();
    for _ in 0..8 {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        assert_eq!(round_trip(&mut s, b"hello").await, b"hello");
        clients.push(s);
    }
    let shutting = tokio::spawn(lb.server.shutdown(Duration::from_secs(10)));
    // No loop accepts any more: new clients are refused by the kernel (port closed).
    wait_port_closed(addr).await;
    // The streams that were open still carry bytes both ways.
    for s in &mut clients {
        assert_eq!(round_trip(s, b"still here").await, b"still here");
    }
    assert!(!shutting.is_finished(), "shutdown waits for open streams");
    drop(clients);
    tokio::time::timeout(TIMEOUT, shutting)
        .await
        .expect("shutdown ends once the streams closed")
        .expect("shutdown task");
}

/// The loops are threads of their own: dropping the `Server` (a test's end, a library user
/// giving up) stops their accept loops instead of leaving them serving nobody's balancer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_server_closes_the_loops_port() {
    let echo = Echo::start().await;
    let lb = start_lb_loops(proxy_config(1.0, &[echo.addr]), 2).await;
    let addr = lb.addr;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    assert_eq!(round_trip(&mut s, b"up").await, b"up");
    drop(lb);
    wait_port_closed(addr).await;
}

/// Clients turned away at `listener.max_connections` that spoke first (as every HTTP client
/// does) get an orderly close — a FIN, their bytes read and discarded — not a reset, on the
/// shared runtime and on both engines' event loops; and they are counted as rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_refused_at_max_connections_see_a_close_not_a_reset() {
    let echo = Echo::start().await;
    let config = || {
        let mut cfg = proxy_config(1.0, &[echo.addr]);
        cfg.listener.max_connections = 1;
        cfg
    };
    let on_loops = |io| {
        let mut cfg = config();
        cfg.listener.io = io;
        start_lb_loops(cfg, 2)
    };
    for (name, lb) in [
        ("shared runtime", start_lb(config()).await),
        ("epoll loops", on_loops(IoEngine::Epoll).await),
        (
            "io_uring loops (where available)",
            on_loops(IoEngine::Auto).await,
        ),
    ] {
        refusals_close_cleanly(name, &lb).await;
    }
}

async fn refusals_close_cleanly(name: &str, lb: &Lb) {
    let mut held = TcpStream::connect(lb.addr).await.expect("connect");
    assert_eq!(round_trip(&mut held, b"held").await, b"held");
    for i in 0..5 {
        let mut refused = TcpStream::connect(lb.addr).await.expect("connect");
        refused
            .write_all(b"GET / HTTP/1.0\r\n\r\n")
            .await
            .expect("write");
        let mut buf = Vec::new();
        let read = within("the refusal", refused.read_to_end(&mut buf)).await;
        assert!(
            matches!(read, Ok(0)),
            "{name}: refused client {i} got {read:?} {buf:?}, not a bare close"
        );
    }
    lb.wait_stats("five refusals counted", |s| {
        s.totals.connections_rejected == 5
    })
    .await;
    assert_eq!(round_trip(&mut held, b"still").await, b"still", "{name}");
}
