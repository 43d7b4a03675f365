//! Run-time upstreams (issue 10 items 3 and 5, SPEC §8): `[[backend.upstreams]]` applied on
//! reload, `/api/upstreams`, and capacity created on demand by `backend.provider` (driven
//! through `scripts/provider-local.sh`), all over real 127.0.0.1 sockets while traffic flows.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::echo::{proxy_config, round_trip, upstream, Echo};
use common::{start_lb, within, Lb};
use elastic_lb::backend::upstream::{Provider, UpstreamView};
use elastic_lb::config::{AdminToken, BackendMode, ProviderConfig};
use elastic_lb::core::Size;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Bound of the waits that include scaling steps and provider commands.
const LONG: Duration = Duration::from_secs(20);

/// Short connections (connect, one echo, close) in a loop until stopped; every failure is
/// counted.
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(addr: SocketAddr) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
        let task = tokio::spawn(async move {
            let mut n = 0u64;
            while !s.load(Ordering::SeqCst) {
                n += 1;
                let msg = format!("req-{n}");
                let once = async {
                    let mut c = TcpStream::connect(addr).await.ok()?;
                    c.write_all(msg.as_bytes()).await.ok()?;
                    let mut back = vec![0; msg.len()];
                    c.read_exact(&mut back).await.ok()?;
                    (back == msg.as_bytes()).then_some(())
                };
                match tokio::time::timeout(Duration::from_secs(5), once).await {
                    Ok(Some(())) => o.fetch_add(1, Ordering::SeqCst),
                    _ => f.fetch_add(1, Ordering::SeqCst),
                };
            }
        });
        Traffic {
            stop,
            ok,
            failed,
            task,
        }
    }

    fn ok(&self) -> usize {
        self.ok.load(Ordering::SeqCst)
    }

    /// Stops the loop; returns (ok, failed).
    async fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        let (ok, failed) = (self.ok.clone(), self.failed.clone());
        within("traffic stops", self.task)
            .await
            .expect("traffic task");
        (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst))
    }

    /// Waits until `more` further exchanges have succeeded.
    async fn wait_more(&self, more: usize) {
        let goal = self.ok() + more;
        common::wait_until(LONG, "traffic flows", || self.ok() >= goal).await;
    }

    /// Of the next 20 exchanges, at least 19 reach `echo`. One exchange was already under
    /// way: it may have been placed before the change (a draining machine keeps what it
    /// had), or accepted by `echo` before its count was read.
    async fn assert_new_clients_go_to(&self, echo: &Echo) {
        self.wait_more(1).await;
        let before = echo.accepted();
        self.wait_more(20).await;
        assert!(
            echo.accepted() >= before + 19,
            "new clients go to {}",
            echo.addr
        );
    }
}

/// One HTTP/1.1 request (`Connection: close`); (status, body).
async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    within(&format!("{method} {path}"), async {
        let mut s = TcpStream::connect(addr).await.expect("connect admin");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(request.as_bytes())
            .await
            .expect("write request");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.expect("read response");
        let text = String::from_utf8(raw).expect("UTF-8");
        let (head, body) = text.split_once("\r\n\r\n").expect("header/body");
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        (status, body.to_string())
    })
    .await
}

async fn list(lb: &Lb) -> Vec<UpstreamView> {
    let (status, body) = http(lb.admin, "GET", "/api/upstreams", "").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("bad JSON ({e}): {body}"))
}

/// Polls `GET /api/upstreams` until `cond` holds (bounded by [`LONG`]).
async fn wait_upstreams(
    lb: &Lb,
    what: &str,
    cond: impl Fn(&[UpstreamView]) -> bool,
) -> Vec<UpstreamView> {
    let deadline = Instant::now() + LONG;
    loop {
        let l = list(lb).await;
        if cond(&l) {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what}; last /api/upstreams: {l:#?}"
        );
        tokio::time::sleep(common::POLL).await;
    }
}

/// `n` connections through the balancer, each checked with one echoed exchange of
/// `len` bytes, held open.
async fn open_connections(lb: &Lb, n: u8, len: usize) -> Vec<TcpStream> {
    let mut conns = Vec::new();
    for i in 0..n {
        let mut s = TcpStream::connect(lb.addr).await.expect("connect");
        assert_eq!(round_trip(&mut s, &vec![i; len]).await, vec![i; len]);
        conns.push(s);
    }
    conns
}

fn find(l: &[UpstreamView], addr: SocketAddr) -> Option<&UpstreamView> {
    l.iter().find(|u| u.address == addr.to_string())
}

#[tokio::test]
async fn reload_adds_and_removes_upstreams_while_traffic_flows() {
    let (a, b) = (Echo::start().await, Echo::start().await);
    let mut cfg = proxy_config(10.0, &[a.addr]);
    let lb = start_lb(cfg.clone()).await;
    let traffic = Traffic::start(lb.addr);
    // A long-lived connection on a's machine.
    let mut long = TcpStream::connect(lb.addr).await.expect("connect");
    assert_eq!(round_trip(&mut long, b"long").await, b"long");
    traffic.wait_more(20).await;

    // SIGHUP adds b: it is probed and joins the pool, idle.
    cfg.backend.upstreams = vec![upstream(a.addr), upstream(b.addr)];
    lb.server.reload(cfg.clone()).await;
    let l = wait_upstreams(&lb, "b joins, healthy", |l| {
        find(l, b.addr).is_some_and(|u| u.healthy && u.state == "idle")
    })
    .await;
    assert_eq!(find(&l, a.addr).map(|u| u.state.as_str()), Some("active"));
    lb.wait_stats("b is free capacity", |s| s.pool.medium == 1)
        .await;

    // SIGHUP removes a: its machine drains, b takes the new clients, the open connection
    // keeps working until it closes.
    cfg.backend.upstreams = vec![upstream(b.addr)];
    lb.server.reload(cfg.clone()).await;
    wait_upstreams(&lb, "a drains and b is active", |l| {
        find(l, a.addr).is_some_and(|u| u.state == "draining" && u.connections >= 1)
            && find(l, b.addr).is_some_and(|u| u.state == "active")
    })
    .await;
    traffic.assert_new_clients_go_to(&b).await;
    assert_eq!(round_trip(&mut long, b"still").await, b"still");
    drop(long);
    wait_upstreams(&lb, "a leaves once its last connection closed", |l| {
        find(l, a.addr).is_none()
    })
    .await;
    lb.wait_stats("a's machine retired", |s| {
        s.machines.len() == 1 && s.totals.scale_downs == 1
    })
    .await;
    let (ok, failed) = traffic.stop().await;
    assert_eq!(failed, 0, "nothing dropped ({ok} exchanges)");
    assert_eq!(lb.snapshot().totals.connections_rejected, 0);
}

#[tokio::test]
async fn admin_api_adds_lists_and_removes_upstreams() {
    let (a, b) = (Echo::start().await, Echo::start().await);
    let lb = start_lb(proxy_config(10.0, &[a.addr])).await;
    let traffic = Traffic::start(lb.addr);

    // Bad bodies: 400 with a JSON error.
    for bad in [
        "",
        "{",
        r#"{"size": "small"}"#,
        r#"{"address": "nowhere"}"#,
        r#"{"address": "127.0.0.1:1", "size": "huge"}"#,
        r#"{"address": "127.0.0.1:1", "extra": 1}"#,
        r#"{"address": "127.0.0.1:0"}"#,
        r#"["127.0.0.1:1", "large"]"#,
        r#"{"address": "127.0.0.1:1", "max_connections": 0}"#,
        r#"{"address": "127.0.0.1:1", "max_connections": -1}"#,
    ] {
        let (status, body) = http(lb.admin, "POST", "/api/upstreams", bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains("\"error\""), "{body}");
    }
    assert!(lb.snapshot().machines.len() == 1 && list(&lb).await.len() == 1);
    let add = format!(
        r#"{{"address": "{}", "size": "medium", "max_connections": 4}}"#,
        b.addr
    );
    let (status, body) = http(lb.admin, "POST", "/api/upstreams", &add).await;
    assert_eq!(status, 201, "{body}");
    assert!(body.contains(r#""max_connections":4"#), "{body}");
    let (status, _) = http(lb.admin, "POST", "/api/upstreams", &add).await;
    assert_eq!(status, 409, "exists");
    let (status, _) = http(lb.admin, "DELETE", "/api/upstreams/127.0.0.1:1", "").await;
    assert_eq!(status, 404, "unknown");
    let l = wait_upstreams(&lb, "b healthy and idle", |l| {
        find(l, b.addr).is_some_and(|u| u.healthy && u.state == "idle")
    })
    .await;
    let limits: Vec<_> = [a.addr, b.addr]
        .iter()
        .map(|&x| find(&l, x).map(|u| u.max_connections))
        .collect();
    assert_eq!(limits, [Some(None), Some(Some(4))], "{l:#?}");
    let a_view = find(&l, a.addr).expect("a listed");
    assert_eq!(
        (
            a_view.state.as_str(),
            a_view.machine.as_deref(),
            a_view.size.as_str()
        ),
        ("active", Some("m1"), "medium")
    );

    // A long-lived connection on a; DELETE a: 202, it drains, b takes new clients.
    let mut long = TcpStream::connect(lb.addr).await.expect("connect");
    assert_eq!(round_trip(&mut long, b"long").await, b"long");
    let (status, body) = http(
        lb.admin,
        "DELETE",
        &format!("/api/upstreams/{}", a.addr),
        "",
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert!(body.contains("draining"), "{body}");
    wait_upstreams(&lb, "b active", |l| {
        find(l, b.addr).is_some_and(|u| u.state == "active")
    })
    .await;
    traffic.assert_new_clients_go_to(&b).await;
    assert_eq!(round_trip(&mut long, b"still").await, b"still");
    drop(long);
    wait_upstreams(&lb, "a gone", |l| find(l, a.addr).is_none()).await;
    let (status, _) = http(
        lb.admin,
        "DELETE",
        &format!("/api/upstreams/{}", a.addr),
        "",
    )
    .await;
    assert_eq!(status, 404, "gone");

    // Removing an idle upstream takes it out at once.
    let c = Echo::start().await;
    let add = format!(r#"{{"address": "{}"}}"#, c.addr);
    assert_eq!(http(lb.admin, "POST", "/api/upstreams", &add).await.0, 201);
    let (status, body) = http(
        lb.admin,
        "DELETE",
        &format!("/api/upstreams/{}", c.addr),
        "",
    )
    .await;
    assert_eq!((status, body.contains("removed")), (202, true), "{body}");
    assert!(find(&list(&lb).await, c.addr).is_none());

    // A host name is resolved once, listed by its address, and removable by either.
    let (status, body) = http(
        lb.admin,
        "POST",
        "/api/upstreams",
        r#"{"address": "no-such-host.invalid:80"}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("cannot resolve"), "{body}");
    let name = format!("localhost:{}", c.addr.port());
    if elastic_lb::config::resolve_addr(&name).ok() == Some(c.addr) {
        let add = format!(r#"{{"address": "{name}"}}"#);
        let (status, body) = http(lb.admin, "POST", "/api/upstreams", &add).await;
        assert_eq!(status, 201, "{body}");
        assert!(body.contains(&format!("\"{}\"", c.addr)), "{body}");
        let (status, body) = http(lb.admin, "DELETE", &format!("/api/upstreams/{name}"), "").await;
        assert_eq!((status, body.contains("removed")), (202, true), "{body}");
        assert!(find(&list(&lb).await, c.addr).is_none());
    } else {
        eprintln!(
            "localhost does not resolve to {} first here; host-name part skipped",
            c.addr
        );
    }

    let (ok, failed) = traffic.stop().await;
    assert_eq!(failed, 0, "nothing dropped ({ok} exchanges)");
}

#[tokio::test]
async fn upstreams_routes_need_proxy_mode_and_the_token() {
    let mut cfg = common::test_config();
    cfg.admin.token = Some(AdminToken::new("s3cret"));
    let lb = start_lb(cfg).await;
    assert_eq!(list(&lb).await, Vec::new(), "simulated mode: no upstreams");
    let (status, _) = http(
        lb.admin,
        "POST",
        "/api/upstreams",
        r#"{"address": "127.0.0.1:1"}"#,
    )
    .await;
    assert_eq!(status, 401, "non-GET needs admin.token");
}

/// A temporary directory for one test, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("elb-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    /// An executable shell script `name` with `body`.
    fn script(&self, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.0.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // A failed test leaves no server behind: stop what provider-local.sh recorded.
        for pid in recorded_pids(&self.0.join("state")) {
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The pids recorded in provider-local.sh's state directory.
fn recorded_pids(state: &Path) -> Vec<u32> {
    std::fs::read_dir(state)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".pid"))
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .filter_map(|s| s.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether process `pid` still runs (a zombie waiting for its reaper does not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s
                .rsplit_once(')')
                .map(|(_, r)| r.trim_start())
                .unwrap_or("");
            !state.starts_with('Z') && !state.starts_with('X')
        })
        .unwrap_or(false)
}

#[tokio::test]
async fn provider_scales_from_one_to_three_upstreams_and_back() {
    let tmp = TempDir::new("provider-local");
    let state = tmp.0.join("state");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/provider-local.sh");
    let command = tmp.script(
        "provider",
        &format!(
            "ELB_PROVIDER_STATE='{}' exec '{}' \"$@\"",
            state.display(),
            script.display()
        ),
    );
    let seed = Echo::start().await;
    let mut cfg = proxy_config(10.0, &[seed.addr]);
    cfg.backend.provider = Some(ProviderConfig { command });
    cfg.backend.provider_timeout = Duration::from_secs(15);
    cfg.autoscaler.max_machines = 3;
    cfg.autoscaler.scale_down_after = Duration::from_millis(300);
    let lb = start_lb(cfg).await;
    let traffic = Traffic::start(lb.addr);

    // 6 long connections: 60 % > 50 % → the provider starts a second upstream.
    let mut long = open_connections(&lb, 6, 4).await;
    wait_upstreams(&lb, "a provided upstream backs a second machine", |l| {
        l.len() == 2 && l.iter().all(|u| u.state == "active")
    })
    .await;
    // 12 long connections on 2 machines: 60 % → a third one.
    for i in 6..12u8 {
        let mut s = TcpStream::connect(lb.addr).await.expect("connect");
        assert_eq!(round_trip(&mut s, &[i; 4]).await, vec![i; 4]);
        long.push(s);
    }
    let l = wait_upstreams(&lb, "three upstreams, all active", |l| {
        l.len() == 3 && l.iter().all(|u| u.state == "active" && u.healthy)
    })
    .await;
    let provided: Vec<_> = l
        .iter()
        .filter(|u| u.address != seed.addr.to_string())
        .collect();
    assert_eq!(provided.len(), 2, "{l:#?}");
    let pids = recorded_pids(&state);
    assert_eq!(pids.len(), 2, "provider-local.sh started two servers");
    assert!(pids.iter().all(|&p| running(p)));
    traffic.wait_more(30).await;
    for (i, s) in long.iter_mut().enumerate() {
        assert_eq!(
            round_trip(s, b"again").await,
            b"again",
            "long connection {i}"
        );
    }

    // Load goes away: back down to min_machines = 1; each provided upstream whose machine
    // retires is released (its process stopped).
    drop(long);
    let (ok, failed) = traffic.stop().await;
    let t = lb.snapshot().totals;
    assert_eq!(
        failed, 0,
        "nothing dropped under load ({ok} exchanges, {} refused)",
        t.connections_rejected
    );
    lb.wait_stats("back to one machine", |s| s.machines.len() == 1)
        .await;
    let l = wait_upstreams(&lb, "released upstreams leave the pool", |l| {
        let provided = l
            .iter()
            .filter(|u| u.address != seed.addr.to_string())
            .count();
        provided == recorded_pids(&state).len() && l.len() <= 2
    })
    .await;
    assert!(l.iter().any(|u| u.state == "active"), "{l:#?}");
    // Scale-down released at least one provided upstream already: its process is gone.
    let left = recorded_pids(&state);
    let released: Vec<u32> = pids.iter().copied().filter(|p| !left.contains(p)).collect();
    assert!(
        !released.is_empty(),
        "scale-down released a provided upstream"
    );
    common::wait_until(LONG, "released processes stopped", || {
        released.iter().all(|&p| !running(p))
    })
    .await;
    let t = lb.snapshot().totals;
    assert_eq!(t.connections_rejected, 0);

    // Shutdown releases what the provider still holds: every process it started stops.
    lb.server.shutdown(Duration::from_secs(5)).await;
    assert!(
        recorded_pids(&state).is_empty(),
        "state dir empty after shutdown"
    );
    common::wait_until(LONG, "every provided process stopped", || {
        pids.iter().all(|&p| !running(p))
    })
    .await;
}

#[tokio::test]
async fn provider_failures_and_timeouts_mean_none_available() {
    let tmp = TempDir::new("provider-fail");
    let limit = Duration::from_millis(500);
    let ok = tmp.script(
        "ok",
        "[ \"$1\" = acquire ] && [ \"$2\" = large ] && echo 127.0.0.1:4242",
    );
    let got = Provider::new(ok, limit).acquire(Size::Large).await;
    assert_eq!(got, Some("127.0.0.1:4242".parse().expect("addr")));
    let failing = tmp.script("failing", "echo 127.0.0.1:4242; exit 3");
    assert_eq!(
        Provider::new(failing, limit).acquire(Size::Large).await,
        None
    );
    let garbage = tmp.script("garbage", "echo not-an-address");
    assert_eq!(
        Provider::new(garbage, limit).acquire(Size::Large).await,
        None
    );
    let slow = tmp.script("slow", "sleep 10; echo 127.0.0.1:4242");
    let started = Instant::now();
    assert_eq!(Provider::new(slow, limit).acquire(Size::Large).await, None);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the timeout applies"
    );
    let missing = tmp.0.join("missing");
    assert_eq!(
        Provider::new(missing, limit).acquire(Size::Large).await,
        None
    );
}

/// A provider that runs past `provider_timeout`, or whose run is dropped (the daemon exits
/// while it runs), is stopped with what it started: a script's background step does not
/// outlive the "none available" (it could still create an upstream that nobody releases).
#[tokio::test]
async fn a_provider_past_its_limit_or_dropped_is_stopped_with_what_it_started() {
    let tmp = TempDir::new("provider-group");
    let script = |name: &str| {
        let pid_file = tmp.0.join(format!("{name}.pid"));
        let path = tmp.script(
            name,
            &format!(
                "sleep 30 >/dev/null 2>&1 &\necho $! >{0}.tmp && mv {0}.tmp {0}\nsleep 30",
                pid_file.display()
            ),
        );
        (path, pid_file)
    };

    let (slow, pid_file) = script("slow-steps");
    let limit = Duration::from_secs(2);
    assert_eq!(Provider::new(slow, limit).acquire(Size::Large).await, None);
    let step = recorded_step(&pid_file).await;
    assert_stops(step).await;

    let (dropped, pid_file) = script("dropped-run");
    let run = tokio::spawn(async move {
        Provider::new(dropped, Duration::from_secs(60))
            .acquire(Size::Large)
            .await
    });
    let step = recorded_step(&pid_file).await;
    run.abort();
    assert!(run.await.is_err(), "the run was dropped");
    assert_stops(step).await;
}

/// The pid a provider script wrote to `pid_file`, once it is there.
async fn recorded_step(pid_file: &Path) -> u32 {
    let mut pid = None;
    common::wait_until(LONG, "the script recorded its background step", || {
        pid = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        pid.is_some()
    })
    .await;
    pid.expect("a pid")
}

/// Waits until the provider's background `sleep` (`pid`) has stopped; kills it otherwise.
async fn assert_stops(pid: u32) {
    let end = Instant::now() + Duration::from_secs(5);
    while running(pid) && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let still = running(pid) && comm.trim() == "sleep";
    if still {
        let _ = std::process::Command::new("kill")
            .arg(pid.to_string())
            .status();
    }
    assert!(!still, "the provider's background step {pid} still runs");
}

/// A balancer in front of one echo upstream with `command` as its provider (and
/// `provider_timeout` when given), holding 6 connections of 10: 60 % wants another
/// machine, which only the provider could supply. Returns it, with what must stay alive
/// (the upstream and the connections).
async fn wanting_a_provided_machine(
    command: PathBuf,
    timeout: Option<Duration>,
) -> (Lb, (Echo, Vec<TcpStream>)) {
    let a = Echo::start().await;
    let mut cfg = proxy_config(10.0, &[a.addr]);
    cfg.backend.provider = Some(ProviderConfig { command });
    if let Some(timeout) = timeout {
        cfg.backend.provider_timeout = timeout;
    }
    let lb = start_lb(cfg).await;
    let conns = open_connections(&lb, 6, 2).await;
    (lb, (a, conns))
}

/// A provider that keeps failing (a quota, an API outage) is not run on every autoscaler
/// tick: the next `acquire` waits 1 s, then 2 s, … (at most 1 min).
#[tokio::test]
async fn a_failing_provider_is_retried_with_back_off() {
    let tmp = TempDir::new("provider-backoff");
    let calls = tmp.0.join("calls");
    let command = tmp.script(
        "failing",
        &format!("echo \"$1\" >> '{}'; exit 3", calls.display()),
    );
    let (lb, _held) = wanting_a_provided_machine(command, None).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let runs = std::fs::read_to_string(&calls)
        .unwrap_or_default()
        .lines()
        .count();
    // Tries at about 0 s and 1 s (then 3 s); every 100 ms tick would be ~25.
    assert!((1..=3).contains(&runs), "{runs} acquire runs in 2.5 s");
    assert_eq!(lb.snapshot().machines.len(), 1);
}

/// A provider whose upstreams never come up (a crash-looping image, a wrong port) is a
/// failing provider too: each one is released after `provider_timeout`, and the next
/// `acquire` backs off (1 s, 2 s, …) instead of creating and destroying an instance every
/// `provider_timeout` for ever; the release runs before the next acquire.
#[tokio::test]
async fn a_provider_whose_upstreams_never_come_up_is_retried_with_back_off() {
    let tmp = TempDir::new("provider-dead");
    let calls = tmp.0.join("calls");
    // An address where nothing listens.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let command = tmp.script(
        "dead",
        &format!(
            "echo \"$1\" >> '{calls}'; if [ \"$1\" = acquire ]; then echo {dead}; fi",
            calls = calls.display()
        ),
    );
    let timeout = Duration::from_millis(300);
    let (lb, _held) = wanting_a_provided_machine(command, Some(timeout)).await;
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let log = std::fs::read_to_string(&calls).unwrap_or_default();
    let runs: Vec<&str> = log.lines().collect();
    let acquires = runs.iter().filter(|l| **l == "acquire").count();
    // Acquire at ~0 s, released at ~0.4 s; again at ~1.4 s, released at ~1.8 s; next
    // not before ~3.8 s. Without the back-off: one every ~0.4 s, 7 or more.
    assert!(
        (1..=3).contains(&acquires),
        "{acquires} acquires in 3 s: {runs:?}"
    );
    for pair in runs.windows(2) {
        assert_ne!(
            pair,
            ["acquire", "acquire"],
            "each one released first: {runs:?}"
        );
    }
    assert_eq!(lb.snapshot().machines.len(), 1);
}

#[tokio::test]
async fn a_provider_that_never_answers_does_not_block_the_balancer() {
    let tmp = TempDir::new("provider-slow");
    let command = tmp.script("slow", "sleep 10");
    // The provider hangs; the dispatcher keeps serving.
    let timeout = Duration::from_secs(30);
    let (lb, _held) = wanting_a_provided_machine(command, Some(timeout)).await;
    let traffic = Traffic::start(lb.addr);
    traffic.wait_more(20).await;
    let (_, failed) = traffic.stop().await;
    assert_eq!(failed, 0);
    assert_eq!(lb.snapshot().machines.len(), 1);
}

/// Shutdown waits for the provider commands still running: a `release` started by a
/// retirement just before is not cut off half-way, and the upstream an `acquire` in flight
/// brings is released too — nothing the provider created is left behind.
#[tokio::test]
async fn shutdown_waits_for_provider_commands_in_flight() {
    for slow_verb in ["release", "acquire"] {
        let tmp = TempDir::new(&format!("provider-in-flight-{slow_verb}"));
        let calls = tmp.0.join("calls");
        let (a, b) = (Echo::start().await, Echo::start().await);
        // Every call is logged when it ends; the slow verb takes 1 s first.
        let command = tmp.script(
            "provider",
            &format!(
                "[ \"$1\" = {slow_verb} ] && sleep 1\n\
                 [ \"$1\" = acquire ] && echo {b}\n\
                 echo \"$1 $2\" >> '{calls}'",
                b = b.addr,
                calls = calls.display()
            ),
        );
        let mut cfg = proxy_config(30.0, &[a.addr]);
        cfg.backend.provider = Some(ProviderConfig { command });
        let lb = start_lb(cfg).await;
        // 60 % on the one machine: the provider is asked for another upstream.
        let conns = open_connections(&lb, 2, 2).await;
        if slow_verb == "release" {
            wait_upstreams(&lb, "the provided upstream is active", |l| {
                find(l, b.addr).is_some_and(|u| u.state == "active")
            })
            .await;
            drop(conns);
            let path = format!("/api/upstreams/{}", b.addr);
            let (status, body) = http(lb.admin, "DELETE", &path, "").await;
            assert_eq!(status, 202, "{body}");
            // It leaves the pool when its machine retires: the release starts.
            wait_upstreams(&lb, "the provided upstream left", |l| {
                find(l, b.addr).is_none()
            })
            .await;
        } else {
            // The acquire is under way (the dispatcher asks on its next tick).
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(conns);
        }
        lb.server.shutdown(Duration::from_secs(1)).await;
        let log = std::fs::read_to_string(&calls).unwrap_or_default();
        assert!(
            log.lines().any(|l| l == format!("release {}", b.addr)),
            "{slow_verb} in flight at shutdown: the provided upstream is released \
             before shutdown returns; calls: {log:?}"
        );
    }
}

#[test]
fn provider_keys_are_validated() {
    let mut cfg = common::test_config();
    cfg.backend.mode = BackendMode::Proxy;
    assert!(
        cfg.validate().is_err(),
        "proxy mode needs an upstream or a provider"
    );
    cfg.backend.provider = Some(ProviderConfig {
        command: PathBuf::from("scripts/provider-local.sh"),
    });
    cfg.validate().expect("a provider alone is enough");
    cfg.autoscaler.initial = vec![Size::Large, Size::Large];
    cfg.validate()
        .expect("the provider supplies the initial machines");
    cfg.backend.provider_timeout = Duration::ZERO;
    let e = cfg.validate().expect_err("zero timeout");
    assert!(e.to_string().contains("backend.provider_timeout"), "{e}");
    cfg.backend.provider_timeout = Duration::from_secs(30);
    cfg.backend.provider = Some(ProviderConfig {
        command: PathBuf::new(),
    });
    let e = cfg.validate().expect_err("empty command");
    assert!(e.to_string().contains("backend.provider.command"), "{e}");
    cfg.backend.provider = None;
    let a: SocketAddr = "127.0.0.1:9001".parse().expect("addr");
    cfg.autoscaler.initial = vec![Size::Medium];
    cfg.backend.upstreams = vec![upstream(a), upstream(a)];
    let e = cfg.validate().expect_err("duplicate address");
    assert!(e.to_string().contains("listed twice"), "{e}");
}

/// A reload applies each upstream's `max_connections`: lowered, it cuts no connection and
/// new ones wait in the queue until the upstream is below it; lifted, they flow again.
#[tokio::test]
async fn reload_changes_an_upstreams_max_connections() {
    let a = Echo::start().await;
    let mut cfg = proxy_config(1.0, &[a.addr]);
    let lb = start_lb(cfg.clone()).await;
    let mut first = TcpStream::connect(lb.addr).await.expect("connect");
    let mut second = TcpStream::connect(lb.addr).await.expect("connect");
    assert_eq!(round_trip(&mut first, b"1").await, b"1");
    assert_eq!(round_trip(&mut second, b"2").await, b"2");

    cfg.backend.upstreams[0].max_connections = Some(2);
    lb.server.reload(cfg.clone()).await;
    let mut third = TcpStream::connect(lb.addr).await.expect("connect");
    third.write_all(b"3").await.expect("write");
    lb.wait_stats("the third connection queued", |s| s.queued_connections == 1)
        .await;
    let mut buf = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(200), third.read_exact(&mut buf)).await;
    assert!(
        early.is_err(),
        "no answer while the upstream is at its limit"
    );
    assert_eq!(
        round_trip(&mut first, b"x").await,
        b"x",
        "open ones keep working"
    );
    drop(first);
    within(
        "the queued connection is served",
        third.read_exact(&mut buf),
    )
    .await
    .expect("read");
    assert_eq!(&buf, b"3");

    cfg.backend.upstreams[0].max_connections = None;
    lb.server.reload(cfg.clone()).await;
    let mut more = Vec::new();
    for i in 0..4u8 {
        let mut s = TcpStream::connect(lb.addr).await.expect("connect");
        assert_eq!(round_trip(&mut s, &[i]).await, [i]);
        more.push(s);
    }
    assert_eq!(lb.snapshot().machines[0].connections, 6);
    drop((second, third, more));
}
