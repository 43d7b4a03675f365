//! Elasticity over real sockets (SPEC §1 admission, §5 scale-up, §6 `/api/stats`).

mod common;

use common::{fixed_reservation, start_lb, test_config, Client};
use elastic_lb::config::Config;
use elastic_lb::core::Size;
use elastic_lb::telemetry::Snapshot;

/// `100 × Σ used / Σ capacity` over the active machines of a snapshot.
fn recomputed_avg(s: &Snapshot) -> f64 {
    let active = s
        .machines
        .iter()
        .filter(|m| m.state == elastic_lb::core::MachineState::Active);
    let (used, cap) = active.fold((0.0, 0.0), |(u, c), m| (u + m.used, c + m.capacity));
    if cap == 0.0 {
        0.0
    } else {
        100.0 * used / cap
    }
}

fn sizes(s: &Snapshot) -> Vec<Size> {
    s.machines.iter().map(|m| m.size).collect()
}

/// The `machine=` field of an `INFO` reply.
async fn machine_of(c: &mut Client) -> String {
    c.send("INFO").await;
    let line = c.line().await;
    line.split(' ')
        .find_map(|f| f.strip_prefix("machine="))
        .unwrap_or_else(|| panic!("INFO without machine=: {line:?}"))
        .to_string()
}

fn pool(cfg: &mut Config, small: u32, medium: u32, large: u32, xlarge: u32) {
    cfg.pool.small = small;
    cfg.pool.medium = medium;
    cfg.pool.large = large;
    cfg.pool.xlarge = xlarge;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_connections_scales_up_until_average_is_at_most_threshold() {
    // Defaults: reservations in [1, 11), threshold 50 %, medium machines; seed 42.
    let lb = start_lb(test_config()).await;
    let first = lb.admitted().await;
    let s = lb.http_stats().await;
    assert_eq!(s.machines.len(), 1, "one connection needs one machine");
    assert_eq!(s.totals.scale_ups, 0);

    // A burst: twenty connections opened back to back, none waiting for the previous one.
    let mut clients = vec![first];
    for _ in 0..20 {
        clients.push(lb.connect().await);
    }
    let s = lb
        .wait_stats("all 21 connections are admitted", |s| {
            s.totals.connections_admitted == 21
        })
        .await;
    assert_eq!(s.totals.connections_open, 21);
    for c in &mut clients {
        c.send("PING").await;
        assert_eq!(c.line().await, "PONG");
    }
    assert_eq!(s.totals.connections_rejected, 0);
    assert!(
        s.avg_load <= 50.0,
        "after the burst the average is at most the threshold: {s:#?}"
    );
    assert!(
        s.machines.len() > 1,
        "the burst needs more than one machine: {s:#?}"
    );
    assert_eq!(s.totals.scale_ups as usize, s.machines.len() - 1, "{s:#?}");
    assert!(
        (s.avg_load - recomputed_avg(&s)).abs() < 1e-6,
        "avg_load = 100 × Σused / Σcapacity: {s:#?}"
    );
    let connections: u64 = s.machines.iter().map(|m| m.connections).sum();
    assert_eq!(connections, 21, "{s:#?}");
    for m in &s.machines {
        assert!(
            m.used <= m.capacity,
            "nothing placed beyond capacity: {m:?}"
        );
        assert!(
            (m.load - 100.0 * m.used / m.capacity).abs() < 1e-6,
            "load = 100 × used / capacity: {m:?}"
        );
    }
    // Every connection holds 1 ≤ r < 11.
    let used = common::total_used(&s);
    assert!((21.0..231.0).contains(&used), "Σ used = {used}");

    drop(clients);
    let s = lb
        .wait_stats("every machine is back to used = 0", |s| {
            s.totals.connections_open == 0 && s.machines.iter().all(|m| m.used == 0.0)
        })
        .await;
    assert!(s.machines.iter().all(|m| m.connections == 0), "{s:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_up_takes_the_next_larger_size_when_the_preferred_one_is_exhausted() {
    let mut cfg = fixed_reservation(30.0);
    pool(&mut cfg, 1, 1, 1, 1);
    let lb = start_lb(cfg).await;
    let _a = lb.admitted().await;
    assert_eq!(sizes(&lb.http_stats().await), vec![Size::Medium]);
    // 60 % > 50 %: one more machine; medium is gone, so large (not xlarge, not small).
    let _b = lb.admitted().await;
    let s = lb
        .wait_stats("a second machine runs", |s| s.machines.len() == 2)
        .await;
    assert_eq!(sizes(&s), vec![Size::Medium, Size::Large], "{s:#?}");
    assert_eq!(s.machines[1].name, "m2");
    assert_eq!(s.machines[1].capacity, 200.0);
    assert_eq!(s.totals.scale_ups, 1);
    assert_eq!(
        (s.pool.small, s.pool.medium, s.pool.large, s.pool.xlarge),
        (1, 0, 0, 1)
    );
    assert!(s.avg_load <= 50.0, "{s:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_up_falls_back_to_a_smaller_size_when_no_larger_is_left() {
    let mut cfg = fixed_reservation(30.0);
    pool(&mut cfg, 1, 1, 0, 0);
    let lb = start_lb(cfg).await;
    let _a = lb.admitted().await;
    let _b = lb.admitted().await;
    let s = lb
        .wait_stats("a second machine runs", |s| s.machines.len() == 2)
        .await;
    assert_eq!(sizes(&s), vec![Size::Medium, Size::Small], "{s:#?}");
    assert_eq!(s.machines[1].capacity, 50.0);
    assert_eq!(s.totals.scale_ups, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_that_fits_nowhere_gets_a_machine_on_the_spot() {
    let mut cfg = fixed_reservation(60.0);
    // A threshold that 60 % does not pass: only the on-the-spot rule can add a machine.
    cfg.autoscaler.scale_up_threshold = 99.0;
    let lb = start_lb(cfg).await;
    let mut a = lb.admitted().await;
    assert_eq!(machine_of(&mut a).await, "m1");
    assert_eq!(lb.http_stats().await.machines.len(), 1);
    let mut b = lb.admitted().await;
    assert_eq!(machine_of(&mut b).await, "m2", "only the new machine fits");
    let s = lb.http_stats().await;
    assert_eq!(s.machines.len(), 2);
    assert_eq!(
        s.totals.scale_ups, 1,
        "an on-the-spot acquisition is a scale-up"
    );
    assert_eq!(s.totals.connections_rejected, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhaustion_is_accounted_and_clears_when_capacity_frees() {
    let mut cfg = fixed_reservation(60.0);
    pool(&mut cfg, 0, 1, 0, 0);
    cfg.autoscaler.max_machines = 1;
    let lb = start_lb(cfg).await;
    let first = lb.admitted().await;
    let mut second = lb.connect().await;
    let reply = second.line().await;
    assert!(reply.starts_with("ERR exhausted "), "{reply:?}");
    second.expect_closed().await;
    let s = lb.http_stats().await;
    assert_eq!(s.totals.connections_rejected, 1, "{:?}", s.totals);
    assert_eq!(
        s.totals.weighted_failed, 60.0,
        "the refused reservation counts"
    );
    assert_eq!(s.totals.connections_admitted, 1);
    assert_eq!(s.machines.len(), 1);
    assert_eq!(s.machines[0].used, 60.0);

    drop(first);
    lb.wait_stats("the first connection is released", |s| {
        s.totals.connections_open == 0 && s.machines.iter().all(|m| m.used == 0.0)
    })
    .await;
    let mut third = lb.admitted().await;
    assert_eq!(machine_of(&mut third).await, "m1");
    let s = lb.http_stats().await;
    assert_eq!(s.totals.connections_admitted, 2);
    assert_eq!(s.totals.connections_rejected, 1);
}

/// Depends on the real `least-connections` strategy (the placeholder picks the first
/// fitting machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_machine_takes_the_next_connection_under_least_connections() {
    let mut cfg = fixed_reservation(10.0);
    pool(&mut cfg, 0, 2, 0, 0);
    // Without the scale-up rebalance (SPEC §9), which would move m1's connections to m2.
    cfg.autoscaler.rebalance_tolerance = 0.0;
    let lb = start_lb(cfg).await;
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(lb.admitted().await);
    }
    // 60 % on m1 passed the threshold: m2 is up, empty.
    let s = lb.wait_stats("m2 is up", |s| s.machines.len() == 2).await;
    assert_eq!(s.machines[0].used, 60.0);
    assert_eq!(s.machines[1].used, 0.0);
    let mut next = lb.admitted().await;
    assert_eq!(
        machine_of(&mut next).await,
        "m2",
        "least-connections: the machine with the most free capacity"
    );
}

/// `autoscaler.max_step` (SPEC §9): at most max(max_step, active machines) acquisitions per
/// interval, the machines counted when the interval begins — the machines a burst adds do
/// not raise its own allowance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_acquires_at_most_max_step_machines_in_one_interval() {
    let mut cfg = fixed_reservation(20.0);
    cfg.dispatcher.routing = elastic_lb::config::Routing::Connection;
    cfg.autoscaler.max_step = 1;
    // One interval outlasts the test: only the first acquisition fits in it.
    cfg.autoscaler.interval = std::time::Duration::from_secs(30);
    cfg.autoscaler.rebalance_tolerance = 0.0;
    let lb = start_lb(cfg).await;
    let mut clients = Vec::new();
    // 20 units each on 100-unit machines, nothing ever full: no on-the-spot acquisition.
    for _ in 0..8 {
        clients.push(lb.admitted().await);
    }
    let s = lb
        .wait_stats("all 8 connections are admitted", |s| {
            s.totals.connections_admitted == 8
        })
        .await;
    assert_eq!(
        s.totals.scale_ups, 1,
        "max(max_step = 1, 1 active machine) = 1 acquisition in the interval: {s:#?}"
    );
    assert_eq!(s.machines.len(), 2, "{s:#?}");
    assert!(s.avg_load > 50.0, "the next interval acquires more: {s:#?}");
}
