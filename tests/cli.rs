//! The command line (SPEC §2): `check`, start-up errors, exit statuses. Runs the built
//! binary; every child is killed on drop and every wait is bounded.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_elastic-lb");
const WAIT: Duration = Duration::from_secs(10);

/// Kills the child (if still running) when dropped.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs the binary with `args` in `cwd`; panics if it has not exited within [`WAIT`].
fn run(args: &[&str], cwd: &Path) -> Output {
    let child = Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn elastic-lb");
    let mut guard = ChildGuard(child);
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = guard.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "elastic-lb {args:?} did not exit within {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut out) = guard.0.stdout.take() {
        out.read_to_string(&mut stdout).expect("read stdout");
    }
    if let Some(mut err) = guard.0.stderr.take() {
        err.read_to_string(&mut stderr).expect("read stderr");
    }
    Output {
        status,
        stdout,
        stderr,
    }
}

/// A fresh, empty directory for one test (no `config/elastic-lb.toml` in it).
fn scratch_dir(name: &str) -> PathBuf {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Writes `text` to `file` in a fresh scratch directory `name`, runs `check` on it, and
/// returns its output after asserting exit status 1.
fn check_rejects(name: &str, file: &str, text: &str) -> Output {
    let dir = scratch_dir(name);
    let file = dir.join(file);
    std::fs::write(&file, text).expect("write config");
    let out = run(
        &["check", "--config", file.to_str().expect("utf-8 path")],
        &dir,
    );
    assert_eq!(out.status.code(), Some(1), "stderr:\n{}", out.stderr);
    out
}

/// Asserts the SPEC §2 shape of a start-up error: exactly one non-empty stderr line,
/// starting `error:`, no panic or backtrace. Returns that line.
fn single_error_line(out: &Output) -> String {
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    let lower = out.stderr.to_lowercase();
    assert!(
        !lower.contains("panicked") && !lower.contains("backtrace"),
        "no panic/backtrace expected, stderr:\n{}",
        out.stderr
    );
    assert_eq!(
        lines.len(),
        1,
        "exactly one stderr line expected, got:\n{}",
        out.stderr
    );
    assert!(
        lines[0].starts_with("error:"),
        "stderr line should start with `error:`: {:?}",
        lines[0]
    );
    lines[0].to_string()
}

#[test]
fn check_prints_the_effective_default_configuration_as_toml() {
    // In the crate directory: the shipped config/elastic-lb.toml when present, else the
    // built-in defaults (identical to it).
    let out = run(&["check"], Path::new(env!("CARGO_MANIFEST_DIR")));
    assert!(
        out.status.success(),
        "exit {:?}, stderr:\n{}",
        out.status,
        out.stderr
    );
    for needle in [
        "[listener]",
        "address = \"127.0.0.1:7070\"",
        "[dispatcher]",
        "strategy = \"least-connections\"",
        "[autoscaler]",
    ] {
        assert!(
            out.stdout.contains(needle),
            "missing {needle:?} in:\n{}",
            out.stdout
        );
    }
}

#[test]
fn check_output_is_itself_a_valid_configuration() {
    let dir = scratch_dir("roundtrip");
    let first = run(&["check"], &dir);
    assert!(first.status.success(), "stderr:\n{}", first.stderr);
    let file = dir.join("effective.toml");
    std::fs::write(&file, &first.stdout).expect("write config");
    let second = run(
        &["check", "--config", file.to_str().expect("utf-8 path")],
        &dir,
    );
    assert!(second.status.success(), "stderr:\n{}", second.stderr);
    assert_eq!(second.stdout, first.stdout, "check output must round-trip");
}

#[test]
fn check_rejects_an_unknown_key_with_one_error_line_naming_it() {
    let out = check_rejects(
        "unknown-key",
        "typo.toml",
        "[listener]\nmax_connections = 10\nadress = \"127.0.0.1:7070\"\n",
    );
    let line = single_error_line(&out);
    assert!(line.contains("adress"), "names the key: {line:?}");
    assert!(line.contains("typo.toml"), "names the file: {line:?}");
    assert!(out.stdout.is_empty(), "nothing on stdout: {:?}", out.stdout);
}

/// A syntax error on a broken table header names no key: the line above it is not at fault
/// (it used to read `listener.address: unclosed table`).
#[test]
fn check_rejects_a_broken_header_without_blaming_the_key_above() {
    let out = check_rejects(
        "broken-header",
        "header.toml",
        "[listener]\naddress = \"127.0.0.1:7070\"\n[admin\n",
    );
    let line = single_error_line(&out);
    assert!(
        line.contains("header.toml:3: "),
        "names file and line: {line:?}"
    );
    assert!(
        !line.contains("listener.address"),
        "blames no key: {line:?}"
    );
}

#[test]
fn check_rejects_an_unknown_strategy_in_the_file_naming_key_and_value() {
    let out = check_rejects(
        "bad-strategy",
        "strategy.toml",
        "[dispatcher]\nstrategy = \"fastest\"\n",
    );
    let line = single_error_line(&out);
    assert!(
        line.contains("dispatcher.strategy"),
        "names the key: {line:?}"
    );
    assert!(line.contains("fastest"), "names the value: {line:?}");
}

/// The daemon's own addresses must be literal `IP:port` (docs/reference.md): the message for
/// a host name in `admin.address` says so instead of asking for the `host:port` it refuses.
#[test]
fn check_rejects_a_host_name_admin_address_asking_for_ip_port() {
    let out = check_rejects(
        "admin-host",
        "admin.toml",
        "[admin]\naddress = \"localhost:7071\"\n",
    );
    let line = single_error_line(&out);
    assert!(line.contains("admin.address"), "names the key: {line:?}");
    assert!(line.contains("localhost:7071"), "names the value: {line:?}");
    assert!(
        line.contains("expected ip:port") && !line.contains("host:port"),
        "asks for what it accepts: {line:?}"
    );
}

#[test]
fn run_on_an_address_in_use_exits_1_with_one_line_naming_it() {
    let dir = scratch_dir("addr-in-use");
    let occupied = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = occupied.local_addr().expect("addr").to_string();
    let out = run(&["run", "--listen", &addr, "--admin", "off"], &dir);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{}", out.stderr);
    let line = single_error_line(&out);
    assert!(line.contains(&addr), "names the address {addr}: {line:?}");
    drop(occupied);
}

/// `--listen` and `--admin` (or one flag and the file's other address) naming the same
/// address: refused before any bind, in one line that says so, not "address in use".
#[test]
fn listen_and_admin_flags_on_one_address_are_refused_naming_both() {
    let dir = scratch_dir("same-addr");
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = free.local_addr().expect("addr").to_string();
    drop(free);
    let out = run(&["run", "--listen", &addr, "--admin", &addr], &dir);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{}", out.stderr);
    let line = single_error_line(&out);
    assert!(
        line.contains(&addr) && line.contains("--listen") && line.contains("--admin"),
        "{line:?}"
    );
    assert!(!line.contains("in use"), "{line:?}");
}

#[test]
fn bad_flag_values_are_refused_naming_them() {
    let dir = scratch_dir("strategy-flag");
    let out = run(
        &[
            "run",
            "--strategy",
            "fastest",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "off",
        ],
        &dir,
    );
    assert!(
        !out.status.success(),
        "must not start; stderr:\n{}",
        out.stderr
    );
    assert!(
        out.status.code().is_some(),
        "exited, not killed: {:?}",
        out.status
    );
    assert_eq!(out.status.code(), Some(1), "stderr:\n{}", out.stderr);
    // SPEC §2: one clear line naming the problem, as for a bad strategy in the file.
    let line = single_error_line(&out);
    assert!(
        line.contains("fastest") && line.contains("round-robin"),
        "names the strategy and the known ones: {line}"
    );
    let out = run(&["run", "--listen", "127.0.0.1"], &dir);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{}", out.stderr);
    let line = single_error_line(&out);
    assert!(
        line.contains("127.0.0.1") && line.contains("--listen") && line.contains("ip:port"),
        "names the flag, the value and what it may be: {line}"
    );
    let out = run(&["--log-format", "xml"], &dir);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{}", out.stderr);
    let line = single_error_line(&out);
    assert!(
        line.contains("xml") && line.contains("pretty, json"),
        "{line}"
    );
}

/// Asserts clap's full rendering of a usage error: the problem on the first line, the
/// usage, a pointer to `--help`; exit status 1; no panic.
fn usage_error(out: &Output, first_line: &str) {
    assert_eq!(out.status.code(), Some(1), "stderr:\n{}", out.stderr);
    assert!(out.stdout.is_empty(), "nothing on stdout: {:?}", out.stdout);
    let first = out.stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("error: ") && first.contains(first_line),
        "first line {first:?} should contain {first_line:?}; stderr:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("\nUsage: elastic-lb"),
        "usage line:\n{}",
        out.stderr
    );
    assert!(out.stderr.contains("--help"), "{}", out.stderr);
    assert!(
        !out.stderr.to_lowercase().contains("panicked"),
        "{}",
        out.stderr
    );
}

#[test]
fn usage_errors_show_what_is_wrong_with_suggestions_and_exit_1() {
    let dir = scratch_dir("usage");
    let out = run(&["stat"], &dir);
    usage_error(&out, "unrecognized subcommand 'stat'");
    assert!(
        out.stderr.contains("a similar subcommand exists: 'stats'"),
        "{}",
        out.stderr
    );

    let out = run(
        &["load", "--target", "127.0.0.1:1", "--conections", "5"],
        &dir,
    );
    usage_error(&out, "unexpected argument '--conections' found");
    assert!(
        out.stderr
            .contains("a similar argument exists: '--connections'"),
        "{}",
        out.stderr
    );

    // What is missing is listed, not cut off.
    let out = run(&["load"], &dir);
    usage_error(&out, "the following required arguments were not provided");
    assert!(out.stderr.contains("--target <ADDR>"), "{}", out.stderr);

    let out = run(&["--bogus"], &dir);
    usage_error(&out, "unexpected argument '--bogus' found");
}

#[test]
fn help_documents_signals_logs_config_lookup_and_exit_status() {
    let dir = scratch_dir("help");
    for args in [&["--help"][..], &["run", "--help"]] {
        let out = run(args, &dir);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", out.stderr);
        for needle in [
            "SIGHUP",
            "SIGINT, SIGTERM",
            "status 130",
            "RUST_LOG",
            "Exit status",
            "./config/elastic-lb.toml",
            "/etc/elastic-lb/elastic-lb.toml",
        ] {
            assert!(
                out.stdout.contains(needle),
                "{args:?}: missing {needle:?} in:\n{}",
                out.stdout
            );
        }
    }
}

#[test]
fn each_subcommand_help_describes_it_without_pointing_back_to_itself() {
    let dir = scratch_dir("sub-help");
    for sub in ["run", "check", "stats", "load"] {
        let out = run(&[sub, "--help"], &dir);
        assert_eq!(out.status.code(), Some(0), "{sub}: {}", out.stderr);
        let about = out.stdout.lines().next().unwrap_or("");
        assert!(!about.is_empty(), "{sub} --help starts with no description");
        let own = format!("{sub} --help");
        assert!(
            !about.contains(&own),
            "{sub} --help refers to itself: {about:?}"
        );
    }
}

#[test]
fn version_prints_the_name_and_version() {
    let dir = scratch_dir("version");
    for flag in ["--version", "-V"] {
        let out = run(&[flag], &dir);
        assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
        assert_eq!(
            out.stdout,
            format!("elastic-lb {}\n", env!("CARGO_PKG_VERSION"))
        );
    }
}

#[test]
fn check_reads_config_elastic_lb_toml_of_the_working_directory() {
    let dir = scratch_dir("lookup");
    std::fs::create_dir_all(dir.join("config")).expect("mkdir");
    std::fs::write(
        dir.join("config/elastic-lb.toml"),
        "[dispatcher]\nstrategy = \"random\"\n",
    )
    .expect("write config");
    let out = run(&["check"], &dir);
    assert!(out.status.success(), "stderr:\n{}", out.stderr);
    assert!(
        out.stdout.contains("strategy = \"random\""),
        "{}",
        out.stdout
    );
}
