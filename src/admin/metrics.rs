//! `GET /metrics`: the stats in the Prometheus text exposition format 0.0.4.
//!
//! Rendered by hand from the same [`StatsBody`] as `/api/stats` (one snapshot per scrape,
//! so all series of a scrape agree with each other), plus the latency histograms
//! ([`Latencies`]): `request_duration_seconds{class}` (queue wait + service of answered
//! requests) and `connection_duration_seconds`, and `build_info{version}`. Every name is prefixed `elastic_lb_`;
//! the process-wide totals are counters with the `_total` suffix; everything else is a
//! gauge. Per-machine series carry the labels `machine`, `size` and `state`, so a draining
//! machine shows up as a new series and a retired one disappears.

use std::fmt::Write as _;

use super::body::StatsBody;
use crate::core::{MachineState, Size};
use crate::telemetry::{HistogramSnapshot, Latencies, MachineSnapshot};

/// The `Content-Type` of the exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Reads one per-machine value.
type MachineValue = fn(&MachineSnapshot) -> f64;

const SIZES: [Size; 4] = [Size::Small, Size::Medium, Size::Large, Size::Xlarge];

/// Renders the whole exposition.
pub fn render(body: &StatsBody, latencies: &Latencies) -> String {
    let s = &body.snapshot;
    let t = &s.totals;
    let mut out = Exposition::default();

    // Per machine.
    let per_machine: [(&str, &str, MachineValue); 5] = [
        (
            "machine_load_percent",
            "Machine load: 100 * used / capacity (may pass 100 while requests pile up).",
            |m| m.load,
        ),
        (
            "machine_used_units",
            "Machine used capacity in load units: reservations plus queued request weights.",
            |m| m.used,
        ),
        (
            "machine_capacity_units",
            "Machine capacity in load units.",
            |m| m.capacity,
        ),
        (
            "machine_connections",
            "Open connections placed on the machine.",
            |m| m.connections as f64,
        ),
        (
            "machine_queued",
            "Requests queued on the machine (waiting plus the one in service).",
            |m| m.queued as f64,
        ),
    ];
    for (name, help, value) in per_machine {
        out.header(name, help, "gauge");
        for m in &s.machines {
            let labels = [
                ("machine", m.name.as_str()),
                ("size", &m.size.to_string()),
                ("state", m.state.as_str()),
            ];
            out.sample(name, &labels, value(m));
        }
    }

    out.header(
        "machines",
        "Machines by state (active machines take connections; draining ones finish theirs).",
        "gauge",
    );
    for state in [MachineState::Active, MachineState::Draining] {
        let n = s.machines.iter().filter(|m| m.state == state).count();
        out.sample("machines", &[("state", state.as_str())], n as f64);
    }

    out.gauge(
        "avg_load_percent",
        "Average load over active machines: 100 * sum(used) / sum(capacity).",
        s.avg_load,
    );
    out.gauge(
        "scale_up_threshold_percent",
        "Average load above which the autoscaler acquires machines.",
        body.autoscaler.scale_up_threshold,
    );
    out.gauge(
        "scale_down_threshold_percent",
        "Average load below which the autoscaler retires machines (after scale_down_after).",
        body.autoscaler.scale_down_threshold,
    );

    out.header(
        "pool_free",
        "Machines of each size the factory can still hand out.",
        "gauge",
    );
    for size in SIZES {
        let labels = [("size", &*size.to_string())];
        out.sample("pool_free", &labels, f64::from(s.pool.get(size)));
    }
    out.header(
        "pool_size",
        "Configured pool size per machine size.",
        "gauge",
    );
    for size in SIZES {
        let labels = [("size", &*size.to_string())];
        out.sample("pool_size", &labels, f64::from(body.pool_size.get(size)));
    }

    out.gauge(
        "connections_open",
        "Client connections currently open.",
        t.connections_open as f64,
    );
    out.gauge(
        "connections_queued",
        "Client connections waiting in the admission queue for a machine (proxy mode).",
        s.queued_connections as f64,
    );
    let counters: [(&str, &str, f64); 8] = [
        (
            "connections_admitted_total",
            "Client connections placed on a machine.",
            t.connections_admitted as f64,
        ),
        (
            "connections_rejected_total",
            "Client connections refused with ERR overloaded or ERR exhausted.",
            t.connections_rejected as f64,
        ),
        (
            "requests_ok_total",
            "Requests answered OK.",
            t.requests_ok as f64,
        ),
        (
            "requests_failed_total",
            "Requests answered with an error (busy, shutting-down, bad-request, too-long).",
            t.requests_failed as f64,
        ),
        (
            "weighted_ok_units_total",
            "Sum of the weights of successful requests, in load units.",
            t.weighted_ok,
        ),
        (
            "weighted_failed_units_total",
            "Sum of the weights of failed requests plus reservations of refused connections.",
            t.weighted_failed,
        ),
        (
            "scale_ups_total",
            "Machines acquired by the autoscaler (including on-the-spot acquisitions).",
            t.scale_ups as f64,
        ),
        (
            "scale_downs_total",
            "Machines retired.",
            t.scale_downs as f64,
        ),
    ];
    for (name, help, value) in counters {
        out.header(name, help, "counter");
        out.sample(name, &[], value);
    }

    out.header(
        "strategy_info",
        "The placement strategy in force (value always 1).",
        "gauge",
    );
    out.sample("strategy_info", &[("strategy", &s.strategy)], 1.0);

    out.header("build_info", "The running build (value always 1).", "gauge");
    out.sample("build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1.0);

    let name = "request_duration_seconds";
    out.header(
        name,
        "Time from queueing to the machine's answer (queue wait plus service), per class.",
        "histogram",
    );
    for (class, h) in latencies.requests() {
        out.histogram(name, &[("class", class.as_str())], &h);
    }
    let name = "connection_duration_seconds";
    out.header(
        name,
        "How long admitted connections stayed open.",
        "histogram",
    );
    out.histogram(name, &[], &latencies.connections());
    out.text
}

/// The text being built.
#[derive(Debug, Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn header(&mut self, name: &str, help: &str, kind: &str) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.text, "# HELP elastic_lb_{name} {help}");
        let _ = writeln!(self.text, "# TYPE elastic_lb_{name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str("elastic_lb_");
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{key}=\"{}\"", escape_label(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", format_value(value));
    }

    /// `_bucket{le}` (cumulative), `_sum` and `_count` of one histogram.
    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
        let bucket = format!("{name}_bucket");
        let bounds = h.bounds_s.iter().map(|b| format_value(*b));
        for (le, count) in bounds.chain(["+Inf".to_string()]).zip(&h.cumulative) {
            let mut with_le: Vec<(&str, &str)> = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket, &with_le, *count as f64);
        }
        self.sample(&format!("{name}_sum"), labels, h.sum_s);
        self.sample(&format!("{name}_count"), labels, h.count as f64);
    }

    fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.header(name, help, "gauge");
        self.sample(name, &[], value);
    }
}

/// Label values escape `\`, `"` and newlines (exposition format 0.0.4).
fn escape_label(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', r#"\""#)
        .replace('\n', r"\n")
}

/// Go-style float text: integers without a fraction, `NaN`, `+Inf`, `-Inf`.
fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_string()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        // `{}` on f64 prints the shortest text that round-trips, without an exponent.
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_labels_are_formatted_for_prometheus() {
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(37.5), "37.5");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(escape_label("a\"b\\c\nd"), r#"a\"b\\c\nd"#);
    }
}
