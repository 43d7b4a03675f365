//! Proxy mode on event-loop threads of its own (`listener.threads`): connections accepted
//! and served by per-thread loops are counted, placed and shut down exactly as on the
//! shared runtime.

mod common;

use std::time::Duration;

use common::echo::{
    assert_burst_counted, echo_burst, proxy_config, round_trip, wait_every_connection_released,
    wait_port_closed, Echo,
};
use common::{start_lb_loops, TIMEOUT};
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
