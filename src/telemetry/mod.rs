//! Everything observable, kept by lock-free counters and read as plain snapshots.
//!
//! - [`MachineInfo`] — one machine's identity and gauges (reservations, pending request
//!   weights, connections, queue, state). Its fields are private: the accounting rules of
//!   SPEC §1 (`used = Σ reservations + Σ pending weights`) hold because the only way to
//!   change a gauge is a paired method — [`MachineInfo::reserve`] / [`MachineInfo::release`]
//!   for a connection, [`MachineInfo::try_enqueue`] / [`MachineInfo::finish`] for a request.
//! - [`Totals`] — the process-wide counters of SPEC §6, changed only through methods that
//!   name an event (`request_ok`, `connection_rejected`, …).
//! - [`Topology`] and [`StatsHandle`] — what the dispatcher publishes and what the admin
//!   API, `STATS` and the summary log read; [`Snapshot`] and friends are the plain copies.
//! - [`Latencies`] — request latency (per class) and connection duration histograms.
//! - [`RefusalLog`] — the rate limiter for refused-connection warnings.
//!
//! This layer depends on [`crate::core`] only. The balancer, the backends and the server
//! write to it; the admin endpoint reads it. Nothing here is ever locked, so reading stats
//! never slows the request path.

mod gauges;
mod histogram;
mod refusals;
mod snapshot;
mod totals;

pub use gauges::{MachineInfo, MachineSnapshot, UnitsGauge};
pub use histogram::{Histogram, HistogramSnapshot, Latencies};
pub use refusals::RefusalLog;
pub use snapshot::{
    average_load, round2, PoolSnapshot, ScaleEvent, ScaleEventKind, Snapshot, StatsHandle,
    Topology, RECENT_EVENTS,
};
pub use totals::{Totals, TotalsSnapshot};
