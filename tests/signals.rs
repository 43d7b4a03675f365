//! Signals on the built binary (SPEC §2, §5): SIGHUP reload (good and broken file),
//! SIGTERM graceful shutdown, a second SIGINT exits at once, `[[backend.upstreams]]` applied
//! on SIGHUP. Every child is killed on drop
//! and every wait is bounded.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::process::{capture_stderr, free_port, scratch_dir};
use common::{err_code, get_stats, test_config, Client};
use elastic_lb::config::{AdminAddress, Config};
use elastic_lb::core::StrategyKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_elastic-lb");
const WAIT: Duration = Duration::from_secs(10);

/// A running daemon; killed (if still running) when dropped.
struct Daemon {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    config_path: PathBuf,
    /// stderr lines so far (read by a thread).
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    /// Writes `cfg` (with free ports) to a file and starts the daemon on it; waits for its
    /// "ready" log line. Retries with other ports if it fails to start (port taken).
    async fn start(name: &str, cfg: Config) -> Daemon {
        Daemon::start_with(name, cfg, &[]).await
    }

    /// [`Daemon::start`] with extra command-line arguments.
    async fn start_with(name: &str, cfg: Config, args: &[&str]) -> Daemon {
        let dir = scratch_dir(name);
        let config_path = dir.join("elastic-lb.toml");
        let mut last_stderr = Vec::new();
        for _attempt in 0..3 {
            let mut cfg = cfg.clone();
            let (addr, admin) = (free_port(), free_port());
            cfg.listener.address = addr;
            cfg.admin.address = AdminAddress::Addr(admin);
            std::fs::write(&config_path, cfg.to_toml()).expect("write config");
            let mut child = Command::new(BIN)
                .arg("--config")
                .arg(&config_path)
                .args(args)
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1")
                .env("RUST_BACKTRACE", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn elastic-lb");
            let stderr = capture_stderr(&mut child);
            let mut daemon = Daemon {
                child,
                addr,
                admin,
                config_path: config_path.clone(),
                stderr,
            };
            let deadline = Instant::now() + WAIT;
            loop {
                if daemon.has_line("elastic-lb ready") {
                    return daemon;
                }
                if daemon.child.try_wait().expect("try_wait").is_some() {
                    // Most likely a port taken in between: try other ports.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    last_stderr = daemon.lines();
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "daemon not ready within {WAIT:?}; stderr:\n{}",
                    daemon.lines().join("\n")
                );
                tokio::time::sleep(common::POLL).await;
            }
        }
        panic!(
            "daemon failed to start 3 times; last stderr:\n{}",
            last_stderr.join("\n")
        );
    }

    fn lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    fn has_line(&self, needle: &str) -> bool {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
    }

    /// Polls until a stderr line contains `needle`.
    async fn wait_line(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.has_line(needle) {
            assert!(
                Instant::now() < deadline,
                "no stderr line with {needle:?} within {WAIT:?}; stderr:\n{}",
                self.lines().join("\n")
            );
            tokio::time::sleep(common::POLL).await;
        }
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} failed");
    }

    /// Waits (bounded) for the daemon to exit.
    async fn exit_status(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit within {WAIT:?}; stderr:\n{}",
                self.lines().join("\n")
            );
            tokio::time::sleep(common::POLL).await;
        }
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

async fn ping(c: &mut Client) {
    c.send("PING").await;
    assert_eq!(c.line().await, "PONG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_keeps_old_config_on_error_and_sigterm_shuts_down() {
    let mut cfg = test_config();
    cfg.dispatcher.strategy = StrategyKind::LeastConnections;
    cfg.shutdown.grace = Duration::from_secs(5);
    let mut d = Daemon::start("hup-term", cfg.clone()).await;
    let mut c = Client::connect(d.addr).await;
    ping(&mut c).await;
    assert_eq!(get_stats(d.admin).await.strategy, "least-connections");

    // (a) Another strategy in the file, then SIGHUP.
    let mut next = cfg.clone();
    next.dispatcher.strategy = StrategyKind::RoundRobin;
    next.listener.address = d.addr;
    next.admin.address = AdminAddress::Addr(d.admin);
    std::fs::write(&d.config_path, next.to_toml()).expect("rewrite config");
    d.signal("-HUP");
    let deadline = Instant::now() + WAIT;
    while get_stats(d.admin).await.strategy != "round-robin" {
        assert!(Instant::now() < deadline, "SIGHUP did not switch strategy");
        tokio::time::sleep(common::POLL).await;
    }
    ping(&mut c).await;

    // (b) A broken file: the old configuration stays, one error line is logged.
    let before = d.lines().len();
    std::fs::write(&d.config_path, "[dispatcher]\nstrategy = \"fastest\"\n")
        .expect("write broken config");
    d.signal("-HUP");
    d.wait_line("reload failed").await;
    // Give a (wrong) second line a moment to show up.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let new_lines: Vec<String> = d.lines().split_off(before);
    assert_eq!(
        new_lines.len(),
        1,
        "exactly one log line for the failed reload: {new_lines:#?}"
    );
    assert!(new_lines[0].contains("ERROR"), "{new_lines:#?}");
    assert!(new_lines[0].contains("reload failed"), "{new_lines:#?}");
    assert!(
        d.running(),
        "the daemon keeps running after a failed reload"
    );
    assert_eq!(get_stats(d.admin).await.strategy, "round-robin");
    ping(&mut c).await;

    // (c) SIGTERM: the idle client is told, and the daemon exits 0 within the grace.
    let term = Instant::now();
    d.signal("-TERM");
    let reply = c.line().await;
    assert_eq!(err_code(&reply), "shutting-down", "{reply:?}");
    c.expect_closed().await;
    drop(c);
    let status = d.exit_status().await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", d.lines().join("\n"));
    assert!(
        term.elapsed() < Duration::from_secs(5),
        "exit took {:?}, more than the grace",
        term.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_sigint_during_grace_exits_at_once() {
    let mut cfg = test_config();
    cfg.shutdown.grace = Duration::from_secs(30);
    cfg.load.requests.service_ms_per_unit = 1000.0; // LARGE on a medium: 10 s
    let mut d = Daemon::start("int-int", cfg).await;
    let mut busy = Client::connect(d.addr).await;
    let mut idle = Client::connect(d.addr).await;
    ping(&mut idle).await;
    busy.send("LARGE long").await;
    let deadline = Instant::now() + WAIT;
    while get_stats(d.admin).await.machines[0].queued != 1 {
        assert!(Instant::now() < deadline, "the LARGE request never queued");
        tokio::time::sleep(common::POLL).await;
    }

    d.signal("-INT");
    // The idle client is told: the graceful shutdown has begun and waits for `busy`.
    let reply = idle.line().await;
    assert_eq!(err_code(&reply), "shutting-down", "{reply:?}");
    assert!(d.running(), "still in grace (30 s)");

    let second = Instant::now();
    d.signal("-INT");
    let status = d.exit_status().await;
    assert!(
        second.elapsed() < Duration::from_secs(5),
        "second signal took {:?}",
        second.elapsed()
    );
    assert_eq!(
        status.code(),
        Some(130),
        "stderr:\n{}",
        d.lines().join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_one_json_line_per_connection_with_numbers() {
    let d = Daemon::start_with("access", test_config(), &["--log-format", "json"]).await;
    let mut c = Client::connect(d.addr).await;
    c.send("SMALL a").await;
    assert_eq!(c.line().await, "OK m1 small a");
    c.send_raw(b"\xff\n").await;
    assert_eq!(err_code(&c.line().await), "bad-request");
    c.send("QUIT").await;
    assert_eq!(c.line().await, "BYE");
    d.wait_line("\"target\":\"access\"").await;
    let line = d
        .lines()
        .into_iter()
        .find(|l| l.contains("\"target\":\"access\""))
        .expect("an access line");
    let json: serde_json::Value = serde_json::from_str(&line).expect("one JSON object");
    assert_eq!(json["machine"], "m1", "{line}");
    assert_eq!(json["requests_ok"], 1, "{line}");
    assert_eq!(json["requests_failed"], 1, "{line}");
    assert_eq!(json["bytes_in"], 8 + 2 + 5, "{line}");
    assert_eq!(json["bytes_out"], 14 + 40 + 4, "{line}");
    assert_eq!(json["reason"], "quit", "{line}");
    assert!(json["duration_ms"].is_number(), "{line}");
    assert_eq!(json["peer"], c.local.to_string(), "{line}");
    // Numbers are numbers in the other JSON lines too.
    let started = d
        .lines()
        .into_iter()
        .find(|l| l.contains("initial machine started"))
        .expect("a start line");
    let json: serde_json::Value = serde_json::from_str(&started).expect("JSON");
    assert!(json["capacity"].is_number(), "{started}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_can_be_switched_off() {
    let mut cfg = test_config();
    cfg.log.access = false;
    let d = Daemon::start("access-off", cfg).await;
    let mut c = Client::connect(d.addr).await;
    c.send("QUIT").await;
    assert_eq!(c.line().await, "BYE");
    drop(c);
    // Once the stats show the connection closed, its access line would have been written.
    let deadline = Instant::now() + WAIT;
    while get_stats(d.admin).await.totals.connections_open > 0 {
        assert!(Instant::now() < deadline, "the connection never closed");
        tokio::time::sleep(common::POLL).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !d.has_line("access: connection closed"),
        "{}",
        d.lines().join("\n")
    );
}

/// An echo server on 127.0.0.1:0 in this process (the upstream of the child daemon).
async fn echo_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind echo");
    let addr = listener.local_addr().expect("echo addr");
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, task)
}

/// `GET /api/upstreams` of the daemon: the addresses listed.
async fn upstream_addresses(admin: SocketAddr) -> Vec<String> {
    let (status, body) = common::http_get(admin, "/api/upstreams").await;
    assert_eq!(status, 200, "{body}");
    let list: Vec<elastic_lb::backend::upstream::UpstreamView> =
        serde_json::from_str(&body).expect("JSON list");
    list.into_iter()
        .filter(|u| u.healthy)
        .map(|u| u.address)
        .collect()
}

#[tokio::test]
async fn sighup_applies_added_and_removed_upstreams() {
    let ((a, _a_task), (b, _b_task)) = (echo_upstream().await, echo_upstream().await);
    let mut cfg = test_config();
    cfg.backend.mode = elastic_lb::config::BackendMode::Proxy;
    cfg.backend.health_check_interval = Duration::from_millis(50);
    let upstream = |address| elastic_lb::config::UpstreamConfig {
        address,
        size: elastic_lb::core::Size::Medium,
        max_connections: None,
    };
    cfg.backend.upstreams = vec![upstream(a)];
    cfg.shutdown.grace = Duration::from_secs(2);
    let mut daemon = Daemon::start("upstreams", cfg.clone()).await;
    cfg.listener.address = daemon.addr;
    cfg.admin.address = AdminAddress::Addr(daemon.admin);

    // Add b, SIGHUP: it joins (probed, healthy); nothing about a restart is logged.
    cfg.backend.upstreams = vec![upstream(a), upstream(b)];
    std::fs::write(&daemon.config_path, cfg.to_toml()).expect("write config");
    daemon.signal("-HUP");
    let deadline = Instant::now() + WAIT;
    while upstream_addresses(daemon.admin).await != [a.to_string(), b.to_string()] {
        assert!(Instant::now() < deadline, "b did not join after SIGHUP");
        tokio::time::sleep(common::POLL).await;
    }
    assert!(!daemon.has_line("changes only on restart"));

    // Remove a (its machine has no connection): it leaves, b takes the clients.
    cfg.backend.upstreams = vec![upstream(b)];
    std::fs::write(&daemon.config_path, cfg.to_toml()).expect("write config");
    daemon.signal("-HUP");
    let deadline = Instant::now() + WAIT;
    while upstream_addresses(daemon.admin).await != [b.to_string()] {
        assert!(Instant::now() < deadline, "a did not leave after SIGHUP");
        tokio::time::sleep(common::POLL).await;
    }
    let mut c = tokio::net::TcpStream::connect(daemon.addr)
        .await
        .expect("connect");
    c.write_all(b"via b").await.expect("write");
    let mut back = [0u8; 5];
    common::within("echo through b", c.read_exact(&mut back))
        .await
        .expect("read");
    assert_eq!(&back, b"via b");
    let stats = get_stats(daemon.admin).await;
    assert_eq!(stats.machines.len(), 1, "a's machine retired");
    assert!(!daemon.has_line("changes only on restart"));
    drop(c);
    daemon.signal("-TERM");
    assert!(daemon.exit_status().await.success());
}

/// A second SIGTERM while proxied streams are open ends the process at once with 130, and
/// nothing panics on the way out (the io_uring loops still held timers of the runtime that
/// was being dropped under them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_sigterm_with_open_streams_exits_130_without_a_panic() {
    let (up, _up_task) = echo_upstream().await;
    let mut cfg = test_config();
    cfg.backend.mode = elastic_lb::config::BackendMode::Proxy;
    cfg.backend.upstreams = vec![elastic_lb::config::UpstreamConfig {
        address: up,
        size: elastic_lb::core::Size::Medium,
        max_connections: None,
    }];
    cfg.shutdown.grace = Duration::from_secs(30);
    for round in 0..3 {
        let mut d = Daemon::start(&format!("term-term-{round}"), cfg.clone()).await;
        let mut streams = Vec::new();
        for i in 0..5u8 {
            let mut s = tokio::net::TcpStream::connect(d.addr)
                .await
                .expect("connect");
            s.write_all(&[b'a' + i]).await.expect("write");
            let mut back = [0u8; 1];
            common::within("echo", s.read_exact(&mut back))
                .await
                .expect("read");
            streams.push(s);
        }
        d.signal("-TERM");
        d.wait_line("shutting down").await;
        assert!(d.running(), "still in grace (30 s) with open streams");
        tokio::time::sleep(Duration::from_millis(100)).await;
        d.signal("-TERM");
        let status = d.exit_status().await;
        // The panic, when there is one, is written as the process ends.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let lines = d.lines();
        assert_eq!(status.code(), Some(130), "stderr:\n{}", lines.join("\n"));
        assert!(
            !lines.iter().any(|l| l.contains("panicked")),
            "round {round}: stderr:\n{}",
            lines.join("\n")
        );
        drop(streams);
    }
}
