//! The access log: one `info` line per closed connection, under the target `access` (as
//! HAProxy logs a line per session and nginx has its `access_log`). `log.access = false`
//! silences it; `RUST_LOG=access=off` does too.
//!
//! Fields: `peer`, `machine` (the home machine), `duration_ms`, `requests_ok`,
//! `requests_failed`, `bytes_in`, `bytes_out` and `reason` — numbers stay numbers in JSON
//! logs.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::Instant;
use tracing::info;

use super::context::SessionContext;

/// Per-connection counters, shared by the reader and the writer of one session.
#[derive(Debug, Default)]
pub(super) struct ConnCounters {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
}

impl ConnCounters {
    pub(super) fn bytes_in(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(super) fn bytes_out(&self, n: usize) {
        self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(super) fn request_ok(&self) {
        self.ok.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn request_failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Records the connection's duration and writes its access line (unless `log.access` is
/// off). `reason` says who closed it and why.
pub(super) fn closed(
    ctx: &SessionContext,
    peer: SocketAddr,
    machine: &str,
    started: Instant,
    counters: &ConnCounters,
    reason: impl std::fmt::Display,
) {
    let open_for = started.elapsed();
    ctx.stats.totals.latencies.connection(open_for);
    if !ctx.config.borrow().log.access {
        return;
    }
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    info!(
        target: "access",
        %peer,
        machine,
        duration_ms = (open_for.as_secs_f64() * 1e5).round() / 100.0,
        requests_ok = get(&counters.ok),
        requests_failed = get(&counters.failed),
        bytes_in = get(&counters.bytes_in),
        bytes_out = get(&counters.bytes_out),
        %reason,
        "connection closed"
    );
}
