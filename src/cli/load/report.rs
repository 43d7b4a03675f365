//! The outcome of a run: [`Summary`] (what `--json` prints) and its text form.

use std::collections::BTreeMap;

use serde::Serialize;

use super::elasticity::ElasticityReport;
use super::plan::Mode;

/// Latency of successful requests, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
#[allow(missing_docs)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// `OK` replies from one machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MachineShare {
    /// `m1`, `m2`, …
    pub machine: String,
    /// Successful requests it answered.
    pub ok: u64,
}

/// The outcome of a run.
///
/// Invariant: `requests_sent = requests_ok + requests_failed`, and `requests_failed` is the
/// sum of `errors`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Target address.
    pub target: String,
    /// `closed-loop`, `open-loop`, `profiled-open-loop`, `connect-per-request` or `idle`.
    pub mode: &'static str,
    /// Workers.
    pub connections: usize,
    /// Measured length of the load phase, seconds.
    pub duration_s: f64,
    /// Requests written.
    pub requests_sent: u64,
    /// Requests answered `OK`.
    pub requests_ok: u64,
    /// Requests that failed (an `ERR` reply, an I/O error, no reply).
    pub requests_failed: u64,
    /// `requests_ok / duration_s`.
    pub requests_per_s: f64,
    /// Open loop: scheduled sends skipped because a connection owed too many replies.
    pub sends_skipped: u64,
    /// Connections established (TCP) during the run.
    pub connections_opened: u64,
    /// Connections the balancer refused (`exhausted`, `overloaded`) or that failed to
    /// connect (`connect`), by code.
    pub connections_refused: BTreeMap<String, u64>,
    /// Connect-per-request: completed connect-request-close cycles per second.
    pub connections_per_s: f64,
    /// Latency of `OK` replies (connect-per-request: the whole cycle).
    pub latency_ms: Latency,
    /// Failed requests by code: the `ERR` code, or `io`, `closed` (EOF), `no-reply`,
    /// `unexpected`.
    pub errors: BTreeMap<String, u64>,
    /// `OK` replies per machine, in machine order.
    pub machines: Vec<MachineShare>,
    /// `--profile` runs: the elasticity metrics (docs/elasticity.md); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub elasticity: Option<ElasticityReport>,
}

/// The human-readable summary (what `elastic-lb load` prints without `--json`).
pub fn render_summary(s: &Summary) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "target      {} ({}, {} connections, {:.1} s)",
        s.target, s.mode, s.connections, s.duration_s
    );
    let _ = writeln!(
        out,
        "requests    {} sent, {} ok, {} failed — {:.0} ok/s",
        s.requests_sent, s.requests_ok, s.requests_failed, s.requests_per_s
    );
    if s.mode == Mode::ConnectPerRequest.name() {
        let _ = writeln!(out, "conn rate   {:.0} connections/s", s.connections_per_s);
    }
    if s.sends_skipped > 0 {
        let _ = writeln!(
            out,
            "skipped     {} scheduled sends (too many replies owed)",
            s.sends_skipped
        );
    }
    let l = &s.latency_ms;
    let _ = writeln!(
        out,
        "latency     p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
        l.p50, l.p90, l.p99, l.max
    );
    let _ = writeln!(out, "errors      {}", counts(&s.errors));
    let _ = writeln!(
        out,
        "connections {} opened, refused: {}",
        s.connections_opened,
        counts(&s.connections_refused)
    );
    if !s.machines.is_empty() {
        let _ = writeln!(out, "per machine (OK replies):");
        let top = s.machines.iter().map(|m| m.ok).max().unwrap_or(1).max(1);
        for m in &s.machines {
            let share = 100.0 * m.ok as f64 / s.requests_ok.max(1) as f64;
            let bar = "#".repeat(((40 * m.ok).div_ceil(top)) as usize);
            let _ = writeln!(out, "  {:>5} {:>10} {:>5.1}% {bar}", m.machine, m.ok, share);
        }
    }
    if let Some(e) = &s.elasticity {
        render_elasticity(&mut out, e);
    }
    out
}

/// The elasticity block of a profiled run (formulas in docs/elasticity.md).
fn render_elasticity(out: &mut String, e: &ElasticityReport) {
    use std::fmt::Write as _;
    let m = &e.metrics;
    let _ = writeln!(
        out,
        "elasticity  profile {}, peak {:.0} req/s; demand = 100 × (reserved + {:.2} × {} ms × rate / 10) / {} %",
        e.profile, e.peak_rps, e.mean_weight, e.service_ms_per_unit, e.threshold
    );
    let _ = writeln!(
        out,
        "            θU {:.1} %  θO {:.1} %  τU {:.1} %  τO {:.1} %  instability {:.2}/min ({} of {} supply changes unmatched)",
        m.theta_u,
        m.theta_o,
        m.tau_u,
        m.tau_o,
        m.instability_per_min,
        m.unmatched_changes,
        m.supply_changes
    );
    let _ = writeln!(
        out,
        "            scale events {} ({} up, {} down), failed {}, p99 {:.3} ms; mean demand {:.0}, mean supply {:.0} units ({} samples, {:.1} s)",
        e.scale_events,
        e.scale_ups,
        e.scale_downs,
        e.requests_failed,
        e.p99_ms,
        m.mean_demand,
        m.mean_supply,
        e.samples,
        m.covered_s
    );
}

fn counts(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "none".to_string();
    }
    map.iter()
        .map(|(code, n)| format!("{code}={n}"))
        .collect::<Vec<_>>()
        .join(" ")
}
