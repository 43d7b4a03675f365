//! Fixed-bucket latency histograms, lock-free, in the shape Prometheus exposes them.
//!
//! Each histogram is a row of atomic counters, one per upper bound (`le`), plus the sum
//! of the observations; their count is the sum of the buckets (no counter of its own: one
//! atomic add less per request, and `_count` always equals the `+Inf` bucket). Recording
//! is two relaxed atomic adds and a short search. The admin endpoint renders
//! [`HistogramSnapshot`]s as `_bucket`, `_sum` and `_count` series.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::core::RequestClass;

/// Upper bounds of the request latency buckets (queue wait + service), seconds.
const REQUEST_BOUNDS_S: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Upper bounds of the connection duration buckets, seconds.
const CONNECTION_BOUNDS_S: [f64; 10] = [
    0.001, 0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 86400.0,
];

/// One histogram: a counter per bound plus the overflow (`+Inf`), and the sum.
#[derive(Debug)]
pub struct Histogram {
    bounds_s: &'static [f64],
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    buckets: Vec<AtomicU64>,
    sum_ns: AtomicU64,
}

impl Histogram {
    /// An empty histogram over `bounds_s` (ascending).
    pub fn new(bounds_s: &'static [f64]) -> Self {
        Histogram {
            bounds_s,
            buckets: (0..=bounds_s.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: Duration) {
        let secs = value.as_secs_f64();
        let bucket = self.bounds_s.partition_point(|&b| b < secs);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// A plain copy with cumulative bucket counts.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0;
        let mut cumulative = Vec::with_capacity(self.buckets.len());
        for b in &self.buckets {
            running += b.load(Ordering::Relaxed);
            cumulative.push(running);
        }
        HistogramSnapshot {
            bounds_s: self.bounds_s.to_vec(),
            cumulative,
            sum_s: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
            // Every observation lands in exactly one bucket (`+Inf` included).
            count: running,
        }
    }
}

/// A histogram's plain copy.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Upper bounds, seconds (the `le` labels; `+Inf` is implied last).
    pub bounds_s: Vec<f64>,
    /// Observations at or below each bound, then the total (`+Inf`).
    pub cumulative: Vec<u64>,
    /// Sum of the observations, seconds.
    pub sum_s: f64,
    /// Number of observations.
    pub count: u64,
}

/// The process's latency histograms.
#[derive(Debug)]
pub struct Latencies {
    /// Request latency (queue wait + service) per class, in `RequestClass::ALL` order.
    requests: [Histogram; 3],
    /// How long admitted connections stayed open.
    connections: Histogram,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            requests: std::array::from_fn(|_| Histogram::new(&REQUEST_BOUNDS_S)),
            connections: Histogram::new(&CONNECTION_BOUNDS_S),
        }
    }
}

impl Latencies {
    /// A request of `class` was answered `elapsed` after it was queued.
    pub fn request(&self, class: RequestClass, elapsed: Duration) {
        self.requests[class_index(class)].observe(elapsed);
    }

    /// An admitted connection closed after `open_for`.
    pub fn connection(&self, open_for: Duration) {
        self.connections.observe(open_for);
    }

    /// Request latency per class, in `RequestClass::ALL` order.
    pub fn requests(&self) -> Vec<(RequestClass, HistogramSnapshot)> {
        RequestClass::ALL
            .into_iter()
            .map(|c| (c, self.requests[class_index(c)].snapshot()))
            .collect()
    }

    /// Connection durations.
    pub fn connections(&self) -> HistogramSnapshot {
        self.connections.snapshot()
    }
}

fn class_index(class: RequestClass) -> usize {
    match class {
        RequestClass::Small => 0,
        RequestClass::Medium => 1,
        RequestClass::Large => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_cumulative_buckets() {
        let h = Histogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_micros(500)); // ≤ 1 ms
        h.observe(Duration::from_millis(1)); // on the bound: ≤ 1 ms
        h.observe(Duration::from_millis(5)); // ≤ 10 ms
        h.observe(Duration::from_secs(1)); // +Inf
        let s = h.snapshot();
        assert_eq!(s.cumulative, [2, 3, 4]);
        assert_eq!(s.count, 4);
        assert!((s.sum_s - 1.0065).abs() < 1e-9, "{}", s.sum_s);
    }
}
