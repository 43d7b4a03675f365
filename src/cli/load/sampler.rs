//! `--plot` and `--profile`: samples of `GET /api/stats`, read with
//! [`crate::cli::http::fetch_stats`].

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::{timeout, Instant, MissedTickBehavior};

use crate::admin::{LoadModel, StatsBody};
use crate::cli::http::fetch_stats;
use crate::core::MachineState;

/// Admin API sampling period for `--plot` and `--profile`.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// One admin API sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Sample {
    /// Seconds since the load started.
    pub(super) t: f64,
    pub(super) active: usize,
    pub(super) draining: usize,
    pub(super) avg_load: f64,
    /// Σ capacity of the active machines (supply), load units.
    pub(super) supply: f64,
    /// Σ reservations held (`reserved`; 0 from a daemon without that key).
    pub(super) reserved: f64,
    /// `totals.scale_ups` and `totals.scale_downs`.
    pub(super) scale_ups: u64,
    pub(super) scale_downs: u64,
}

impl Sample {
    fn of(t: f64, stats: &StatsBody) -> Sample {
        let snap = &stats.snapshot;
        let (mut active, mut draining, mut supply) = (0, 0, 0.0);
        for m in &snap.machines {
            if m.state == MachineState::Draining {
                draining += 1;
            } else {
                active += 1;
                supply += m.capacity;
            }
        }
        Sample {
            t,
            active,
            draining,
            avg_load: snap.avg_load,
            supply,
            reserved: stats.reserved.unwrap_or(0.0),
            scale_ups: snap.totals.scale_ups,
            scale_downs: snap.totals.scale_downs,
        }
    }
}

/// What the sampler saw.
#[derive(Debug, Clone, Default)]
pub(super) struct Sampled {
    /// Successful samples, in time order.
    pub(super) samples: Vec<Sample>,
    /// The load model of the last successful sample.
    pub(super) model: Option<LoadModel>,
    /// `autoscaler.scale_up_threshold` of the last successful sample.
    pub(super) threshold: Option<f64>,
}

/// Samples `GET /api/stats` every [`SAMPLE_EVERY`] until `stop`. Failed samples are skipped.
pub(super) async fn sample(admin: SocketAddr, start: Instant, stop: Instant) -> Sampled {
    let mut out = Sampled::default();
    let mut ticker = tokio::time::interval(SAMPLE_EVERY);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let at = ticker.tick().await;
        if at > stop {
            break;
        }
        if let Ok(Ok(stats)) = timeout(Duration::from_secs(1), fetch_stats(admin)).await {
            let t = at.saturating_duration_since(start).as_secs_f64();
            out.samples.push(Sample::of(t, &stats));
            out.threshold = Some(stats.autoscaler.scale_up_threshold);
            if stats.load_model.is_some() {
                out.model = stats.load_model;
            }
        }
    }
    out
}
