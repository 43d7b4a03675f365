//! The dispatcher's scaling steps: acquire, drain, retire, replace (SPEC §5).
//!
//! All of these run inside the dispatcher task (they are methods of [`Dispatcher`]), so
//! they see and change the machine table, the pool and the placements atomically. The
//! rules that decide *when* live in [`super::policy`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use tokio::time::Instant;
use tracing::{info, warn};

use super::dispatcher::Dispatcher;
use super::placement::PlacementShared;
use super::policy;
use crate::config::{Routing, ScalingPolicy};
use crate::core::{MachineId, MachineState, Size, Units};
use crate::strategy::PickRequest;
use crate::telemetry::{self, ScaleEventKind};

impl Dispatcher {
    /// Acquires machines until `min_machines` are active (at boot, and again whenever the
    /// pool allows it after machines were lost, e.g. proxy upstreams that went down).
    pub(super) fn top_up(&mut self) {
        while self.active_count() < self.config.autoscaler.min_machines {
            if self.acquire_one().is_none() {
                break;
            }
        }
    }

    /// Acquires machines when the policy wants more ([`policy::wants_more`]), until the
    /// average is back at [`policy::scale_up_goal`] — bounded by the step budget
    /// (`autoscaler.max_step` per interval), by the pool and `max_machines`, and by the work
    /// that could use a new machine: never more active machines than open connections plus
    /// (with per-request routing) queued requests. Each newcomer is rebalanced at once.
    pub(super) fn scale_up(&mut self) {
        let config = self.config.clone();
        let cfg = &config.autoscaler;
        let now = Instant::now();
        // `target`: above the band on average over the last interval *and* now, so that
        // neither one coarse request in service nor a backlog that has already drained (a
        // stall of the host) acquires a machine. (`threshold`: the same reading twice.)
        if !policy::wants_more(self.policy_load(now), cfg)
            || !policy::wants_more(self.average_load(), cfg)
        {
            return;
        }
        let goal = policy::scale_up_goal(cfg);
        while self.policy_load(now) > goal {
            let active = self.active_count();
            if active >= self.usable_work() || !self.step.take(Instant::now(), active, cfg) {
                break;
            }
            let Some(index) = self.acquire_one() else {
                break;
            };
            self.rebalance_onto(index);
            if cfg.policy == ScalingPolicy::Target {
                let active = self.active_count();
                if let Some((floor, hold)) = self.undone.acquired(now, active, cfg.scale_down_after)
                {
                    info!(
                        machines = floor,
                        hold_s = hold.as_secs(),
                        "scale-down undone: keeping at least this many machines"
                    );
                }
            }
        }
    }

    /// The average load the policy acts on: `threshold`, the average now (SPEC §5);
    /// `target`, with the request work averaged over the last `autoscaler.interval`
    /// ([`policy::WorkMeter`]; the average now until a tick has marked the work).
    pub(super) fn policy_load(&self, now: Instant) -> f64 {
        match self.smoothed_work(now) {
            Some(work) => {
                let infos: Vec<_> = self.machines.iter().map(|m| &*m.info).collect();
                policy::smoothed_load(&infos, work)
            }
            None => self.average_load(),
        }
    }

    /// The `target` policy's time-averaged request work of the active machines; `None`
    /// for the threshold policy (or before the first tick).
    fn smoothed_work(&self, now: Instant) -> Option<Units> {
        let cfg = &self.config.autoscaler;
        if cfg.policy != ScalingPolicy::Target {
            return None;
        }
        let infos: Vec<_> = self.machines.iter().map(|m| &*m.info).collect();
        self.work.mean(now, &infos, cfg.interval)
    }

    /// Marks the active machines' cumulative request work for [`Self::policy_load`].
    pub(super) fn mark_work(&mut self, now: Instant) {
        let infos: Vec<_> = self.machines.iter().map(|m| &*m.info).collect();
        self.work.mark(now, &infos, self.config.autoscaler.interval);
    }

    /// How many machines the current work could keep busy: each open connection can hold a
    /// machine (its reservation can move), and under per-request routing each queued request
    /// shows work that a new machine would take from now on.
    fn usable_work(&self) -> usize {
        let per_request = self.config.dispatcher.routing == Routing::Request;
        let total: u64 = self
            .machines
            .iter()
            .filter(|m| m.info.is_active())
            .map(|m| m.info.connections() + if per_request { m.info.queued() } else { 0 })
            .sum();
        usize::try_from(total).unwrap_or(usize::MAX)
    }

    /// Scale-up rebalance (SPEC §9): moves connections, with their reservations, from the
    /// machines more than `autoscaler.rebalance_tolerance` points above the average onto the
    /// newcomer at `index`, hottest machine first, until none is that far above or the
    /// newcomer reaches the average; a connection moves only if that narrows the gap
    /// between the two machines. Replies keep their order: a moved connection's queued
    /// requests finish where they are (the session awaits each reply in order).
    pub(super) fn rebalance_onto(&mut self, index: usize) {
        let tolerance = self.config.autoscaler.rebalance_tolerance;
        let newcomer = self.machines[index].clone();
        if tolerance <= 0.0 || !newcomer.connections_can_move() {
            return;
        }
        // The live connections per machine, found once.
        let mut by_machine: HashMap<MachineId, Vec<Arc<PlacementShared>>> = HashMap::new();
        for shared in self.placements.iter().filter_map(Weak::upgrade) {
            if let Some(id) = shared.machine_id() {
                by_machine.entry(id).or_default().push(shared);
            }
        }
        let avg = self.average_load();
        let mut moved = 0;
        while newcomer.info.load_percent() < avg {
            let hottest = self
                .machines
                .iter()
                .filter(|m| m.info.is_active() && m.info.id != newcomer.info.id)
                .filter(|m| by_machine.get(&m.info.id).is_some_and(|c| !c.is_empty()))
                .max_by(|a, b| a.info.load_percent().total_cmp(&b.info.load_percent()))
                .cloned();
            let Some(hot) = hottest else { break };
            if hot.info.load_percent() <= avg + tolerance {
                break;
            }
            let Some(shared) = by_machine.get_mut(&hot.info.id).and_then(Vec::pop) else {
                break;
            };
            // Only a move that narrows the gap between the two machines: one that would
            // leave the newcomer as far above as the machine it relieves was below only
            // mirrors the imbalance. Such a connection stays; a smaller one may still move.
            let r = shared.reservation;
            let gap_before = hot.info.load_percent() - newcomer.info.load_percent();
            let hot_after = hot.info.used().saturating_sub(r);
            let new_after = newcomer.info.used() + r;
            let gap_after = hot_after.percent_of(hot.info.capacity)
                - new_after.percent_of(newcomer.info.capacity);
            if gap_after.abs() >= gap_before.abs() {
                continue;
            }
            if shared.move_from(&hot, || Some(newcomer.clone())) {
                moved += 1;
            }
        }
        if moved > 0 {
            info!(
                machine = %newcomer.info.name,
                moved_connections = moved,
                load = telemetry::round2(newcomer.info.load_percent()),
                avg = telemetry::round2(avg),
                "scale up: connections rebalanced onto the new machine"
            );
        }
    }

    /// Acquires one machine of the preferred size, falling back per
    /// [`policy::size_preference`]; `None` when `max_machines` or the pool stops it.
    /// Returns its index in the table.
    fn acquire_one(&mut self) -> Option<usize> {
        self.acquire_fitting(Units::ZERO)
    }

    /// [`Self::acquire_one`] for a connection that fits nowhere: only sizes whose capacity
    /// can hold `reservation` are tried, so no machine is taken from the pool in vain.
    pub(super) fn acquire_fitting(&mut self, reservation: Units) -> Option<usize> {
        // Machines drained for health are waiting for their upstream, not capacity in use.
        let counted = self.machines.len() - self.health_drained.len();
        if counted >= self.config.autoscaler.max_machines {
            return None;
        }
        let machines = &self.config.machines;
        let sizes: Vec<_> = policy::size_preference(self.config.autoscaler.scale_up_size)
            .into_iter()
            .filter(|&size| Units::from_whole(machines.capacity(size)) >= reservation)
            .collect();
        sizes.into_iter().find_map(|size| self.acquire_sized(size))
    }

    pub(super) fn acquire_sized(&mut self, size: Size) -> Option<usize> {
        // Nothing free and nobody to ask: no try (it would build a machine to throw away).
        // Admission comes here on every connection while the pool is dry.
        if self.factory.free().get(size) == 0 && !self.factory.provides(size) {
            return None;
        }
        let avg_before = self.average_load();
        let id = MachineId(self.next_id);
        let machine = self.factory.acquire(size, id).ok()?;
        self.next_id += 1;
        if self.booted {
            self.totals.scaled_up();
        }
        self.scale_down.reset();
        self.recommendations.reset();
        let (name, capacity, machines) = (
            &machine.info.name,
            machine.info.capacity.as_f64(),
            self.machines.len() + 1,
        );
        if self.booted {
            info!(machine = %name, %size, capacity, machines, "scale up: machine added");
        } else {
            info!(machine = %name, %size, capacity, machines, "initial machine started");
        }
        self.machines.push(machine);
        let index = self.machines.len() - 1;
        if self.booted {
            self.record(ScaleEventKind::Up, index, avg_before);
        }
        Some(index)
    }

    /// The scale-down check of one tick. `threshold`: one machine once the average has
    /// stayed below `scale_down_threshold` for `scale_down_after`. `target`: down to the
    /// highest recommendation of the last `scale_down_after` at once (the HPA's
    /// stabilization window), each retiree still checked by [`policy::pick_retiree`].
    pub(super) fn scale_down(&mut self, now: Instant) {
        let config = self.config.clone();
        let cfg = &config.autoscaler;
        let (avg, active) = (self.policy_load(now), self.active_count());
        let work = self.smoothed_work(now);
        let to_drain = match cfg.policy {
            ScalingPolicy::Threshold => {
                let fewer = policy::wants_fewer(active, avg, cfg);
                usize::from(self.scale_down.observe(now, fewer, cfg))
            }
            ScalingPolicy::Target => {
                let desired = policy::desired_machines(active, avg, cfg);
                match self
                    .recommendations
                    .observe(now, desired, cfg.scale_down_after)
                {
                    // Never below the count an undone scale-down went back to.
                    Some(highest) => active.saturating_sub(highest.max(self.undone.floor(now))),
                    None => 0,
                }
            }
        };
        // The `target` window is not restarted by a drain (as in the HPA): the set may
        // shrink again as soon as the highest recommendation of the last `scale_down_after`
        // is lower, e.g. once the readings taken while the load fell have left it.
        for _ in 0..to_drain {
            let infos: Vec<_> = self.machines.iter().map(|m| &*m.info).collect();
            let Some(index) = policy::pick_retiree(&infos, work, cfg) else {
                break;
            };
            self.drain(index, "load");
            self.undone.drained(now);
        }
    }

    /// Starts draining machine `index`: no new connections; its connections move to other
    /// machines with their reservations (when they can move); its queued requests finish
    /// where they are.
    pub(super) fn drain(&mut self, index: usize, reason: &'static str) {
        let avg_before = self.average_load();
        let leaving = self.machines[index].clone();
        leaving.info.set_state(MachineState::Draining);
        // A connection that cannot move keeps its reservation here until it closes; the
        // machine retires after that.
        let live: Vec<Arc<PlacementShared>> = if leaving.connections_can_move() {
            self.placements.iter().filter_map(Weak::upgrade).collect()
        } else {
            Vec::new()
        };
        let mut moved = 0;
        for shared in live {
            // No other active machine (min_machines ≥ 1 keeps one): stay and finish here.
            let target = || {
                let target = self.migration_target(shared.peer, shared.reservation)?;
                Some(self.machines[target].clone())
            };
            if shared.move_from(&leaving, target) {
                moved += 1;
            }
        }
        self.record(ScaleEventKind::Drain, index, avg_before);
        info!(
            machine = %leaving.info.name,
            moved_connections = moved,
            queued = leaving.info.queued(),
            reason,
            "scale down: machine draining"
        );
    }

    /// An active machine that cannot take new connections any more (proxy mode: its
    /// upstream is down or ejected) drains, and the autoscaler acquires a replacement —
    /// which does not count the drained machine against `max_machines`.
    pub(super) fn replace_unhealthy(&mut self) {
        let down: Vec<usize> = (0..self.machines.len())
            .filter(|&i| self.machines[i].info.is_active() && !self.machines[i].is_healthy())
            .collect();
        for index in down {
            warn!(machine = %self.machines[index].info.name, "upstream down: machine draining");
            self.health_drained.insert(self.machines[index].info.id);
            self.drain(index, "upstream down");
            if self.acquire_one().is_none() {
                warn!("no healthy upstream left in the pool to replace it");
            }
        }
    }

    /// A machine drained because its upstream went down, and not retired yet (its
    /// connections hold it), is active again as soon as the upstream is back: capacity that
    /// recovers takes new clients at once instead of waiting for its last connection.
    pub(super) fn recover_healthy(&mut self) {
        for machine in &self.machines {
            let id = machine.info.id;
            if machine.info.state() == MachineState::Draining
                && self.health_drained.contains(&id)
                && machine.is_healthy()
            {
                machine.info.set_state(MachineState::Active);
                self.health_drained.remove(&id);
                info!(machine = %machine.info.name, "upstream up again: machine active");
            }
        }
    }

    /// Where a connection of a draining machine goes (index into the table): the
    /// strategy's pick among the active machines it fits on, else the least-loaded active
    /// machine — a connection is never dropped (SPEC §5).
    fn migration_target(&mut self, peer: SocketAddr, reservation: Units) -> Option<usize> {
        self.fill_views(reservation);
        let request = PickRequest {
            client_ip: peer.ip(),
            reservation,
        };
        let picked = self
            .strategy
            .pick(&self.views, &request)
            .filter(|&v| v < self.views.len() && self.views[v].fits)
            .or_else(|| {
                // Least loaded; `min_by` keeps the first of equals, i.e. the older machine.
                (0..self.views.len()).min_by(|&a, &b| {
                    let (a, b) = (&self.views[a], &self.views[b]);
                    (a.used.0 as u128 * b.capacity.0 as u128)
                        .cmp(&(b.used.0 as u128 * a.capacity.0 as u128))
                })
            })?;
        Some(self.view_index[picked])
    }

    /// Retires draining machines that have no connections and nothing queued.
    pub(super) fn finish_drains(&mut self) {
        let mut i = 0;
        // Pairs with the fence of `fast_admit`: a connection that reserved on a machine
        // before seeing it draining is seen here.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        while i < self.machines.len() {
            let info = &self.machines[i].info;
            let done = info.state() == MachineState::Draining
                && info.connections() == 0
                && info.queued() == 0;
            if done {
                // A draining machine no longer counts in the average: it is the same
                // before and after its retirement.
                let avg = self.average_load();
                self.record(ScaleEventKind::Retire, i, avg);
                let machine = self.machines.remove(i);
                self.health_drained.remove(&machine.info.id);
                // Unlist it before marking it retired, so readers never see "retired".
                self.publish();
                machine.info.set_state(MachineState::Retired);
                self.factory.release(&machine);
                self.totals.scaled_down();
                info!(
                    machine = %machine.info.name,
                    machines = self.machines.len(),
                    "scale down: machine retired"
                );
            } else {
                i += 1;
            }
        }
        // After the retirements: a machine whose drain starts here retires in a later tick.
        self.drain_retiring();
    }

    /// Drains the machines the factory says are leaving (proxy mode: their upstream was
    /// removed by a reload or the admin API). Their open connections stay until they close;
    /// the machine then retires and the factory takes the upstream out of the pool.
    fn drain_retiring(&mut self) {
        for id in self.factory.retiring() {
            // Not "drained for health" any more: it must not come back when healthy.
            self.health_drained.remove(&id);
            let Some(index) = self.machines.iter().position(|m| m.info.id == id) else {
                continue;
            };
            if self.machines[index].info.is_active() {
                info!(machine = %self.machines[index].info.name, "upstream removed: machine draining");
                self.drain(index, "upstream removed");
            }
        }
    }
}
