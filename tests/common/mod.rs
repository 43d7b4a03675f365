//! Shared helpers for the integration tests: an in-process balancer on `127.0.0.1:0`, a line
//! client, a polling helper and a tiny HTTP client for `GET /api/stats`.
#![allow(dead_code)]

pub mod echo;
pub mod process;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use elastic_lb::config::{BackendMode, Config, IoEngine};
use elastic_lb::server::bind::Listening;
use elastic_lb::telemetry::Snapshot;
use elastic_lb::Server;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, Instant};

/// Every real-clock await in the tests is bounded by this.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Polling period of [`wait_until`] and [`Lb::wait_stats`].
pub const POLL: Duration = Duration::from_millis(5);

/// A configuration for tests: reproducible (seed 42), instant service, admin on.
pub fn test_config() -> Config {
    let mut cfg = Config::default();
    cfg.dispatcher.seed = 42;
    cfg.load.requests.service_ms_per_unit = 0.0;
    cfg
}

/// `test_config()` with a fixed reservation of `units` per connection.
pub fn fixed_reservation(units: f64) -> Config {
    let mut cfg = test_config();
    cfg.load.connection_min = units;
    cfg.load.connection_max = units;
    cfg
}

/// A running in-process balancer.
#[derive(Debug)]
pub struct Lb {
    pub server: Server,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

/// The I/O engine the proxy-mode tests run on: `ELASTIC_LB_TEST_IO=io_uring` (or `epoll`)
/// serves every proxy-mode balancer of the tests from two event loops with that engine —
/// CI runs the proxy tests once more that way; unset, they run as written.
pub fn test_io() -> Option<IoEngine> {
    match std::env::var("ELASTIC_LB_TEST_IO").ok()?.as_str() {
        "io_uring" => Some(IoEngine::IoUring),
        "epoll" => Some(IoEngine::Epoll),
        "auto" => Some(IoEngine::Auto),
        other => panic!("ELASTIC_LB_TEST_IO={other}: expected io_uring, epoll or auto"),
    }
}

/// Binds the balancer and the admin endpoint on `127.0.0.1:0` and starts a [`Server`].
pub async fn start_lb(cfg: Config) -> Lb {
    if cfg.backend.mode == BackendMode::Proxy && test_io().is_some() {
        return start_lb_loops(cfg, 2).await;
    }
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind balancer");
    start_on(cfg, listener.into()).await
}

/// As [`start_lb`], with the balancer's connections served by `loops` event-loop threads
/// of their own (one `SO_REUSEPORT` socket each), as the daemon does in proxy mode.
pub async fn start_lb_loops(mut cfg: Config, loops: usize) -> Lb {
    if let Some(io) = test_io() {
        cfg.listener.io = io;
    }
    let listening =
        Listening::bind("127.0.0.1:0".parse().expect("addr"), 128, loops).expect("bind balancer");
    start_on(cfg, listening).await
}

async fn start_on(cfg: Config, listening: Listening) -> Lb {
    let admin_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
    let server = Server::start(cfg, listening, Some(admin_listener))
        .await
        .expect("server starts");
    let addr = server.local_addr();
    let admin = server.admin_addr().expect("admin enabled");
    Lb {
        server,
        addr,
        admin,
    }
}

impl Lb {
    /// A new client connection to the balancer.
    pub async fn connect(&self) -> Client {
        Client::connect(self.addr).await
    }

    /// A client that is known to be admitted (it answered `PING`).
    pub async fn admitted(&self) -> Client {
        let mut c = self.connect().await;
        c.send("PING").await;
        assert_eq!(c.line().await, "PONG", "connection should be admitted");
        c
    }

    /// In-process snapshot (no HTTP).
    pub fn snapshot(&self) -> Snapshot {
        self.server.stats().snapshot()
    }

    /// `GET /api/stats` over HTTP.
    pub async fn http_stats(&self) -> Snapshot {
        get_stats(self.admin).await
    }

    /// Polls `GET /api/stats` every [`POLL`] until `cond` holds; panics after [`TIMEOUT`]
    /// with the last snapshot. Returns the snapshot that satisfied `cond`.
    pub async fn wait_stats(
        &self,
        what: &str,
        mut cond: impl FnMut(&Snapshot) -> bool,
    ) -> Snapshot {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let snap = self.http_stats().await;
            if cond(&snap) {
                return snap;
            }
            if Instant::now() >= deadline {
                panic!("timed out waiting until {what}; last /api/stats: {snap:#?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Polls `cond` every [`POLL`] until it holds; panics after `deadline` naming `what`.
pub async fn wait_until(deadline: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !cond() {
        if Instant::now() >= end {
            panic!("timed out after {deadline:?} waiting until {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Awaits `fut` for at most [`TIMEOUT`], panicking with `what` otherwise.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    timeout(TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {TIMEOUT:?}: {what}"))
}

// === line client ===

/// A line-protocol client. Every read is bounded by [`TIMEOUT`].
#[derive(Debug)]
pub struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    /// The client's own address (what the balancer sees as the peer).
    pub local: SocketAddr,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = within("connect", TcpStream::connect(addr))
            .await
            .expect("connect to the balancer");
        stream.set_nodelay(true).expect("nodelay");
        let local = stream.local_addr().expect("local addr");
        let (r, w) = stream.into_split();
        Client {
            reader: BufReader::new(r),
            writer: w,
            local,
        }
    }

    /// Sends `line` followed by `\n`.
    pub async fn send(&mut self, line: &str) {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        self.send_raw(&bytes).await;
    }

    /// Sends exactly `bytes`, in one write.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        within("write", self.writer.write_all(bytes))
            .await
            .expect("write to the balancer");
    }

    /// Closes the sending side (half-close); replies can still be read.
    pub async fn shutdown_write(&mut self) {
        within("shutdown", self.writer.shutdown())
            .await
            .expect("shutdown write");
    }

    /// The next reply line without its `\n` (a `\r` would be kept, so tests see it).
    /// Panics on EOF, on an error or after [`TIMEOUT`].
    pub async fn line(&mut self) -> String {
        let mut buf = Vec::new();
        let n = within(
            "reading a reply line",
            self.reader.read_until(b'\n', &mut buf),
        )
        .await
        .expect("read a reply line");
        assert!(n > 0, "expected a reply line, got EOF");
        assert_eq!(
            buf.last(),
            Some(&b'\n'),
            "reply line not terminated: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.pop();
        String::from_utf8(buf).expect("reply is UTF-8")
    }

    /// The next `n` reply lines.
    pub async fn lines(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.line().await);
        }
        out
    }

    /// Asserts that the server closes the connection with nothing more to read (EOF or a
    /// reset), within [`TIMEOUT`].
    pub async fn expect_closed(&mut self) {
        let mut rest = Vec::new();
        match within(
            "waiting for the server to close",
            self.reader.read_to_end(&mut rest),
        )
        .await
        {
            Ok(_) => assert!(
                rest.is_empty(),
                "expected EOF, got more data: {:?}",
                String::from_utf8_lossy(&rest)
            ),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                assert!(rest.is_empty(), "unexpected data before reset: {rest:?}");
            }
            Err(e) => panic!("expected EOF, got error {e}"),
        }
    }
}

// === HTTP ===

/// `GET /api/stats` over a raw HTTP/1.1 connection (`Connection: close`), parsed into a
/// [`Snapshot`].
pub async fn get_stats(admin: SocketAddr) -> Snapshot {
    let (status, body) = http_get(admin, "/api/stats").await;
    assert_eq!(status, 200, "GET /api/stats status; body: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("bad /api/stats JSON ({e}): {body}"))
}

/// A minimal HTTP/1.1 GET: returns the status code and the body (de-chunked if needed).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = within("admin connect", TcpStream::connect(addr))
        .await
        .expect("connect to admin");
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n\r\n");
    within("admin write", stream.write_all(request.as_bytes()))
        .await
        .expect("write request");
    let mut raw = Vec::new();
    within("admin read", stream.read_to_end(&mut raw))
        .await
        .expect("read response");
    let text = String::from_utf8(raw).expect("response is UTF-8");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header/body separator in {text:?}"));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let (size_line, rest) = body.split_once("\r\n").expect("chunk size line");
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
            .expect("hex chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

/// Sum of `used` over the machines of a snapshot.
pub fn total_used(s: &Snapshot) -> f64 {
    s.machines.iter().map(|m| m.used).sum()
}

// === lifecycle helpers ===

impl Client {
    /// Sends `INFO` and returns the value of `key=` in the reply (e.g. `machine`).
    pub async fn info_field(&mut self, key: &str) -> String {
        self.send("INFO").await;
        let line = self.line().await;
        let prefix = format!("{key}=");
        line.split(' ')
            .find_map(|f| f.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("INFO reply without {key}=: {line:?}"))
            .to_string()
    }
}

/// The error code of an `ERR <code> <message>` line (panics on any other line).
pub fn err_code(line: &str) -> &str {
    let rest = line
        .strip_prefix("ERR ")
        .unwrap_or_else(|| panic!("expected an ERR line, got {line:?}"));
    rest.split(' ').next().unwrap_or("")
}

/// Whether a fresh connection to `addr` is refused, or closed by the peer without a byte,
/// within a short wait (what a closed listener looks like).
pub async fn connection_refused(addr: SocketAddr) -> bool {
    let mut stream = match timeout(TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(_)) => return true,
        Err(_) => return false,
    };
    let mut buf = [0u8; 64];
    matches!(
        timeout(Duration::from_millis(200), stream.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}
