//! `elastic-lb load --profile` (SPEC §9): a profiled open loop against an in-process
//! balancer sends what the profile offers and reports the elasticity metrics; a bad CSV
//! profile is one error line naming the line.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{fixed_reservation, start_lb, within};
use elastic_lb::cli::load::{self as loadgen, LoadPlan, Mode, RateCurve, Shape};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiled_run_follows_the_curve_and_reports_elasticity() {
    let mut cfg = fixed_reservation(5.0);
    cfg.load.requests.service_ms_per_unit = 1.0;
    let lb = start_lb(cfg).await;
    let duration = Duration::from_secs(2);
    let curve = Shape::Step.curve(duration.as_secs_f64(), 400.0);
    let offered = curve.offered_by(duration.as_secs_f64());
    let plan = LoadPlan {
        mode: Mode::Profiled {
            name: "step".to_string(),
            curve: Arc::new(curve),
        },
        ..LoadPlan::closed_loop(lb.addr, 4, duration)
    };
    let summary = within(
        "a 2 s profiled run",
        loadgen::generate_sampled(&plan, lb.admin),
    )
    .await
    .expect("the balancer is reachable");

    assert_eq!(summary.mode, "profiled-open-loop");
    assert_eq!(
        summary.requests_sent,
        summary.requests_ok + summary.requests_failed,
        "{summary:#?}"
    );
    // 0.2 × 400 for 1.2 s and 400 for 0.8 s: 416 requests, give or take one a connection.
    assert!((offered - 416.0).abs() < 1e-6, "{offered}");
    let sent = summary.requests_sent as f64;
    assert!(
        (sent - offered).abs() <= 4.0,
        "sent {sent}, offered {offered}"
    );

    let e = summary
        .elasticity
        .expect("a profiled run reports elasticity");
    assert_eq!(e.profile, "step");
    assert_eq!(e.peak_rps, 400.0);
    assert_eq!(e.threshold, 50.0);
    assert_eq!((e.mean_weight, e.service_ms_per_unit), (1.0, 1.0));
    assert!(e.samples >= 6, "{e:#?}");
    let m = e.metrics;
    // From the first sample to the end of the run: the first sample can come late on a
    // busy machine (one shared core, CI), never after the run or before its start.
    assert!(m.covered_s > 1.4 && m.covered_s < 2.3, "{m:?}");
    // 4 connections hold 20 units; at the peak the work keeps 40 busy: demand up to 120.
    assert!(m.mean_demand > 40.0 && m.mean_demand < 121.0, "{m:?}");
    // A time-weighted mean of a constant 100: equal up to rounding.
    assert!(m.mean_supply >= 100.0 - 1e-6, "{m:?}");
    for pct in [m.theta_u, m.tau_u, m.tau_o] {
        assert!((0.0..=100.0).contains(&pct), "{m:?}");
    }
    assert!(m.tau_u + m.tau_o <= 100.0 + 1e-9, "{m:?}");
    assert_eq!(e.requests_failed, summary.requests_failed);
    assert_eq!(e.scale_events, e.scale_ups + e.scale_downs);
}

#[test]
fn a_bad_csv_profile_is_one_line_naming_the_line() {
    let dir = std::env::temp_dir().join(format!("elastic-lb-profile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let csv = dir.join("trace.csv");
    std::fs::write(&csv, "seconds,requests_per_second\n0,100\n5,lots\n").expect("write csv");
    let out = Command::new(env!("CARGO_BIN_EXE_elastic-lb"))
        .args(["load", "--target", "127.0.0.1:9", "--profile"])
        .arg(&csv)
        .stdin(Stdio::null())
        .output()
        .expect("run elastic-lb load");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim_end(),
        format!(
            "error: {}:3: requests_per_second \"lots\" is not a number ≥ 0 (in \"5,lots\")",
            csv.display()
        )
    );
}

#[test]
fn constant_curve_is_the_fixed_rate_schedule() {
    // The fixed-rate open loop sends request k at k / rate; a one-point curve does too.
    let c = RateCurve::constant(400.0);
    assert_eq!(c.time_of(0.0), Some(0.0));
    assert_eq!(c.time_of(400.0), Some(1.0));
}
