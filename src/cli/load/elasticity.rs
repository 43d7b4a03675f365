//! The SPEC RG Cloud elasticity metrics (Herbst et al., SPEC-RG-2016-01) of a profiled run,
//! computed from demand and supply sampled over time. docs/elasticity.md states the
//! formulas; this file is their one implementation.
//!
//! - **demand** `d = 100 × (R + B) / T` load units: `R` the reservations held, `B = λ × w̄ ×
//!   s / 10` the capacity that the offered work keeps busy (`λ` requests/s, `w̄` mean
//!   weight, `s` = `service_ms_per_unit`; a machine of capacity `C` serves `C / (100 s)`
//!   weight units per ms), `T` the scale-up threshold in percent ([`demand`]);
//! - **supply** `s` = Σ capacity of the active machines.
//!
//! Each sample `i` (at `t_i`) holds until the next one (the last until the end of the load),
//! so `Δt_i = t_{i+1} − t_i` and `T_run = Σ Δt_i`.

use serde::Serialize;

use super::mix::Mix;
use super::profile::RateCurve;
use super::sampler::{Sample, Sampled};

/// Demand below this many load units counts as this much in the relative accuracy metrics
/// (no division by zero when nothing is offered and nothing is held).
pub const DEMAND_FLOOR: f64 = 1.0;

/// A demand change smaller than this fraction (of the demand at the last counted change)
/// is not a change for [`Metrics::instability_per_min`] (sampling noise in `R`).
pub const DEMAND_CHANGE_TOLERANCE: f64 = 0.01;

/// The capacity (load units) that keeps the average load at `threshold` percent for
/// `rate` requests/s of mean weight `mean_weight` plus `reserved` units of reservations,
/// when a request of weight `w` takes `w × service_ms_per_unit × 100 / C` ms on a machine of
/// capacity `C`.
pub fn demand(
    rate: f64,
    mean_weight: f64,
    service_ms_per_unit: f64,
    threshold: f64,
    reserved: f64,
) -> f64 {
    // Σ C / (100 s) units per ms = 10 Σ C / s units per second must equal λ w̄.
    let busy = rate * mean_weight * service_ms_per_unit / 10.0;
    100.0 * (reserved + busy) / threshold
}

/// Demand and supply at one sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Seconds since the load started.
    pub t: f64,
    /// Load units needed (see [`demand`]).
    pub demand: f64,
    /// Σ capacity of the active machines.
    pub supply: f64,
}

/// The elasticity metrics of one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Metrics {
    /// θU: `100 / T × Σ max(d − s, 0) / d × Δt`, percent.
    pub theta_u: f64,
    /// θO: `100 / T × Σ max(s − d, 0) / d × Δt`, percent.
    pub theta_o: f64,
    /// τU: `100 / T × Σ [d > s] Δt`, percent of the time under-provisioned.
    pub tau_u: f64,
    /// τO: `100 / T × Σ [s > d] Δt`, percent of the time over-provisioned.
    pub tau_o: f64,
    /// Supply changes not matched by a demand change, per minute.
    pub instability_per_min: f64,
    /// Samples whose supply differs from the previous sample's.
    pub supply_changes: u64,
    /// Of those, the ones not matched by a demand change.
    pub unmatched_changes: u64,
    /// `T`: the time the samples cover, seconds.
    pub covered_s: f64,
    /// Time-weighted mean demand, load units.
    pub mean_demand: f64,
    /// Time-weighted mean supply, load units.
    pub mean_supply: f64,
}

/// The metrics of `points` (sorted by time) over `[points[0].t, end]`.
///
/// Instability: a demand change (by more than [`DEMAND_CHANGE_TOLERANCE`] since the last
/// counted one) *licenses* supply changes in its direction until supply reaches demand; a
/// supply change is matched when it goes the licensed way, and unmatched otherwise (supply
/// moving on a flat demand, against the demand, or on past a demand it already reached).
pub fn metrics(points: &[Point], end: f64) -> Metrics {
    let mut m = Metrics::default();
    let Some(first) = points.first() else {
        return m;
    };
    let mut reference = first.demand;
    let mut license = 0.0f64; // +1 up, −1 down, 0 none
    for (i, p) in points.iter().enumerate() {
        let next_t = points.get(i + 1).map_or(end, |n| n.t);
        let dt = (next_t - p.t).max(0.0);
        let d = p.demand.max(DEMAND_FLOOR);
        m.covered_s += dt;
        m.theta_u += (p.demand - p.supply).max(0.0) / d * dt;
        m.theta_o += (p.supply - p.demand).max(0.0) / d * dt;
        if p.demand > p.supply {
            m.tau_u += dt;
        } else if p.supply > p.demand {
            m.tau_o += dt;
        }
        m.mean_demand += p.demand * dt;
        m.mean_supply += p.supply * dt;
        if i == 0 {
            continue;
        }
        if (p.demand - reference).abs() > DEMAND_CHANGE_TOLERANCE * reference.max(DEMAND_FLOOR) {
            license = (p.demand - reference).signum();
            reference = p.demand;
        }
        let change = p.supply - points[i - 1].supply;
        if change != 0.0 {
            m.supply_changes += 1;
            let direction = change.signum();
            if direction != license {
                m.unmatched_changes += 1;
            }
            if direction * (p.supply - p.demand) >= 0.0 {
                // Supply has caught up with the demand change: nothing more is licensed.
                license = 0.0;
            }
        }
    }
    if m.covered_s > 0.0 {
        let per_cent = 100.0 / m.covered_s;
        m.theta_u *= per_cent;
        m.theta_o *= per_cent;
        m.tau_u *= per_cent;
        m.tau_o *= per_cent;
        m.mean_demand /= m.covered_s;
        m.mean_supply /= m.covered_s;
        m.instability_per_min = m.unmatched_changes as f64 * 60.0 / m.covered_s;
    }
    m
}

/// The elasticity section of a profiled run's summary (`elasticity` in `--json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ElasticityReport {
    /// `step`, `ramp`, `spike`, `sine` or the CSV path.
    pub profile: String,
    /// Highest offered rate of the profile, requests/s.
    pub peak_rps: f64,
    /// θU, θO, τU, τO, instability and what they were computed from.
    #[serde(flatten)]
    pub metrics: Metrics,
    /// Admin API samples inside the load phase.
    pub samples: usize,
    /// `T` of the demand formula: `autoscaler.scale_up_threshold`, percent.
    pub threshold: f64,
    /// `w̄`: mean request weight of the mix under the daemon's weights, load units.
    pub mean_weight: f64,
    /// `s`: `load.requests.service_ms_per_unit` of the daemon.
    pub service_ms_per_unit: f64,
    /// Machines acquired during the load phase (`totals.scale_ups`).
    pub scale_ups: u64,
    /// Machines retired during the load phase (`totals.scale_downs`).
    pub scale_downs: u64,
    /// `scale_ups + scale_downs`.
    pub scale_events: u64,
    /// Requests that failed (the summary's `requests_failed`).
    pub requests_failed: u64,
    /// p99 latency of successful requests, ms, counted from the scheduled send time.
    pub p99_ms: f64,
}

/// What [`points`] needs besides the samples: the load model as the daemon published it.
#[derive(Debug, Clone, Copy)]
pub(super) struct DemandModel {
    pub(super) mean_weight: f64,
    pub(super) service_ms_per_unit: f64,
    pub(super) threshold: f64,
}

impl DemandModel {
    /// The model from what the sampler read, for requests drawn from `mix`; `None` when the
    /// daemon published no `load_model` or no sample succeeded.
    pub(super) fn of(sampled: &Sampled, mix: &Mix) -> Option<DemandModel> {
        let model = sampled.model.as_ref()?;
        Some(DemandModel {
            mean_weight: mix.mean(|class| model.requests.weight(class) as f64),
            service_ms_per_unit: model.service_ms_per_unit,
            threshold: sampled.threshold?,
        })
    }
}

/// Demand and supply at each sample: the rate `offered` at the sample's time while the load
/// runs (`t < load_end`), none after it, plus the reservations the sample saw.
pub(super) fn points(
    samples: &[Sample],
    offered: &RateCurve,
    load_end: f64,
    model: DemandModel,
) -> Vec<Point> {
    samples
        .iter()
        .map(|s| {
            let rate = if s.t < load_end {
                offered.rate_at(s.t)
            } else {
                0.0
            };
            Point {
                t: s.t,
                demand: demand(
                    rate,
                    model.mean_weight,
                    model.service_ms_per_unit,
                    model.threshold,
                    s.reserved,
                ),
                supply: s.supply,
            }
        })
        .collect()
}

/// What the report takes from the rest of the run.
pub(super) struct RunFacts<'a> {
    pub(super) profile: &'a str,
    pub(super) curve: &'a RateCurve,
    pub(super) load_end: f64,
    pub(super) requests_failed: u64,
    pub(super) p99_ms: f64,
}

/// The report of a profiled run from its samples (those inside the load phase).
pub(super) fn report(
    run: &RunFacts<'_>,
    samples: &[Sample],
    model: DemandModel,
) -> ElasticityReport {
    let inside: Vec<Sample> = samples
        .iter()
        .copied()
        .filter(|s| s.t <= run.load_end)
        .collect();
    let m = metrics(
        &points(&inside, run.curve, run.load_end, model),
        run.load_end,
    );
    let delta = |f: fn(&Sample) -> u64| match (inside.first(), inside.last()) {
        (Some(a), Some(b)) => f(b).saturating_sub(f(a)),
        _ => 0,
    };
    let (scale_ups, scale_downs) = (delta(|s| s.scale_ups), delta(|s| s.scale_downs));
    ElasticityReport {
        profile: run.profile.to_string(),
        peak_rps: run.curve.peak(),
        metrics: m,
        samples: inside.len(),
        threshold: model.threshold,
        mean_weight: model.mean_weight,
        service_ms_per_unit: model.service_ms_per_unit,
        scale_ups,
        scale_downs,
        scale_events: scale_ups + scale_downs,
        requests_failed: run.requests_failed,
        p99_ms: run.p99_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(rows: &[(f64, f64, f64)]) -> Vec<Point> {
        rows.iter()
            .map(|&(t, demand, supply)| Point { t, demand, supply })
            .collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn demand_follows_the_load_model() {
        // 1000 small requests/s at 1 ms per unit keep one capacity-100 machine busy; at a
        // 50 % threshold that is 200 units, plus twice the 30 units held.
        assert!(close(demand(1000.0, 1.0, 1.0, 50.0, 30.0), 260.0));
        // Instant service: only the reservations count.
        assert!(close(demand(5000.0, 2.7, 0.0, 50.0, 30.0), 60.0));
        // Mean weight 2.7 at 2 ms per unit, threshold 80: 100 × (0 + 540) / 80.
        assert!(close(demand(1000.0, 2.7, 2.0, 80.0, 0.0), 675.0));
    }

    #[test]
    fn perfect_supply_scores_zero() {
        let m = metrics(
            &series(&[
                (0.0, 100.0, 100.0),
                (1.0, 200.0, 200.0),
                (2.0, 100.0, 100.0),
            ]),
            3.0,
        );
        assert_eq!(
            (m.theta_u, m.theta_o, m.tau_u, m.tau_o),
            (0.0, 0.0, 0.0, 0.0)
        );
        assert_eq!((m.supply_changes, m.unmatched_changes), (2, 0));
        assert!(close(m.covered_s, 3.0) && close(m.mean_supply, 400.0 / 3.0));
    }

    #[test]
    fn accuracy_and_timeshare_on_a_known_series() {
        // 1 s short by half, 1 s exact, 2 s over by half of a demand of 200.
        let m = metrics(
            &series(&[
                (0.0, 200.0, 100.0),
                (1.0, 200.0, 200.0),
                (2.0, 200.0, 300.0),
            ]),
            4.0,
        );
        assert!(close(m.theta_u, 100.0 / 4.0 * 0.5), "{m:?}");
        assert!(close(m.theta_o, 100.0 / 4.0 * 0.5 * 2.0), "{m:?}");
        assert!(close(m.tau_u, 25.0) && close(m.tau_o, 50.0), "{m:?}");
        // Supply moves twice while the demand never changes: both moves are unmatched.
        assert_eq!((m.supply_changes, m.unmatched_changes), (2, 2));
        assert!(close(m.instability_per_min, 2.0 * 60.0 / 4.0));
    }

    #[test]
    fn catching_up_with_a_step_is_stable() {
        // Demand steps up at t=1; supply follows in three steps, the last one past it.
        let m = metrics(
            &series(&[
                (0.0, 100.0, 100.0),
                (1.0, 400.0, 100.0),
                (2.0, 400.0, 200.0),
                (3.0, 400.0, 300.0),
                (4.0, 400.0, 500.0),
                (5.0, 400.0, 500.0),
            ]),
            6.0,
        );
        assert_eq!((m.supply_changes, m.unmatched_changes), (3, 0), "{m:?}");
        // Under-provisioned 3 of 6 s by 3/4, 2/4, 1/4 of the demand.
        assert!(close(m.tau_u, 50.0) && close(m.theta_u, 100.0 / 6.0 * 1.5));
        assert!(close(m.tau_o, 100.0 / 6.0 * 2.0) && close(m.theta_o, 100.0 / 6.0 * 0.5));
    }

    #[test]
    fn flapping_on_a_flat_demand_is_unstable() {
        // Overshoot, then down, up, down on a flat demand: the first change answers the
        // step, the three after it are unmatched.
        let m = metrics(
            &series(&[
                (0.0, 100.0, 100.0),
                (15.0, 300.0, 100.0),
                (30.0, 300.0, 400.0),
                (45.0, 300.0, 200.0),
                (60.0, 300.0, 400.0),
                (75.0, 300.0, 300.0),
            ]),
            90.0,
        );
        assert_eq!((m.supply_changes, m.unmatched_changes), (4, 3), "{m:?}");
        assert!(close(m.instability_per_min, 2.0), "3 in 1.5 minutes");
    }

    #[test]
    fn moving_against_the_demand_is_unmatched() {
        // Demand falls; supply first follows (matched) then rises (unmatched); small demand
        // wobbles inside the tolerance license nothing.
        let m = metrics(
            &series(&[
                (0.0, 400.0, 400.0),
                (1.0, 200.0, 400.0),
                (2.0, 200.0, 300.0),
                (3.0, 201.0, 400.0),
            ]),
            4.0,
        );
        assert_eq!((m.supply_changes, m.unmatched_changes), (2, 1), "{m:?}");
    }

    #[test]
    fn zero_demand_is_floored_and_no_points_is_zero() {
        let m = metrics(&series(&[(0.0, 0.0, 100.0)]), 1.0);
        assert!(close(m.theta_o, 100.0 * 100.0 / DEMAND_FLOOR));
        assert_eq!(metrics(&[], 5.0), Metrics::default());
    }
}
