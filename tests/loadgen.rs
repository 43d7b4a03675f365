//! The load generator against an in-process balancer: the summary it returns adds up.

mod common;

use std::time::Duration;

use common::{start_lb, test_config, within};
use elastic_lb::cli::load::{self as loadgen, LoadPlan, Mode, Summary};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_summary_adds_up() {
    let lb = start_lb(test_config()).await;
    let plan = LoadPlan {
        mix: "small=70,medium=20,large=10".parse().expect("valid mix"),
        ..LoadPlan::closed_loop(lb.addr, 4, Duration::from_secs(1))
    };
    let summary = within("a 1 s load run", loadgen::generate(&plan))
        .await
        .expect("the balancer is reachable");

    assert_eq!(summary.mode, "closed-loop");
    served_and_adds_up(&summary);
    assert_eq!(
        summary.requests_failed,
        summary.errors.values().sum::<u64>(),
        "{summary:#?}"
    );
    let per_machine: u64 = summary.machines.iter().map(|m| m.ok).sum();
    assert_eq!(per_machine, summary.requests_ok, "{summary:#?}");
    assert!(summary.connections_opened >= 4, "{summary:#?}");
    assert!(summary.latency_ms.p50 <= summary.latency_ms.max);

    // The balancer agrees: every request the generator sent was answered and counted.
    let totals = lb.snapshot().totals;
    assert_eq!(
        totals.requests_ok + totals.requests_failed,
        summary.requests_sent
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_and_connect_per_request_add_up() {
    let lb = start_lb(test_config()).await;
    for mode in [Mode::OpenLoop { rate: 400.0 }, Mode::ConnectPerRequest] {
        let plan = LoadPlan {
            mode,
            ..LoadPlan::closed_loop(lb.addr, 4, Duration::from_millis(500))
        };
        let summary = within("a short load run", loadgen::generate(&plan))
            .await
            .expect("the balancer is reachable");
        served_and_adds_up(&summary);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_target_is_an_error() {
    // A port that was just free: bind, read it, close.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let plan = LoadPlan::closed_loop(addr, 1, Duration::from_millis(100));
    let err = within("connect attempt", loadgen::generate(&plan))
        .await
        .expect_err("nothing listens there");
    assert!(err.to_string().contains("cannot connect"), "{err}");
}

/// A balancer shutting down under a closed loop: each connection gets one `ERR
/// shutting-down` and is closed; the generator counts that one failure and sends nothing
/// more on it (it used to send another request and count a `closed` failure too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balancer_shutting_down_costs_one_failure_a_connection() {
    let lb = start_lb(test_config()).await;
    let plan = LoadPlan::closed_loop(lb.addr, 4, Duration::from_millis(700));
    let run = tokio::spawn(async move { loadgen::generate(&plan).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let stats = lb.server.stats().clone();
    within("shutdown", lb.server.shutdown(Duration::from_secs(2))).await;
    let summary = within("the load run", run)
        .await
        .expect("load task")
        .expect("the balancer was reachable");
    served_and_adds_up(&summary);
    // One `shutting-down` a connection, and no request sent on a connection after it.
    // (A reconnect that raced the listener's close may fail otherwise, `io`: not counted.)
    let shutting_down = summary.errors.get("shutting-down").copied().unwrap_or(0);
    assert!(shutting_down <= 4, "at most one a connection: {summary:#?}");
    assert_eq!(summary.errors.get("closed"), None, "{summary:#?}");
    // A request sent while its idle connection was being told `ERR shutting-down` is
    // discarded unread by the balancer (it counts no request), and failed for the client.
    let totals = stats.snapshot().totals;
    assert!(totals.requests_ok <= summary.requests_ok, "{summary:#?}");
}

/// Some requests were answered, and every one sent is counted once: ok or failed.
fn served_and_adds_up(summary: &Summary) {
    assert!(summary.requests_ok > 0, "{summary:#?}");
    assert_eq!(
        summary.requests_sent,
        summary.requests_ok + summary.requests_failed,
        "{summary:#?}"
    );
}
