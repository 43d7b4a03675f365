//! Running the built binary as an operator does (issue 12 §2, §3, §6, §8; issue 11 §3):
//! the start-up line, the open-files limit, the warning for an admin endpoint open beyond
//! loopback, reload warnings for keys that need a restart, and the main port staying
//! usable under a low descriptor limit however many admin connections pile up. Every
//! child is killed on drop and every wait is bounded.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::process::{capture_stderr, free_port, scratch_dir};
use common::{http_get, within, Client};
use elastic_lb::config::{AdminAddress, Config};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_elastic-lb");
const WAIT: Duration = Duration::from_secs(10);

/// A running daemon; killed (if still running) when dropped.
struct Daemon {
    child: Child,
    /// stderr lines so far (read by a thread).
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `cfg` with free loopback ports for both listeners.
fn with_free_ports(mut cfg: Config) -> Config {
    cfg.listener.address = free_port();
    cfg.admin.address = AdminAddress::Addr(free_port());
    cfg
}

impl Daemon {
    /// Starts `elastic-lb args…` in `dir`, under `ulimit` settings when given (run through
    /// bash, which then execs the daemon, so the pid is the daemon's).
    fn spawn(dir: &Path, ulimit: Option<&str>, args: &[&str]) -> Daemon {
        let mut command = match ulimit {
            Some(limits) => {
                let mut c = Command::new("bash");
                c.arg("-c")
                    .arg(format!("{limits} && exec \"$0\" \"$@\""))
                    .arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let mut child = command
            .args(args)
            .current_dir(dir)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn elastic-lb");
        let stderr = capture_stderr(&mut child);
        Daemon { child, stderr }
    }

    fn lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Polls until a stderr line contains `needle`; returns it.
    async fn wait_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(line) = self.lines().into_iter().find(|l| l.contains(needle)) {
                return line;
            }
            let exited = self.child.try_wait().expect("try_wait");
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "no stderr line with {needle:?} (exited: {exited:?}); stderr:\n{}",
                self.lines().join("\n")
            );
            tokio::time::sleep(common::POLL).await;
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name}");
    }
}

/// Writes `cfg` to `dir/name` and returns the path.
fn write_config(dir: &Path, name: &str, cfg: &Config) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, cfg.to_toml()).expect("write config");
    path
}

/// The value of `key=` in a pretty log line (up to the next space).
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let needle = format!(" {key}=");
    let start = line
        .find(&needle)
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        + needle.len();
    line[start..].split(' ').next().unwrap_or("")
}

#[tokio::test]
async fn the_ready_line_names_version_pid_config_and_addresses() {
    let dir = scratch_dir("ready");
    let cfg = with_free_ports(Config::default());
    let path = write_config(&dir, "lb.toml", &cfg);
    let mut d = Daemon::spawn(&dir, None, &["--config", path.to_str().expect("utf-8")]);
    let line = d.wait_line("elastic-lb ready").await;
    assert_eq!(field(&line, "version"), env!("CARGO_PKG_VERSION"), "{line}");
    assert_eq!(field(&line, "pid"), d.child.id().to_string(), "{line}");
    assert_eq!(field(&line, "config"), path.display().to_string(), "{line}");
    assert_eq!(
        field(&line, "listen"),
        cfg.listener.address.to_string(),
        "{line}"
    );
    assert_eq!(
        field(&line, "admin"),
        cfg.admin.address.to_string(),
        "{line}"
    );
}

#[tokio::test]
async fn without_a_file_the_ready_line_says_built_in_defaults() {
    if Path::new(elastic_lb::config::SYSTEM_PATH).exists() {
        // This machine has a system-wide file: the daemon would rightly use it.
        eprintln!("skipped: {} exists", elastic_lb::config::SYSTEM_PATH);
        return;
    }
    let dir = scratch_dir("defaults");
    let listen = free_port().to_string();
    let mut d = Daemon::spawn(&dir, None, &["--listen", &listen, "--admin", "off"]);
    let line = d.wait_line("elastic-lb ready").await;
    assert!(line.contains("config=built-in defaults"), "{line}");
    assert_eq!(field(&line, "admin"), "off", "{line}");
    assert_eq!(field(&line, "listen"), listen, "{line}");
}

#[tokio::test]
async fn a_local_config_directory_is_found_without_flags() {
    let dir = scratch_dir("local");
    std::fs::create_dir_all(dir.join("config")).expect("mkdir config");
    let cfg = with_free_ports(Config::default());
    write_config(&dir, "config/elastic-lb.toml", &cfg);
    let mut d = Daemon::spawn(&dir, None, &[]);
    let line = d.wait_line("elastic-lb ready").await;
    assert_eq!(field(&line, "config"), "config/elastic-lb.toml", "{line}");
    assert_eq!(
        field(&line, "listen"),
        cfg.listener.address.to_string(),
        "{line}"
    );
}

#[tokio::test]
async fn a_low_open_files_limit_is_raised_to_the_hard_limit_and_reported() {
    let dir = scratch_dir("nofile");
    let cfg = with_free_ports(Config::default());
    let path = write_config(&dir, "lb.toml", &cfg);
    let mut d = Daemon::spawn(
        &dir,
        Some("ulimit -Sn 300 && ulimit -Hn 600"),
        &["--config", path.to_str().expect("utf-8")],
    );
    d.wait_line("elastic-lb ready").await;
    let raised = d.wait_line("raised the open-files soft limit").await;
    assert!(
        raised.contains("from=300") && raised.contains("to=600"),
        "{raised}"
    );
    let warning = d.wait_line("open-files limit is below").await;
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("limit=600"), "{warning}");
    // 10000 clients + 256 refusals + 256 admin + 32 spare.
    assert!(warning.contains("needed=10544"), "{warning}");
    assert!(warning.contains("listener.max_connections"), "{warning}");
}

#[tokio::test]
async fn a_limit_that_suffices_gives_no_warning() {
    let dir = scratch_dir("nofile-ok");
    let mut cfg = with_free_ports(Config::default());
    cfg.listener.max_connections = 100;
    let path = write_config(&dir, "lb.toml", &cfg);
    let mut d = Daemon::spawn(
        &dir,
        Some("ulimit -n 1024"),
        &["--config", path.to_str().expect("utf-8")],
    );
    d.wait_line("elastic-lb ready").await;
    let lines = d.lines();
    assert!(
        !lines.iter().any(|l| l.contains("open-files")),
        "{lines:#?}"
    );
}

#[tokio::test]
async fn an_admin_endpoint_beyond_loopback_without_a_token_is_warned_about() {
    let dir = scratch_dir("exposed");
    let listen = free_port().to_string();
    let mut d = Daemon::spawn(&dir, None, &["--listen", &listen, "--admin", "0.0.0.0:0"]);
    let warning = d.wait_line("reachable beyond loopback").await;
    assert!(
        warning.contains("WARN") && warning.contains("admin.token"),
        "{warning}"
    );
    d.wait_line("elastic-lb ready").await;

    // With a token, or on loopback: no warning.
    for (name, admin, token) in [
        ("token", "0.0.0.0:0", true),
        ("loopback", "127.0.0.1:0", false),
    ] {
        let dir = scratch_dir(name);
        let mut cfg = Config::default();
        if token {
            cfg.admin.token = Some(elastic_lb::config::AdminToken::new("t0ken"));
        }
        let path = write_config(&dir, "lb.toml", &cfg);
        let listen = free_port().to_string();
        let args = [
            "--config",
            path.to_str().expect("utf-8"),
            "--listen",
            &listen,
            "--admin",
            admin,
        ];
        let mut d = Daemon::spawn(&dir, None, &args);
        d.wait_line("elastic-lb ready").await;
        let lines = d.lines();
        assert!(
            !lines.iter().any(|l| l.contains("beyond loopback")),
            "{name}: {lines:#?}"
        );
    }
}

/// A start-only key (`dispatcher.seed`) is compared with the value the daemon started
/// with, not with the last file read: a change stays pending (and warned about) on every
/// reload until the file has the running value again, and the warning names that value.
#[tokio::test]
async fn a_start_only_key_is_compared_with_the_value_in_force() {
    let dir = scratch_dir("reload-seed");
    let mut cfg = with_free_ports(Config::default());
    cfg.dispatcher.seed = 42;
    let path = write_config(&dir, "lb.toml", &cfg);
    let mut d = Daemon::spawn(&dir, None, &["--config", path.to_str().expect("utf-8")]);
    d.wait_line("elastic-lb ready").await;
    let mut reloads = 0;
    let mut reload_with = |seed: u64| {
        let mut next = cfg.clone();
        next.dispatcher.seed = seed;
        write_config(&dir, "lb.toml", &next);
        d.signal("HUP");
        reloads += 1;
        let n = reloads;
        let d = &d;
        async move {
            let deadline = Instant::now() + WAIT;
            loop {
                let lines = d.lines();
                let done: Vec<&String> = lines
                    .iter()
                    .filter(|l| l.contains("configuration reloaded"))
                    .collect();
                if done.len() == n {
                    let last = done[n - 1].clone();
                    let warnings: Vec<String> = lines
                        .iter()
                        .filter(|l| l.contains("dispatcher.seed changes only on restart"))
                        .cloned()
                        .collect();
                    return (last, warnings);
                }
                assert!(Instant::now() < deadline, "{lines:#?}");
                tokio::time::sleep(common::POLL).await;
            }
        }
    };
    let (reloaded, warnings) = reload_with(7).await;
    assert!(reloaded.contains("restart_pending=1"), "{reloaded}");
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(warnings[0].contains("running=42 file=7"), "{}", warnings[0]);
    // The same file again: still pending, warned again, still against 42.
    let (reloaded, warnings) = reload_with(7).await;
    assert!(reloaded.contains("restart_pending=1"), "{reloaded}");
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert!(warnings[1].contains("running=42 file=7"), "{}", warnings[1]);
    // Back to the value in force: nothing pending, no warning.
    let (reloaded, warnings) = reload_with(42).await;
    assert!(reloaded.contains("restart_pending=0"), "{reloaded}");
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
}

#[tokio::test]
async fn a_reload_warns_once_per_key_that_needs_a_restart_and_applies_the_rest() {
    let dir = scratch_dir("reload");
    let cfg = with_free_ports(Config::default());
    let path = write_config(&dir, "lb.toml", &cfg);
    let mut d = Daemon::spawn(&dir, None, &["--config", path.to_str().expect("utf-8")]);
    d.wait_line("elastic-lb ready").await;
    let admin = match cfg.admin.address {
        AdminAddress::Addr(a) => a,
        AdminAddress::Off => unreachable!("admin is on"),
    };

    let mut next = cfg.clone();
    next.listener.address = free_port();
    next.listener.backlog = 64;
    next.admin.max_connections = 8;
    next.backend.health_check_interval = Duration::from_secs(7);
    next.dispatcher.strategy = elastic_lb::core::StrategyKind::RoundRobin;
    write_config(&dir, "lb.toml", &next);
    d.signal("HUP");
    let reloaded = d.wait_line("configuration reloaded").await;
    assert!(reloaded.contains("restart_pending=4"), "{reloaded}");

    let warnings: Vec<String> = d
        .lines()
        .into_iter()
        .filter(|l| l.contains("changes only on restart"))
        .collect();
    let keys: Vec<&str> = warnings.iter().map(|l| field(l, "key")).collect();
    assert_eq!(
        keys,
        [
            "listener.address",
            "listener.backlog",
            "admin.max_connections",
            "backend.health_check_interval"
        ],
        "{warnings:#?}"
    );
    assert!(warnings.iter().all(|l| l.contains("WARN")), "{warnings:#?}");
    assert!(
        warnings[0].contains(&format!("running=\"{}\"", cfg.listener.address))
            && warnings[0].contains(&format!("file=\"{}\"", next.listener.address)),
        "{}",
        warnings[0]
    );
    // The live keys apply (the dispatcher takes the new strategy from its mailbox); the
    // old address still serves.
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = http_get(admin, "/api/strategy").await;
        assert_eq!(status, 200, "{body}");
        if body == r#"{"strategy":"round-robin"}"# {
            break;
        }
        assert!(Instant::now() < deadline, "strategy not applied: {body}");
        tokio::time::sleep(common::POLL).await;
    }
    let mut client = Client::connect(cfg.listener.address).await;
    client.send("PING").await;
    assert_eq!(client.line().await, "PONG");

    // A second reload of the same file warns again: the keys are still waiting.
    d.signal("HUP");
    let deadline = Instant::now() + WAIT;
    while d
        .lines()
        .iter()
        .filter(|l| l.contains("configuration reloaded"))
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "{:#?}", d.lines());
        tokio::time::sleep(common::POLL).await;
    }
}

#[tokio::test]
async fn admin_connections_cannot_starve_the_main_port_of_descriptors() {
    // 128 descriptors in all; the admin port takes 4 at most, so 300 admin connections
    // wait in its backlog while 30 clients are served on the main port.
    let dir = scratch_dir("starve");
    let mut cfg = with_free_ports(Config::default());
    cfg.listener.max_connections = 40;
    cfg.admin.max_connections = 4;
    cfg.load.requests.service_ms_per_unit = 0.0;
    let path = write_config(&dir, "lb.toml", &cfg);
    let mut d = Daemon::spawn(
        &dir,
        Some("ulimit -n 128"),
        &["--config", path.to_str().expect("utf-8")],
    );
    d.wait_line("elastic-lb ready").await;
    let admin = match cfg.admin.address {
        AdminAddress::Addr(a) => a,
        AdminAddress::Off => unreachable!("admin is on"),
    };

    let mut flood = Vec::new();
    for _ in 0..300 {
        match timeout(Duration::from_millis(500), TcpStream::connect(admin)).await {
            Ok(Ok(stream)) => flood.push(stream),
            _ => break,
        }
    }
    assert!(flood.len() >= 200, "only {} admin connections", flood.len());

    let mut clients = Vec::new();
    for _ in 0..30 {
        let mut c = Client::connect(cfg.listener.address).await;
        c.send("PING").await;
        assert_eq!(c.line().await, "PONG");
        clients.push(c);
    }
    let lines = d.lines();
    assert!(
        !lines.iter().any(|l| l.contains("accept failed")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("admin connections at admin.max_connections")),
        "{lines:#?}"
    );

    // Once the flood leaves, the admin endpoint answers again.
    drop(flood);
    let (status, _) = within("admin after the flood", http_get(admin, "/api/stats")).await;
    assert_eq!(status, 200);
}
