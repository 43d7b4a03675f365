//! The admin endpoint (SPEC §6) and the `stats` command (SPEC §2): exact JSON keys,
//! Prometheus exposition, run-time strategy switch, dashboard, and the promise that the
//! admin side never blocks (nor is blocked by) the request path.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::{start_lb, test_config, within, Lb};
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_elastic-lb");

/// The answer to one admin request.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    content_type: String,
    body: String,
}

/// One HTTP/1.1 request over a fresh connection, bounded by `common::TIMEOUT`.
async fn request(addr: SocketAddr, method: Method, path: &str, body: &str) -> Answer {
    within(&format!("{method} {path}"), async {
        let stream = TcpStream::connect(addr).await.expect("connect to admin");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP handshake");
        tokio::spawn(conn);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, addr.to_string())
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("request");
        let response = sender.send_request(request).await.expect("response");
        let status = response.status();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        Answer {
            status,
            content_type,
            body: String::from_utf8(body.to_vec()).expect("UTF-8 body"),
        }
    })
    .await
}

async fn get(addr: SocketAddr, path: &str) -> Answer {
    request(addr, Method::GET, path, "").await
}

async fn put_strategy(addr: SocketAddr, body: &str) -> (StatusCode, Value) {
    let answer = request(addr, Method::PUT, "/api/strategy", body).await;
    assert!(
        answer.content_type.starts_with("application/json"),
        "PUT /api/strategy {body:?} answered {answer:?}"
    );
    let json = serde_json::from_str(&answer.body)
        .unwrap_or_else(|e| panic!("PUT /api/strategy {body:?}: not JSON ({e}): {answer:?}"));
    (answer.status, json)
}

fn keys(value: &Value) -> BTreeSet<&str> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("expected a JSON object, got {value}"))
        .keys()
        .map(String::as_str)
        .collect()
}

fn set<'a>(names: &[&'a str]) -> BTreeSet<&'a str> {
    names.iter().copied().collect()
}

/// A balancer with two machines (a medium and a small one) and some traffic on them.
async fn two_machines() -> Lb {
    let mut cfg = test_config();
    cfg.autoscaler.initial = vec![
        elastic_lb::core::Size::Medium,
        elastic_lb::core::Size::Small,
    ];
    start_lb(cfg).await
}

#[tokio::test]
async fn stats_json_has_exactly_the_spec_keys() {
    let lb = two_machines().await;
    let mut client = lb.admitted().await;
    client.send("MEDIUM hello").await;
    assert!(client.line().await.starts_with("OK "));

    let answer = get(lb.admin, "/api/stats").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.content_type.starts_with("application/json"));
    let stats: Value = serde_json::from_str(&answer.body).expect("JSON");

    // SPEC §6 keys, plus the documented extras (never renamed, only added).
    let spec = set(&["strategy", "avg_load", "machines", "pool", "totals"]);
    let extras = set(&[
        "events",
        "autoscaler",
        "pool_size",
        "load_model",
        "reserved",
        "queued_connections",
    ]);
    assert_eq!(keys(&stats), &spec | &extras);
    assert!(stats["strategy"].is_string());
    assert!(stats["avg_load"].is_number());

    let machines = stats["machines"].as_array().expect("machines array");
    assert_eq!(machines.len(), 2);
    let machine_keys = set(&[
        "name",
        "size",
        "capacity",
        "used",
        "load",
        "connections",
        "queued",
        "state",
    ]);
    for m in machines {
        assert_eq!(keys(m), machine_keys, "{m}");
        for k in ["capacity", "used", "load", "connections", "queued"] {
            assert!(m[k].is_number(), "{k} in {m}");
        }
        assert_eq!(m["state"], "active");
    }
    assert_eq!(machines[0]["name"], "m1");
    assert_eq!(machines[1]["size"], "small");

    assert_eq!(
        keys(&stats["pool"]),
        set(&["small", "medium", "large", "xlarge"])
    );
    assert_eq!(keys(&stats["pool_size"]), keys(&stats["pool"]));
    let totals = set(&[
        "connections_admitted",
        "connections_rejected",
        "connections_open",
        "requests_ok",
        "requests_failed",
        "weighted_ok",
        "weighted_failed",
        "scale_ups",
        "scale_downs",
    ]);
    assert_eq!(keys(&stats["totals"]), totals);
    assert_eq!(stats["totals"]["requests_ok"], 1);
    assert_eq!(stats["totals"]["connections_open"], 1);
    assert_eq!(
        keys(&stats["autoscaler"]),
        set(&[
            "scale_up_threshold",
            "scale_down_threshold",
            "min_machines",
            "max_machines"
        ])
    );
    assert_eq!(stats["autoscaler"]["scale_up_threshold"], 50.0);
    assert_eq!(
        keys(&stats["load_model"]),
        set(&[
            "service_ms_per_unit",
            "requests",
            "connection_min",
            "connection_max"
        ])
    );
    assert_eq!(
        keys(&stats["load_model"]["requests"]),
        set(&["small", "medium", "large"])
    );
    assert_eq!(stats["load_model"]["requests"]["medium"], 5);
    // One open connection: its reservation is all of `used` once its request is answered.
    let used: f64 = machines.iter().map(|m| m["used"].as_f64().unwrap()).sum();
    let reserved = stats["reserved"].as_f64().expect("reserved is a number");
    assert!(reserved > 0.0 && (reserved - used).abs() < 1e-9, "{stats}");
}

#[tokio::test]
async fn metrics_have_help_type_and_a_series_per_machine() {
    let lb = two_machines().await;
    let _client = lb.admitted().await;
    let stats = lb.http_stats().await;

    let answer = get(lb.admin, "/metrics").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(
        answer.content_type.starts_with("text/plain; version=0.0.4"),
        "content type {:?}",
        answer.content_type
    );
    let text = answer.body;

    let mut helped = BTreeSet::new();
    let mut typed = std::collections::BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().expect("name");
            assert!(helped.insert(name.to_string()), "HELP twice for {name}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (name, kind) = (parts.next().expect("name"), parts.next().expect("type"));
            // Histograms arrived with SPEC §9 (request and connection latency).
            assert!(matches!(kind, "gauge" | "counter" | "histogram"), "{line}");
            typed.insert(name.to_string(), kind.to_string());
        } else {
            assert!(line.starts_with("elastic_lb_"), "unprefixed sample: {line}");
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            value
                .parse::<f64>()
                .unwrap_or_else(|e| panic!("bad value in {line:?}: {e}"));
            let name = series.split('{').next().expect("name");
            // A histogram's samples are <name>_bucket, <name>_sum and <name>_count.
            let name = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    let base = name.strip_suffix(suffix)?;
                    (typed.get(base).map(String::as_str) == Some("histogram")).then_some(base)
                })
                .unwrap_or(name);
            assert!(helped.contains(name), "sample before its HELP: {line}");
            assert!(typed.contains_key(name), "sample before its TYPE: {line}");
        }
    }
    for (name, kind) in &typed {
        assert_eq!(
            name.ends_with("_total"),
            kind == "counter",
            "{name} is a {kind}: counters and only counters end in _total"
        );
    }
    for name in [
        "elastic_lb_machine_load_percent",
        "elastic_lb_machine_used_units",
        "elastic_lb_machine_capacity_units",
        "elastic_lb_machine_connections",
        "elastic_lb_machine_queued",
        "elastic_lb_avg_load_percent",
        "elastic_lb_pool_free",
        "elastic_lb_connections_open",
        "elastic_lb_connections_admitted_total",
        "elastic_lb_connections_rejected_total",
        "elastic_lb_requests_ok_total",
        "elastic_lb_requests_failed_total",
        "elastic_lb_scale_ups_total",
        "elastic_lb_scale_downs_total",
        "elastic_lb_strategy_info",
    ] {
        assert!(typed.contains_key(name), "missing {name} in\n{text}");
    }
    assert_eq!(stats.machines.len(), 2);
    for m in &stats.machines {
        for metric in [
            "machine_load_percent",
            "machine_used_units",
            "machine_connections",
        ] {
            let series = format!(
                "elastic_lb_{metric}{{machine=\"{}\",size=\"{}\",state=\"active\"}} ",
                m.name, m.size
            );
            assert!(text.contains(&series), "missing {series} in\n{text}");
        }
    }
    assert!(text.contains("elastic_lb_connections_open 1\n"), "{text}");
    assert!(
        text.contains("elastic_lb_pool_free{size=\"medium\"} 7\n"),
        "{text}"
    );
    assert!(
        text.contains("elastic_lb_strategy_info{strategy=\"least-connections\"} 1\n"),
        "{text}"
    );
}

#[tokio::test]
async fn put_strategy_switches_before_answering_and_rejects_bad_bodies() {
    let lb = start_lb(test_config()).await;

    let (status, body) = put_strategy(lb.admin, r#"{"strategy": "round-robin"}"#).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, serde_json::json!({"strategy": "round-robin"}));
    // No polling: the switch is in force once the 200 is out.
    assert_eq!(lb.http_stats().await.strategy, "round-robin");
    let answer = get(lb.admin, "/api/strategy").await;
    assert_eq!(answer.body, r#"{"strategy":"round-robin"}"#);

    for bad in [
        r#"{"strategy": "fastest"}"#,
        r#"{"strategy": "#,
        "not json at all",
        "",
        r#"{"name": "random"}"#,
        r#"{"strategy": 3}"#,
        // Not the named form, or with a field that is not part of it.
        r#"["random"]"#,
        r#"{"strategy": "random", "x": 1}"#,
    ] {
        let (status, body) = put_strategy(lb.admin, bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:?} → {body}");
        assert_eq!(keys(&body), set(&["error"]), "{bad:?} → {body}");
        assert!(body["error"].is_string());
    }
    let (_, body) = put_strategy(lb.admin, r#"{"strategy": "fastest"}"#).await;
    let error = body["error"].as_str().expect("error message");
    assert!(
        error.contains("fastest") && error.contains("round-robin"),
        "{error}"
    );
    // A refused switch changes nothing.
    assert_eq!(lb.http_stats().await.strategy, "round-robin");

    let (status, _) = put_strategy(lb.admin, r#"{"strategy": "consistent-hash"}"#).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(lb.http_stats().await.strategy, "consistent-hash");
}

/// Unknown paths and wrong methods answer like every other admin error: `{"error": …}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_and_methods_answer_with_a_json_error() {
    let lb = start_lb(test_config()).await;
    for (method, path, status) in [
        (Method::GET, "/api/nothing", StatusCode::NOT_FOUND),
        (Method::DELETE, "/api/upstreams/", StatusCode::NOT_FOUND),
        (Method::POST, "/api/stats", StatusCode::METHOD_NOT_ALLOWED),
        (
            Method::GET,
            "/api/upstreams/127.0.0.1:9",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ] {
        let answer = request(lb.admin, method.clone(), path, "").await;
        assert_eq!(answer.status, status, "{method} {path}: {answer:?}");
        assert_eq!(answer.content_type, "application/json", "{method} {path}");
        let body: Value = serde_json::from_str(&answer.body).expect("JSON body");
        assert!(
            body["error"].as_str().is_some_and(|e| e.contains(path)),
            "{method} {path}: {body}"
        );
    }
}

#[tokio::test]
async fn dashboard_is_an_html_page_that_polls_the_stats() {
    let lb = start_lb(test_config()).await;
    let answer = get(lb.admin, "/").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(
        answer.content_type.starts_with("text/html"),
        "{:?}",
        answer.content_type
    );
    let page = answer.body;
    assert!(page.starts_with("<!doctype html>"));
    assert!(page.contains("fetch(\"/api/stats\""), "polls /api/stats");
    assert!(page.contains("setTimeout(poll"), "refreshes itself");
    assert!(page.contains("machine-bar"), "draws machine bars");
    // Self-contained: nothing is loaded from elsewhere.
    for external in ["src=\"http", "href=\"http", "url(http", "<link", "@import"] {
        assert!(
            !page.contains(external),
            "loads something external: {external}"
        );
    }
}

/// 20 connections pipeline requests in a loop for 1.5 s while the test polls `/api/stats`
/// and `/metrics`: every admin answer must arrive within 2 s and be well-formed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_answers_promptly_while_clients_pipeline() {
    let mut cfg = test_config();
    cfg.load.requests.service_ms_per_unit = 0.05;
    let lb = start_lb(cfg).await;
    let end = Instant::now() + Duration::from_millis(1500);

    let mut workers = Vec::new();
    for i in 0..20 {
        let mut client = lb.connect().await;
        workers.push(tokio::spawn(async move {
            let mut answered = 0u64;
            while Instant::now() < end {
                let mut batch = String::new();
                for j in 0..16 {
                    batch.push_str(&format!("SMALL c{i}-{j}\n"));
                }
                client.send_raw(batch.as_bytes()).await;
                for _ in 0..16 {
                    let reply = client.line().await;
                    assert!(
                        reply.starts_with("OK ") || reply.starts_with("ERR busy"),
                        "{reply}"
                    );
                    answered += 1;
                }
            }
            answered
        }));
    }

    let bound = Duration::from_secs(2);
    let mut polls = 0;
    let mut last_ok = 0;
    while Instant::now() < end {
        let started = Instant::now();
        let stats = timeout(bound, get(lb.admin, "/api/stats"))
            .await
            .expect("/api/stats answered within 2 s");
        assert_eq!(stats.status, StatusCode::OK);
        let stats: elastic_lb::telemetry::Snapshot =
            serde_json::from_str(&stats.body).expect("well-formed /api/stats");
        assert!(!stats.machines.is_empty());
        assert!(
            stats.totals.requests_ok >= last_ok,
            "counters never go back"
        );
        last_ok = stats.totals.requests_ok;

        let metrics = timeout(bound, get(lb.admin, "/metrics"))
            .await
            .expect("/metrics answered within 2 s");
        assert_eq!(metrics.status, StatusCode::OK);
        assert!(metrics
            .body
            .contains("# TYPE elastic_lb_avg_load_percent gauge"));
        assert!(metrics.body.ends_with('\n'));
        assert!(started.elapsed() < bound);
        polls += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut answered = 0;
    for w in workers {
        answered += within("worker", w).await.expect("worker ok");
    }
    assert!(polls >= 5, "only {polls} admin polls in 1.5 s");
    assert!(
        answered > 20 * 16,
        "clients made progress ({answered} replies)"
    );
    lb.wait_stats("every answered request is counted", |s| {
        s.totals.requests_ok + s.totals.requests_failed == answered
    })
    .await;
}

/// `elastic-lb stats --admin ADDR`, run off the test's runtime.
async fn stats(admin: &str) -> std::process::Output {
    let admin = admin.to_string();
    tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["stats", "--admin", &admin])
            .stdin(Stdio::null())
            .output()
            .expect("run elastic-lb stats")
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_command_prints_a_table_or_one_clear_error_line() {
    let lb = two_machines().await;
    let _client = lb.admitted().await;
    let output = stats(&lb.admin.to_string()).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(
        stdout.contains("MACHINE") && stdout.contains("LOAD %"),
        "{stdout}"
    );
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("m1 ") || l.starts_with("m2 "))
        .collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    assert!(
        rows[1].contains("small") && rows[1].contains("active"),
        "{stdout}"
    );
    assert!(stdout.contains("strategy least-connections"), "{stdout}");
    assert!(stdout.contains("1 open"), "{stdout}");

    // Nothing listens on a port we just released.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .to_string();
    let output = stats(&closed).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(output.stdout.is_empty(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("cannot reach the admin endpoint at {closed}: "))
            && stderr.contains("(is elastic-lb running? is the admin endpoint enabled?)"),
        "{stderr}"
    );

    // The balancer's own listener answers lines, not HTTP: the error says which port to use.
    let output = stats(&lb.addr.to_string()).await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("not HTTP: is this the admin address")
            && !stderr.contains("is elastic-lb running?"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_build_info_and_latency_histograms() {
    let lb = start_lb(test_config()).await;
    let mut c = lb.admitted().await;
    for i in 0..5 {
        c.send(&format!("SMALL {i}")).await;
        c.line().await;
    }
    c.send("LARGE x").await;
    c.line().await;
    c.send("QUIT").await;
    c.line().await;
    drop(c);
    lb.wait_stats("the connection closed", |s| s.totals.connections_open == 0)
        .await;
    let text = get(lb.admin, "/metrics").await.body;
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    };
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        value(&format!("elastic_lb_build_info{{version=\"{version}\"}}")),
        1.0
    );
    let small = "elastic_lb_request_duration_seconds";
    assert_eq!(value(&format!("{small}_count{{class=\"small\"}}")), 5.0);
    assert_eq!(value(&format!("{small}_count{{class=\"large\"}}")), 1.0);
    assert_eq!(
        value(&format!("{small}_bucket{{class=\"small\",le=\"+Inf\"}}")),
        5.0
    );
    assert_eq!(value(&format!("{small}_count{{class=\"medium\"}}")), 0.0);
    assert!(text.contains("# TYPE elastic_lb_request_duration_seconds histogram"));
    assert_eq!(value("elastic_lb_connection_duration_seconds_count"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_events_carry_the_average_before_and_after() {
    let mut cfg = common::fixed_reservation(10.0);
    cfg.autoscaler.rebalance_tolerance = 0.0;
    let lb = start_lb(cfg).await;
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(lb.admitted().await);
    }
    let body: Value = serde_json::from_str(&get(lb.admin, "/api/stats").await.body).expect("JSON");
    let event = &body["events"][0];
    assert_eq!(event["kind"], "up", "{body:#}");
    // Six reservations of 10 on one capacity-100 machine, then on two.
    assert_eq!(event["avg_before"], 60.0, "{body:#}");
    assert_eq!(event["avg_after"], 30.0, "{body:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_never_mix_two_configurations_during_reloads() {
    use elastic_lb::core::StrategyKind;
    let mut a = test_config();
    a.dispatcher.strategy = StrategyKind::RoundRobin;
    a.autoscaler.scale_up_threshold = 50.0;
    let mut b = a.clone();
    b.dispatcher.strategy = StrategyKind::Random;
    b.autoscaler.scale_up_threshold = 60.0;
    let lb = start_lb(a.clone()).await;
    let admin = lb.admin;
    let sampler = tokio::spawn(async move {
        let mut seen = Vec::new();
        for _ in 0..300 {
            let body: Value =
                serde_json::from_str(&get(admin, "/api/stats").await.body).expect("JSON");
            seen.push((
                body["strategy"].as_str().expect("strategy").to_string(),
                body["autoscaler"]["scale_up_threshold"]
                    .as_f64()
                    .expect("threshold"),
            ));
        }
        seen
    });
    // Reload back and forth for as long as the sampler runs (bounded).
    for i in 0..20_000 {
        if sampler.is_finished() {
            break;
        }
        let cfg = if i % 2 == 0 { b.clone() } else { a.clone() };
        lb.server.reload(cfg).await;
        tokio::task::yield_now().await;
    }
    let seen = sampler.await.expect("sampler");
    for (strategy, threshold) in &seen {
        assert!(
            (strategy == "round-robin" && *threshold == 50.0)
                || (strategy == "random" && *threshold == 60.0),
            "a mix of two configurations: {strategy} with {threshold}"
        );
    }
}
