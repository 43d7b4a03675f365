//! Property tests (proptest) of the configuration loader, `Config::from_toml` (SPEC §3,
//! issue 11 item 8), over arbitrary TOML values for every key: wrong types, negatives, huge
//! numbers, NaN and infinities, empty strings, odd durations and names.
//!
//! - `one_key_is_accepted_or_named`: the defaults plus one key set to an arbitrary value,
//!   written in any of the forms TOML allows (under `[table]`, as a dotted key, in an
//!   inline table, over several lines): the text is accepted, or rejected with a one-line
//!   message that names the file, the line and the key's dotted path. Unknown keys and
//!   tables replaced by a scalar are in the mix.
//! - `every_accepted_config_starts`: many keys at once, mostly within range and often at
//!   the edges of it; a rejected text still names a key, and every accepted one starts a
//!   real `elastic_lb::Server` on `127.0.0.1:0` (admin off) that must come up, answer
//!   `PING`, `INFO` and `STATS` and some work (or refuse it with an `ERR` line), and shut
//!   down promptly — with no panic in any task (a panic hook counts them) and within a
//!   time limit (so a value that makes start-up unbounded fails too).
//!
//! Case counts are explicit (`ProptestConfig::cases`; `PROPTEST_CASES` does not change
//! them): 1000 texts for the messages; 128 texts for the daemons, of which about half are
//! accepted and started (the test prints how many). The file runs in about a second in a
//! debug build.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use elastic_lb::config::{BackendMode, Config};
use elastic_lb::Server;
use proptest::prelude::*;

#[path = "common/props.rs"]
mod props;
use props::config;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

// === the keys ===

/// What a key takes, for the values drawn for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A socket address.
    Addr,
    /// A socket address or `"off"`.
    AdminAddr,
    /// A `usize` count (connections, bytes, queue slots, machines).
    Count,
    /// A `u64` seed.
    Seed,
    /// A `u64` request weight.
    Weight,
    /// An `i64` capacity.
    Capacity,
    /// A `u32` pool size.
    Pool,
    /// An `f64` of load units or milliseconds.
    Float,
    /// An `f64` percentage.
    Percent,
    /// A duration string.
    Duration,
    /// A strategy name.
    Strategy,
    /// A request class name.
    Class,
    /// A machine size name.
    Size,
    /// `simulated` or `proxy`.
    Mode,
    /// A list of machine sizes.
    Sizes,
    /// The `[[backend.upstreams]]` list.
    Upstreams,
    /// A whole table (only ever given a scalar or an empty inline table).
    Table,
    /// A key that does not exist: always rejected.
    Unknown,
}

/// Every key of SPEC §3 (and a few tables and misspellings), by dotted path.
const KEYS: &[(&str, Kind)] = &[
    ("listener.address", Kind::Addr),
    ("listener.max_connections", Kind::Count),
    ("listener.max_line_bytes", Kind::Count),
    ("listener.idle_timeout", Kind::Duration),
    ("admin.address", Kind::AdminAddr),
    ("dispatcher.strategy", Kind::Strategy),
    ("dispatcher.seed", Kind::Seed),
    ("load.connection_min", Kind::Float),
    ("load.connection_max", Kind::Float),
    ("load.requests.small", Kind::Weight),
    ("load.requests.medium", Kind::Weight),
    ("load.requests.large", Kind::Weight),
    ("load.requests.default_class", Kind::Class),
    ("load.requests.service_ms_per_unit", Kind::Float),
    ("machines.small", Kind::Capacity),
    ("machines.medium", Kind::Capacity),
    ("machines.large", Kind::Capacity),
    ("machines.xlarge", Kind::Capacity),
    ("machines.queue_depth", Kind::Count),
    ("pool.small", Kind::Pool),
    ("pool.medium", Kind::Pool),
    ("pool.large", Kind::Pool),
    ("pool.xlarge", Kind::Pool),
    ("autoscaler.initial", Kind::Sizes),
    ("autoscaler.min_machines", Kind::Count),
    ("autoscaler.max_machines", Kind::Count),
    ("autoscaler.scale_up_threshold", Kind::Percent),
    ("autoscaler.scale_up_size", Kind::Size),
    ("autoscaler.scale_down_threshold", Kind::Percent),
    ("autoscaler.scale_down_after", Kind::Duration),
    ("autoscaler.interval", Kind::Duration),
    ("shutdown.grace", Kind::Duration),
    ("backend.mode", Kind::Mode),
    ("backend.health_check_interval", Kind::Duration),
    ("backend.upstreams", Kind::Upstreams),
    ("listener", Kind::Table),
    ("load.requests", Kind::Table),
    ("autoscaler", Kind::Table),
    ("listener.max_conections", Kind::Unknown),
    ("autoscaler.cooldown", Kind::Unknown),
    ("load.requests.huge", Kind::Unknown),
];

/// `load.requests.small` → (`load.requests`, `small`).
fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('.').unwrap_or(("", path))
}

// === values, as TOML text ===

/// Stands for the address of the test's echo upstream; replaced before parsing.
const ECHO: &str = "\"ECHO\"";

fn pick(values: &'static [&'static str]) -> BoxedStrategy<String> {
    prop::sample::select(values)
        .prop_map(str::to_string)
        .boxed()
}

/// A TOML integer, from small to past every bound of `validate.rs`.
fn integer() -> BoxedStrategy<String> {
    prop_oneof![
        3 => (0i64..4).prop_map(|n| n.to_string()),
        3 => (1i64..3000).prop_map(|n| n.to_string()),
        2 => (0u32..40).prop_map(|p| (1i64 << p).to_string()),
        2 => pick(&[
            "1024", "65535", "65536", "100000", "999999", "1000000", "1000001", "1048576",
            "1048577", "67108864", "67108865", "1000000000", "1000000001", "4294967295",
            "4294967296", "9223372036854775807", "1_000",
        ]),
    ]
    .boxed()
}

/// A TOML float (or an integer where a float is expected), specials included.
fn float() -> BoxedStrategy<String> {
    prop_oneof![
        3 => (0.0f64..20.0).prop_map(|v| format!("{v:?}")),
        2 => (0.0f64..1000.0).prop_map(|v| format!("{v:?}")),
        1 => (0i64..500).prop_map(|n| n.to_string()),
        2 => pick(&[
            "0.0", "-0.0", "1.0", "11.0", "400.0", "60000.0", "60000.5", "1e9", "1e-9",
            "5e-324", "1e308", "1.7976931348623157e308", "nan", "-nan", "inf", "+inf", "-inf",
            "-1.0",
        ]),
    ]
    .boxed()
}

fn percent() -> BoxedStrategy<String> {
    prop_oneof![
        3 => (0.0f64..=100.0).prop_map(|v| format!("{v:?}")),
        1 => pick(&["0.0", "100.0", "100.00001", "-0.00001", "50", "nan", "inf"]),
    ]
    .boxed()
}

/// A duration string: plain, at and past the 365-day bound, compound and odd ones.
fn duration() -> BoxedStrategy<String> {
    let unit = prop::sample::select(&["ns", "us", "ms", "s", "m", "h", "d", "w"][..]);
    prop_oneof![
        4 => (0u64..2000, unit.clone()).prop_map(|(n, u)| format!("\"{n}{u}\"")),
        2 => (
            prop::sample::select(&[
                1u64, 365, 366, 8760, 8761, 525_600, 31_536_000, 31_536_001, 1 << 40,
                u64::MAX,
            ][..]),
            unit,
        )
            .prop_map(|(n, u)| format!("\"{n}{u}\"")),
        2 => pick(&[
            "\"0s\"", "\"1ns\"", "\"365d\"", "\"365days\"", "\"366d\"", "\"1y\"", "\"2y\"",
            "\"1h 30m\"", "\"1m1s\"", "\" 10s \"", "\"1.5s\"", "\"10\"", "\"-1s\"", "\"10 s\"",
            "\"s\"", "\"\"", "\"99999999999999999999s\"", "\"18446744073709551615s 999ms\"",
        ]),
    ]
    .boxed()
}

fn addr() -> BoxedStrategy<String> {
    pick(&[
        "\"127.0.0.1:0\"",
        "\"127.0.0.1:7070\"",
        "\"0.0.0.0:0\"",
        "\"[::1]:0\"",
        "\"[::]:9000\"",
        "\"127.0.0.1:65535\"",
    ])
}

fn sizes() -> BoxedStrategy<String> {
    let size = prop::sample::select(
        &[
            "\"small\"",
            "\"medium\"",
            "\"large\"",
            "\"xlarge\"",
            "\"medium\"",
            "\"huge\"",
        ][..],
    );
    prop::collection::vec(size, 0..5)
        .prop_map(|v| format!("[{}]", v.join(", ")))
        .boxed()
}

fn upstreams() -> BoxedStrategy<String> {
    let address = prop::sample::select(
        &[
            ECHO,
            ECHO,
            ECHO,
            "\"127.0.0.1:1\"",
            "\"[::1]:1\"",
            "\"localhost:1\"",
            "\"\"",
            "7",
        ][..],
    );
    let size = prop::sample::select(
        &[
            "",
            ", size = \"small\"",
            ", size = \"large\"",
            ", size = \"xlarge\"",
            ", size = \"medium\"",
            ", size = \"huge\"",
            ", size = 1",
            ", weight = 1",
        ][..],
    );
    prop::collection::vec((address, size), 0..4)
        .prop_map(|entries| {
            let entries: Vec<String> = entries
                .into_iter()
                .map(|(a, s)| format!("{{ address = {a}{s} }}"))
                .collect();
            format!("[{}]", entries.join(", "))
        })
        .boxed()
}

/// A value of the right kind, mostly within range, often at its edges.
fn plausible(kind: Kind) -> BoxedStrategy<String> {
    match kind {
        Kind::Addr => addr(),
        Kind::AdminAddr => prop_oneof![addr(), pick(&["\"off\"", "\"OFF\"", "\"Off\""])].boxed(),
        Kind::Count | Kind::Seed | Kind::Weight | Kind::Pool => integer(),
        Kind::Capacity => prop_oneof![
            4 => integer(),
            1 => pick(&["-1", "-9223372036854775808", "0"]),
        ]
        .boxed(),
        Kind::Float => float(),
        Kind::Percent => percent(),
        Kind::Duration => duration(),
        Kind::Strategy => pick(&[
            "\"round-robin\"",
            "\"random\"",
            "\"least-connections\"",
            "\"least-load\"",
            "\"power-of-two\"",
            "\"consistent-hash\"",
            "\"fastest\"",
            "\"Round-Robin\"",
        ]),
        Kind::Class => pick(&[
            "\"small\"",
            "\"medium\"",
            "\"large\"",
            "\"SMALL\"",
            "\"tiny\"",
        ]),
        Kind::Size => pick(&[
            "\"small\"",
            "\"medium\"",
            "\"large\"",
            "\"xlarge\"",
            "\"huge\"",
        ]),
        Kind::Mode => pick(&["\"simulated\"", "\"proxy\"", "\"Proxy\""]),
        Kind::Sizes => sizes(),
        Kind::Upstreams => upstreams(),
        Kind::Table => pick(&["{}"]),
        Kind::Unknown => integer(),
    }
}

/// A value of any type at all: wrong types, negatives, huge, NaN, empty strings, tables,
/// arrays, dates, and integers TOML itself cannot hold.
fn hostile() -> BoxedStrategy<String> {
    pick(&[
        "0",
        "-1",
        "-9223372036854775808",
        "9223372036854775807",
        "18446744073709551616",
        "0x7fffffff",
        "+5",
        "nan",
        "inf",
        "-inf",
        "-0.0",
        "1e308",
        "-1.5",
        "\"\"",
        "\" \"",
        "\"off\"",
        "\"0s\"",
        "\"-1s\"",
        "\"nan\"",
        "\"medium\"",
        "\"127.0.0.1:0\"",
        "\"localhost:80\"",
        "\"256.0.0.1:1\"",
        "\"\\u0000\"",
        "true",
        "false",
        "[]",
        "[1]",
        "[\"medium\", 1]",
        "[[]]",
        "{}",
        "{ a = 1 }",
        "{ address = \"127.0.0.1:1\" }",
        "1979-05-27T07:32:00Z",
        "1979-05-27",
        "07:32:00",
    ])
}

/// Anything for a key of `kind`: its own kind of value (and so often a valid one), another
/// key's kind, or a hostile one.
fn any_value(kind: Kind) -> BoxedStrategy<String> {
    let other = prop::sample::select(KEYS).prop_flat_map(|(_, k)| plausible(k));
    prop_oneof![3 => plausible(kind), 1 => other, 2 => hostile()].boxed()
}

// === rendering ===

/// How one key is written.
#[derive(Debug, Clone, Copy)]
enum Form {
    /// `[table]` then `key = value`.
    Header,
    /// `table.key = value` at the top level.
    Dotted,
    /// `table = { key = value }`.
    Inline,
    /// `[table]` then the value spread over several lines (arrays and inline tables).
    Multiline,
}

/// `value` with a line break after every `[` and `,` that are not inside a string or an
/// inline table (inline tables must stay on one line).
fn spread(value: &str) -> String {
    let (mut out, mut quoted, mut braces) = (String::new(), false, 0);
    for c in value.chars() {
        out.push(c);
        match c {
            '"' => quoted = !quoted,
            '{' if !quoted => braces += 1,
            '}' if !quoted => braces -= 1,
            '[' | ',' if !quoted && braces == 0 => out.push_str("\n  "),
            _ => {}
        }
    }
    out
}

/// The text setting `path` to `value` in `form`, on top of the defaults.
fn render_one(path: &str, value: &str, form: Form) -> String {
    let (table, key) = split(path);
    if table.is_empty() {
        return format!("{key} = {value}\n");
    }
    match form {
        Form::Header => format!("# one key\n[{table}]\n{key} = {value}\n"),
        Form::Dotted => format!("{path} = {value}\n"),
        Form::Inline => format!("{table} = {{ {key} = {value} }}\n"),
        Form::Multiline => format!("[{table}]\n{key} = {}\n", spread(value)),
    }
}

/// Many keys, one `[table]` section each, in the order of [`KEYS`].
fn render_many(values: &[Option<String>]) -> String {
    let mut out = String::new();
    let mut current = "";
    for ((path, _), value) in KEYS.iter().zip(values) {
        let Some(value) = value else { continue };
        let (table, key) = split(path);
        if table != current {
            out.push_str(&format!("\n[{table}]\n"));
            current = table;
        }
        out.push_str(&format!("{key} = {value}\n"));
    }
    out
}

/// The one-line message of a rejected text; fails on more than one line or no origin.
fn message(e: &elastic_lb::config::ConfigError) -> Result<String, TestCaseError> {
    let msg = e.to_string();
    prop_assert!(!msg.contains('\n'), "multi-line message: {msg}");
    prop_assert!(msg.starts_with("props.toml"), "no origin: {msg}");
    Ok(msg)
}

// === the properties ===

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn one_key_is_accepted_or_named(
        (path, kind, value) in prop::sample::select(KEYS)
            .prop_flat_map(|(path, kind)| (Just(path), Just(kind), any_value(kind))),
        form in prop::sample::select(&[Form::Header, Form::Dotted, Form::Inline, Form::Multiline][..]),
    ) {
        on_test_thread();
        let text = render_one(path, &value.replace(ECHO, "\"127.0.0.1:1\""), form);
        match Config::from_toml(&text, "props.toml") {
            Ok(_) => prop_assert!(kind != Kind::Unknown, "accepted an unknown key:\n{text}"),
            Err(e) => {
                let msg = message(&e)?;
                prop_assert!(msg.contains(path), "{msg:?} does not name {path}; text:\n{text}");
                prop_assert!(e.line().is_some(), "{msg:?} has no line; text:\n{text}");
            }
        }
    }
}

// === starting the daemon ===

/// Panics anywhere in the process (the daemon's tasks included) since the hook was set.
static PANICS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Set on the test harness's own threads: a failing property panics there (and fails
    /// its test anyway), which must not count as a daemon task's panic in another test.
    static TEST_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the calling thread as one of the harness's (see [`TEST_THREAD`]).
fn on_test_thread() {
    TEST_THREAD.with(|t| t.set(true));
}

/// One runtime for every case (as the daemon has one), and an echo server standing in for
/// proxy upstreams.
fn runtime() -> &'static (Runtime, SocketAddr) {
    static RUNTIME: OnceLock<(Runtime, SocketAddr)> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !TEST_THREAD.with(|t| t.get()) {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            default_hook(info);
        }));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let echo = rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
            let addr = listener.local_addr().expect("echo address");
            tokio::spawn(async move {
                while let Ok((mut socket, _)) = listener.accept().await {
                    tokio::spawn(async move {
                        let (mut r, mut w) = socket.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    });
                }
            });
            addr
        });
        (rt, echo)
    })
}

/// Generous limits: a debug build on two shared cores. A start-up that needs longer has an
/// unbounded value in it.
const START_LIMIT: Duration = Duration::from_secs(5);
const STOP_LIMIT: Duration = Duration::from_secs(5);
/// How long to collect replies to the work lines (their service time may be anything).
const REPLY_WINDOW: Duration = Duration::from_millis(40);

/// Starts `config` on `127.0.0.1:0` (admin off), talks to it, shuts it down.
async fn exercise(config: Config) -> Result<(), String> {
    let proxy = config.backend.mode == BackendMode::Proxy;
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("bind: {e}"))?;
    let t0 = Instant::now();
    let server = tokio::time::timeout(START_LIMIT, Server::start(config, listener, None))
        .await
        .map_err(|_| format!("start-up took over {START_LIMIT:?}"))?
        .map_err(|e| format!("start-up failed: {e}"))?;
    // Checked by the clock too: `timeout` cannot interrupt a start-up that never yields.
    let started_in = t0.elapsed();
    if started_in > START_LIMIT {
        return Err(format!("start-up took {started_in:?}"));
    }
    let stream = TcpStream::connect(server.local_addr())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let sent: &[u8] = b"PING\nINFO\nSTATS\nSMALL a\nhello\nLARGE b\n";
    // The connection may already be refused (`ERR exhausted`): a failed write is fine.
    let _ = write.write_all(sent).await;
    let mut replies = Vec::new();
    let deadline = tokio::time::Instant::now() + START_LIMIT;
    loop {
        // Commands are answered at once; work only within the window.
        let until = if replies.len() < 3 {
            deadline
        } else {
            tokio::time::Instant::now() + REPLY_WINDOW
        };
        let mut line = String::new();
        match tokio::time::timeout_at(until, read.read_line(&mut line)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(_)) => replies.push(line),
            // A proxied client whose upstream cannot be reached is closed without a byte
            // (SPEC §8), unread input and all: a reset. The line protocol always lingers.
            Ok(Err(e)) if proxy && e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Ok(Err(e)) => return Err(format!("read: {e} (proxy mode: {proxy})")),
        }
        if replies.len() == 6 {
            break;
        }
    }
    if proxy {
        // The echo upstream sends our bytes back; a refused upstream closes.
        let got: String = replies.concat();
        if !got.is_empty() && !String::from_utf8_lossy(sent).starts_with(&got) {
            return Err(format!("proxied bytes garbled: {got:?}"));
        }
    } else {
        check_replies(&replies)?;
    }
    drop((read, write));
    let t1 = Instant::now();
    tokio::time::timeout(STOP_LIMIT, server.shutdown(Duration::from_millis(20)))
        .await
        .map_err(|_| format!("shutdown took over {STOP_LIMIT:?}"))?;
    if t1.elapsed() > STOP_LIMIT {
        return Err(format!("shutdown took {:?}", t1.elapsed()));
    }
    Ok(())
}

/// Simulated mode: `PONG`, the `INFO` line, the `STATS` line, then work replies — or an
/// `ERR` that closes the connection at any point.
fn check_replies(replies: &[String]) -> Result<(), String> {
    let expected = ["PONG\n", "OK machine=", "[", "OK m", "OK m", "OK m"];
    for (i, reply) in replies.iter().enumerate() {
        if reply.starts_with("ERR ") {
            // Refused (exhausted), a work line failed (busy), a tiny `max_line_bytes`
            // (too-long) or `idle_timeout` (timeout): one line, a code of SPEC §4, a text.
            let code = reply.split(' ').nth(1).unwrap_or("");
            let codes = [
                "exhausted",
                "overloaded",
                "busy",
                "too-long",
                "shutting-down",
                "timeout",
            ];
            if !codes.contains(&code) || reply.split(' ').count() < 3 {
                return Err(format!("unexpected error reply {reply:?} in {replies:?}"));
            }
            continue;
        }
        if !reply.starts_with(expected[i]) || !reply.ends_with('\n') {
            return Err(format!("reply {i} is {reply:?}; all: {replies:?}"));
        }
    }
    if replies.is_empty() {
        return Err("no reply at all".to_string());
    }
    Ok(())
}

/// A value for `path` that is mostly within the bounds of `validate.rs`, often right at
/// them (the largest duration, capacity, weight, queue, line, machine count …), so that
/// many texts are accepted and start daemons at the edges of what `check` allows. With
/// `extreme`, whole numbers are always one of their edges, half the time the largest (the
/// edges are listed in increasing order): extremes that only hurt together (many boot
/// machines need `min_machines`, `max_machines` and a pool all large) then meet often
/// enough to be found.
fn in_range(path: &str, kind: Kind, extreme: bool) -> BoxedStrategy<String> {
    let int = |small: std::ops::RangeInclusive<u64>, edges: &'static [&'static str]| {
        if extreme {
            // The largest edge (last) half the time, so that large values meet.
            let largest = edges[edges.len() - 1];
            return prop_oneof![Just(largest.to_string()), pick(edges)].boxed();
        }
        prop_oneof![
            3 => small.prop_map(|n| n.to_string()),
            1 => pick(edges),
        ]
        .boxed()
    };
    match (path, kind) {
        ("listener.max_connections", _) => int(1..=100, &["1", "1000000"]),
        ("listener.max_line_bytes", _) => int(1..=64, &["1", "67108864"]),
        ("machines.queue_depth", _) => int(1..=64, &["1", "1048576"]),
        ("autoscaler.min_machines", _) => int(0..=4, &["0", "64", "1024", "1025", "100000"]),
        ("autoscaler.max_machines", _) => int(
            1..=32,
            &["1", "1024", "1025", "100000", "18446744073709551615"],
        ),
        ("load.requests.service_ms_per_unit", _) => pick(&[
            "0", "0.0", "1e-9", "5e-324", "0.01", "1", "2.5", "60000", "60000.0",
        ]),
        (_, Kind::Weight) => int(0..=20, &["0", "1000000000"]),
        (_, Kind::Capacity) => int(1..=500, &["1", "1000000000"]),
        (_, Kind::Pool) => int(0..=8, &["0", "1024", "100000", "4294967295"]),
        (_, Kind::Seed) => int(0..=3, &["9223372036854775807"]),
        ("load.connection_min", _) => prop_oneof![
            3 => (0.0f64..5.0).prop_map(|v| format!("{v:?}")),
            1 => pick(&["0.0", "1.0", "5e-324", "1000000000.0"]),
        ]
        .boxed(),
        ("load.connection_max", _) => prop_oneof![
            3 => (5.0f64..20.0).prop_map(|v| format!("{v:?}")),
            1 => pick(&["0.0", "5.0", "1000000000.0"]),
        ]
        .boxed(),
        ("autoscaler.scale_up_threshold", _) => prop_oneof![
            3 => (50.0f64..=100.0).prop_map(|v| format!("{v:?}")),
            1 => pick(&["100.0", "5e-324", "20.000000000000004"]),
        ]
        .boxed(),
        ("autoscaler.scale_down_threshold", _) => prop_oneof![
            3 => (0.0f64..50.0).prop_map(|v| format!("{v:?}")),
            1 => pick(&["0.0", "-0.0", "99.99999999999999"]),
        ]
        .boxed(),
        ("dispatcher.strategy", _) => pick(&[
            "\"round-robin\"",
            "\"random\"",
            "\"least-connections\"",
            "\"least-load\"",
            "\"power-of-two\"",
            "\"consistent-hash\"",
        ]),
        (_, Kind::Class) => pick(&["\"small\"", "\"medium\"", "\"large\""]),
        (_, Kind::Size) => pick(&["\"small\"", "\"medium\"", "\"large\"", "\"xlarge\""]),
        (_, Kind::Upstreams) => prop::collection::vec(
            prop::sample::select(
                &[
                    "",
                    "",
                    ", size = \"small\"",
                    ", size = \"large\"",
                    ", size = \"xlarge\"",
                ][..],
            ),
            1..4,
        )
        .prop_map(|sizes| {
            let entries: Vec<String> = sizes
                .iter()
                .map(|s| format!("{{ address = {ECHO}{s} }}"))
                .collect();
            format!("[{}]", entries.join(", "))
        })
        .boxed(),
        (_, Kind::Duration) => prop_oneof![
            3 => (0u64..1000, prop::sample::select(&["ns", "us", "ms", "s", "m"][..]))
                .prop_map(|(n, u)| format!("\"{n}{u}\"")),
            1 => pick(&["\"0s\"", "\"1ns\"", "\"365d\"", "\"8760h\"", "\"1h 1m 1s 1ms\""]),
        ]
        .boxed(),
        (_, Kind::Mode) => pick(&["\"simulated\"", "\"proxy\""]),
        (_, Kind::Sizes) => prop::collection::vec(
            prop::sample::select(&["\"small\"", "\"medium\"", "\"large\"", "\"xlarge\""][..]),
            0..3,
        )
        .prop_map(|v| format!("[{}]", v.join(", ")))
        .boxed(),
        _ => plausible(kind),
    }
}

/// Many keys at once (a quarter of the texts `extreme`, with more keys); the strategy of
/// [`every_accepted_config_starts`].
fn many_values() -> impl Strategy<Value = Vec<Option<String>>> {
    prop::bool::weighted(0.25).prop_flat_map(|extreme| {
        KEYS.iter()
            .filter(|(_, kind)| !matches!(kind, Kind::Table | Kind::Unknown))
            .map(|&(path, kind)| {
                // Upstreams often, so that `mode = "proxy"` is often accepted.
                let present = match (kind, extreme) {
                    (Kind::Upstreams, _) => 0.9,
                    (_, true) => 0.7,
                    (_, false) => 0.3,
                };
                prop::option::weighted(
                    present,
                    prop_oneof![
                        40 => in_range(path, kind, extreme),
                        2 => plausible(kind),
                        1 => hostile(),
                    ],
                )
                .boxed()
            })
            .collect::<Vec<_>>()
    })
}

/// Run by hand rather than with `proptest!` so that it can say how many daemons it started.
#[test]
fn every_accepted_config_starts() {
    on_test_thread();
    let (rt, echo) = runtime();
    // A failing start-up may take minutes: bound the shrinking too.
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        max_shrink_time: 30_000,
        ..config(128)
    });
    let (rejected, started, proxied) = (Cell::new(0), Cell::new(0), Cell::new(0));
    let result = runner.run(&many_values(), |values| {
        let text = render_many(&values).replace(ECHO, &format!("\"{echo}\""));
        match Config::from_toml(&text, "props.toml") {
            Err(e) => {
                let msg = message(&e)?;
                prop_assert!(
                    KEYS.iter().any(|(path, _)| msg.contains(path)),
                    "{msg:?} names no key; text:\n{text}"
                );
                rejected.set(rejected.get() + 1);
            }
            Ok(config) => {
                let proxy = config.backend.mode == BackendMode::Proxy;
                let before = PANICS.load(Ordering::SeqCst);
                let outcome = rt.block_on(exercise(config));
                let panics = PANICS.load(Ordering::SeqCst) - before;
                prop_assert_eq!(panics, 0, "a task panicked; text:\n{}", text);
                outcome.map_err(|e| TestCaseError::fail(format!("{e}; text:\n{text}")))?;
                started.set(started.get() + 1);
                proxied.set(proxied.get() + usize::from(proxy));
            }
        }
        Ok(())
    });
    // Counted over every case run, shrinking included.
    let (rejected, started, proxied) = (rejected.get(), started.get(), proxied.get());
    eprintln!(
        "every_accepted_config_starts: {started} daemons started ({proxied} in proxy mode), \
         {rejected} texts rejected"
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(started > 0, "no accepted configuration among the cases");
}

/// Regression (fixed by `MAX_MACHINES`): `max_machines` had no bound, and 100,000 boot
/// machines took two minutes to start. Found while writing `every_accepted_config_starts`
/// (whose `extreme` profile now fails within a run or two when the bound is removed); here
/// the largest count `check` accepts, all started at boot, comes up promptly.
#[test]
fn the_most_boot_machines_start_promptly() {
    on_test_thread();
    let (rt, _) = runtime();
    let text = "[autoscaler]\nmin_machines = 1024\nmax_machines = 1024\n\
                [pool]\nsmall = 4294967295\n[admin]\naddress = \"off\"\n";
    let config = Config::from_toml(text, "props.toml").expect("accepted");
    rt.block_on(exercise(config))
        .expect("starts, answers, stops");
    let rejected = Config::from_toml(&text.replace("1024", "1025"), "props.toml");
    assert!(rejected.is_err(), "1025 machines are past the bound");
}
