//! The wire protocol of SPEC §4 over real sockets: every command, request form and error
//! code, framing edge cases, pipelining and ordering.

mod common;

use common::{fixed_reservation, start_lb, test_config, within, Client};
use elastic_lb::config::Routing;
use elastic_lb::core::RequestClass;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The reply line's error code: `ERR <code> <message>` → `<code>`, with a message present.
fn err_code(line: &str) -> &str {
    let rest = line
        .strip_prefix("ERR ")
        .unwrap_or_else(|| panic!("expected an ERR line, got {line:?}"));
    let (code, message) = rest
        .split_once(' ')
        .unwrap_or_else(|| panic!("ERR line without a message: {line:?}"));
    assert!(!message.trim().is_empty(), "empty ERR message: {line:?}");
    code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_answers_pong() {
    let lb = start_lb(test_config()).await;
    let mut c = lb.connect().await;
    c.send("PING").await;
    assert_eq!(c.line().await, "PONG");
    c.send("PING").await;
    assert_eq!(c.line().await, "PONG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_reports_machine_size_load_peer_and_reservation() {
    let lb = start_lb(fixed_reservation(10.0)).await;
    let mut c = lb.connect().await;
    c.send("INFO").await;
    let line = c.line().await;
    assert!(
        line.starts_with("OK machine=m1 size=medium load="),
        "INFO: {line:?}"
    );
    let fields: Vec<&str> = line.split(' ').collect();
    let field = |key: &str| -> &str {
        fields
            .iter()
            .find_map(|f| f.strip_prefix(key))
            .unwrap_or_else(|| panic!("INFO lacks {key}: {line:?}"))
    };
    // One connection holding 10 units on a capacity-100 machine: 10 %.
    assert_eq!(field("load="), "10.00", "INFO: {line:?}");
    assert_eq!(field("connection="), c.local.to_string(), "INFO: {line:?}");
    let reservation = field("reservation=");
    assert_eq!(reservation, "10.00", "INFO: {line:?}");
    let (_, decimals) = reservation.split_once('.').expect("decimal point");
    assert_eq!(decimals.len(), 2, "two decimals: {line:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_reservation_has_two_decimals_with_random_reservations() {
    let lb = start_lb(test_config()).await;
    let mut c = lb.connect().await;
    c.send("INFO").await;
    let line = c.line().await;
    let reservation = line
        .split(' ')
        .find_map(|f| f.strip_prefix("reservation="))
        .unwrap_or_else(|| panic!("INFO lacks reservation: {line:?}"));
    let value: f64 = reservation.parse().expect("reservation is a number");
    assert!(
        (1.0..11.0).contains(&value),
        "reservation in [1, 11): {line:?}"
    );
    assert_eq!(reservation.split_once('.').map(|(_, d)| d.len()), Some(2));
    assert_eq!(
        line.split(' ')
            .find_map(|f| f.strip_prefix("load="))
            .map(|l| l.split_once('.').map(|(_, d)| d.len())),
        Some(Some(2)),
        "load with two decimals: {line:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_lists_active_machine_loads_exactly() {
    let lb = start_lb(fixed_reservation(10.0)).await;
    let mut c = lb.connect().await;
    c.send("STATS").await;
    assert_eq!(c.line().await, "[10.00%]");
    let mut d = lb.admitted().await;
    d.send("STATS").await;
    assert_eq!(d.line().await, "[20.00%]");
    drop(d);
    lb.wait_stats("the second connection is closed", |s| {
        s.totals.connections_open == 1
    })
    .await;
    c.send("STATS").await;
    assert_eq!(c.line().await, "[10.00%]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quit_says_bye_then_closes() {
    let lb = start_lb(test_config()).await;
    let mut c = lb.connect().await;
    c.send("QUIT").await;
    assert_eq!(c.line().await, "BYE");
    c.expect_closed().await;
    lb.wait_stats("the connection is released", |s| {
        s.totals.connections_open == 0 && s.machines.iter().all(|m| m.used == 0.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn class_requests_with_and_without_payload() {
    let lb = start_lb(fixed_reservation(5.0)).await;
    let mut c = lb.connect().await;
    c.send_raw(b"SMALL\nSMALL hello world\nMEDIUM\nMEDIUM m\nLARGE\nLARGE big one\n")
        .await;
    assert_eq!(
        c.lines(6).await,
        vec![
            "OK m1 small",
            "OK m1 small hello world",
            "OK m1 medium",
            "OK m1 medium m",
            "OK m1 large",
            "OK m1 large big one",
        ]
    );
    let s = lb.http_stats().await;
    assert_eq!(s.totals.requests_ok, 6);
    assert_eq!(s.totals.requests_failed, 0);
    assert_eq!(s.totals.weighted_ok, 2.0 * (1.0 + 5.0 + 10.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_lines_are_default_class_requests() {
    let lb = start_lb(test_config()).await;
    let mut c = lb.connect().await;
    c.send("hello world").await;
    assert_eq!(c.line().await, "OK m1 small hello world");
    c.send("SMALLER x").await;
    assert_eq!(c.line().await, "OK m1 small SMALLER x");

    let mut cfg = test_config();
    cfg.load.requests.default_class = RequestClass::Medium;
    let lb2 = start_lb(cfg).await;
    let mut c2 = lb2.connect().await;
    c2.send("hello world").await;
    assert_eq!(c2.line().await, "OK m1 medium hello world");
    let s = lb2.http_stats().await;
    assert_eq!(s.totals.requests_ok, 1);
    assert_eq!(s.totals.weighted_ok, 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keywords_are_case_insensitive_and_whole_line_only() {
    let lb = start_lb(fixed_reservation(10.0)).await;
    let mut c = lb.connect().await;
    c.send_raw(b"ping\nPiNg\n  PING  \nPING x\ninfo\nINFO now\nStats\nsmall x\nLaRgE y\n")
        .await;
    let replies = c.lines(9).await;
    assert_eq!(replies[0], "PONG");
    assert_eq!(replies[1], "PONG");
    assert_eq!(replies[2], "PONG");
    assert_eq!(replies[3], "OK m1 small PING x");
    assert!(
        replies[4].starts_with("OK machine=m1 size=medium load="),
        "info: {:?}",
        replies[4]
    );
    assert_eq!(replies[5], "OK m1 small INFO now");
    assert!(
        replies[6].starts_with('[') && replies[6].ends_with("%]"),
        "stats: {:?}",
        replies[6]
    );
    assert_eq!(replies[7], "OK m1 small x");
    assert_eq!(replies[8], "OK m1 large y");
    // Only work lines count as requests; commands do not.
    let s = lb.http_stats().await;
    assert_eq!(s.totals.requests_ok, 4, "{:?}", s.totals);
    assert_eq!(s.totals.requests_failed, 0);
    c.send("quit").await;
    assert_eq!(c.line().await, "BYE");
    c.expect_closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_lines_get_no_reply() {
    let lb = start_lb(test_config()).await;
    let mut c = lb.connect().await;
    c.send_raw(b"\n\r\n\nPING\n").await;
    assert_eq!(c.line().await, "PONG");
    c.send_raw(b"SMALL a\n\n\r\nSMALL b\n\n").await;
    assert_eq!(c.lines(2).await, vec!["OK m1 small a", "OK m1 small b"]);
    c.send("PING").await;
    assert_eq!(c.line().await, "PONG");
    let s = lb.http_stats().await;
    assert_eq!(s.totals.requests_ok, 2);
    assert_eq!(s.totals.requests_failed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crlf_line_endings_are_accepted() {
    let lb = start_lb(test_config()).await;
    let mut c = lb.connect().await;
    c.send_raw(b"PING\r\nSMALL x\r\nhello\r\n").await;
    assert_eq!(
        c.lines(3).await,
        vec!["PONG", "OK m1 small x", "OK m1 small hello"]
    );
}

const MAX_LINE: usize = 32;

async fn lb_with_max_line() -> common::Lb {
    let mut cfg = test_config();
    cfg.listener.max_line_bytes = MAX_LINE;
    start_lb(cfg).await
}

/// A `SMALL` request line of exactly `len` bytes (without line ending).
fn small_line_of(len: usize) -> String {
    let line = format!("SMALL {}", "x".repeat(len - "SMALL ".len()));
    assert_eq!(line.len(), len);
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_of_exactly_max_bytes_is_accepted_with_lf_or_crlf() {
    let lb = lb_with_max_line().await;
    let mut c = lb.connect().await;
    let line = small_line_of(MAX_LINE);
    let payload = &line["SMALL ".len()..];
    c.send_raw(format!("{line}\r\n").as_bytes()).await;
    assert_eq!(c.line().await, format!("OK m1 small {payload}"));
    c.send_raw(format!("{line}\n").as_bytes()).await;
    assert_eq!(c.line().await, format!("OK m1 small {payload}"));
    // Split across writes, the `\r` arriving alone at the limit.
    c.send_raw(line.as_bytes()).await;
    c.send_raw(b"\r").await;
    c.send_raw(b"\n").await;
    assert_eq!(c.line().await, format!("OK m1 small {payload}"));
    c.send("PING").await;
    assert_eq!(c.line().await, "PONG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_one_byte_over_max_is_too_long_and_closes() {
    let lb = lb_with_max_line().await;
    let mut c = lb.connect().await;
    let line = small_line_of(MAX_LINE + 1);
    c.send_raw(format!("PING\n{line}\r\nPING\n").as_bytes())
        .await;
    assert_eq!(c.line().await, "PONG");
    let reply = c.line().await;
    assert_eq!(err_code(&reply), "too-long", "{reply:?}");
    c.expect_closed().await;
    let s = lb
        .wait_stats("the connection is closed", |s| {
            s.totals.connections_open == 0
        })
        .await;
    assert_eq!(s.totals.requests_failed, 1, "too-long counts as failed");
    assert_eq!(s.totals.weighted_failed, 0.0, "with weight 0");
    assert_eq!(s.totals.requests_ok, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_long_is_detected_before_the_newline() {
    let lb = lb_with_max_line().await;
    let mut c = lb.connect().await;
    c.send_raw("y".repeat(MAX_LINE + 10).as_bytes()).await;
    // No newline was sent: the server must not wait for one.
    let reply = c.line().await;
    assert_eq!(err_code(&reply), "too-long", "{reply:?}");
    c.expect_closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_is_bad_request_and_the_connection_stays_open() {
    let lb = start_lb(test_config()).await;
    let mut c = lb.connect().await;
    c.send_raw(b"SMALL \xff\xfe\n").await;
    let reply = c.line().await;
    assert_eq!(err_code(&reply), "bad-request", "{reply:?}");
    c.send("PING").await;
    assert_eq!(c.line().await, "PONG");
    c.send("SMALL ok").await;
    assert_eq!(c.line().await, "OK m1 small ok");
    let s = lb.http_stats().await;
    assert_eq!(s.totals.requests_failed, 1);
    assert_eq!(s.totals.weighted_failed, 0.0);
    assert_eq!(s.totals.requests_ok, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_answers_busy_in_order_and_keeps_the_connection() {
    let mut cfg = fixed_reservation(10.0);
    cfg.machines.queue_depth = 2;
    // LARGE (weight 10) on a medium machine: 10 × 20 × 100 / 100 = 200 ms each, far longer
    // than it takes to read one write of ten requests.
    cfg.load.requests.service_ms_per_unit = 20.0;
    let lb = start_lb(cfg).await;
    let mut c = lb.connect().await;
    c.send_raw(
        b"LARGE a\nLARGE b\nLARGE c\nLARGE d\nPING\nLARGE e\nLARGE f\nLARGE g\nLARGE h\nLARGE i\nLARGE j\n",
    )
    .await;
    let replies = c.lines(11).await;
    // One in service plus two waiting are accepted; the rest are refused, each reply in
    // its request's place.
    assert_eq!(replies[0], "OK m1 large a", "{replies:#?}");
    assert_eq!(replies[1], "OK m1 large b", "{replies:#?}");
    assert_eq!(replies[2], "OK m1 large c", "{replies:#?}");
    assert_eq!(
        replies[3], "ERR busy every machine's queue is full (1 machine, 2 waiting each)",
        "per-request routing names how many machines were tried, in good English"
    );
    assert_eq!(replies[4], "PONG", "{replies:#?}");
    for r in &replies[5..] {
        assert_eq!(err_code(r), "busy", "{replies:#?}");
    }
    // The connection stays open.
    c.send("PING").await;
    assert_eq!(c.line().await, "PONG");
    let s = lb.http_stats().await;
    assert_eq!(s.totals.requests_ok, 3, "{:?}", s.totals);
    assert_eq!(s.totals.requests_failed, 7, "{:?}", s.totals);
    assert_eq!(s.totals.weighted_ok, 30.0);
    assert_eq!(s.totals.weighted_failed, 70.0, "busy fails with the weight");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_pipelined_requests_are_answered_in_order() {
    // All on the connection's machine; tests/elasticity.rs pipelines across machines.
    let mut cfg = test_config();
    cfg.dispatcher.routing = Routing::Connection;
    let lb = start_lb(cfg).await;
    let mut c = lb.connect().await;
    let mut batch = String::new();
    for i in 0..1000 {
        batch.push_str(&format!("SMALL {i}\n"));
    }
    c.send_raw(batch.as_bytes()).await;
    for i in 0..1000 {
        assert_eq!(c.line().await, format!("OK m1 small {i}"));
    }
    let s = lb.http_stats().await;
    assert_eq!(s.totals.requests_ok, 1000);
    assert_eq!(s.totals.requests_failed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_refuses_with_overloaded() {
    let mut cfg = test_config();
    cfg.listener.max_connections = 2;
    let lb = start_lb(cfg).await;
    let a = lb.admitted().await;
    let _b = lb.admitted().await;
    let mut c = lb.connect().await;
    let reply = c.line().await;
    assert_eq!(err_code(&reply), "overloaded", "{reply:?}");
    c.expect_closed().await;
    let s = lb.http_stats().await;
    assert_eq!(s.totals.connections_rejected, 1);
    assert_eq!(s.totals.connections_admitted, 2);
    assert_eq!(s.totals.connections_open, 2);

    // Closing one frees its slot: a new connection is admitted again (retrying, since the
    // slot is released just after the close is counted).
    drop(a);
    lb.wait_stats("a connection is closed", |s| s.totals.connections_open == 1)
        .await;
    let deadline = tokio::time::Instant::now() + common::TIMEOUT;
    loop {
        let mut d = lb.connect().await;
        d.send("PING").await;
        let reply = d.line().await;
        if reply == "PONG" {
            break;
        }
        assert_eq!(err_code(&reply), "overloaded", "{reply:?}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "slot never freed after a close"
        );
        tokio::time::sleep(common::POLL).await;
    }
}

/// A pool of one medium machine, the only one there can be; every connection reserves
/// `units`.
fn one_medium_machine(units: f64) -> elastic_lb::config::Config {
    let mut cfg = fixed_reservation(units);
    cfg.pool.small = 0;
    cfg.pool.medium = 1;
    cfg.pool.large = 0;
    cfg.pool.xlarge = 0;
    cfg.autoscaler.max_machines = 1;
    cfg
}

/// A flood of refusals: past the 256 that close lingering, the rest still get their
/// `ERR overloaded` line before the close (they used to be closed without a word).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_of_a_flood_past_max_connections_gets_the_overloaded_line() {
    const REFUSED: usize = 300;
    let mut cfg = test_config();
    cfg.listener.max_connections = 1;
    let lb = start_lb(cfg).await;
    let _held = lb.admitted().await;
    // All open at once (well inside the 2 s a lingering refusal lasts), none closing.
    let mut clients = Vec::with_capacity(REFUSED);
    for _ in 0..REFUSED {
        clients.push(TcpStream::connect(lb.addr).await.expect("connect"));
    }
    for (i, mut c) in clients.into_iter().enumerate() {
        let mut got = Vec::new();
        let read = within("the refusal", c.read_to_end(&mut got)).await;
        let got = String::from_utf8_lossy(&got);
        assert!(
            read.is_ok() && got.starts_with("ERR overloaded ") && got.ends_with('\n'),
            "client {i}: {read:?} {got:?}"
        );
        assert_eq!(got.lines().count(), 1, "client {i}: {got:?}");
    }
    lb.wait_stats("every refusal counted", |s| {
        s.totals.connections_rejected == REFUSED as u64
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_pool_refuses_the_connection() {
    let cfg = one_medium_machine(40.0);
    let lb = start_lb(cfg).await;
    let _a = lb.admitted().await;
    let _b = lb.admitted().await;
    let mut c = lb.connect().await;
    let reply = c.line().await;
    assert_eq!(err_code(&reply), "exhausted", "{reply:?}");
    c.expect_closed().await;
    let s = lb.http_stats().await;
    assert_eq!(s.totals.connections_rejected, 1);
    assert_eq!(s.totals.connections_admitted, 2);
    assert_eq!(s.totals.weighted_failed, 40.0);
    assert_eq!(s.machines.len(), 1);
}

/// A refused connection gives up its `max_connections` place before its lingering close:
/// the next client is told the real reason (`exhausted`), not `overloaded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lingering_refusal_does_not_count_against_max_connections() {
    let mut cfg = one_medium_machine(80.0);
    cfg.listener.max_connections = 2;
    let lb = start_lb(cfg).await;
    let _a = lb.admitted().await;
    // Refused and still open: its close lingers (up to 2 s) while it does not hang up.
    let mut held = Vec::new();
    for i in 0..3 {
        let mut c = lb.connect().await;
        let reply = c.line().await;
        assert_eq!(err_code(&reply), "exhausted", "client {i}: {reply:?}");
        held.push(c);
    }
    let s = lb.http_stats().await;
    assert_eq!(s.totals.connections_open, 1, "{s:#?}");
    assert_eq!(s.totals.connections_rejected, 3, "{s:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_still_arrive_after_half_close() {
    let mut cfg = test_config();
    // Some service time, so that the replies are still owed when the FIN arrives.
    cfg.load.requests.service_ms_per_unit = 2.0;
    let lb = start_lb(cfg).await;
    let mut c: Client = lb.connect().await;
    c.send_raw(b"LARGE a\nPING\nMEDIUM b\nSMALL c\n").await;
    c.shutdown_write().await;
    assert_eq!(
        c.lines(4).await,
        vec!["OK m1 large a", "PONG", "OK m1 medium b", "OK m1 small c"]
    );
    c.expect_closed().await;
}
