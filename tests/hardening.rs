//! Hostile and careless clients (issue 11): slowloris, a flood after `too-long`, a last
//! line without its newline, lines of only whitespace and stray carriage returns.

mod common;

use std::time::Duration;

use common::{err_code, start_lb, test_config, Client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_that_never_completes_times_out() {
    let mut cfg = test_config();
    cfg.listener.line_timeout = Duration::from_millis(300);
    let lb = start_lb(cfg).await;
    // A slowloris client: a few bytes of a line, one more now and then, never a newline.
    let mut slow = lb.connect().await;
    slow.send("PING").await; // a complete line is fine
    assert_eq!(slow.line().await, "PONG");
    slow.send_raw(b"SMA").await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    slow.send_raw(b"L").await;
    let reply = slow.line().await;
    assert_eq!(err_code(&reply), "timeout", "{reply}");
    assert!(reply.contains("line not completed within"), "{reply}");
    slow.expect_closed().await;
    let s = lb.http_stats().await;
    assert_eq!(s.totals.requests_failed, 1, "counted like too-long: {s:#?}");
    assert_eq!(s.totals.weighted_failed, 0.0);

    // A silent client with no partial line is governed by idle_timeout, not line_timeout.
    let mut quiet = lb.connect().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    quiet.send("PING").await;
    assert_eq!(quiet.line().await, "PONG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_long_is_delivered_however_much_the_client_keeps_sending() {
    let lb = start_lb(test_config()).await;
    let stream = TcpStream::connect(lb.addr).await.expect("connect");
    let (mut read_half, mut write_half) = stream.into_split();
    // 8 MiB without a newline, as fast as the balancer takes it (bounded: stops on error).
    let flood = tokio::spawn(async move {
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..128 {
            if write_half.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match read_half.read(&mut buf).await {
                Ok(0) => break Ok(()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => break Err(e),
            }
        }
    })
    .await
    .expect("the server closes within 10 s");
    let text = String::from_utf8_lossy(&got).to_string();
    assert!(
        text.starts_with("ERR too-long "),
        "reply lost ({read:?}): {text:?}"
    );
    assert_eq!(text.matches('\n').count(), 1, "{text:?}");
    flood.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_line_without_newline_is_answered_at_eof() {
    let lb = start_lb(test_config()).await;
    let mut c = lb.connect().await;
    c.send_raw(b"SMALL one\nSMALL two").await;
    c.shutdown_write().await;
    assert_eq!(c.line().await, "OK m1 small one");
    assert_eq!(c.line().await, "OK m1 small two");
    c.expect_closed().await;
    let s = lb
        .wait_stats("both counted", |s| s.totals.connections_open == 0)
        .await;
    assert_eq!(s.totals.requests_ok, 2, "{s:#?}");

    let mut c = Client::connect(lb.addr).await;
    c.send_raw(b"PING").await;
    c.shutdown_write().await;
    assert_eq!(c.line().await, "PONG");
    c.expect_closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whitespace_lines_are_empty_and_stray_carriage_returns_are_stripped() {
    let lb = start_lb(test_config()).await;
    let mut c = lb.connect().await;
    c.send_raw(b"   \n\t\nPING\r\r\nSMALL a\r\r\n").await;
    assert_eq!(c.line().await, "PONG");
    assert_eq!(c.line().await, "OK m1 small a");
    c.send("PING").await;
    assert_eq!(
        c.line().await,
        "PONG",
        "nothing was owed for the blank lines"
    );
}

/// Found by scripts/soak.sh: a client that pipelines complete lines but does not read its
/// replies for a while makes the server stop reading (back-pressure), possibly in the middle
/// of a line it has already sent whole. That pause is the server's doing: the line clock
/// must not run through it, or such a client is cut off with `ERR timeout line not
/// completed` after `line_timeout` instead of being governed by `idle_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_pressure_does_not_count_against_line_timeout() {
    let mut cfg = test_config();
    cfg.listener.line_timeout = Duration::from_millis(300);
    let lb = start_lb(cfg).await;
    // Small socket buffers on our side, so that the server's send buffer (the kernel grows
    // it to a few MiB) fills and the server stops reading from us.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(16 * 1024).expect("SO_RCVBUF");
    socket.set_send_buffer_size(16 * 1024).expect("SO_SNDBUF");
    let stream = socket.connect(lb.addr).await.expect("connect");
    let (mut read_half, mut write_half) = stream.into_split();
    // 8,192 lines of ~1 KiB (8 MiB): more than the kernel buffers on both sides hold.
    const LINES: usize = 8192;
    let line = format!("SMALL {}\n", "x".repeat(1024));
    let writer = tokio::spawn(async move {
        for _ in 0..LINES {
            if write_half.write_all(line.as_bytes()).await.is_err() {
                return false;
            }
        }
        write_half.shutdown().await.is_ok()
    });
    // Read nothing for several line timeouts (well inside idle_timeout, 60 s).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match read_half.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the server answers everything and closes within 20 s");
    let text = String::from_utf8_lossy(&got);
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("ERR")).collect();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(text.lines().count(), LINES, "every line answered");
    assert!(writer.await.expect("writer task"), "every line was written");
    let s = lb.http_stats().await;
    assert_eq!(s.totals.requests_ok, LINES as u64, "{:?}", s.totals);
}
