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
//! - `target` — target tracking as in the Kubernetes HPA, on a time-averaged load
//!   ([`WorkMeter`], [`smoothed_load`]: reservations now plus the request work averaged over
//!   the last interval, so that one coarse request in service does not move it): with
//!   `ratio = average / target`, nothing happens while `1 − tolerance ≤ ratio ≤ 1 +
//!   scale_up_tolerance`; above the band, machines are acquired until the average is back
//!   at `target`; below it, the recommendation is `ceil(active × ratio)` machines, and the
//!   set shrinks to the highest recommendation of the last `scale_down_after` once the
//!   window is full (a dip never retires capacity that the next peak needs).
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
        ScalingPolicy::Target => avg_load > cfg.target * (1.0 + cfg.up_tolerance()),
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
/// `active` while the ratio is within the tolerance band `[1 − tolerance, 1 +
/// scale_up_tolerance]` (the HPA formula).
pub fn desired_machines(active: usize, avg_load: f64, cfg: &AutoscalerConfig) -> usize {
    let ratio = avg_load / cfg.target;
    // The epsilon keeps the band's edges inside it despite rounding (55 / 50 − 1 > 0.1).
    let in_band = ratio <= 1.0 + cfg.up_tolerance() + 1e-9 && ratio >= 1.0 - cfg.tolerance - 1e-9;
    if !ratio.is_finite() || in_band {
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
        ScalingPolicy::Target => cfg.target * (1.0 + cfg.up_tolerance()),
    }
}

/// Counts acquisitions per `autoscaler.interval`: at most `max(max_step, active)` in one
/// interval, `active` counted when the interval begins (not growing with the machines it
/// adds), so a burst doubles the set at most (or adds `max_step`) before the next look.
#[derive(Debug, Default)]
pub struct StepBudget {
    /// When the current interval began.
    since: Option<Instant>,
    /// Acquisitions in it.
    used: usize,
    /// Acquisitions it allows: `max(max_step, active)` at its start.
    allowed: usize,
}

impl StepBudget {
    /// Takes one acquisition from the budget at `now`; false when it is spent. `active` is
    /// read only when `now` starts a new interval.
    pub fn take(&mut self, now: Instant, active: usize, cfg: &AutoscalerConfig) -> bool {
        let period = cfg.interval.max(Duration::from_millis(1));
        match self.since {
            Some(since) if now.duration_since(since) < period => {}
            _ => {
                self.since = Some(now);
                self.used = 0;
                self.allowed = cfg.max_step.max(active);
            }
        }
        if self.used >= self.allowed {
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

/// The `target` policy's load signal: the time-weighted mean of the request work of the
/// active machines over the last `autoscaler.interval`, instead of one instantaneous
/// reading.
///
/// Each machine counts the request work it answered (weight × time held,
/// [`MachineInfo::work_held`]); the meter adds up the active machines' increments into one
/// cumulative count and marks it on every tick. The mean over a span is the difference of
/// two counts divided by the span's length. A request counts when it is answered, with all
/// the time it was queued or in service, so the mean lags by about one service time and
/// equals the mean pending weight (Little's law) however coarse the requests are.
#[derive(Debug, Default)]
pub struct WorkMeter {
    /// (tick, cumulative work then, milli-unit·µs), oldest first: the latest mark at or
    /// before `now − window` and every later one.
    marks: std::collections::VecDeque<(Instant, u128)>,
    /// The cumulative work at the last mark.
    base: u128,
    /// Each active machine's [`MachineInfo::work_held`] at the last mark.
    seen: std::collections::HashMap<crate::core::MachineId, u64>,
}

impl WorkMeter {
    /// The cumulative work of the active machines among `machines` now: the count at the
    /// last mark plus what each has answered since (a machine not seen then, since it
    /// started).
    fn total(&self, machines: &[&MachineInfo]) -> u128 {
        let since: u128 = machines
            .iter()
            .filter(|m| m.is_active())
            .map(|m| {
                let seen = self.seen.get(&m.id).copied().unwrap_or(0);
                u128::from(m.work_held().wrapping_sub(seen))
            })
            .sum();
        self.base + since
    }

    /// Marks the cumulative work at `now` (on each tick), keeping the marks that the mean
    /// over `window` may start from.
    pub fn mark(&mut self, now: Instant, machines: &[&MachineInfo], window: Duration) {
        self.base = self.total(machines);
        self.seen = machines
            .iter()
            .filter(|m| m.is_active())
            .map(|m| (m.id, m.work_held()))
            .collect();
        self.marks.push_back((now, self.base));
        while self
            .marks
            .get(1)
            .is_some_and(|&(t, _)| now.duration_since(t) >= window)
        {
            self.marks.pop_front();
        }
    }

    /// The mean request work (units) of the active machines among `machines` from the
    /// latest mark at or before `now − window` (the oldest mark while none is that old) to
    /// `now`. `None` without a mark at least 1 ms old: then only an instantaneous reading
    /// exists.
    pub fn mean(&self, now: Instant, machines: &[&MachineInfo], window: Duration) -> Option<Units> {
        let &(since, base) = self
            .marks
            .iter()
            .rev()
            .find(|&&(t, _)| now.duration_since(t) >= window)
            .or_else(|| self.marks.front())?;
        let span = now.duration_since(since).as_micros();
        if span < 1000 {
            return None;
        }
        let mean = self.total(machines).saturating_sub(base) / span;
        Some(Units(u64::try_from(mean).unwrap_or(u64::MAX)))
    }
}

/// The `target` policy's average load (percent) over the active machines among `machines`:
/// `100 × (Σ reservations now + work) / Σ capacity`, with the request work `work` from
/// [`WorkMeter::mean`]. Reservations change only when connections come and go, and enter
/// at once (a burst of connections is acted on in the admission that brought it).
pub fn smoothed_load(machines: &[&MachineInfo], work: Units) -> f64 {
    let (reserved, capacity) = machines
        .iter()
        .filter(|m| m.is_active())
        .fold((Units::ZERO, Units::ZERO), |(r, c), m| {
            (r + m.reserved(), c + m.capacity)
        });
    (reserved + work).percent_of(capacity)
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
///
/// `work` is the request work the others would carry: `None` counts their pending weights
/// now (the threshold policy's instantaneous average); `Some(w)` counts `w` instead (the
/// `target` policy's time-averaged work of all active machines, [`WorkMeter`]).
pub fn pick_retiree(
    machines: &[&MachineInfo],
    work: Option<Units>,
    cfg: &AutoscalerConfig,
) -> Option<usize> {
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
            used = used
                + match work {
                    None => machines[i].used(),
                    Some(_) => machines[i].reserved(),
                };
            capacity = capacity + machines[i].capacity;
        }
    }
    if let Some(work) = work {
        used = used + work;
    }
    if used.percent_of(capacity) > retire_ceiling(cfg) {
        return None;
    }
    Some(candidate)
}

/// The `target` policy's memory of scale-downs that had to be undone.
///
/// With SPEC §1's load (reservations plus the weight of every pending request, queued
/// ones included), the load per machine is not conserved when machines leave: queues
/// grow much faster than `n / (n − 1)` near saturation, so `ceil(active × ratio)` can
/// recommend a set that is at once above the band, the machines come back, and the set
/// flaps with the period of the window. When a scale-up follows a scale-down drain within
/// `scale_down_after`, the drain was a mistake: the set keeps at least the count it went
/// back to for a hold of 10 × `scale_down_after`, doubled each time it happens again while
/// the previous hold is still remembered (up to an hour), like an outlier ejection's
/// back-off. Scale-up is never held back.
#[derive(Debug, Default)]
pub struct UndoneDrains {
    /// When the latest scale-down drain happened.
    last_drain: Option<Instant>,
    /// The floor: at least this many active machines until then, set for the drain at
    /// `episode` (the latest undone one).
    floor: Option<(usize, Instant)>,
    episode: Option<Instant>,
    /// The length of the latest hold.
    hold: Duration,
}

/// The longest hold of [`UndoneDrains`].
const MAX_HOLD: Duration = Duration::from_secs(3600);

impl UndoneDrains {
    /// A scale-down drained a machine at `now`.
    pub fn drained(&mut self, now: Instant) {
        self.last_drain = Some(now);
    }

    /// A scale-up for load made `active` machines at `now`. Returns the floor and how long
    /// it holds when this undid a drain made within `window` (the first acquisition of an
    /// episode sets the hold, the next ones of the same episode raise the count).
    pub fn acquired(
        &mut self,
        now: Instant,
        active: usize,
        window: Duration,
    ) -> Option<(usize, Duration)> {
        let drain = self.last_drain?;
        if now.duration_since(drain) > window {
            return None;
        }
        if self.episode != Some(drain) {
            let base = window.saturating_mul(10).min(MAX_HOLD);
            // Still within (twice) the previous hold: it came back, so hold longer.
            let repeat = self.floor.is_some_and(|(_, until)| now < until + self.hold);
            self.hold = if repeat {
                self.hold.saturating_mul(2).min(MAX_HOLD)
            } else {
                base
            };
            self.episode = Some(drain);
            self.floor = Some((active, now + self.hold));
        } else if let Some((count, until)) = &mut self.floor {
            *count = (*count).max(active);
            *until = (*until).max(now + self.hold);
        }
        self.floor.map(|(count, _)| (count, self.hold))
    }

    /// The fewest active machines a scale-down may leave at `now` (0: no floor).
    pub fn floor(&self, now: Instant) -> usize {
        match self.floor {
            Some((count, until)) if now < until => count,
            _ => 0,
        }
    }
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
    fn scale_up_tolerance_moves_only_the_upper_side_of_the_band() {
        let cfg = AutoscalerConfig {
            scale_up_tolerance: Some(0.0),
            ..target()
        };
        // Above the target at all: acquire (back to the target), and recommend more.
        assert!(wants_more(50.5, &cfg) && !wants_more(50.0, &cfg));
        assert_eq!(desired_machines(10, 53.0, &cfg), 11);
        // The lower side stays at tolerance: 45 % does nothing, 44 % recommends fewer.
        assert!(!wants_fewer(10, 45.0, &cfg));
        assert_eq!(desired_machines(10, 44.0, &cfg), 9);
        // A retirement may not take the others past the target.
        assert_eq!(retire_ceiling(&cfg), 50.0);
        // Unset: the band is symmetric.
        assert_eq!(retire_ceiling(&target()), 50.0 * 1.1);
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

    #[tokio::test(start_paused = true)]
    async fn step_budget_counts_the_active_machines_at_the_start_of_the_interval() {
        let cfg = AutoscalerConfig::default(); // max_step 4, interval 100 ms
        let mut budget = StepBudget::default();
        let t0 = Instant::now();
        // Six machines at the start: six acquisitions, although each one adds a machine.
        let mut active = 6;
        while budget.take(t0, active, &cfg) {
            active += 1;
            assert!(active <= 12, "the budget grew with the machines it added");
        }
        assert_eq!(active, 12);
    }
}

#[cfg(test)]
mod work_tests {
    use super::*;
    use crate::core::{MachineId, MachineState};

    fn machine(id: u32) -> MachineInfo {
        MachineInfo::new(MachineId(id), Size::Medium, Units::from_whole(100), 8)
    }

    /// One request of `weight` units held for `ms` milliseconds, answered now.
    fn answer(m: &MachineInfo, weight: u64, ms: u64) {
        m.record_held(Units::from_whole(weight), Duration::from_millis(ms));
    }

    #[tokio::test(start_paused = true)]
    async fn the_mean_is_the_work_answered_over_the_last_interval() {
        let window = Duration::from_millis(100);
        let (a, b) = (machine(1), machine(2));
        let mut meter = WorkMeter::default();
        let t0 = Instant::now();
        assert_eq!(meter.mean(t0, &[&a, &b], window), None, "no mark yet");
        meter.mark(t0, &[&a, &b], window);
        assert_eq!(meter.mean(t0, &[&a, &b], window), None, "a span under 1 ms");
        // Ten 10 ms requests of 100 units in 100 ms on the two machines: 100 units on average,
        // one machine's worth, whatever the instantaneous readings were.
        for i in 0..10 {
            answer(if i % 2 == 0 { &a } else { &b }, 100, 10);
        }
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(
            meter.mean(t1, &[&a, &b], window),
            Some(Units::from_whole(100))
        );
        meter.mark(t1, &[&a, &b], window);
        // Half of it in the next 100 ms; the mean starts from the mark at t1.
        for _ in 0..5 {
            answer(&a, 100, 10);
        }
        let t2 = t1 + Duration::from_millis(100);
        assert_eq!(
            meter.mean(t2, &[&a, &b], window),
            Some(Units::from_whole(50))
        );
        // Between ticks the span reaches back to the mark a whole window old: t1 to t2 + 50.
        meter.mark(t2, &[&a, &b], window);
        let t3 = t2 + Duration::from_millis(50);
        assert_eq!(
            meter.mean(t3, &[&a, &b], window),
            Some(Units::from_f64(5.0 * 100.0 * 10.0 / 150.0))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn only_active_machines_count_and_newcomers_from_their_start() {
        let window = Duration::from_millis(100);
        let (a, b) = (machine(1), machine(2));
        answer(&a, 100, 1000); // before the first mark: never counted
        let mut meter = WorkMeter::default();
        let t0 = Instant::now();
        meter.mark(t0, &[&a], window);
        b.set_state(MachineState::Draining);
        answer(&a, 100, 10);
        answer(&b, 100, 10); // draining: not counted
        let c = machine(3); // joined after the mark: counted from its start
        answer(&c, 100, 10);
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(
            meter.mean(t1, &[&a, &b, &c], window),
            Some(Units::from_whole(20))
        );
    }

    #[test]
    fn the_smoothed_load_adds_reservations_now_to_the_mean_work() {
        let (a, b) = (machine(1), machine(2));
        a.reserve(Units::from_whole(30));
        b.reserve(Units::from_whole(10));
        // A request in service now does not count; the mean work does.
        assert!(a.try_enqueue(Units::from_whole(100)));
        assert_eq!(smoothed_load(&[&a, &b], Units::from_whole(60)), 50.0);
        b.set_state(crate::core::MachineState::Draining);
        assert_eq!(smoothed_load(&[&a, &b], Units::from_whole(20)), 50.0);
    }

    #[test]
    fn the_retiree_check_can_use_the_mean_work() {
        let cfg = AutoscalerConfig {
            policy: ScalingPolicy::Target,
            ..AutoscalerConfig::default()
        };
        let (a, b, c) = (machine(1), machine(2), machine(3));
        for m in [&a, &b, &c] {
            m.reserve(Units::from_whole(10));
        }
        // One 100-unit request in service on a: instantaneously the others would be at
        // (10 + 110 + 10) / 200 = 65 % > 55 %, with the mean work of 40 units at 35 %.
        assert!(a.try_enqueue(Units::from_whole(100)));
        assert_eq!(pick_retiree(&[&a, &b, &c], None, &cfg), None);
        assert_eq!(
            pick_retiree(&[&a, &b, &c], Some(Units::from_whole(40)), &cfg),
            Some(2)
        );
        // With 90 units of mean work: (30 + 90) / 200 = 60 % > 55 %, none may go.
        assert_eq!(
            pick_retiree(&[&a, &b, &c], Some(Units::from_whole(90)), &cfg),
            None
        );
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
        assert_eq!(pick_retiree(&[&a, &b, &c], None, &cfg), Some(2));
    }

    #[test]
    fn never_below_min_machines() {
        let cfg = AutoscalerConfig {
            min_machines: 2,
            ..AutoscalerConfig::default()
        };
        let (a, b) = (machine(1, 100, 1), machine(2, 100, 1));
        assert_eq!(pick_retiree(&[&a, &b], None, &cfg), None);
        let c = machine(3, 100, 0);
        assert_eq!(pick_retiree(&[&a, &b, &c], None, &cfg), Some(2));
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
        assert_eq!(pick_retiree(&[&a, &b, &c], None, &cfg), None);
        // 40 + 40 + 15: 47.5 % is fine.
        let (a, b) = (machine(1, 100, 40), machine(2, 100, 40));
        assert_eq!(pick_retiree(&[&a, &b, &c], None, &cfg), Some(2));
    }

    #[test]
    fn draining_machines_are_not_candidates_and_do_not_count() {
        let cfg = AutoscalerConfig::default();
        let (a, b) = (machine(1, 100, 10), machine(2, 100, 0));
        b.set_state(MachineState::Draining);
        assert_eq!(pick_retiree(&[&a, &b], None, &cfg), None);
    }
}

#[cfg(test)]
mod undone_drains_tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn a_drain_undone_within_the_window_sets_a_floor_that_expires() {
        let mut u = UndoneDrains::default();
        let t0 = Instant::now();
        // A scale-up with no drain before it, or long after one, is not an undo.
        assert_eq!(u.acquired(t0, 3, WINDOW), None);
        u.drained(t0);
        assert_eq!(u.acquired(t0 + Duration::from_secs(11), 4, WINDOW), None);
        assert_eq!(u.floor(t0 + Duration::from_secs(11)), 0);
        // Drained 9 → 4, then two machines back within the window: at least 6 for 100 s.
        let t1 = t0 + Duration::from_secs(20);
        u.drained(t1);
        let t2 = t1 + Duration::from_millis(300);
        assert_eq!(u.acquired(t2, 5, WINDOW), Some((5, WINDOW * 10)));
        assert_eq!(u.acquired(t2, 6, WINDOW), Some((6, WINDOW * 10)));
        assert_eq!(u.floor(t2 + Duration::from_secs(99)), 6);
        assert_eq!(u.floor(t2 + Duration::from_secs(101)), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_hold_doubles_when_it_happens_again_and_resets_much_later() {
        let mut u = UndoneDrains::default();
        let t0 = Instant::now();
        u.drained(t0);
        assert_eq!(u.acquired(t0, 6, WINDOW), Some((6, WINDOW * 10)));
        // The floor expired (100 s) and the set shrank again, then had to come back:
        // within twice the hold, so the next hold is twice as long.
        let t1 = t0 + Duration::from_secs(150);
        u.drained(t1);
        assert_eq!(u.acquired(t1, 6, WINDOW), Some((6, WINDOW * 20)));
        // Long after the last hold: back to the base.
        let t2 = t1 + Duration::from_secs(1000);
        u.drained(t2);
        assert_eq!(u.acquired(t2, 5, WINDOW), Some((5, WINDOW * 10)));
    }
}
