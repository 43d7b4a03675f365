//! Request and load accounting under contention (SPEC §4 "the totals add up", §6 totals).

mod common;

use common::{start_lb, test_config, Lb};

const CONNECTIONS: usize = 20;
const REQUESTS_PER_CONNECTION: usize = 24;

/// What one client saw.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    ok: u64,
    busy: u64,
    ok_weight: u64,
    busy_weight: u64,
}

/// Request `j` of connection `i`: its line, the reply prefix class and its weight.
fn request(i: usize, j: usize) -> (String, &'static str, u64) {
    let payload = format!("c{i}-r{j}");
    match j % 4 {
        0 => (format!("SMALL {payload}"), "small", 1),
        1 => (format!("MEDIUM {payload}"), "medium", 5),
        2 => (format!("LARGE {payload}"), "large", 10),
        // Any other line: a default-class (small) request whose payload is the whole line.
        _ => (payload, "small", 1),
    }
}

async fn run_client(lb_addr: std::net::SocketAddr, i: usize) -> (Tally, common::Client) {
    let mut c = common::Client::connect(lb_addr).await;
    let mut batch = String::new();
    for j in 0..REQUESTS_PER_CONNECTION {
        batch.push_str(&request(i, j).0);
        batch.push('\n');
    }
    c.send_raw(batch.as_bytes()).await;
    let mut tally = Tally::default();
    for j in 0..REQUESTS_PER_CONNECTION {
        let (line, class, weight) = request(i, j);
        let reply = c.line().await;
        if reply.starts_with("ERR busy ") {
            tally.busy += 1;
            tally.busy_weight += weight;
            continue;
        }
        // `OK <machine> <class> <payload>`: in order, with this request's payload.
        let payload = line
            .strip_prefix(&format!("{} ", class.to_uppercase()))
            .unwrap_or(&line);
        let mut parts = reply.splitn(4, ' ');
        assert_eq!(parts.next(), Some("OK"), "conn {i} request {j}: {reply:?}");
        let machine = parts.next().unwrap_or_default();
        assert!(machine.starts_with('m'), "conn {i} request {j}: {reply:?}");
        assert_eq!(parts.next(), Some(class), "conn {i} request {j}: {reply:?}");
        assert_eq!(
            parts.next(),
            Some(payload),
            "conn {i} request {j}: {reply:?}"
        );
        tally.ok += 1;
        tally.ok_weight += weight;
    }
    (tally, c)
}

async fn contended_lb() -> Lb {
    let mut cfg = test_config();
    cfg.machines.queue_depth = 4;
    cfg.load.requests.service_ms_per_unit = 1.0;
    start_lb(cfg).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totals_match_what_clients_saw_and_load_returns_to_zero() {
    let lb = contended_lb().await;
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|i| tokio::spawn(run_client(lb.addr, i)))
        .collect();
    let mut sum = Tally::default();
    let mut clients = Vec::new();
    for t in tasks {
        let (tally, c) = t.await.expect("client task");
        sum.ok += tally.ok;
        sum.busy += tally.busy;
        sum.ok_weight += tally.ok_weight;
        sum.busy_weight += tally.busy_weight;
        clients.push(c);
    }
    let sent = (CONNECTIONS * REQUESTS_PER_CONNECTION) as u64;
    assert_eq!(sum.ok + sum.busy, sent);
    assert!(
        sum.busy > 0,
        "the small queues should have refused some: {sum:?}"
    );
    assert!(sum.ok > 0, "{sum:?}");

    // Every reply is in, and counting happens before a reply is sent: exact now.
    let s = lb.http_stats().await;
    let t = &s.totals;
    assert_eq!(t.requests_ok + t.requests_failed, sent, "{t:?}");
    assert_eq!(t.requests_ok, sum.ok, "{t:?} vs client {sum:?}");
    assert_eq!(t.requests_failed, sum.busy, "{t:?} vs client {sum:?}");
    assert_eq!(
        t.weighted_ok, sum.ok_weight as f64,
        "{t:?} vs client {sum:?}"
    );
    assert_eq!(
        t.weighted_failed, sum.busy_weight as f64,
        "{t:?} vs client {sum:?}"
    );
    assert_eq!(t.connections_admitted, CONNECTIONS as u64);
    assert_eq!(t.connections_open, CONNECTIONS as u64);
    assert_eq!(t.connections_rejected, 0);
    // Nothing is in flight any more: only reservations remain.
    assert!(s.machines.iter().all(|m| m.queued == 0), "{s:#?}");

    drop(clients);
    let s = lb
        .wait_stats(
            "all connections are closed and every machine is idle",
            |s| {
                s.totals.connections_open == 0
                    && s.machines.iter().all(|m| m.used == 0.0 && m.queued == 0)
            },
        )
        .await;
    assert!(s.machines.iter().all(|m| m.connections == 0), "{s:#?}");
    assert_eq!(s.avg_load, 0.0);
    // Closing changes no request totals.
    assert_eq!(s.totals.requests_ok, sum.ok);
    assert_eq!(s.totals.requests_failed, sum.busy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_weight_counts_toward_used_while_in_flight() {
    let mut cfg = common::fixed_reservation(10.0);
    cfg.machines.queue_depth = 8;
    // 50 ms per unit: a LARGE request takes 500 ms on a medium machine.
    cfg.load.requests.service_ms_per_unit = 50.0;
    let lb = start_lb(cfg).await;
    let mut c = lb.connect().await;
    c.send_raw(b"LARGE a\nLARGE b\n").await;
    // While the two are queued or in service, used = 10 + 2 × 10.
    let s = lb
        .wait_stats("both requests are in flight", |s| s.machines[0].queued == 2)
        .await;
    assert_eq!(s.machines[0].used, 30.0, "{s:#?}");
    assert_eq!(c.lines(2).await, vec!["OK m1 large a", "OK m1 large b"]);
    let s = lb.http_stats().await;
    assert_eq!(
        s.machines[0].used, 10.0,
        "only the reservation is left: {s:#?}"
    );
    assert_eq!(s.machines[0].queued, 0);
}
