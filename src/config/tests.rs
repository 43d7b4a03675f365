//! End-to-end tests of [`Config::from_toml`]: the shipped file, round trips through
//! `to_toml`, and the one-line message of every kind of mistake (parse errors reworded by
//! `diagnostics`, broken rules of `validate`, each with its file and line).

use std::time::Duration;

use super::*;
use crate::core::{RequestClass, Size, StrategyKind};

const SHIPPED: &str = include_str!("../../config/elastic-lb.toml");

/// Parses `text` as `x.toml` and returns the one-line error message.
fn err(text: &str) -> String {
    match Config::from_toml(text, "x.toml") {
        Ok(c) => panic!("accepted {text:?}: {c:?}"),
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "multi-line message: {msg}");
            msg
        }
    }
}

/// Asserts that `text` is rejected with a message containing every one of `parts`.
fn rejects(text: &str, parts: &[&str]) -> String {
    let msg = err(text);
    for part in parts {
        assert!(msg.contains(part), "{msg:?} lacks {part:?}");
    }
    msg
}

#[test]
fn shipped_file_and_empty_text_are_the_defaults() {
    let shipped = Config::from_toml(SHIPPED, DEFAULT_PATH).expect("shipped file is valid");
    assert_eq!(shipped, Config::default());
    assert_eq!(
        Config::from_toml("", "x.toml").expect("empty"),
        Config::default()
    );
    assert_eq!(Config::default().validate(), Ok(()));
}

#[test]
fn to_toml_round_trips_the_defaults() {
    let text = Config::default().to_toml();
    assert!(text.contains("idle_timeout = \"60s\""), "{text}");
    assert!(text.contains("interval = \"100ms\""), "{text}");
    let back = Config::from_toml(&text, "check").expect("round trip");
    assert_eq!(back, Config::default());
}

#[test]
fn to_toml_round_trips_a_custom_config() {
    let mut c = Config::default();
    c.listener.address = "0.0.0.0:9000".parse().expect("literal address");
    c.listener.idle_timeout = Duration::ZERO;
    c.admin.address = AdminAddress::Off;
    c.dispatcher.strategy = StrategyKind::ConsistentHash;
    c.dispatcher.seed = 42;
    c.load.connection_min = 2.5;
    c.load.connection_max = 2.5;
    c.load.requests.default_class = RequestClass::Large;
    c.load.requests.service_ms_per_unit = 0.25;
    c.machines.xlarge = 1000;
    c.autoscaler.initial = vec![Size::Small, Size::Large];
    c.autoscaler.scale_up_threshold = 80.5;
    c.autoscaler.interval = Duration::from_millis(1500);
    c.autoscaler.scale_down_after = Duration::from_millis(250);
    c.autoscaler.scale_up_tolerance = Some(0.0);
    c.backend.mode = BackendMode::Proxy;
    c.backend.upstreams = vec![
        UpstreamConfig {
            address: "127.0.0.1:9001".parse().expect("literal address"),
            size: Size::Small,
            max_connections: None,
        },
        UpstreamConfig {
            address: "127.0.0.1:9002".parse().expect("literal address"),
            size: Size::Large,
            max_connections: None,
        },
    ];
    assert_eq!(c.validate(), Ok(()));
    let text = c.to_toml();
    assert!(text.contains("address = \"off\""), "{text}");
    assert!(text.contains("scale_down_after = \"250ms\""), "{text}");
    assert!(text.contains("scale_up_tolerance = 0.0"), "{text}");
    assert!(text.contains("[[backend.upstreams]]"), "{text}");
    assert_eq!(Config::from_toml(&text, "check").expect("round trip"), c);
}

#[test]
fn unknown_strategy_names_file_line_key_value_and_choices() {
    let msg = err("# strategies\n\n[dispatcher]\nstrategy = \"fastest\"\n");
    assert_eq!(
        msg,
        "x.toml:4: dispatcher.strategy: unknown strategy \"fastest\" (expected one of \
         round-robin, random, least-connections, least-load, power-of-two, consistent-hash, first)"
    );
}

#[test]
fn unknown_key_is_reworded() {
    let text = "[listener]\naddress = \"127.0.0.1:1\"\ncolour = \"red\"  # typo\n";
    assert_eq!(
        err(text),
        "x.toml:3: listener.colour: unknown key (expected one of address, \
         max_connections, max_line_bytes, idle_timeout, line_timeout, backlog, threads, io, \
         pin_threads)"
    );
}

#[test]
fn unknown_key_in_nested_table() {
    let msg = rejects(
        "[load]\nconnection_min = 1.0\n\n[load.requests]\nsmall = 1\nfoo = 1\n",
        &["x.toml:6: load.requests.foo: unknown key (expected one of small, medium"],
    );
    assert!(msg.contains("service_ms_per_unit)"), "{msg}");
}

#[test]
fn unknown_key_in_dotted_and_inline_forms_and_unknown_table() {
    rejects(
        "listener.colour = 1\n",
        &["x.toml:1: listener.colour: unknown key"],
    );
    rejects(
        "listener = { colour = 1 }\n",
        &["x.toml:1: listener.colour: unknown key"],
    );
    rejects(
        "[listner]\naddress = \"127.0.0.1:1\"\n",
        &["x.toml:1: listner: unknown key (expected one of listener, admin,"],
    );
    rejects(
        "[[backend.upstreams]]\naddress = \"127.0.0.1:1\"\nweight = 3\n",
        &["x.toml:3: backend.upstreams.weight: unknown key (expected one of address, size, max_connections)"],
    );
}

#[test]
fn wrong_type() {
    rejects(
        "[listener]\nmax_connections = \"many\"\n",
        &[
            "x.toml:2: listener.max_connections:",
            "\"many\"",
            "whole number",
        ],
    );
    rejects(
        "[pool]\nsmall = -1\n",
        &[
            "x.toml:2: pool.small:",
            "-1",
            "expected a whole number >= 0",
        ],
    );
}

#[test]
fn bad_duration() {
    rejects(
        "[listener]\nidle_timeout = \"10 parsecs\"\n",
        &[
            "x.toml:2: listener.idle_timeout: invalid duration \"10 parsecs\"",
            "\"250ms\"",
        ],
    );
}

#[test]
fn admin_address() {
    rejects(
        "[admin]\naddress = \"localhost\"\n",
        &[
            "x.toml:2: admin.address: invalid address \"localhost\"",
            "expected ip:port, e.g. \"127.0.0.1:7071\", or \"off\"",
        ],
    );
    let c = Config::from_toml("[admin]\naddress = \"off\"\n", "x.toml").expect("off");
    assert_eq!(c.admin.address, AdminAddress::Off);
    let c = Config::from_toml("admin.address = \"OFF\"\n", "x.toml").expect("OFF");
    assert_eq!(c.admin.address, AdminAddress::Off);
    rejects(
        "[listener]\naddress = \"127.0.0.1:7071\"\n",
        &["x.toml:2: admin.address = \"127.0.0.1:7071\": must differ from listener"],
    );
    // A wildcard listener takes the port on every address, the admin endpoint's too.
    rejects(
        "[listener]\naddress = \"0.0.0.0:7071\"\n",
        &["admin.address = \"127.0.0.1:7071\": must differ from listener"],
    );
}

#[test]
fn unknown_names() {
    rejects(
        "[autoscaler]\nscale_up_size = \"huge\"\n",
        &["x.toml:2: autoscaler.scale_up_size: unknown size \"huge\" (expected one of"],
    );
    rejects(
        "[autoscaler]\ninitial = [\"medium\", \"tiny\"]\n",
        &["x.toml:2: autoscaler.initial: unknown size \"tiny\""],
    );
    rejects(
        "[load.requests]\ndefault_class = \"jumbo\"\n",
        &["x.toml:2: load.requests.default_class: unknown request class \"jumbo\""],
    );
    rejects(
        "[backend]\nmode = \"mirror\"\n",
        &["x.toml:2: backend.mode: unknown value \"mirror\" (expected one of simulated, proxy)"],
    );
}

#[test]
fn syntax_errors_are_one_line_with_a_line_number() {
    let msg = err("[listener]\nmax_connections = 10\n[admin\n");
    assert!(msg.starts_with("x.toml:3: "), "{msg}");
    let msg = err("[listener]\nmax_connections = 10\nmax_connections = 11\n");
    assert!(
        msg.starts_with("x.toml:3: listener.max_connections: "),
        "{msg}"
    );
    rejects(
        "[[backend.upstreams]]\nsize = \"small\"\n",
        &["backend.upstreams: required key \"address\" is missing"],
    );
}

#[test]
fn rejects_non_positive_capacities() {
    assert_eq!(
        err("[machines]\nsmall = -5\n"),
        "x.toml:2: machines.small = -5: capacity must be > 0"
    );
    rejects(
        "[machines]\nxlarge = 0   # off\n",
        &["x.toml:2: machines.xlarge = 0: capacity must be > 0"],
    );
    rejects(
        "[machines]\nqueue_depth = 0\n",
        &["x.toml:2: machines.queue_depth = 0: must be at least 1"],
    );
}

#[test]
fn rejects_zero_listener_limits() {
    rejects(
        "[listener]\nmax_connections = 0\n",
        &["x.toml:2: listener.max_connections = 0: must be at least 1"],
    );
    rejects(
        "[listener]\nmax_line_bytes = 0\n",
        &["x.toml:2: listener.max_line_bytes = 0: must be at least 1"],
    );
}

#[test]
fn rejects_bad_connection_range() {
    rejects(
        "[load]\nconnection_min = 12.0\nconnection_max = 11.0\n",
        &["x.toml:2: load.connection_min = 12.0: must be <= load.connection_max (11.0)"],
    );
    // Only the max is in the file: the line is that of the max.
    rejects(
        "[load]\n\nconnection_max = 0.5\n",
        &["x.toml:3: load.connection_min = 1.0: must be <= load.connection_max (0.5)"],
    );
    rejects(
        "[load]\nconnection_min = -1\n",
        &["x.toml:2: load.connection_min = -1.0: must be a finite number >= 0"],
    );
    rejects(
        "[load]\nconnection_min = -3.0\nconnection_max = -2.0\n",
        &["load.connection_min = -3.0", ">= 0"],
    );
    rejects(
        "[load]\nconnection_max = nan\n",
        &["x.toml:2: load.connection_max = NaN"],
    );
    rejects(
        "[load.requests]\nservice_ms_per_unit = -1.5\n",
        &["x.toml:2: load.requests.service_ms_per_unit = -1.5: must be a finite number"],
    );
}

#[test]
fn rejects_thresholds() {
    rejects(
        "[autoscaler]\nscale_up_threshold = 150.0\n",
        &["x.toml:2: autoscaler.scale_up_threshold = 150.0: must be between 0 and 100"],
    );
    rejects(
        "[autoscaler]\nscale_down_threshold = -1.0\n",
        &["x.toml:2: autoscaler.scale_down_threshold = -1.0: must be between 0 and 100"],
    );
    rejects(
        "[autoscaler]\nscale_up_threshold = 40\nscale_down_threshold = 40\n",
        &[
            "x.toml:3: autoscaler.scale_down_threshold = 40.0: must be below \
           autoscaler.scale_up_threshold (40.0)",
        ],
    );
}

#[test]
fn rejects_machine_counts() {
    rejects(
        "[autoscaler]\nmin_machines = 5\nmax_machines = 2\n",
        &["x.toml:2: autoscaler.min_machines = 5: must be <= autoscaler.max_machines (2)"],
    );
    rejects(
        "[autoscaler]\nmax_machines = 0\n",
        &["x.toml:2: autoscaler.max_machines = 0: must be at least 1"],
    );
    rejects(
        "[autoscaler]\ninitial = [\"small\", \"small\", \"small\"]\nmax_machines = 2\n",
        &[
            "x.toml:2: autoscaler.initial = [\"small\", \"small\", \"small\"]: \
           3 machines exceed autoscaler.max_machines (2)",
        ],
    );
}

#[test]
fn rejects_initial_machines_the_pool_cannot_supply() {
    assert_eq!(
        err("[pool]\nlarge = 1\n\n[autoscaler]\ninitial = [\"large\", \"medium\", \"large\"]\n"),
        "x.toml:5: autoscaler.initial = [\"large\", \"medium\", \"large\"]: \
         2 large machines requested but pool.large = 1"
    );
    let proxy = "[backend]\nmode = \"proxy\"\n[[backend.upstreams]]\n\
                 address = \"127.0.0.1:9001\"\nsize = \"small\"\n";
    rejects(
        proxy,
        &[
            "autoscaler.initial = [\"medium\"]: 1 medium machines requested but \
           [[backend.upstreams]] has 0 of size medium",
        ],
    );
    let ok = format!("{proxy}[autoscaler]\ninitial = [\"small\"]\n");
    assert!(Config::from_toml(&ok, "x.toml").is_ok());
}

#[test]
fn rejects_zero_intervals() {
    rejects(
        "[autoscaler]\ninterval = \"0s\"\n",
        &["x.toml:2: autoscaler.interval = \"0s\": must be > 0"],
    );
    rejects(
        "[backend]\nhealth_check_interval = \"0ms\"\n",
        &["x.toml:2: backend.health_check_interval = \"0s\": must be > 0"],
    );
    // "0s" means "never" for the idle timeout.
    assert!(Config::from_toml("[listener]\nidle_timeout = \"0s\"\n", "x").is_ok());
}

#[test]
fn rejects_values_the_daemon_cannot_run_with() {
    for (toml, key) in [
        (
            "[listener]\nidle_timeout = \"300000000000y\"\n",
            "listener.idle_timeout",
        ),
        ("[shutdown]\ngrace = \"400days\"\n", "shutdown.grace"),
        (
            "[machines]\nqueue_depth = 4000000000000000000\n",
            "machines.queue_depth",
        ),
        (
            "[load.requests]\nservice_ms_per_unit = 1e300\n",
            "load.requests.service_ms_per_unit",
        ),
        (
            "[load.requests]\nlarge = 99999999999\n",
            "load.requests.large",
        ),
        (
            "[listener]\nmax_line_bytes = 99999999999\n",
            "listener.max_line_bytes",
        ),
        ("[load]\nconnection_max = 500.0\n", "load.connection_max"),
    ] {
        let err = Config::from_toml(toml, "x.toml").unwrap_err().to_string();
        assert!(err.contains(key), "{toml:?}: {err}");
        assert!(!err.contains('\n'), "{err}");
    }
}

/// Regression (found while writing tests/config_props.rs, which now finds it when the
/// bound is removed): `max_machines` had no upper bound, so `min_machines = 100000` with a
/// pool that large was accepted, and the daemon took two minutes to start its boot
/// machines (start-up is quadratic in their number).
#[test]
fn max_machines_is_bounded() {
    rejects(
        "[autoscaler]\nmin_machines = 100000\nmax_machines = 100000\n[pool]\nsmall = 100000\n",
        &["x.toml:3: autoscaler.max_machines = 100000: must be at most 1024"],
    );
    rejects(
        "[autoscaler]\nmax_machines = 18446744073709551615\n",
        &["autoscaler.max_machines = 18446744073709551615: must be at most 1024"],
    );
    let at_the_bound = "[autoscaler]\nmin_machines = 1024\nmax_machines = 1024\n\
                        [pool]\nsmall = 4294967295\n";
    let config = Config::from_toml(at_the_bound, "x.toml").expect("1024 machines");
    assert_eq!(config.autoscaler.min_machines as u64, MAX_MACHINES);
}

#[test]
fn rejects_proxy_mode_without_upstreams() {
    rejects(
        "[backend]\nmode = \"proxy\"\n",
        &[
            "x.toml:2: backend.mode = \"proxy\": proxy mode needs at least one \
           [[backend.upstreams]]",
        ],
    );
}

#[test]
fn validation_without_a_text_has_no_line() {
    let mut c = Config::default();
    c.machines.queue_depth = 0;
    let e = c.validate().expect_err("queue_depth 0");
    assert_eq!(e.key, "machines.queue_depth");
    assert_eq!(
        e.to_string(),
        "machines.queue_depth = 0: must be at least 1"
    );
    // Neither the key nor its table is in the text: the table's first dotted key is.
    let e = Config::from_toml("pool.small = 0\nmachines.small = 0\n", "x.toml");
    let e = e.expect_err("small = 0");
    assert_eq!(e.line(), Some(2));
    // The rule's other key is: its line. (Regression, found by tests/config_props.rs: the
    // message said `[pool] medium = 0`, not the key's path.)
    assert_eq!(
        err("[pool]\nmedium = 0\n"),
        "x.toml:2: autoscaler.initial = [\"medium\"]: 1 medium machines requested \
         but pool.medium = 0"
    );
}

#[test]
fn bad_addresses_are_quoted() {
    assert_eq!(
        err("[listener]\naddress = \"localhost:80\"\n"),
        "x.toml:2: listener.address: invalid address \"localhost:80\" \
         (expected ip:port, e.g. \"127.0.0.1:7070\")"
    );
    // Upstream addresses may name a host: the error says what did not resolve.
    let e = err("[backend]\nupstreams = [{ address = \"\" }]\n");
    assert!(
        e.starts_with("x.toml:2: backend.upstreams.address: cannot resolve \"\": "),
        "{e}"
    );
    assert!(e.ends_with(" (expected host:port)"), "{e}");
    let e = err("[backend]\nmode = \"proxy\"\n[[backend.upstreams]]\naddress = \"no-such-host.invalid:80\"\n");
    assert!(
        e.starts_with(
            "x.toml:4: backend.upstreams.address: cannot resolve \"no-such-host.invalid:80\": "
        ),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");
}

/// Regression (found by tests/config_props.rs): a value inside an inline table was named
/// by its table only.
#[test]
fn keys_inside_inline_tables_are_named() {
    rejects(
        "listener = { max_line_bytes = \"0ns\" }\n",
        &["x.toml:1: listener.max_line_bytes: invalid type: string \"0ns\""],
    );
    rejects(
        "load = { requests = { small = -1 } }\n",
        &["x.toml:1: load.requests.small: invalid value: integer `-1`"],
    );
}

#[test]
fn error_accessors() {
    let e = Config::from_toml("\n[machines]\nmedium = 0\n", "x.toml").expect_err("bad");
    assert_eq!(e.line(), Some(3));
    assert_eq!(e.key(), Some("machines.medium"));
    let e = Config::from_toml("[listener]\nfoo = 1\n", "x.toml").expect_err("bad");
    assert_eq!(e.line(), Some(2));
    assert_eq!(e.key(), Some("listener.foo"));
}

#[test]
fn read_error_names_the_file() {
    let e = Config::load(Path::new("/nonexistent/elastic-lb.toml")).expect_err("missing");
    assert!(
        e.to_string().starts_with("/nonexistent/elastic-lb.toml: "),
        "{e}"
    );
}

#[test]
fn backlog_and_admin_limits_have_bounds_naming_the_key() {
    rejects(
        "[listener]\nbacklog = 0\n",
        &["x.toml:2: listener.backlog = 0: must be between 1 and 65535"],
    );
    rejects(
        "[listener]\nbacklog = 70000\n",
        &["x.toml:2: listener.backlog = 70000: must be between 1 and 65535"],
    );
    rejects(
        "[listener]\nthreads = 257\n",
        &["x.toml:2: listener.threads = 257: must be between 0 (one per core) and 256"],
    );
    rejects(
        "[admin]\nmax_connections = 0\n",
        &["x.toml:2: admin.max_connections = 0: must be between 1 and 10000"],
    );
    rejects(
        "[admin]\n\nmax_connections = 10001\n",
        &["x.toml:3: admin.max_connections = 10001: must be between 1"],
    );
    rejects(
        "[listener]\nbacklog = -1\n",
        &["x.toml:2: listener.backlog"],
    );
    let ok = Config::from_toml(
        "[listener]\nbacklog = 16\nthreads = 3\n[admin]\nmax_connections = 2\n",
        "x.toml",
    )
    .expect("valid");
    assert_eq!(
        (
            ok.listener.backlog,
            ok.listener.threads,
            ok.admin.max_connections
        ),
        (16, 3, 2)
    );
}

#[test]
fn admin_token_is_optional_round_trips_and_is_never_echoed_in_errors() {
    assert_eq!(Config::default().admin.token, None);
    assert!(!Config::default().to_toml().contains("token"));
    let c = Config::from_toml("[admin]\ntoken = \"s3cret\"\n", "x.toml").expect("valid");
    assert_eq!(c.admin.token, Some(AdminToken::new("s3cret")));
    let back = Config::from_toml(&c.to_toml(), "check").expect("round trip");
    assert_eq!(back, c);
    for bad in ["\"\"", "\"two words\"", "\"tab\\there\""] {
        let msg = rejects(
            &format!("[admin]\ntoken = {bad}\n"),
            &["x.toml:2: admin.token = \"<hidden>\": must"],
        );
        assert!(!msg.contains("words") && !msg.contains("here"), "{msg}");
    }
    rejects("[admin]\ntoken = 42\n", &["x.toml:2: admin.token"]);
}

#[test]
fn scale_up_tolerance_is_optional_and_bounded() {
    assert_eq!(Config::default().autoscaler.scale_up_tolerance, None);
    assert_eq!(Config::default().autoscaler.up_tolerance(), 0.1);
    let c = Config::from_toml("[autoscaler]\nscale_up_tolerance = 0.0\n", "x.toml").unwrap();
    assert_eq!(c.autoscaler.up_tolerance(), 0.0);
    rejects(
        "[autoscaler]\nscale_up_tolerance = 1.0\n",
        &["x.toml:2: autoscaler.scale_up_tolerance = 1.0: must be at least 0 and below 1"],
    );
}

#[test]
fn upstream_errors_name_the_line_of_the_entry_at_fault() {
    let text = "\
[backend]
mode = \"proxy\"
[[backend.upstreams]]
address = \"127.0.0.1:9001\"
max_connections = 5
[[backend.upstreams]]
address = \"127.0.0.1:9002\"
max_connections = 0
[[backend.upstreams]]
address = \"127.0.0.1:9001\"
";
    assert_eq!(
        err(text),
        "x.toml:8: backend.upstreams.max_connections = 0: upstream 127.0.0.1:9002: must be at least 1 (omit it for no limit)"
    );
    assert_eq!(
        err(&text.replace("max_connections = 0", "max_connections = 1")),
        "x.toml:10: backend.upstreams.address = \"127.0.0.1:9001\": address listed twice in [[backend.upstreams]]"
    );
}
