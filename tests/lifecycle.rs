//! Lifecycle over real sockets (SPEC §5): scale down and draining, no flapping, reload,
//! graceful shutdown, idle timeout.

mod common;

use std::time::Duration;

use common::{connection_refused, err_code, fixed_reservation, start_lb, test_config, Lb, TIMEOUT};
use elastic_lb::config::{Config, Routing};
use elastic_lb::core::StrategyKind;
use elastic_lb::core::{MachineState, Size};
use elastic_lb::telemetry::{ScaleEventKind, Snapshot};
use tokio::time::Instant;

/// The deterministic scale-down setup of issue 3: reservation 10 on capacity-100 machines,
/// thresholds 50 / 20, scale down after 200 ms, checks every 10 ms.
fn scale_down_config() -> Config {
    let mut cfg = fixed_reservation(10.0);
    cfg.dispatcher.strategy = StrategyKind::LeastConnections;
    cfg.machines.medium = 100;
    cfg.autoscaler.scale_up_threshold = 50.0;
    cfg.autoscaler.scale_down_threshold = 20.0;
    cfg.autoscaler.scale_down_after = Duration::from_millis(200);
    cfg.autoscaler.interval = Duration::from_millis(10);
    cfg.autoscaler.min_machines = 1;
    // These tests follow each connection's machine; the scale-up rebalance of SPEC §9
    // (tested in tests/elasticity.rs) would move some of them when m2 joins.
    cfg.autoscaler.rebalance_tolerance = 0.0;
    cfg
}

fn names(s: &Snapshot) -> Vec<&str> {
    s.machines.iter().map(|m| m.name.as_str()).collect()
}

fn events(s: &Snapshot) -> Vec<(ScaleEventKind, &str)> {
    s.events
        .iter()
        .map(|e| (e.kind, e.machine.as_str()))
        .collect()
}

/// Opens six connections (all on m1; the sixth pushes m1 to 60 % and adds m2) and a
/// seventh (on m2). Returns (the six, the seventh).
async fn six_on_m1_one_on_m2(lb: &Lb) -> (Vec<common::Client>, common::Client) {
    let mut on_m1 = Vec::new();
    for i in 0..6 {
        let mut c = lb.admitted().await;
        assert_eq!(c.info_field("machine").await, "m1", "connection {i}");
        on_m1.push(c);
    }
    let s = lb.http_stats().await;
    assert_eq!(names(&s), ["m1", "m2"], "60 % > 50 % adds m2: {s:#?}");
    assert_eq!(s.totals.scale_ups, 1, "{s:#?}");
    let mut seventh = lb.admitted().await;
    assert_eq!(
        seventh.info_field("machine").await,
        "m2",
        "least-connections puts the 7th on the emptier m2"
    );
    (on_m1, seventh)
}

// === scale down ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_down_drains_the_least_loaded_machine_and_moves_its_connections() {
    let cfg = scale_down_config();
    let pool_medium = cfg.pool.medium;
    let lb = start_lb(cfg).await;
    let (mut on_m1, mut seventh) = six_on_m1_one_on_m2(&lb).await;
    let s = lb.http_stats().await;
    assert_eq!(s.pool.medium, pool_medium - 2, "{s:#?}");

    // Close five of m1's connections: m1 10, m2 10, average 10 % < 20 %.
    let last_on_m1 = on_m1.pop().expect("six connections");
    let low_from = Instant::now();
    drop(on_m1);
    let s = lb
        .wait_stats("one machine was retired", |s| s.totals.scale_downs >= 1)
        .await;
    let waited = low_from.elapsed();
    assert!(
        waited >= Duration::from_millis(200),
        "retired after {waited:?}, before scale_down_after (200ms) of low load"
    );
    assert_eq!(s.totals.scale_downs, 1, "{s:#?}");
    assert_eq!(s.totals.scale_ups, 1, "{s:#?}");
    // Tie (both at 10 %): the newest machine, m2, goes; it is no longer listed.
    assert_eq!(names(&s), ["m1"], "{s:#?}");
    assert_eq!(
        s.machines[0].used, 20.0,
        "m2's reservation moved to m1: {s:#?}"
    );
    assert_eq!(s.machines[0].connections, 2, "{s:#?}");
    assert_eq!(
        s.pool.medium,
        pool_medium - 1,
        "m2 went back to the pool (only m1 out): {s:#?}"
    );
    assert_eq!(
        events(&s),
        [
            (ScaleEventKind::Up, "m2"),
            (ScaleEventKind::Drain, "m2"),
            (ScaleEventKind::Retire, "m2"),
        ],
        "{s:#?}"
    );

    // The moved connection is on m1 now, with its reservation, and is served there.
    seventh.send("INFO").await;
    let info = seventh.line().await;
    assert!(
        info.starts_with("OK machine=m1 size=medium load=20.00 "),
        "{info:?}"
    );
    assert!(info.ends_with(" reservation=10.00"), "{info:?}");
    seventh.send("SMALL after-drain").await;
    assert_eq!(seventh.line().await, "OK m1 small after-drain");

    // Never below min_machines: one machine at 10 % stays, period after period.
    drop(last_on_m1);
    lb.wait_stats("m1 holds only the moved connection", |s| {
        s.machines.len() == 1 && s.machines[0].used == 10.0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await; // 4 × scale_down_after
    let s = lb.http_stats().await;
    assert_eq!(names(&s), ["m1"], "{s:#?}");
    assert_eq!(s.machines[0].state, MachineState::Active, "{s:#?}");
    assert_eq!(s.totals.scale_downs, 1, "{s:#?}");
    assert!(s.avg_load < 20.0, "the average is low: {s:#?}");
    assert_eq!(events(&s).len(), 3, "no scale event since: {s:#?}");
    seventh.send("PING").await;
    assert_eq!(seventh.line().await, "PONG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_machine_finishes_its_queued_request_before_it_retires() {
    let mut cfg = scale_down_config();
    cfg.load.requests.service_ms_per_unit = 1000.0; // SMALL on a medium: 1 s
                                                    // The request must queue on the connection's own machine (m1), which then drains.
    cfg.dispatcher.routing = Routing::Connection;
    let lb = start_lb(cfg).await;
    let (mut on_m1, _seventh) = six_on_m1_one_on_m2(&lb).await;
    let mut eighth = lb.admitted().await;
    assert_eq!(eighth.info_field("machine").await, "m2");

    // m1 keeps one connection with a slow request queued: 10 + 1 = 11 %; m2 holds 20 %.
    let mut keeper = on_m1.pop().expect("six connections");
    keeper.send("SMALL slow").await;
    common::wait_until(TIMEOUT, "the slow request is in service on m1", || {
        lb.snapshot().machines[0].queued == 1
    })
    .await;
    drop(on_m1);
    // Average 31 / 200 < 20 %: after 200 ms the least loaded, m1, drains.
    let s = lb
        .wait_stats("m1 is draining", |s| {
            s.machines[0].state == MachineState::Draining
        })
        .await;
    assert_eq!(
        names(&s),
        ["m1", "m2"],
        "a draining machine is still listed: {s:#?}"
    );
    assert_eq!(s.machines[0].queued, 1, "its queued request stays: {s:#?}");
    assert_eq!(s.machines[0].connections, 0, "its connection moved: {s:#?}");
    assert_eq!(s.machines[1].connections, 3, "{s:#?}");
    assert_eq!(
        s.totals.scale_downs, 0,
        "not retired while work is queued: {s:#?}"
    );

    // The queued request is answered by m1; the connection is on m2 from now on.
    keeper.send("INFO").await;
    assert_eq!(keeper.line().await, "OK m1 small slow");
    let info = keeper.line().await;
    assert!(info.starts_with("OK machine=m2 "), "{info:?}");
    assert!(info.ends_with(" reservation=10.00"), "{info:?}");
    let s = lb
        .wait_stats("m1 is retired", |s| s.totals.scale_downs == 1)
        .await;
    assert_eq!(names(&s), ["m2"], "{s:#?}");
    assert_eq!(s.machines[0].used, 30.0, "{s:#?}");
    keeper.send("SMALL after").await;
    assert_eq!(keeper.line().await, "OK m2 small after");
    let t = lb.http_stats().await.totals;
    assert_eq!((t.requests_ok, t.requests_failed), (2, 0), "{t:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_scale_down_when_the_others_would_pass_the_scale_up_threshold() {
    // Two small machines (50) and an xlarge (400); round-robin spreads reservations of 10.
    let mut cfg = scale_down_config();
    cfg.dispatcher.strategy = StrategyKind::RoundRobin;
    cfg.autoscaler.initial = vec![Size::Small, Size::Small, Size::Xlarge];
    let pool_xlarge = cfg.pool.xlarge;
    let lb = start_lb(cfg).await;
    let mut by_machine: std::collections::BTreeMap<String, Vec<common::Client>> =
        Default::default();
    for _ in 0..6 {
        let mut c = lb.admitted().await;
        let m = c.info_field("machine").await;
        by_machine.entry(m).or_default().push(c);
    }
    let s = lb.http_stats().await;
    let used: Vec<f64> = s.machines.iter().map(|m| m.used).collect();
    assert_eq!(used, [20.0, 20.0, 20.0], "set-up: two per machine: {s:#?}");
    // 60 / 500 = 12 % < 20 %; the least loaded is m3 (5 %), but without it m1 and m2 would
    // hold 60 / 100 = 60 % > 50 %: nothing may retire.
    assert!(s.avg_load < 20.0, "{s:#?}");
    tokio::time::sleep(Duration::from_secs(1)).await; // 5 × scale_down_after
    let s = lb.http_stats().await;
    assert_eq!(names(&s), ["m1", "m2", "m3"], "{s:#?}");
    assert!(
        s.machines.iter().all(|m| m.state == MachineState::Active),
        "{s:#?}"
    );
    assert_eq!(s.totals.scale_downs, 0, "{s:#?}");
    assert!(s.events.is_empty(), "no scale event expected: {s:#?}");

    // Control: close one connection on each small machine. Now 40 / 500 = 8 %, and without
    // m3 the others would hold 40 / 100 = 40 % ≤ 50 %: m3 retires.
    for m in ["m1", "m2"] {
        by_machine.get_mut(m).expect("clients on m1 and m2").pop();
    }
    let s = lb
        .wait_stats("m3 is retired", |s| s.totals.scale_downs == 1)
        .await;
    assert_eq!(names(&s), ["m1", "m2"], "{s:#?}");
    assert_eq!(common::total_used(&s), 40.0, "{s:#?}");
    assert_eq!(s.pool.xlarge, pool_xlarge, "{s:#?}");
    for c in by_machine.values_mut().flatten() {
        c.send("PING").await;
        assert_eq!(c.line().await, "PONG");
        let m = c.info_field("machine").await;
        assert!(m == "m1" || m == "m2", "moved off m3: {m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oscillating_load_does_not_flap() {
    let mut cfg = scale_down_config();
    // Dips below 20 % last a few ms; scale_down_after leaves a wide margin over them.
    cfg.autoscaler.scale_down_after = Duration::from_millis(500);
    let lb = start_lb(cfg).await;
    let (on_m1, seventh) = six_on_m1_one_on_m2(&lb).await;
    let mut base: Vec<common::Client> = on_m1;
    base.push(seventh);
    let open = |lb: &Lb, n: u64| lb.snapshot().totals.connections_open == n;

    // ~1 s of: 7 → 9 connections (45 %), → 7 (35 %), → 3 (15 %, a short dip), → 7.
    let mut longest_dip = Duration::ZERO;
    let mut cycles = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(1) {
        let extra = vec![lb.admitted().await, lb.admitted().await];
        assert!(open(&lb, 9));
        assert!(lb.snapshot().avg_load <= 50.0);
        drop(extra);
        common::wait_until(TIMEOUT, "back to 7 connections", || open(&lb, 7)).await;
        let dip = Instant::now();
        base.truncate(3);
        common::wait_until(TIMEOUT, "down to 3 connections", || open(&lb, 3)).await;
        for _ in 0..4 {
            base.push(lb.admitted().await);
        }
        longest_dip = longest_dip.max(dip.elapsed());
        cycles += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(cycles >= 3, "only {cycles} cycles in 1 s");
    assert!(
        longest_dip < Duration::from_millis(250),
        "set-up: a dip lasted {longest_dip:?}, too close to scale_down_after"
    );
    let s = lb.http_stats().await;
    assert_eq!(s.totals.scale_ups, 1, "{s:#?}");
    assert_eq!(s.totals.scale_downs, 0, "{s:#?}");
    assert_eq!(events(&s), [(ScaleEventKind::Up, "m2")], "{s:#?}");
    assert_eq!(names(&s), ["m1", "m2"], "{s:#?}");
    for c in &mut base {
        c.send("PING").await;
        assert_eq!(c.line().await, "PONG");
    }
}

// === reload ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_strategy_weights_pool_and_max_connections_without_dropping() {
    let cfg = test_config();
    let lb = start_lb(cfg.clone()).await;
    let mut c = lb.admitted().await;
    let s = lb.http_stats().await;
    assert_eq!(s.strategy, "least-connections");
    assert_eq!(s.pool.medium, cfg.pool.medium - 1);

    let mut next = cfg.clone();
    next.dispatcher.strategy = StrategyKind::RoundRobin;
    next.load.requests.small = 3;
    next.pool.medium = 3;
    lb.server.reload(next.clone()).await;
    let s = lb
        .wait_stats("the new strategy is in force", |s| {
            s.strategy == "round-robin"
        })
        .await;
    assert_eq!(s.pool.medium, 2, "pool of 3 mediums, one in use: {s:#?}");

    // The new weight applies to the next request of the existing connection.
    c.send("PING").await;
    assert_eq!(c.line().await, "PONG");
    let before = lb.http_stats().await.totals;
    c.send("SMALL w").await;
    assert_eq!(c.line().await, "OK m1 small w");
    let after = lb.http_stats().await.totals;
    assert_eq!(after.requests_ok, before.requests_ok + 1);
    assert_eq!(after.weighted_ok, before.weighted_ok + 3.0, "{after:#?}");

    // max_connections lowered to what is open: new connections are refused, the old one
    // keeps working.
    let mut lower = next.clone();
    lower.listener.max_connections = 1;
    lb.server.reload(lower).await;
    let mut refused = lb.connect().await;
    let reply = refused.line().await;
    assert_eq!(err_code(&reply), "overloaded", "{reply:?}");
    refused.expect_closed().await;
    c.send("PING").await;
    assert_eq!(c.line().await, "PONG");
    let s = lb.http_stats().await;
    assert_eq!(s.totals.connections_rejected, 1, "{s:#?}");
    assert_eq!(s.totals.connections_open, 1, "{s:#?}");

    // Raised again: admitted again.
    lb.server.reload(next).await;
    let _d = lb.admitted().await;
    c.send("PING").await;
    assert_eq!(c.line().await, "PONG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_with_lower_scale_up_threshold_scales_up_at_once() {
    let cfg = fixed_reservation(10.0);
    let lb = start_lb(cfg.clone()).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(lb.admitted().await);
    }
    let s = lb.http_stats().await;
    assert_eq!(names(&s), ["m1"], "30 % needs one machine: {s:#?}");

    let mut next = cfg;
    next.autoscaler.scale_up_threshold = 25.0;
    next.autoscaler.scale_down_threshold = 10.0;
    lb.server.reload(next).await;
    let s = lb
        .wait_stats("a second machine after the reload", |s| {
            s.machines.len() == 2
        })
        .await;
    assert_eq!(s.totals.scale_ups, 1, "{s:#?}");
    assert!(s.avg_load <= 25.0, "{s:#?}");
    for c in &mut clients {
        c.send("PING").await;
        assert_eq!(c.line().await, "PONG");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_a_new_idle_timeout() {
    let lb = start_lb(test_config()).await; // idle_timeout 60 s
    let mut old = lb.admitted().await;
    let mut next = test_config();
    next.listener.idle_timeout = Duration::from_millis(200);
    lb.server.reload(next).await;

    // The open connection survives the reload ...
    old.send("PING").await;
    assert_eq!(old.line().await, "PONG");
    // ... and from its next read on, the new timeout applies to it.
    let silent_from = Instant::now();
    let reply = old.line().await;
    assert_eq!(err_code(&reply), "timeout", "{reply:?}");
    assert!(silent_from.elapsed() >= Duration::from_millis(190));
    old.expect_closed().await;

    // A new connection gets the new timeout too.
    let mut new = lb.admitted().await;
    let silent_from = Instant::now();
    let reply = new.line().await;
    assert_eq!(err_code(&reply), "timeout", "{reply:?}");
    assert!(silent_from.elapsed() >= Duration::from_millis(190));
    new.expect_closed().await;
}

/// Open question for the maintainers, not a settled requirement: a connection that stays
/// silent across a reload keeps the old idle timer (60 s here) until its next read, because
/// the reader arms `sleep_until(last_read + idle)` with the value read before it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloaded_idle_timeout_applies_to_a_connection_silent_since_before_the_reload() {
    let lb = start_lb(test_config()).await; // idle_timeout 60 s
    let mut old = lb.admitted().await;
    let mut next = test_config();
    next.listener.idle_timeout = Duration::from_millis(200);
    lb.server.reload(next).await;
    let reply = old.line().await;
    assert_eq!(err_code(&reply), "timeout", "{reply:?}");
}

// === graceful shutdown ===

/// A balancer with 300 ms LARGE requests, an idle connection, and a busy one whose `LARGE
/// slow` is in service.
async fn idle_and_busy() -> (Lb, common::Client, common::Client) {
    let mut cfg = test_config();
    cfg.load.requests.service_ms_per_unit = 30.0; // LARGE on a medium: 300 ms
    let lb = start_lb(cfg).await;
    let idle = lb.admitted().await;
    let mut busy = lb.admitted().await;
    busy.send("LARGE slow").await;
    common::wait_until(TIMEOUT, "the LARGE request is in service", || {
        lb.snapshot().machines[0].queued == 1
    })
    .await;
    (lb, idle, busy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_in_flight_work_then_closes_and_stops_accepting() {
    let (lb, mut idle, mut busy) = idle_and_busy().await;

    let Lb { server, addr, .. } = lb;
    let stats = server.stats().clone();
    let shutdown = tokio::spawn(server.shutdown(Duration::from_secs(5)));

    let reply = idle.line().await;
    assert!(
        reply.starts_with("ERR shutting-down "),
        "idle connection: {reply:?}"
    );
    idle.expect_closed().await;

    assert_eq!(busy.line().await, "OK m1 large slow");
    let reply = busy.line().await;
    assert!(reply.starts_with("ERR shutting-down "), "{reply:?}");
    busy.expect_closed().await;

    let deadline = Instant::now() + TIMEOUT;
    while !connection_refused(addr).await {
        assert!(
            Instant::now() < deadline,
            "new connections are still accepted after shutdown"
        );
        tokio::time::sleep(common::POLL).await;
    }
    drop((idle, busy));
    common::within("shutdown completes", shutdown)
        .await
        .expect("shutdown task");
    let t = stats.totals.snapshot();
    assert_eq!((t.requests_ok, t.requests_failed), (1, 0), "{t:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_read_after_shutdown_began_is_refused_and_counted() {
    let (lb, mut idle, mut busy) = idle_and_busy().await;

    let Lb { server, .. } = lb;
    let stats = server.stats().clone();
    let shutdown = tokio::spawn(server.shutdown(Duration::from_secs(5)));
    // The idle connection's refusal proves shutdown has begun.
    let reply = idle.line().await;
    assert!(reply.starts_with("ERR shutting-down "), "{reply:?}");

    // Three late lines in one write: each is refused in its place, and counted.
    busy.send_raw(b"MEDIUM late\nSMALL later\nPING\n").await;
    assert_eq!(busy.line().await, "OK m1 large slow");
    for late in ["MEDIUM late", "SMALL later", "PING"] {
        let reply = busy.line().await;
        assert!(reply.starts_with("ERR shutting-down "), "{late}: {reply:?}");
    }
    busy.expect_closed().await;

    drop((idle, busy));
    common::within("shutdown completes", shutdown)
        .await
        .expect("shutdown task");
    let t = stats.totals.snapshot();
    // Every request the client sent is accounted for: one ok, the two late ones failed
    // (PING is a command, not a request).
    assert_eq!((t.requests_ok, t.requests_failed), (1, 2), "{t:#?}");
    assert_eq!((t.weighted_ok, t.weighted_failed), (10.0, 6.0), "{t:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_still_queued_when_grace_ends_fails_with_shutting_down() {
    let mut cfg = test_config();
    cfg.load.requests.service_ms_per_unit = 30.0; // LARGE on a medium: 300 ms
    let lb = start_lb(cfg).await;
    let mut c = lb.admitted().await;
    const SENT: usize = 4; // 1.2 s of work
    c.send_raw(b"LARGE q0\nLARGE q1\nLARGE q2\nLARGE q3\n")
        .await;
    common::wait_until(TIMEOUT, "all four requests are queued", || {
        lb.snapshot().machines[0].queued == SENT as u64
    })
    .await;

    let Lb { server, .. } = lb;
    let stats = server.stats().clone();
    let grace = Duration::from_millis(500);
    let started = Instant::now();
    let shutdown = tokio::spawn(server.shutdown(grace));

    // One reply per request, in order: a prefix of OKs, then ERR shutting-down; then the
    // connection's own ERR shutting-down and EOF.
    let replies = c.lines(SENT).await;
    let ok = replies.iter().take_while(|r| r.starts_with("OK ")).count();
    for (i, r) in replies.iter().enumerate() {
        if i < ok {
            assert_eq!(r, &format!("OK m1 large q{i}"));
        } else {
            assert_eq!(err_code(r), "shutting-down", "{replies:?}");
        }
    }
    assert!(
        ok >= 1,
        "the first request ends within the grace: {replies:?}"
    );
    assert!(
        ok < SENT,
        "the grace cannot cover 1.2 s of work: {replies:?}"
    );
    let last = c.line().await;
    assert_eq!(err_code(&last), "shutting-down", "{last:?}");
    c.expect_closed().await;
    drop(c);
    common::within("shutdown completes", shutdown)
        .await
        .expect("shutdown task");
    assert!(
        started.elapsed() < grace + Duration::from_secs(2),
        "shutdown took {:?}",
        started.elapsed()
    );

    let t = stats.totals.snapshot();
    assert_eq!(t.requests_ok as usize, ok, "{t:#?}");
    assert_eq!(t.requests_failed as usize, SENT - ok, "{t:#?}");
    assert_eq!(t.requests_ok + t.requests_failed, SENT as u64, "{t:#?}");
    assert_eq!(t.weighted_ok, 10.0 * ok as f64, "{t:#?}");
    assert_eq!(t.weighted_failed, 10.0 * (SENT - ok) as f64, "{t:#?}");
}

// === idle timeout ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connection_times_out_and_is_not_counted_as_a_request() {
    let mut cfg = test_config();
    cfg.listener.idle_timeout = Duration::from_millis(200);
    let lb = start_lb(cfg).await;
    let mut c = lb.admitted().await;
    let silent_from = Instant::now();
    let reply = c.line().await;
    let waited = silent_from.elapsed();
    assert_eq!(err_code(&reply), "timeout", "{reply:?}");
    assert!(waited >= Duration::from_millis(190), "after {waited:?}");
    c.expect_closed().await;
    let s = lb
        .wait_stats("the connection is closed", |s| {
            s.totals.connections_open == 0
        })
        .await;
    assert_eq!(s.totals.requests_ok, 0, "{s:#?}");
    assert_eq!(s.totals.requests_failed, 0, "{s:#?}");
    assert_eq!(s.totals.weighted_failed, 0.0, "{s:#?}");
    assert_eq!(s.machines[0].used, 0.0, "{s:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_in_service_longer_than_idle_timeout_is_not_timed_out() {
    let mut cfg = test_config();
    cfg.listener.idle_timeout = Duration::from_millis(400);
    cfg.load.requests.service_ms_per_unit = 60.0; // LARGE on a medium: 600 ms
    let lb = start_lb(cfg).await;
    let mut c = lb.admitted().await;
    let sent = Instant::now();
    c.send("LARGE slow").await;
    assert_eq!(c.line().await, "OK m1 large slow");
    assert!(sent.elapsed() >= Duration::from_millis(550));
    // The idle clock starts when the reply is written, not at the last byte received
    // (600 ms ago, longer than the timeout): the client has the whole timeout for its
    // next line (the old clock closed it 200 ms after the reply).
    let answered = Instant::now();
    let reply = c.line().await;
    assert_eq!(err_code(&reply), "timeout", "{reply:?}");
    let waited = answered.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "timed out {waited:?} after the reply"
    );
    c.expect_closed().await;
    let t = lb.http_stats().await.totals;
    assert_eq!((t.requests_ok, t.requests_failed), (1, 0), "{t:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_sent_soon_after_a_long_reply_is_answered() {
    let mut cfg = test_config();
    cfg.listener.idle_timeout = Duration::from_millis(300);
    cfg.load.requests.service_ms_per_unit = 58.0; // LARGE on a medium: 580 ms
    let lb = start_lb(cfg).await;
    let mut c = lb.admitted().await;
    for round in 0..3 {
        c.send("LARGE slow").await;
        assert_eq!(c.line().await, "OK m1 large slow", "round {round}");
        // Well inside idle_timeout of the reply, long after the last byte received.
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.send("PING").await;
        assert_eq!(c.line().await, "PONG", "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_idle_timeout_never_closes() {
    let mut cfg = test_config();
    cfg.listener.idle_timeout = Duration::ZERO;
    let lb = start_lb(cfg).await;
    let mut c = lb.admitted().await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    c.send("PING").await;
    assert_eq!(c.line().await, "PONG");
    assert_eq!(lb.http_stats().await.totals.connections_open, 1);
}
