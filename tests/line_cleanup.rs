//! The line clean-up of the codec over a real socket (issue 11, item 7): whitespace-only
//! lines are empty, a lone `\r` left before a `\r\n` ending is stripped, keywords are
//! trimmed of ASCII whitespace.

mod common;

use common::{start_lb, test_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whitespace_only_lines_get_no_reply_and_are_not_counted() {
    let lb = start_lb(test_config()).await;
    let mut c = lb.connect().await;
    c.send_raw(b"   \n\t\n \t \r\n\r\r\nPING\n").await;
    assert_eq!(c.line().await, "PONG");
    c.send_raw(b"SMALL a\n \t\nSMALL b\n").await;
    assert_eq!(c.lines(2).await, vec!["OK m1 small a", "OK m1 small b"]);
    let s = lb.http_stats().await;
    assert_eq!(s.totals.requests_ok, 2);
    assert_eq!(s.totals.requests_failed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_cr_before_the_ending_is_stripped() {
    let lb = start_lb(test_config()).await;
    let mut c = lb.connect().await;
    c.send_raw(b"PING\r\r\nhello\r\r\nLARGE x\r\r\n").await;
    // `line()` strips only the `\n`: a raw `\r` in a reply would show here.
    assert_eq!(
        c.lines(3).await,
        vec!["PONG", "OK m1 small hello", "OK m1 large x"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keywords_are_trimmed_of_tabs() {
    let lb = start_lb(test_config()).await;
    let mut c = lb.connect().await;
    c.send_raw(b"\tping\t\nSMALL\tx\nQUIT \t\n").await;
    assert_eq!(c.lines(3).await, vec!["PONG", "OK m1 small x", "BYE"]);
    c.expect_closed().await;
}
