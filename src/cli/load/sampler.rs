//! `--plot`: samples of `GET /api/stats`, read with [`crate::cli::http::fetch_stats`].

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::{timeout, Instant, MissedTickBehavior};

use crate::cli::http::fetch_stats;
use crate::core::MachineState;

/// Admin API sampling period for `--plot`.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// One admin API sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Sample {
    /// Seconds since the load started.
    pub(super) t: f64,
    pub(super) active: usize,
    pub(super) draining: usize,
    pub(super) avg_load: f64,
}

/// Samples `GET /api/stats` every [`SAMPLE_EVERY`] until `stop`. Failed samples are skipped.
pub(super) async fn sample(admin: SocketAddr, start: Instant, stop: Instant) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut ticker = tokio::time::interval(SAMPLE_EVERY);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let at = ticker.tick().await;
        if at > stop {
            break;
        }
        if let Ok(Ok(stats)) = timeout(Duration::from_secs(1), fetch_stats(admin)).await {
            let snap = &stats.snapshot;
            let draining = snap
                .machines
                .iter()
                .filter(|m| m.state == MachineState::Draining)
                .count();
            samples.push(Sample {
                t: at.duration_since(start).as_secs_f64(),
                active: snap.machines.len() - draining,
                draining,
                avg_load: snap.avg_load,
            });
        }
    }
    samples
}
