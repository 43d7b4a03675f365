//! Process-wide totals (SPEC §6 `totals`): counters that only grow, plus open connections.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::core::Units;

use super::gauges::UnitsGauge;
use super::histogram::Latencies;

/// Process-wide totals. Each method names the event it counts, so the rules of SPEC §4 and
/// §6 (`requests_ok + requests_failed = requests received`, what `weighted_failed` sums)
/// live here and nowhere else.
#[derive(Debug, Default)]
pub struct Totals {
    /// Connections placed on a machine.
    connections_admitted: AtomicU64,
    /// Connections refused with `overloaded` or `exhausted`.
    connections_rejected: AtomicU64,
    /// Connections currently open (admitted and not yet closed).
    connections_open: AtomicU64,
    /// Connections waiting in the admission queue (proxy mode, `backend.queue_timeout`).
    connections_queued: AtomicU64,
    /// Requests answered `OK`.
    requests_ok: AtomicU64,
    /// Requests answered with an error (`busy`, `shutting-down`, `bad-request`, `too-long`).
    requests_failed: AtomicU64,
    /// Σ weights of successful requests.
    weighted_ok: UnitsGauge,
    /// Σ weights of failed requests + reservations of refused connections.
    weighted_failed: UnitsGauge,
    /// Machines acquired by the autoscaler (including on-the-spot acquisitions).
    scale_ups: AtomicU64,
    /// Machines retired.
    scale_downs: AtomicU64,
    /// Request latency and connection duration histograms (`/metrics`).
    pub latencies: Latencies,
}

impl Totals {
    /// Counts one successful request of `weight`.
    pub fn request_ok(&self, weight: Units) {
        self.requests_ok.fetch_add(1, Ordering::Relaxed);
        self.weighted_ok.add(weight);
    }

    /// Counts one failed request of `weight`.
    pub fn request_failed(&self, weight: Units) {
        self.requests_failed.fetch_add(1, Ordering::Relaxed);
        self.weighted_failed.add(weight);
    }

    /// A connection was placed on a machine (and is open).
    pub fn connection_admitted(&self) {
        self.connections_admitted.fetch_add(1, Ordering::Relaxed);
        self.connections_open.fetch_add(1, Ordering::Relaxed);
    }

    /// An admitted connection closed.
    pub fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Ordering::Relaxed);
    }

    /// An admission turned out not to be one (proxy mode: the upstream connect failed and
    /// the client is placed again, or refused). Its close is counted separately.
    pub fn admission_withdrawn(&self) {
        self.connections_admitted.fetch_sub(1, Ordering::Relaxed);
    }

    /// A connection that no machine could take started waiting in the admission queue.
    pub fn connection_queued(&self) {
        self.connections_queued.fetch_add(1, Ordering::Relaxed);
    }

    /// A queued connection left the queue (admitted, refused or gone).
    pub fn connection_dequeued(&self) {
        self.connections_queued.fetch_sub(1, Ordering::Relaxed);
    }

    /// Connections waiting in the admission queue now.
    pub fn queued(&self) -> u64 {
        self.connections_queued.load(Ordering::Relaxed)
    }

    /// Counts one refused connection holding `reservation` (zero for `overloaded`).
    pub fn connection_rejected(&self, reservation: Units) {
        self.connections_rejected.fetch_add(1, Ordering::Relaxed);
        self.weighted_failed.add(reservation);
    }

    /// A machine was acquired by scaling up.
    pub fn scaled_up(&self) {
        self.scale_ups.fetch_add(1, Ordering::Relaxed);
    }

    /// A machine was retired.
    pub fn scaled_down(&self) {
        self.scale_downs.fetch_add(1, Ordering::Relaxed);
    }

    /// A plain copy of the counters.
    pub fn snapshot(&self) -> TotalsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TotalsSnapshot {
            connections_admitted: get(&self.connections_admitted),
            connections_rejected: get(&self.connections_rejected),
            connections_open: get(&self.connections_open),
            requests_ok: get(&self.requests_ok),
            requests_failed: get(&self.requests_failed),
            weighted_ok: self.weighted_ok.get().as_f64(),
            weighted_failed: self.weighted_failed.get().as_f64(),
            scale_ups: get(&self.scale_ups),
            scale_downs: get(&self.scale_downs),
        }
    }
}

/// Plain copy of [`Totals`], with the JSON keys of SPEC §6.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct TotalsSnapshot {
    pub connections_admitted: u64,
    pub connections_rejected: u64,
    pub connections_open: u64,
    pub requests_ok: u64,
    pub requests_failed: u64,
    pub weighted_ok: f64,
    pub weighted_failed: f64,
    pub scale_ups: u64,
    pub scale_downs: u64,
}
