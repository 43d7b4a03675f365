//! Effective elasticity (SPEC §9, issue 9): added capacity takes load at once, and a flat
//! load causes no scale events.
//!
//! - one pipelining connection is served by every machine the autoscaler adds, and much
//!   faster than with per-connection routing;
//! - under per-connection routing, the scale-up rebalance gives each newcomer reservations
//!   in the same step and keeps the loads within a band;
//! - a flat load held for a minute after settling causes no scale event, with either policy,
//!   and with the `target` policy also when the load is mostly queued requests (where
//!   `ceil(active × ratio)` over-shrinks the set and the undone drain sets a floor).

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{fixed_reservation, start_lb, test_config, Lb};
use elastic_lb::config::{Config, Routing, ScalingPolicy};
use elastic_lb::telemetry::{ScaleEventKind, Snapshot};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// What one pipelining run saw.
#[derive(Debug)]
struct PipelineRun {
    ok: usize,
    busy: usize,
    elapsed: Duration,
    /// Machines named in `OK` replies.
    served_by: BTreeSet<String>,
}

impl PipelineRun {
    fn ok_per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
}

/// Sends `n` `SMALL i` lines on one connection, as fast as the balancer reads them, while
/// reading the replies; checks that every reply comes in request order.
async fn pipeline(lb: &Lb, n: usize) -> PipelineRun {
    let stream = TcpStream::connect(lb.addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (read_half, mut write_half) = stream.into_split();
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        let mut batch = String::new();
        for i in 0..n {
            batch.push_str(&format!("SMALL {i}\n"));
            if batch.len() > 64 * 1024 {
                write_half.write_all(batch.as_bytes()).await.expect("write");
                batch.clear();
            }
        }
        write_half.write_all(batch.as_bytes()).await.expect("write");
        write_half
    });
    let mut reader = BufReader::new(read_half);
    let mut run = PipelineRun {
        ok: 0,
        busy: 0,
        elapsed: Duration::ZERO,
        served_by: BTreeSet::new(),
    };
    let mut line = String::new();
    for i in 0..n {
        line.clear();
        let read = tokio::time::timeout(Duration::from_secs(60), reader.read_line(&mut line))
            .await
            .expect("a reply within 60 s")
            .expect("read a reply");
        assert!(read > 0, "EOF after {i} replies");
        let reply = line.trim_end();
        if let Some(rest) = reply.strip_prefix("OK ") {
            let (machine, tail) = rest
                .split_once(' ')
                .expect("OK <machine> <class> <payload>");
            assert_eq!(tail, format!("small {i}"), "replies keep request order");
            run.served_by.insert(machine.to_string());
            run.ok += 1;
        } else {
            assert!(reply.starts_with("ERR busy"), "reply {i}: {reply:?}");
            run.busy += 1;
        }
    }
    run.elapsed = start.elapsed();
    drop(writer.await.expect("writer task"));
    run
}

fn pipeline_config(routing: Routing) -> Config {
    let mut cfg = test_config();
    // A SMALL (weight 1) takes 1 ms on a medium machine: one machine serves 1,000/s.
    cfg.load.requests.service_ms_per_unit = 1.0;
    cfg.dispatcher.routing = routing;
    cfg
}

/// Every machine the run ever had: the initial one and every scale-up.
fn machines_ever(s: &Snapshot) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = s.machines.iter().map(|m| m.name.clone()).collect();
    names.extend(
        s.events
            .iter()
            .filter(|e| e.kind == ScaleEventKind::Up)
            .map(|e| e.machine.clone()),
    );
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pipelining_connection_is_served_by_every_machine_added() {
    const LINES: usize = 20_000;
    let (per_request, per_connection) = tokio::join!(
        async {
            let lb = start_lb(pipeline_config(Routing::Request)).await;
            let run = pipeline(&lb, LINES).await;
            (run, lb.snapshot())
        },
        async {
            let lb = start_lb(pipeline_config(Routing::Connection)).await;
            pipeline(&lb, LINES).await
        },
    );
    let (run, snap) = per_request;
    eprintln!(
        "per request: {} ok, {} busy in {:?} ({:.0}/s) on {:?}; per connection: {} ok, {} busy in {:?} ({:.0}/s)",
        run.ok,
        run.busy,
        run.elapsed,
        run.ok_per_second(),
        run.served_by,
        per_connection.ok,
        per_connection.busy,
        per_connection.elapsed,
        per_connection.ok_per_second()
    );
    assert!(run.served_by.len() >= 2, "{run:?}");
    let ever = machines_ever(&snap);
    assert_eq!(
        run.served_by, ever,
        "every machine acquired during the run served requests"
    );
    assert!(
        run.ok_per_second() >= 1.8 * per_connection.ok_per_second(),
        "per-request routing: {:.0} ok/s, per-connection: {:.0} ok/s",
        run.ok_per_second(),
        per_connection.ok_per_second()
    );
    assert_eq!(per_connection.served_by.len(), 1, "{per_connection:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newcomers_take_reservations_at_once_under_connection_routing() {
    let mut cfg = test_config();
    cfg.dispatcher.routing = Routing::Connection;
    cfg.dispatcher.seed = 9; // reproducible reservations in [1, 11)
    let lb = start_lb(cfg).await;
    let mut clients = Vec::new();
    let mut seen = BTreeSet::from(["m1".to_string()]);
    for _ in 0..40 {
        clients.push(lb.admitted().await);
        // The rebalance runs in the same dispatcher step as the scale-up, so a newcomer
        // is never seen empty once it is listed (it did not get this connection: the
        // reservations it holds came from the others).
        let s = lb.snapshot();
        for m in &s.machines {
            if seen.insert(m.name.clone()) {
                assert!(m.used > 0.0, "newcomer {} holds nothing: {s:#?}", m.name);
                assert!(m.connections > 0, "{s:#?}");
            }
        }
    }
    let s = lb.snapshot();
    assert!(s.machines.len() >= 3, "{s:#?}");
    let loads: Vec<f64> = s.machines.iter().map(|m| m.load).collect();
    let (max, min) = (
        loads.iter().cloned().fold(f64::MIN, f64::max),
        loads.iter().cloned().fold(f64::MAX, f64::min),
    );
    assert!(max - min <= 20.0, "loads {loads:?}");
    assert!(s.avg_load <= 50.0, "{s:#?}");
}

/// `connections` clients, each sending one `SMALL` every `every`, until `stop`. Returns
/// the count of replies that were not `OK` (read it after `stop`).
fn flat_load(lb: &Lb, connections: usize, every: Duration, stop: Instant) -> Arc<AtomicU64> {
    let failed = Arc::new(AtomicU64::new(0));
    for _ in 0..connections {
        let (addr, failed) = (lb.addr, failed.clone());
        tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await.expect("connect");
            let (read_half, mut write_half) = stream.into_split();
            let mut reader = BufReader::new(read_half);
            let mut ticker = tokio::time::interval(every);
            let mut line = String::new();
            while Instant::now() < stop {
                ticker.tick().await;
                line.clear();
                let answered = match write_half.write_all(b"SMALL flat\n").await {
                    Ok(()) => reader.read_line(&mut line).await.unwrap_or(0) > 0,
                    Err(_) => false,
                };
                if !answered || !line.starts_with("OK ") {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        });
    }
    failed
}

/// Scale events so far (ups and downs, drains included).
fn scale_events(s: &Snapshot) -> u64 {
    s.totals.scale_ups + s.totals.scale_downs + drains(s)
}

fn drains(s: &Snapshot) -> u64 {
    s.events
        .iter()
        .filter(|e| e.kind == ScaleEventKind::Drain)
        .count() as u64
}

async fn flat_run(policy: ScalingPolicy) -> (u64, usize, Snapshot) {
    // 25 connections × 6 units = 150 units of reservations: three medium machines at 50 %;
    // the requests add a little noise on top (40 SMALL/s each, 1 ms of service).
    let mut cfg = fixed_reservation(6.0);
    cfg.load.requests.service_ms_per_unit = 1.0;
    cfg.autoscaler.policy = policy;
    cfg.autoscaler.scale_down_after = Duration::from_secs(5);
    let lb = start_lb(cfg).await;
    let (settle, hold) = (Duration::from_secs(12), Duration::from_secs(60));
    let (events, after) = events_while_held(&lb, settle, hold, |stop| {
        flat_load(&lb, 25, Duration::from_millis(25), stop)
    })
    .await;
    (events, after.machines.len(), after)
}

/// Starts `load` until `settle + hold` from now, waits `settle`, then counts the scale
/// events of the next `hold`; every request of the load (`load` returns the count of those
/// that were not answered `OK`) must have been answered `OK`.
async fn events_while_held(
    lb: &Lb,
    settle: Duration,
    hold: Duration,
    load: impl FnOnce(Instant) -> Arc<AtomicU64>,
) -> (u64, Snapshot) {
    let failed = load(Instant::now() + settle + hold);
    tokio::time::sleep(settle).await;
    let before = lb.snapshot();
    tokio::time::sleep(hold).await;
    let after = lb.snapshot();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "every request answered OK"
    );
    (scale_events(&after) - scale_events(&before), after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flat_load_causes_no_scale_events_with_either_policy() {
    let (threshold, target) = tokio::join!(
        flat_run(ScalingPolicy::Threshold),
        flat_run(ScalingPolicy::Target)
    );
    for (name, (events, machines, snap)) in [("threshold", threshold), ("target", target)] {
        eprintln!("{name}: {events} scale events in 60 s, {machines} machines");
        assert_eq!(events, 0, "{name}: {:#?}", snap.events);
    }
}

/// `connections` clients sending one `SMALL` every `every` without waiting for the replies
/// (an open loop), until `stop`; returns the count of replies that were not `OK`.
fn open_loop(lb: &Lb, connections: usize, every: Duration, stop: Instant) -> Arc<AtomicU64> {
    let failed = Arc::new(AtomicU64::new(0));
    for _ in 0..connections {
        let (addr, failed) = (lb.addr, failed.clone());
        tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await.expect("connect");
            let (read_half, mut write_half) = stream.into_split();
            let counted = failed.clone();
            let reader = tokio::spawn(async move {
                let mut lines = BufReader::new(read_half).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if !line.starts_with("OK ") {
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
            let mut ticker = tokio::time::interval(every);
            while Instant::now() < stop {
                ticker.tick().await;
                if write_half.write_all(b"SMALL q\n").await.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            let _ = write_half.shutdown().await;
            let _ = reader.await;
        });
    }
    failed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flat_queued_load_settles_with_the_target_policy() {
    // 20 ms per SMALL on a medium machine (50/s each) and 150 SMALL/s offered in an open
    // loop: three machines' worth of service, and the load is mostly queued requests, so
    // it grows much faster than n / (n − 1) when a machine leaves. Reservations are
    // small (1 unit per connection).
    let mut cfg = fixed_reservation(1.0);
    cfg.load.requests.service_ms_per_unit = 20.0;
    cfg.autoscaler.policy = ScalingPolicy::Target;
    let lb = start_lb(cfg).await;
    let (settle, hold) = (Duration::from_secs(25), Duration::from_secs(60));
    let (events, after) = events_while_held(&lb, settle, hold, |stop| {
        open_loop(&lb, 10, Duration::from_millis(66), stop)
    })
    .await;
    eprintln!(
        "target, queued load: {events} scale events in 60 s, {} machines",
        after.machines.len()
    );
    assert_eq!(events, 0, "{:#?}", after.events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_keeps_a_clients_requests_on_its_ring_machine() {
    let mut cfg = test_config();
    cfg.dispatcher.strategy = elastic_lb::core::StrategyKind::ConsistentHash;
    cfg.autoscaler.initial = vec![elastic_lb::core::Size::Medium; 4];
    let lb = start_lb(cfg).await;
    let mut c = lb.admitted().await;
    let home = c.info_field("machine").await;
    for i in 0..50 {
        c.send(&format!("SMALL {i}")).await;
        assert_eq!(c.line().await, format!("OK {home} small {i}"));
    }
}
