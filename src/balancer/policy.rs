//! The autoscale policy: when to acquire and when to retire machines (SPEC §5).
//!
//! Pure functions and a small timer struct, unit-tested under paused time:
//! [`size_preference`] (which size to try next), [`ScaleDownTimer`] (has the average stayed
//! low long enough?) and [`pick_retiree`] (which machine may go).
//!
//! The dispatcher applies them: on its periodic tick (every `autoscaler.interval`, inside
//! the dispatcher task) and right after every admission, so scale-up reacts within the
//! admission that pushed the average past the threshold, not a tick later.

use tokio::time::Instant;

use crate::config::AutoscalerConfig;
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

/// Tracks how long the average load has stayed below `scale_down_threshold`.
#[derive(Debug, Default)]
pub struct ScaleDownTimer {
    /// When the current low stretch began (None while the average is not low).
    low_since: Option<Instant>,
}

impl ScaleDownTimer {
    /// Records the average at `now`; returns true when it has been below the threshold for
    /// `scale_down_after` — then the stretch restarts, so retirements are spaced by at least
    /// `scale_down_after` ("retire one machine, then wait again").
    pub fn observe(&mut self, now: Instant, avg_load: f64, cfg: &AutoscalerConfig) -> bool {
        if avg_load >= cfg.scale_down_threshold {
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
/// stays at or below `scale_up_threshold` (SPEC §5).
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
    if used.percent_of(capacity) > cfg.scale_up_threshold {
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
        assert!(!t.observe(start, 5.0, &cfg));
        assert!(!t.observe(start + Duration::from_secs(9), 5.0, &cfg));
        // A single high sample restarts the stretch.
        assert!(!t.observe(start + Duration::from_secs(9), 30.0, &cfg));
        assert!(!t.observe(start + Duration::from_secs(10), 5.0, &cfg));
        assert!(!t.observe(start + Duration::from_secs(19), 5.0, &cfg));
        assert!(t.observe(start + Duration::from_secs(20), 5.0, &cfg));
        // ... then waits again.
        assert!(!t.observe(start + Duration::from_secs(21), 5.0, &cfg));
        assert!(t.observe(start + Duration::from_secs(30), 5.0, &cfg));
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
