//! The autoscale policy: when to acquire and when to retire machines (SPEC §5).
//!
//! Pure functions and small state structs, unit-tested under paused time:
//! [`wants_more`] / [`scale_up_goal`] (when to acquire, and up to where),
//! [`wants_fewer`] with [`ScaleDownTimer`] (has the policy recommended fewer machines for
//! the whole stabilization window?), [`StepBudget`] (at most `max(max_step, active)`
//! acquisitions per interval), [`size_preference`] (which size to try next) and
//! [`pick_retiree`] (which machine may go).
//!
//! Two policies (`autoscaler.policy`):
//!
//! - `threshold` — the seeds' rule: acquire while the average is above
//!   `scale_up_threshold`; retire one machine once it has stayed below
//!   `scale_down_threshold` for `scale_down_after`.
//! - `target` — target tracking as in the Kubernetes HPA: with `ratio = average / target`,
//!   nothing happens while `|ratio − 1| ≤ tolerance`; above the band, machines are acquired
//!   until the average is back at `target`; below it, the recommendation is
//!   `ceil(active × ratio)` machines, and one machine is retired once every recommendation
//!   of the last `scale_down_after` was below the active count (the highest recommendation
//!   in the window wins, so a dip never retires capacity that the next peak needs).
//!
//! The dispatcher applies them: on its periodic tick (every `autoscaler.interval`, inside
//! the dispatcher task) and right after every admission, so scale-up reacts within the
//! admission that pushed the average past the threshold, not a tick later.

use tokio::time::Instant;

use std::time::Duration;

use crate::config::{AutoscalerConfig, ScalingPolicy};
use crate::core::{Size, Units};
use crate::telemetry::MachineInfo;

/// The order in which sizes are tried: the preferred size, then the larger sizes in
/// ascending order, then the smaller ones in descending order.
pub fn size_preference(preferred: Size) -> Vec<Size> {
    let larger = Size::ALL.into_iter().filter(|s| *s > preferred);
    let smaller = Size::ALL.into_iter().rev().filter(|s| *s < preferred);
    std::iter::once(preferred)
        .chain(larger)
        .chain(smaller)
        .collect()
}

/// Whether the average load (percent) calls for more machines now.
pub fn wants_more(avg_load: f64, cfg: &AutoscalerConfig) -> bool {
    match cfg.policy {
        ScalingPolicy::Threshold => avg_load > cfg.scale_up_threshold,
        ScalingPolicy::Target => avg_load > cfg.target * (1.0 + cfg.tolerance),
    }
}

/// Once [`wants_more`] said so, machines are acquired until the average is at or below this.
pub fn scale_up_goal(cfg: &AutoscalerConfig) -> f64 {
    match cfg.policy {
        ScalingPolicy::Threshold => cfg.scale_up_threshold,
        ScalingPolicy::Target => cfg.target,
    }
}

/// The `target` policy's recommendation: `ceil(active × average / target)` machines, or
/// `active` while the ratio is within the tolerance band (the HPA formula).
pub fn desired_machines(active: usize, avg_load: f64, cfg: &AutoscalerConfig) -> usize {
    let ratio = avg_load / cfg.target;
    // The epsilon keeps the band's edges inside it despite rounding (55 / 50 − 1 > 0.1).
    if !ratio.is_finite() || (ratio - 1.0).abs() <= cfg.tolerance + 1e-9 {
        return active;
    }
    // Bounded by max_machines, so the cast cannot overflow.
    let desired = (active as f64 * ratio).ceil().min(cfg.max_machines as f64);
    desired.max(0.0) as usize
}

/// Whether the policy recommends fewer machines than `active` at this average.
pub fn wants_fewer(active: usize, avg_load: f64, cfg: &AutoscalerConfig) -> bool {
    match cfg.policy {
        ScalingPolicy::Threshold => avg_load < cfg.scale_down_threshold,
        ScalingPolicy::Target => desired_machines(active, avg_load, cfg) < active,
    }
}

/// The average the remaining machines may reach when one retires: a retirement must not
/// trigger a scale-up.
pub fn retire_ceiling(cfg: &AutoscalerConfig) -> f64 {
    match cfg.policy {
        ScalingPolicy::Threshold => cfg.scale_up_threshold,
        ScalingPolicy::Target => cfg.target * (1.0 + cfg.tolerance),
    }
}

/// Counts acquisitions per `autoscaler.interval`: at most `max(max_step, active)` in one
/// interval, so a burst doubles the set at most (or adds `max_step`) before the next look.
#[derive(Debug, Default)]
pub struct StepBudget {
    /// When the current interval began.
    since: Option<Instant>,
    /// Acquisitions in it.
    used: usize,
}

impl StepBudget {
    /// Takes one acquisition from the budget at `now`; false when it is spent.
    pub fn take(&mut self, now: Instant, active: usize, cfg: &AutoscalerConfig) -> bool {
        let period = cfg.interval.max(Duration::from_millis(1));
        match self.since {
            Some(since) if now.duration_since(since) < period => {}
            _ => {
                self.since = Some(now);
                self.used = 0;
            }
        }
        if self.used >= cfg.max_step.max(active) {
            return false;
        }
        self.used += 1;
        true
    }
}

/// The `target` policy's scale-down stabilization (the HPA's `stabilizationWindowSeconds`):
/// the recommendations of the last `scale_down_after`; once the window is full, the set may
/// shrink to the highest of them at once.
#[derive(Debug, Default)]
pub struct RecommendationWindow {
    /// Recommendations with the time they were made, oldest first.
    entries: std::collections::VecDeque<(Instant, usize)>,
    /// When the window began (the first recommendation since the last change).
    since: Option<Instant>,
}

impl RecommendationWindow {
    /// Records the recommendation `desired` at `now`. Once recommendations cover a whole
    /// `window`, returns the highest of them (the number of machines the set may shrink to).
    pub fn observe(&mut self, now: Instant, desired: usize, window: Duration) -> Option<usize> {
        self.entries.push_back((now, desired));
        while self
            .entries
            .front()
            .is_some_and(|&(t, _)| now.duration_since(t) > window)
        {
            self.entries.pop_front();
        }
        let since = *self.since.get_or_insert(now);
        if now.duration_since(since) < window {
            return None;
        }
        self.entries.iter().map(|&(_, d)| d).max()
    }

    /// Starts over (after the set changed).
    pub fn reset(&mut self) {
        self.entries.clear();
        self.since = None;
    }
}

/// Tracks how long the policy has recommended fewer machines (a stabilization window).
#[derive(Debug, Default)]
pub struct ScaleDownTimer {
    /// When the current low stretch began (None while the recommendation is not lower).
    low_since: Option<Instant>,
}

impl ScaleDownTimer {
    /// Records at `now` whether the policy recommends fewer machines ([`wants_fewer`]);
    /// returns true when it has for `scale_down_after` — then the stretch restarts, so
    /// retirements are spaced by at least `scale_down_after` ("retire one machine, then wait
    /// again").
    pub fn observe(&mut self, now: Instant, fewer: bool, cfg: &AutoscalerConfig) -> bool {
        if !fewer {
            self.low_since = None;
            return false;
        }
        let since = *self.low_since.get_or_insert(now);
        if now.duration_since(since) >= cfg.scale_down_after {
            self.low_since = Some(now);
            true
        } else {
            false
        }
    }

    /// Forgets the current stretch (after the machine set changed by scaling up).
    pub fn reset(&mut self) {
        self.low_since = None;
    }
}

/// Picks the machine to retire among `machines` (active and draining, creation order), or
/// `None` when none may go: the least-loaded active machine (ties: the newest, so the
/// oldest machines stay), provided that at least `min_machines` active machines remain and
/// that the average over the others — with the retiree's reservations moved onto them —
/// stays at or below [`retire_ceiling`] (`scale_up_threshold` for the threshold policy,
/// SPEC §5).
pub fn pick_retiree(machines: &[&MachineInfo], cfg: &AutoscalerConfig) -> Option<usize> {
    let active: Vec<usize> = (0..machines.len())
        .filter(|&i| machines[i].is_active())
        .collect();
    if active.len() <= cfg.min_machines.max(1) {
        return None;
    }
    // Least loaded; iterating newest first makes ties go to the newest.
    let &candidate = active.iter().rev().min_by(|&&a, &&b| {
        let (ma, mb) = (machines[a], machines[b]);
        // Compare used/capacity exactly by cross-multiplying.
        (ma.used().0 as u128 * mb.capacity.0 as u128)
            .cmp(&(mb.used().0 as u128 * ma.capacity.0 as u128))
    })?;
    let retiree = machines[candidate];
    let (mut used, mut capacity) = (retiree.reserved(), Units::ZERO);
    for &i in &active {
        if i != candidate {
            used = used + machines[i].used();
            capacity = capacity + machines[i].capacity;
        }
    }
    if used.percent_of(capacity) > retire_ceiling(cfg) {
        return None;
    }
    Some(candidate)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn preference_goes_larger_first_then_smaller() {
        assert_eq!(
            size_preference(Size::Medium),
            vec![Size::Medium, Size::Large, Size::Xlarge, Size::Small]
        );
        assert_eq!(
            size_preference(Size::Large),
            vec![Size::Large, Size::Xlarge, Size::Medium, Size::Small]
        );
        assert_eq!(
            size_preference(Size::Xlarge),
            vec![Size::Xlarge, Size::Large, Size::Medium, Size::Small]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn scale_down_waits_for_a_full_low_stretch() {
        let cfg = AutoscalerConfig {
            scale_down_after: Duration::from_secs(10),
            ..AutoscalerConfig::default()
        };
        let mut t = ScaleDownTimer::default();
        let start = Instant::now();
        assert!(!t.observe(start, wants_fewer(1, 5.0, &cfg), &cfg));
        assert!(!t.observe(
            start + Duration::from_secs(9),
            wants_fewer(1, 5.0, &cfg),
            &cfg
        ));
        // A single high sample restarts the stretch.
        assert!(!t.observe(
            start + Duration::from_secs(9),
            wants_fewer(1, 30.0, &cfg),
            &cfg
        ));
        assert!(!t.observe(
            start + Duration::from_secs(10),
            wants_fewer(1, 5.0, &cfg),
            &cfg
        ));
        assert!(!t.observe(
            start + Duration::from_secs(19),
            wants_fewer(1, 5.0, &cfg),
            &cfg
        ));
        assert!(t.observe(
            start + Duration::from_secs(20),
            wants_fewer(1, 5.0, &cfg),
            &cfg
        ));
        // ... then waits again.
        assert!(!t.observe(
            start + Duration::from_secs(21),
            wants_fewer(1, 5.0, &cfg),
            &cfg
        ));
        assert!(t.observe(
            start + Duration::from_secs(30),
            wants_fewer(1, 5.0, &cfg),
            &cfg
        ));
    }
}

#[cfg(test)]
mod target_tests {
    use super::*;

    fn target() -> AutoscalerConfig {
        AutoscalerConfig {
            policy: ScalingPolicy::Target,
            ..AutoscalerConfig::default()
        }
    }

    #[test]
    fn target_does_nothing_inside_the_tolerance_band() {
        let cfg = target();
        for avg in [45.0, 50.0, 55.0] {
            assert!(!wants_more(avg, &cfg), "{avg}");
            assert!(!wants_fewer(4, avg, &cfg), "{avg}");
            assert_eq!(desired_machines(4, avg, &cfg), 4);
        }
    }

    #[test]
    fn target_recommends_the_hpa_count_outside_the_band() {
        let cfg = target();
        assert!(wants_more(56.0, &cfg));
        assert_eq!(scale_up_goal(&cfg), 50.0);
        // 4 machines at 30 %: ceil(4 × 0.6) = 3.
        assert_eq!(desired_machines(4, 30.0, &cfg), 3);
        assert!(wants_fewer(4, 30.0, &cfg));
        // 3 machines at 40 %: ceil(2.4) = 3, nothing to give back.
        assert!(!wants_fewer(3, 40.0, &cfg));
        // Never more than max_machines.
        assert_eq!(desired_machines(10, 400.0, &cfg), 16);
    }

    #[test]
    fn threshold_keeps_the_seed_rules() {
        let cfg = AutoscalerConfig::default();
        assert!(wants_more(50.1, &cfg) && !wants_more(50.0, &cfg));
        assert!(wants_fewer(2, 19.9, &cfg) && !wants_fewer(2, 20.0, &cfg));
        assert_eq!(retire_ceiling(&cfg), 50.0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_highest_recommendation_in_the_window_wins() {
        let window = Duration::from_secs(10);
        let mut w = RecommendationWindow::default();
        let t0 = Instant::now();
        assert_eq!(w.observe(t0, 3, window), None);
        assert_eq!(w.observe(t0 + Duration::from_secs(5), 6, window), None);
        // Full window: the peak of 6 wins over the 2 now.
        assert_eq!(w.observe(t0 + Duration::from_secs(10), 2, window), Some(6));
        // Once the 6 has left the window, the highest is 2.
        assert_eq!(w.observe(t0 + Duration::from_secs(16), 2, window), Some(2));
        w.reset();
        assert_eq!(w.observe(t0 + Duration::from_secs(17), 2, window), None);
    }

    #[tokio::test(start_paused = true)]
    async fn step_budget_allows_max_of_step_and_active_per_interval() {
        let cfg = AutoscalerConfig::default(); // max_step 4, interval 100 ms
        let mut budget = StepBudget::default();
        let t0 = Instant::now();
        let taken = (0..10).filter(|_| budget.take(t0, 1, &cfg)).count();
        assert_eq!(taken, 4);
        // With 6 active machines the next interval allows 6.
        let t1 = t0 + Duration::from_millis(100);
        let taken = (0..10).filter(|_| budget.take(t1, 6, &cfg)).count();
        assert_eq!(taken, 6);
        assert!(!budget.take(t1 + Duration::from_millis(99), 6, &cfg));
    }
}

#[cfg(test)]
mod retiree_tests {
    use super::*;
    use crate::core::{MachineId, MachineState};

    fn machine(id: u32, capacity: u64, reserved: u64) -> MachineInfo {
        let m = MachineInfo::new(MachineId(id), Size::Medium, Units::from_whole(capacity), 8);
        m.reserve(Units::from_whole(reserved));
        m
    }

    #[test]
    fn picks_the_least_loaded_and_the_newest_on_ties() {
        let cfg = AutoscalerConfig::default();
        let (a, b, c) = (machine(1, 100, 10), machine(2, 100, 5), machine(3, 100, 5));
        assert_eq!(pick_retiree(&[&a, &b, &c], &cfg), Some(2));
    }

    #[test]
    fn never_below_min_machines() {
        let cfg = AutoscalerConfig {
            min_machines: 2,
            ..AutoscalerConfig::default()
        };
        let (a, b) = (machine(1, 100, 1), machine(2, 100, 1));
        assert_eq!(pick_retiree(&[&a, &b], &cfg), None);
        let c = machine(3, 100, 0);
        assert_eq!(pick_retiree(&[&a, &b, &c], &cfg), Some(2));
    }

    #[test]
    fn never_when_the_rest_would_pass_the_threshold() {
        let cfg = AutoscalerConfig::default();
        // 45 + 45 + 15 on three machines: without the third, (45+45+15)/200 = 52.5 % > 50.
        let (a, b, c) = (
            machine(1, 100, 45),
            machine(2, 100, 45),
            machine(3, 100, 15),
        );
        assert_eq!(pick_retiree(&[&a, &b, &c], &cfg), None);
        // 40 + 40 + 15: 47.5 % is fine.
        let (a, b) = (machine(1, 100, 40), machine(2, 100, 40));
        assert_eq!(pick_retiree(&[&a, &b, &c], &cfg), Some(2));
    }

    #[test]
    fn draining_machines_are_not_candidates_and_do_not_count() {
        let cfg = AutoscalerConfig::default();
        let (a, b) = (machine(1, 100, 10), machine(2, 100, 0));
        b.set_state(MachineState::Draining);
        assert_eq!(pick_retiree(&[&a, &b], &cfg), None);
    }
}
