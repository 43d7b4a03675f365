//! The admin port under pressure (issue 11 §3–4, issue 12 §6), over real sockets: the
//! bearer token on mutating requests, the connection cap (the main port keeps serving
//! whatever the admin port suffers), header / keep-alive / request timeouts, the body
//! limit, and the listen backlog.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use common::{start_lb, test_config, within, Lb, TIMEOUT};
use elastic_lb::admin::serve::{self, Limits};
use elastic_lb::config::AdminToken;
use elastic_lb::server::bind;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep, timeout, Instant};
use tokio_util::sync::CancellationToken;

/// One answer: status, the raw head (lower-cased) and the body.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// Sends one HTTP/1.1 request with `Connection: close` and reads the whole answer.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> Answer {
    let mut stream = within("admin connect", TcpStream::connect(addr))
        .await
        .expect("connect to admin");
    let mut text = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        text.push_str(h);
        text.push_str("\r\n");
    }
    text.push_str("\r\n");
    text.push_str(body);
    within("admin write", stream.write_all(text.as_bytes()))
        .await
        .expect("write request");
    let mut raw = Vec::new();
    within("admin read", stream.read_to_end(&mut raw))
        .await
        .expect("read answer");
    parse(&raw)
}

fn parse(raw: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(raw).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head/body separator in {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    Answer {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_string(),
    }
}

async fn put_strategy(lb: &Lb, name: &str, headers: &[&str]) -> Answer {
    let body = format!(r#"{{"strategy": "{name}"}}"#);
    request(lb.admin, "PUT", "/api/strategy", headers, &body).await
}

// === admin.token ===

#[tokio::test]
async fn a_token_guards_mutating_requests_and_leaves_get_open() {
    let mut cfg = test_config();
    cfg.admin.token = Some(AdminToken::new("s3cret"));
    let lb = start_lb(cfg.clone()).await;

    // No header: 401 with the JSON error shape and a Bearer challenge; nothing changes.
    let answer = put_strategy(&lb, "round-robin", &[]).await;
    assert_eq!(answer.status, 401, "{answer:?}");
    assert!(
        answer.head.contains("www-authenticate: bearer"),
        "{answer:?}"
    );
    let error = answer.json()["error"].as_str().expect("error").to_string();
    assert!(error.contains("Authorization: Bearer"), "{error}");
    assert_eq!(lb.http_stats().await.strategy, "least-connections");

    // A wrong token, another scheme, a token that is only a prefix: 401 too.
    for header in [
        "Authorization: Bearer wrong",
        "Authorization: Basic czNjcmV0",
        "Authorization: Bearer s3cre",
        "Authorization: Bearer s3cret2",
    ] {
        let answer = put_strategy(&lb, "round-robin", &[header]).await;
        assert_eq!(answer.status, 401, "{header}: {answer:?}");
        assert!(answer.json()["error"].is_string(), "{answer:?}");
    }
    assert_eq!(lb.http_stats().await.strategy, "least-connections");

    // Every mutating method is guarded, also on routes that do not exist.
    for method in ["POST", "DELETE", "PATCH"] {
        let answer = request(lb.admin, method, "/api/upstreams", &[], "{}").await;
        assert_eq!(answer.status, 401, "{method}: {answer:?}");
    }

    // The right token (any case of the scheme): the switch is made.
    let answer = put_strategy(&lb, "round-robin", &["Authorization: Bearer s3cret"]).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        answer.json(),
        serde_json::json!({"strategy": "round-robin"})
    );
    let answer = put_strategy(&lb, "random", &["authorization: bearer s3cret"]).await;
    assert_eq!(answer.status, 200, "{answer:?}");

    // Reads need no token.
    for path in ["/api/stats", "/api/strategy", "/metrics", "/"] {
        let answer = request(lb.admin, "GET", path, &[], "").await;
        assert_eq!(answer.status, 200, "GET {path}: {answer:?}");
    }
    let answer = request(lb.admin, "HEAD", "/api/stats", &[], "").await;
    assert_eq!(answer.status, 200, "{answer:?}");

    // A reload rotates the token at once.
    cfg.admin.token = Some(AdminToken::new("n3w"));
    lb.server.reload(cfg.clone()).await;
    let old = put_strategy(&lb, "round-robin", &["Authorization: Bearer s3cret"]).await;
    assert_eq!(old.status, 401, "{old:?}");
    let new = put_strategy(&lb, "round-robin", &["Authorization: Bearer n3w"]).await;
    assert_eq!(new.status, 200, "{new:?}");
    // ... or removes it.
    cfg.admin.token = None;
    lb.server.reload(cfg).await;
    let open = put_strategy(&lb, "least-load", &[]).await;
    assert_eq!(open.status, 200, "{open:?}");
}

#[tokio::test]
async fn oversized_bodies_get_413_in_the_json_error_shape() {
    let lb = start_lb(test_config()).await;
    let body = format!(r#"{{"strategy": "{}"}}"#, "x".repeat(100 * 1024));
    let answer = request(lb.admin, "PUT", "/api/strategy", &[], &body).await;
    assert_eq!(answer.status, 413, "{}", answer.head);
    assert!(answer.json()["error"].is_string(), "{}", answer.body);
}

/// Sends a GET whose head carries one header of `value_len` bytes and returns the status
/// line. A refused head leaves bytes unread, so the server's close may reset the connection:
/// what arrived before the reset is kept.
async fn get_with_header_of(addr: SocketAddr, value_len: usize) -> String {
    let mut stream = within("admin connect", TcpStream::connect(addr))
        .await
        .expect("connect to admin");
    let head = format!(
        "GET /api/stats HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        "a".repeat(value_len)
    );
    // The server may answer (and close) before it has read everything.
    let _ = within("admin write", stream.write_all(head.as_bytes())).await;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match within("admin read", stream.read(&mut buf)).await {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&raw);
    text.lines().next().unwrap_or("").to_string()
}

#[tokio::test]
async fn request_heads_past_64_kib_get_431() {
    let lb = start_lb(test_config()).await;
    let fits = get_with_header_of(lb.admin, 60 * 1024).await;
    assert!(fits.contains(" 200 "), "a 60 KiB head: {fits:?}");
    for kib in [65, 100, 150] {
        let status = get_with_header_of(lb.admin, kib * 1024).await;
        assert!(status.contains(" 431 "), "a {kib} KiB head: {status:?}");
    }
}

// === connection cap ===

#[tokio::test]
async fn at_the_admin_cap_new_connections_wait_and_the_main_port_keeps_serving() {
    let mut cfg = test_config();
    cfg.admin.max_connections = 2;
    let lb = start_lb(cfg).await;

    // Two silent connections take both slots (the server has accepted them once a
    // request on a third one stalls).
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(TcpStream::connect(lb.admin).await.expect("connect"));
    }
    let mut third = TcpStream::connect(lb.admin)
        .await
        .expect("connect (backlog)");
    third
        .write_all(b"GET /api/strategy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut raw = Vec::new();
    let stalled = timeout(Duration::from_millis(300), third.read_to_end(&mut raw)).await;
    assert!(
        stalled.is_err(),
        "served beyond the cap: {:?}",
        String::from_utf8_lossy(&raw)
    );

    // The balancer is not affected.
    let mut client = lb.admitted().await;
    client.send("PING").await;
    assert_eq!(client.line().await, "PONG");

    // A slot frees: the waiting connection is served.
    drop(held.remove(0));
    within("the waiting request", third.read_to_end(&mut raw))
        .await
        .expect("read");
    let answer = parse(&raw);
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body, r#"{"strategy":"least-connections"}"#);
}

// === timeouts (any router, short limits) ===

/// Serves a router with `/` (instant) and `/slow` (600 ms) under `limits`.
async fn serve_test_router(limits: Limits) -> (SocketAddr, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = Router::new().route("/", get(|| async { "ok" })).route(
        "/slow",
        get(|| async {
            sleep(Duration::from_millis(600)).await;
            "slow"
        }),
    );
    let shutdown = CancellationToken::new();
    tokio::spawn(serve::run(listener, router, limits, shutdown.clone()));
    (addr, shutdown)
}

fn limits(header_ms: u64, keep_alive_ms: u64) -> Limits {
    Limits {
        max_connections: 8,
        header_read_timeout: Duration::from_millis(header_ms),
        keep_alive_timeout: Duration::from_millis(keep_alive_ms),
        request_timeout: Duration::from_secs(5),
    }
}

/// Reads until the server closes; returns what it sent and how long that took.
async fn until_closed(stream: &mut TcpStream) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut raw = Vec::new();
    let _ = within(
        "the server closing the connection",
        stream.read_to_end(&mut raw),
    )
    .await;
    (raw, start.elapsed())
}

/// Sends one keep-alive GET and reads exactly its answer (`Content-Length` bodies only).
async fn keep_alive_get(stream: &mut TcpStream, path: &str) -> Answer {
    let text = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(text.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = within("an answer", stream.read(&mut buf))
            .await
            .expect("read");
        assert!(
            n > 0,
            "closed before the answer: {:?}",
            String::from_utf8_lossy(&raw)
        );
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse().ok())
                .expect("content-length");
            if body.len() >= length {
                return parse(&raw);
            }
        }
    }
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_header_read_timeout() {
    let (addr, _shutdown) = serve_test_router(limits(300, 60_000)).await;
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    let (raw, elapsed) = until_closed(&mut silent).await;
    assert!(raw.is_empty(), "{raw:?}");
    assert!(
        elapsed >= Duration::from_millis(250),
        "closed too early: {elapsed:?}"
    );
}

#[tokio::test]
async fn trickling_a_header_does_not_extend_the_header_read_timeout() {
    let (addr, _shutdown) = serve_test_router(limits(400, 60_000)).await;
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    let start = Instant::now();
    slow.write_all(b"GET / HTTP/1.1\r\n").await.expect("write");
    // One header byte every 50 ms, never finishing the head.
    let mut closed = false;
    for b in b"X-Slow: ".iter().cycle().take(200) {
        sleep(Duration::from_millis(50)).await;
        if slow.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        let mut probe = [0u8; 64];
        if let Ok(Ok(0)) = timeout(Duration::from_millis(1), slow.read(&mut probe)).await {
            closed = true;
            break;
        }
    }
    assert!(closed, "a trickled head kept the connection open");
    let elapsed = start.elapsed();
    assert!(elapsed < TIMEOUT, "closed only after {elapsed:?}");
}

#[tokio::test]
async fn between_requests_the_keep_alive_timeout_applies() {
    // Short keep-alive, long header timeout: closed soon after the answer.
    let (addr, _shutdown) = serve_test_router(limits(60_000, 300)).await;
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    let answer = keep_alive_get(&mut conn, "/").await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "ok"));
    let (raw, elapsed) = until_closed(&mut conn).await;
    assert!(raw.is_empty(), "{raw:?}");
    assert!(
        elapsed >= Duration::from_millis(250),
        "closed too early: {elapsed:?}"
    );

    // Long keep-alive, short header timeout: the idle time between requests is not
    // counted against the next head.
    let (addr, _shutdown) = serve_test_router(limits(300, 60_000)).await;
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    assert_eq!(keep_alive_get(&mut conn, "/").await.status, 200);
    sleep(Duration::from_millis(800)).await;
    assert_eq!(keep_alive_get(&mut conn, "/").await.status, 200);
}

#[tokio::test]
async fn a_request_in_progress_outlives_the_header_and_keep_alive_timeouts() {
    let (addr, _shutdown) = serve_test_router(limits(200, 200)).await;
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    let answer = keep_alive_get(&mut conn, "/slow").await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "slow"));
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_stops_accepting() {
    let (addr, shutdown) = serve_test_router(limits(60_000, 60_000)).await;
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    assert_eq!(keep_alive_get(&mut conn, "/").await.status, 200);
    shutdown.cancel();
    let (raw, _) = until_closed(&mut conn).await;
    assert!(raw.is_empty(), "{raw:?}");
    assert!(
        common::connection_refused(addr).await,
        "still accepting after shutdown"
    );
}

// === backlog ===

#[tokio::test]
async fn the_listen_backlog_is_the_one_asked_for() {
    // Nobody accepts: Linux completes backlog + 1 handshakes, then drops SYNs, so the next
    // connect hangs (until its SYN is retried a second later).
    for backlog in [2u32, 5] {
        let listener = bind::bind(SocketAddr::from(([127, 0, 0, 1], 0)), backlog).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut queued = Vec::new();
        loop {
            match timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => queued.push(stream),
                Ok(Err(e)) => panic!("connect failed: {e}"),
                Err(_) => break,
            }
            assert!(queued.len() <= 64, "backlog {backlog} never filled");
        }
        assert_eq!(queued.len() as u32, backlog + 1, "backlog {backlog}");
        drop(listener);
    }
}

/// A client that half-closes right after its request (`printf 'GET …' | nc -N`, simple
/// HTTP/1.0 tools) still gets its answer and then the close, as from nginx or HAProxy:
/// the FIN ends what the client sends, not the answers it is owed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_followed_by_a_half_close_is_answered() {
    let lb = start_lb(test_config()).await;
    let mut tasks = tokio::task::JoinSet::new();
    const CLIENTS: usize = 200;
    for i in 0..CLIENTS {
        let admin = lb.admin;
        tasks.spawn(async move {
            let path = ["/api/stats", "/metrics", "/", "/api/strategy"][i % 4];
            let mut s = within("admin connect", TcpStream::connect(admin))
                .await
                .expect("connect to admin");
            let head = format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\n\r\n");
            s.write_all(head.as_bytes()).await.expect("write request");
            s.shutdown().await.expect("half-close");
            let mut raw = Vec::new();
            let closed = timeout(TIMEOUT, s.read_to_end(&mut raw)).await.is_ok();
            (path, raw, closed)
        });
    }
    let mut unanswered = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (path, raw, closed) = done.expect("client task");
        assert!(closed, "{path}: the connection is closed after the answer");
        if !raw.starts_with(b"HTTP/1.1 200 ") {
            unanswered.push(path);
        }
    }
    assert!(
        unanswered.is_empty(),
        "{} of {CLIENTS} half-closed requests got no answer: {unanswered:?}",
        unanswered.len()
    );
}
