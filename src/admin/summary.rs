//! The periodic summary log line: every [`PERIOD`], one `info!` with the machines, the
//! average load, the open connections and what happened since the last line.
//!
//! It reads [`StatsHandle`] snapshots only, like the admin endpoint, and runs whether the
//! admin endpoint is enabled or not. Spawned by [`crate::Server::start`]; stops when the
//! shutdown token fires.

use std::time::Duration;

use tokio::time::{interval_at, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::core::MachineState;
use crate::telemetry::{Snapshot, StatsHandle};

/// Time between two summary lines.
pub const PERIOD: Duration = Duration::from_secs(10);

/// Spawns the summary task.
pub fn spawn(stats: StatsHandle, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(stats, shutdown, PERIOD))
}

/// Logs a summary every `period` until `shutdown` fires.
pub async fn run(stats: StatsHandle, shutdown: CancellationToken, period: Duration) {
    let mut ticks = interval_at(Instant::now() + period, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last = stats.snapshot();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let now = stats.snapshot();
        log_summary(&last, &now);
        last = now;
    }
}

fn log_summary(last: &Snapshot, now: &Snapshot) {
    let (t0, t1) = (&last.totals, &now.totals);
    let draining = now
        .machines
        .iter()
        .filter(|m| m.state == MachineState::Draining)
        .count();
    info!(
        machines = now.machines.len() - draining,
        draining,
        avg_load = crate::telemetry::round2(now.avg_load),
        open_connections = t1.connections_open,
        requests_ok = t1.requests_ok.saturating_sub(t0.requests_ok),
        requests_failed = t1.requests_failed.saturating_sub(t0.requests_failed),
        connections_rejected = t1
            .connections_rejected
            .saturating_sub(t0.connections_rejected),
        strategy = %now.strategy,
        "summary (counts since the last summary)"
    );
}
