//! The line session's hot path (issue 9): requests served on the spot, replies written
//! straight from the reader, and a short read taken as "drained". Nothing may be lost or
//! hang: half-closes right behind the data, lines arriving in many small reads, long
//! closed loops and pipelined bursts larger than one read, with the accounting intact; and
//! a read answered in place that hands over to the usual path midway (queued work, QUIT,
//! a too-long line, a partial line) keeps request order.

mod common;

use std::time::Duration;

use common::{start_lb, test_config, wait_until, Client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_close_right_behind_the_data_is_seen() {
    let lb = start_lb(test_config()).await;
    for _ in 0..50 {
        let mut c: Client = lb.connect().await;
        // Data and FIN back to back (often in one segment): the short read that takes the
        // data must not hide the end of the stream. The last line has no newline.
        c.send_raw(b"SMALL a\nPING\nSMALL b").await;
        c.shutdown_write().await;
        assert_eq!(
            c.lines(3).await,
            vec!["OK m1 small a", "PONG", "OK m1 small b"]
        );
        c.expect_closed().await;
    }
    let s = lb.snapshot();
    assert_eq!((s.totals.requests_ok, s.totals.requests_failed), (100, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_arriving_in_many_small_reads_is_answered_once() {
    let lb = start_lb(test_config()).await;
    let mut c: Client = lb.connect().await;
    for round in 0..3 {
        c.send_raw(b"SMALL ").await;
        for b in b"abcdefgh" {
            tokio::time::sleep(Duration::from_millis(2)).await;
            c.send_raw(&[*b]).await;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        c.send_raw(b"\nPING\n").await;
        assert_eq!(c.line().await, "OK m1 small abcdefgh", "round {round}");
        assert_eq!(c.line().await, "PONG", "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_closed_loop_never_stalls_and_keeps_the_accounting() {
    let lb = start_lb(test_config()).await;
    let mut c: Client = lb.connect().await;
    for i in 0..2000 {
        c.send(&format!("SMALL {i}")).await;
        assert_eq!(c.line().await, format!("OK m1 small {i}"));
    }
    let s = lb.snapshot();
    assert_eq!((s.totals.requests_ok, s.totals.requests_failed), (2000, 0));
    // Served on the spot or queued, every request gave its weight back.
    let reserved = s.machines[0].used;
    assert_eq!(s.machines[0].queued, 0);
    drop(c);
    wait_until(
        Duration::from_secs(5),
        "the connection's reservation released",
        || lb.snapshot().machines[0].used == 0.0,
    )
    .await;
    assert!(reserved > 0.0, "the open connection held its reservation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_burst_larger_than_a_read_is_answered_in_order() {
    let lb = start_lb(test_config()).await;
    let mut c: Client = lb.connect().await;
    // About 30 KiB: several full reads, then a short one, then the half-close.
    let burst: String = (0..3000).map(|i| format!("SMALL {i}\n")).collect();
    c.send_raw(burst.as_bytes()).await;
    c.shutdown_write().await;
    for i in 0..3000 {
        assert_eq!(c.line().await, format!("OK m1 small {i}"));
    }
    c.expect_closed().await;
    let s = lb.snapshot();
    assert_eq!((s.totals.requests_ok, s.totals.requests_failed), (3000, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_needs_the_queue_midway_keeps_request_order() {
    // Work takes 1 ms, so it is queued: the in-place round ends at the first request and
    // the rest of the read (a PING, more work, QUIT and a line after it) goes the usual way.
    let mut cfg = test_config();
    cfg.load.requests.service_ms_per_unit = 1.0;
    let lb = start_lb(cfg).await;
    for round in 0..20 {
        let mut c: Client = lb.connect().await;
        c.send_raw(b"PING\nSMALL a\nPING\nSMALL b\nQUIT\nPING\n")
            .await;
        assert_eq!(
            c.lines(5).await,
            vec!["PONG", "OK m1 small a", "PONG", "OK m1 small b", "BYE"],
            "round {round}"
        );
        c.expect_closed().await;
    }
    let s = lb.snapshot();
    assert_eq!((s.totals.requests_ok, s.totals.requests_failed), (40, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_in_place_mix_with_commands_and_errors_in_order() {
    let lb = start_lb(test_config()).await;
    let mut c: Client = lb.connect().await;
    // One read: served on the spot, a local command, an invalid line, blank lines (no
    // reply), a default-class line, then a partial line finished by the next read.
    c.send_raw(b"SMALL a\nPING\nbad \xff\n \r\n\nhello\r\nSMALL b\nSMA")
        .await;
    assert_eq!(
        c.lines(5).await,
        vec![
            "OK m1 small a",
            "PONG",
            "ERR bad-request line is not valid UTF-8",
            "OK m1 small hello",
            "OK m1 small b",
        ]
    );
    c.send_raw(b"LL c\nPING\n").await;
    assert_eq!(c.lines(2).await, vec!["OK m1 small c", "PONG"]);
    let s = lb.snapshot();
    assert_eq!((s.totals.requests_ok, s.totals.requests_failed), (4, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_too_long_line_inside_one_read_is_refused_after_the_replies_before_it() {
    let mut cfg = test_config();
    cfg.listener.max_line_bytes = 16;
    let lb = start_lb(cfg).await;
    let mut c: Client = lb.connect().await;
    let mut input = b"SMALL a\nPING\n".to_vec();
    input.extend_from_slice(&[b'x'; 40]);
    input.extend_from_slice(b"\nPING\n");
    c.send_raw(&input).await;
    assert_eq!(c.lines(2).await, vec!["OK m1 small a", "PONG"]);
    assert_eq!(c.line().await, "ERR too-long line exceeds 16 bytes");
    c.expect_closed().await;
    let s = lb.snapshot();
    assert_eq!((s.totals.requests_ok, s.totals.requests_failed), (1, 1));
}
