//! What the workers count: live counters for the progress bar, and the [`Tally`] of each
//! worker that becomes the run's [`Summary`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;

use super::plan::LoadPlan;
use super::report::{Latency, MachineShare, Summary};

/// Latency histogram range: 1 µs to 60 s, 2 significant digits (≈ 20 KiB per worker).
const LATENCY_MAX_US: u64 = 60_000_000;

/// Counters the progress bar reads while workers run.
#[derive(Debug, Default)]
pub(super) struct Live {
    pub(super) ok: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) open: AtomicU64,
}

/// What one worker saw; merged into the [`Summary`].
pub(super) struct Tally {
    pub(super) sent: u64,
    ok: u64,
    failed: u64,
    pub(super) skipped: u64,
    pub(super) opened: u64,
    pub(super) cycles: u64,
    errors: BTreeMap<String, u64>,
    refused: BTreeMap<String, u64>,
    /// `OK` replies per machine name (few machines: a linear scan beats hashing).
    machines: Vec<(Vec<u8>, u64)>,
    latency_us: Histogram<u64>,
}

/// How a reply line ended a request.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    Ok,
    Failed,
    /// `ERR exhausted` / `ERR overloaded`: the balancer is closing the connection.
    Refused,
    /// An error after which the balancer closes the connection (`shutting-down`,
    /// `timeout`, `too-long`): counted once, and nothing more is sent on it.
    Closed,
}

impl Outcome {
    /// Whether the balancer closes the connection after this reply.
    pub(super) fn closes(self) -> bool {
        matches!(self, Outcome::Refused | Outcome::Closed)
    }
}

impl Tally {
    pub(super) fn new() -> Tally {
        Tally {
            sent: 0,
            ok: 0,
            failed: 0,
            skipped: 0,
            opened: 0,
            cycles: 0,
            errors: BTreeMap::new(),
            refused: BTreeMap::new(),
            machines: Vec::new(),
            latency_us: Histogram::new_with_bounds(1, LATENCY_MAX_US, 2)
                .expect("constant histogram bounds are valid"),
        }
    }

    pub(super) fn fail(&mut self, code: &str, live: &Live) {
        self.failed += 1;
        live.failed.fetch_add(1, Ordering::Relaxed);
        *self.errors.entry(code.to_string()).or_default() += 1;
    }

    pub(super) fn refuse(&mut self, code: &str) {
        *self.refused.entry(code.to_string()).or_default() += 1;
    }

    /// Counts one reply line (with its `\n`) that answered a request sent `latency` ago.
    pub(super) fn reply(&mut self, line: &[u8], latency: Duration, live: &Live) -> Outcome {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(rest) = line.strip_prefix(b"OK ") {
            let machine = rest.split(|&b| b == b' ').next().unwrap_or(rest);
            match self.machines.iter_mut().find(|(m, _)| m == machine) {
                Some((_, n)) => *n += 1,
                None => self.machines.push((machine.to_vec(), 1)),
            }
            self.ok += 1;
            live.ok.fetch_add(1, Ordering::Relaxed);
            let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
            self.latency_us.saturating_record(us.max(1));
            return Outcome::Ok;
        }
        if let Some(rest) = line.strip_prefix(b"ERR ") {
            let code = rest.split(|&b| b == b' ').next().unwrap_or(rest);
            let code = String::from_utf8_lossy(code);
            self.fail(&code, live);
            if code == "exhausted" || code == "overloaded" {
                self.refuse(&code);
                return Outcome::Refused;
            }
            if matches!(&*code, "shutting-down" | "timeout" | "too-long") {
                return Outcome::Closed;
            }
            return Outcome::Failed;
        }
        self.fail("unexpected", live);
        Outcome::Failed
    }

    pub(super) fn merge(&mut self, other: Tally) {
        self.sent += other.sent;
        self.ok += other.ok;
        self.failed += other.failed;
        self.skipped += other.skipped;
        self.opened += other.opened;
        self.cycles += other.cycles;
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
        for (code, n) in other.refused {
            *self.refused.entry(code).or_default() += n;
        }
        for (machine, n) in other.machines {
            match self.machines.iter_mut().find(|(m, _)| *m == machine) {
                Some((_, total)) => *total += n,
                None => self.machines.push((machine, n)),
            }
        }
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
    }

    pub(super) fn summary(mut self, plan: &LoadPlan, elapsed: Duration) -> Summary {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let h = &self.latency_us;
        let ms = |us: u64| us as f64 / 1000.0;
        let latency_ms = if h.is_empty() {
            Latency::default()
        } else {
            Latency {
                p50: ms(h.value_at_quantile(0.50)),
                p90: ms(h.value_at_quantile(0.90)),
                p99: ms(h.value_at_quantile(0.99)),
                max: ms(h.max()),
                mean: h.mean() / 1000.0,
            }
        };
        // m2 before m10: by the number after the `m`, then by name.
        self.machines.sort_by(|(a, _), (b, _)| {
            let num = |m: &[u8]| -> u64 {
                std::str::from_utf8(m.get(1..).unwrap_or_default())
                    .ok()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(u64::MAX)
            };
            num(a).cmp(&num(b)).then_with(|| a.cmp(b))
        });
        Summary {
            target: plan.target.to_string(),
            mode: plan.mode.name(),
            connections: plan.connections,
            duration_s: secs,
            requests_sent: self.sent,
            requests_ok: self.ok,
            requests_failed: self.failed,
            requests_per_s: self.ok as f64 / secs,
            sends_skipped: self.skipped,
            connections_opened: self.opened,
            connections_refused: self.refused,
            connections_per_s: self.cycles as f64 / secs,
            latency_ms,
            errors: self.errors,
            machines: self
                .machines
                .into_iter()
                .map(|(m, ok)| MachineShare {
                    machine: String::from_utf8_lossy(&m).into_owned(),
                    ok,
                })
                .collect(),
            elasticity: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_classified() {
        let live = Live::default();
        let mut t = Tally::new();
        let d = Duration::from_micros(300);
        assert_eq!(t.reply(b"OK m2 small\n", d, &live), Outcome::Ok);
        assert_eq!(t.reply(b"OK m2 large x\n", d, &live), Outcome::Ok);
        assert_eq!(t.reply(b"ERR busy full\n", d, &live), Outcome::Failed);
        assert_eq!(
            t.reply(b"ERR exhausted no machine\n", d, &live),
            Outcome::Refused
        );
        assert_eq!(t.reply(b"PONG\n", d, &live), Outcome::Failed);
        for closing in [
            "shutting-down server is",
            "timeout idle for 1s",
            "too-long line",
        ] {
            let line = format!("ERR {closing}\n");
            assert_eq!(
                t.reply(line.as_bytes(), d, &live),
                Outcome::Closed,
                "{line}"
            );
        }
        assert!(Outcome::Closed.closes() && Outcome::Refused.closes());
        assert!(!Outcome::Failed.closes() && !Outcome::Ok.closes());
        assert_eq!((t.ok, t.failed), (2, 6));
        assert_eq!(t.machines, vec![(b"m2".to_vec(), 2)]);
        assert_eq!(t.refused.get("exhausted"), Some(&1));
        assert_eq!(t.errors.get("unexpected"), Some(&1));
    }
}
