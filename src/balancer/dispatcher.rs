//! The dispatcher actor: owns the machine table and places every new connection
//! (SPEC §1, §5).
//!
//! One task ([`Dispatcher::run`]) owns, and alone mutates:
//!
//! - the machine table (`Vec<Machine>`, active and draining machines, creation order),
//! - the `Box<dyn Strategy>`,
//! - the [`MachineFactory`] (and so the pool),
//! - the autoscaler's scale-down timer and its periodic tick.
//!
//! The tick runs inside this task's `select!`, first in a `biased` order, so a burst of
//! admissions can never starve it: drains finish, the set is topped up and unhealthy
//! machines are replaced on time however busy the command channel is. Between ticks, a
//! connection whose request found its machine past the scale-up point nudges the task
//! ([`ScaleHint`]) for an immediate scale-up check.
//!
//! Whenever the machine set, the pool or the strategy changes, the dispatcher publishes a
//! fresh [`Topology`] on a `watch` channel for the stats readers, and a fresh
//! [`RoutingTable`] (active machines + strategy) for per-request placement.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::handle::Command;
use super::placement::{CapacityFreed, Placement, PlacementShared};
use super::policy::{
    self, RecommendationWindow, ScaleDownTimer, StepBudget, UndoneDrains, WorkMeter,
};
use super::queue::{AdmissionQueue, Waiting};
use super::routing::{self, FastAdmission, Router, RoutingTable, ScaleHint};
use crate::backend::{Machine, MachineFactory};
use crate::config::Config;
use crate::core::{MachineId, StrategyKind, Units};
use crate::strategy::rng::{mix64, AtomicRng};
use crate::strategy::{self, MachineView, Strategy};
use crate::telemetry::{self, RefusalLog, ScaleEvent, ScaleEventKind, Topology, Totals};

/// The dispatcher task's state. See the module docs.
#[derive(Debug)]
pub struct Dispatcher {
    pub(super) config: Arc<Config>,
    /// Active and draining machines, creation order.
    pub(super) machines: Vec<Machine>,
    /// Shared with every connection through the routing table.
    pub(super) strategy: Arc<dyn Strategy>,
    pub(super) factory: Box<dyn MachineFactory>,
    /// Draws reservations.
    rng: SmallRng,
    /// Seed for strategies built later (switch, reload), derived from `dispatcher.seed`.
    strategy_seed: u64,
    pub(super) next_id: u32,
    pub(super) totals: Arc<Totals>,
    /// Every placement handed out; pruned of closed ones on each tick (and when it has
    /// doubled since). Used to find the connections of a draining machine.
    pub(super) placements: Vec<Weak<PlacementShared>>,
    /// Length of `placements` after the last prune.
    pruned_len: usize,
    pub(super) scale_down: ScaleDownTimer,
    /// The `target` policy's recommendations over `scale_down_after`.
    pub(super) recommendations: RecommendationWindow,
    /// The `target` policy's scale-downs that had to be undone (anti-flapping floor).
    pub(super) undone: UndoneDrains,
    /// Acquisitions in the current interval (`autoscaler.max_step`).
    pub(super) step: StepBudget,
    /// The request work of the active machines, marked on each tick (`target` policy).
    pub(super) work: WorkMeter,
    /// Draining machines that drain because their upstream went down (not scale-down):
    /// they become active again when it recovers.
    pub(super) health_drained: HashSet<MachineId>,
    /// What connections place requests with; republished by `publish`.
    routes: Arc<ArcSwap<RoutingTable>>,
    /// Connections nudge the task through it for a scale-up check between ticks.
    hint: Arc<ScaleHint>,
    /// Recent scale events, oldest first (at most `telemetry::RECENT_EVENTS`).
    events: VecDeque<ScaleEvent>,
    /// Set when `events` changed since the last publish.
    events_dirty: bool,
    /// False while the initial machines start: those are not counted as scale-ups.
    pub(super) booted: bool,
    topology_tx: watch::Sender<Arc<Topology>>,
    /// Rate-limited `warn!` for `exhausted` refusals.
    pub(super) exhausted_log: RefusalLog,
    /// Reused per admission to avoid allocating.
    pub(super) views: Vec<MachineView>,
    pub(super) view_index: Vec<usize>,
    /// Connections no machine could take, waiting for one (when the factory queues).
    pub(super) queue: AdmissionQueue,
    /// Closing placements wake the task through it while the queue is not empty.
    pub(super) freed: Arc<CapacityFreed>,
}

impl Dispatcher {
    /// Builds the dispatcher and starts the initial machines (`autoscaler.initial`, topped
    /// up to `min_machines`). Returns it with a receiver of its topology.
    pub fn new(
        config: Arc<Config>,
        factory: Box<dyn MachineFactory>,
        totals: Arc<Totals>,
    ) -> (Dispatcher, watch::Receiver<Arc<Topology>>) {
        let seed = match config.dispatcher.seed {
            0 => rand::random(),
            seed => seed,
        };
        let mut rng = SmallRng::seed_from_u64(seed);
        let strategy_seed = rng.random();
        let strategy = strategy::build(
            config.dispatcher.strategy,
            strategy_seed,
            config.autoscaler.scale_up_threshold,
        );
        let routes = Arc::new(ArcSwap::from_pointee(routing_table(
            &config,
            Vec::new(),
            strategy.clone(),
        )));
        let (topology_tx, topology_rx) = watch::channel(Arc::new(Topology {
            machines: Vec::new(),
            pool: factory.free(),
            pool_size: factory.pool_size(),
            strategy: config.dispatcher.strategy,
            events: Arc::default(),
            config: config.clone(),
        }));
        let mut dispatcher = Dispatcher {
            config,
            machines: Vec::new(),
            strategy,
            factory,
            rng,
            strategy_seed,
            next_id: 1,
            totals,
            placements: Vec::new(),
            pruned_len: 0,
            scale_down: ScaleDownTimer::default(),
            recommendations: RecommendationWindow::default(),
            undone: UndoneDrains::default(),
            step: StepBudget::default(),
            work: WorkMeter::default(),
            health_drained: HashSet::new(),
            routes,
            hint: Arc::new(ScaleHint::new()),
            events: VecDeque::new(),
            events_dirty: false,
            booted: false,
            topology_tx,
            exhausted_log: RefusalLog::default(),
            views: Vec::new(),
            view_index: Vec::new(),
            queue: AdmissionQueue::default(),
            freed: Arc::new(CapacityFreed::default()),
        };
        let initial = dispatcher.config.autoscaler.initial.clone();
        for size in initial {
            if dispatcher.acquire_sized(size).is_some() {
                continue;
            }
            if dispatcher.factory.provides(size) {
                info!(%size, "initial machine asked of backend.provider: it joins once its upstream passes a probe");
            } else {
                warn!(%size, "initial machine not available from the pool");
            }
        }
        dispatcher.top_up();
        dispatcher.booted = true;
        dispatcher.publish();
        (dispatcher, topology_rx)
    }

    /// The handle connections place requests with.
    pub fn router(&self) -> Router {
        Router {
            table: self.routes.clone(),
            hint: self.hint.clone(),
            totals: self.totals.clone(),
            freed: self.freed.clone(),
            // Derived from the strategy's seed: no extra draw from `rng`, so the reservations
            // the dispatcher draws stay what a seed always gave.
            rng: Arc::new(AtomicRng::new(mix64(self.strategy_seed ^ 0x5eed_ad31))),
        }
    }

    /// Serves commands and runs the periodic tick until every handle is dropped. The tick
    /// stops when `shutdown` fires (no scaling while the process winds down).
    pub async fn run(
        mut self,
        mut commands_rx: mpsc::Receiver<Command>,
        shutdown: CancellationToken,
    ) {
        let mut period = tick_period(&self.config);
        let mut ticker = ticker(period);
        let hint = self.hint.clone();
        let freed = self.freed.clone();
        loop {
            let next_deadline = self.queue.next_deadline();
            let expiry = async move {
                match next_deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                // NOTE: the tick comes first. Admissions arrive as fast as clients connect;
                // checked in this order, one tick per period always gets its turn.
                biased;
                _ = ticker.tick(), if !shutdown.is_cancelled() => self.tick(Instant::now()),
                _ = hint.notify.notified(), if !shutdown.is_cancelled() => {
                    self.scale_up();
                    self.serve_queue();
                    self.publish();
                }
                _ = freed.notify.notified(), if !self.queue.is_empty() => self.serve_queue(),
                () = expiry, if next_deadline.is_some() => self.serve_queue(),
                // Nothing is placed any more once the process winds down: refuse the queue.
                () = shutdown.cancelled(), if !self.queue.is_empty() => self.refuse_queue(),
                command = commands_rx.recv() => {
                    let Some(command) = command else { break };
                    self.handle(command);
                    let new_period = tick_period(&self.config);
                    if new_period != period {
                        period = new_period;
                        ticker = ticker_from_now(period);
                    }
                }
            }
        }
        debug!("dispatcher stopped");
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Admit {
                peer,
                avoid,
                reply_tx,
            } => {
                let reservation = self.draw_reservation();
                let now = Instant::now();
                let waiting = Waiting {
                    peer,
                    avoid,
                    since: now,
                    reservation,
                    reply_tx,
                    deadline: now + self.config.backend.queue_timeout,
                };
                if self.queue.is_empty() {
                    self.admit_or_queue(waiting);
                } else {
                    // First come, first served: a newcomer waits behind the queue.
                    self.enqueue(waiting);
                    self.serve_queue();
                }
            }
            Command::Tick => self.tick(Instant::now()),
            Command::SetStrategy(kind, done_tx) => {
                self.set_strategy(kind);
                if let Some(done_tx) = done_tx {
                    // The requester may have gone; the switch stands either way.
                    let _ = done_tx.send(());
                }
            }
            Command::Reconfigure(config, done) => {
                self.reconfigure(config);
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
        }
    }

    /// Places a connection from `peer`: draw a reservation, let the strategy pick among the
    /// machines it fits on, acquire a machine on the spot when it fits nowhere, then run the
    /// scale-up check.
    #[cfg(test)]
    pub(super) fn admit(
        &mut self,
        peer: SocketAddr,
        avoid: &[MachineId],
    ) -> Result<Placement, super::handle::AdmitError> {
        let reservation = self.draw_reservation();
        self.place(peer, avoid, reservation)
            .ok_or_else(|| self.refuse(peer, reservation))
    }

    pub(super) fn draw_reservation(&mut self) -> Units {
        let (min, max) = (
            self.config.load.connection_min,
            self.config.load.connection_max,
        );
        if max > min {
            Units::from_f64(self.rng.random_range(min..max))
        } else {
            Units::from_f64(min)
        }
    }

    /// Fills `views` with the active machines (and `view_index` with their table indices).
    pub(super) fn fill_views(&mut self, reservation: Units) {
        self.views.clear();
        self.view_index.clear();
        for (i, m) in self.machines.iter().enumerate() {
            if m.info.is_active() {
                self.views.push(MachineView {
                    id: m.info.id,
                    capacity: m.info.capacity,
                    used: m.info.used(),
                    // A machine whose upstream is down takes nobody, from the moment it is
                    // known, not only from the next tick's drain.
                    fits: fits(m, reservation) && m.is_healthy(),
                });
                self.view_index.push(i);
            }
        }
    }

    pub(super) fn bind(&mut self, peer: SocketAddr, reservation: Units, index: usize) -> Placement {
        let machine = self.machines[index].clone();
        let (placement, weak) = Placement::bind(
            peer,
            reservation,
            machine,
            self.totals.clone(),
            self.freed.clone(),
        );
        self.placements.push(weak);
        // Closed placements are pruned on every tick; this keeps the list bounded even if
        // ticks were held up.
        if self.placements.len() > 2 * self.pruned_len.max(1024) {
            self.prune_placements();
        }
        placement
    }

    fn prune_placements(&mut self) {
        self.placements.retain(|p| p.strong_count() > 0);
        self.pruned_len = self.placements.len();
    }

    /// The periodic check: scale up, scale down, finish drains, prune closed placements.
    pub(super) fn tick(&mut self, now: Instant) {
        self.prune_placements();
        // Retire before starting new drains: a machine whose drain starts in this tick is
        // retired in a later one at the earliest. A connection that picked up its machine's
        // handle just before the migration has submitted by then, so nothing lands on a
        // machine that is already back in the pool.
        self.finish_drains();
        self.recover_healthy();
        self.replace_unhealthy();
        self.top_up();
        self.mark_work(now);
        self.scale_up();
        // Never fewer machines while connections wait for one.
        if self.queue.is_empty() {
            self.scale_down(now);
        }
        self.serve_queue();
        self.publish();
    }

    fn set_strategy(&mut self, kind: StrategyKind) {
        if kind != self.strategy.kind() {
            info!(from = %self.strategy.kind(), to = %kind, "strategy switched");
        }
        self.strategy = strategy::build(
            kind,
            self.strategy_seed,
            self.config.autoscaler.scale_up_threshold,
        );
        self.publish();
    }

    fn reconfigure(&mut self, config: Arc<Config>) {
        self.factory.reconfigure(&config);
        self.config = config;
        // A reload applies the file's strategy again, even after a run-time switch (SPEC §6).
        let kind = self.config.dispatcher.strategy;
        self.set_strategy(kind);
        self.scale_up();
        self.serve_queue();
        self.publish();
    }

    /// Remembers a scale event for machine `index` (for the admin API and dashboard);
    /// `avg_before` is the average just before the change, the one after is read now.
    pub(super) fn record(&mut self, kind: ScaleEventKind, index: usize, avg_before: f64) {
        let info = &self.machines[index].info;
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let machines = match kind {
            ScaleEventKind::Retire => self.machines.len() - 1,
            _ => self.machines.len(),
        };
        let event = ScaleEvent {
            at_ms,
            kind,
            machine: info.name.clone(),
            size: info.size,
            machines,
            avg_before: telemetry::round2(avg_before),
            avg_after: telemetry::round2(self.average_load()),
        };
        if self.events.len() == telemetry::RECENT_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(event);
        self.events_dirty = true;
    }

    pub(super) fn active_count(&self) -> usize {
        self.machines.iter().filter(|m| m.info.is_active()).count()
    }

    pub(super) fn average_load(&self) -> f64 {
        telemetry::average_load(self.machines.iter().map(|m| &*m.info))
    }

    pub(super) fn publish(&mut self) {
        let (pool, pool_size) = (self.factory.free(), self.factory.pool_size());
        let strategy = self.strategy.kind();
        let same_set = {
            let current = self.topology_tx.borrow();
            current.pool == pool
                && current.pool_size == pool_size
                && current.strategy == strategy
                && Arc::ptr_eq(&current.config, &self.config)
                && current.machines.len() == self.machines.len()
                && current
                    .machines
                    .iter()
                    .zip(&self.machines)
                    .all(|(a, b)| Arc::ptr_eq(a, &b.info))
        };
        self.publish_routes();
        // Machine states (draining) are read live from each MachineInfo, so only the set,
        // the pool, the strategy and the event list need a new Topology.
        if !same_set || self.events_dirty {
            self.events_dirty = false;
            self.topology_tx.send_replace(Arc::new(Topology {
                machines: self.machines.iter().map(|m| m.info.clone()).collect(),
                pool,
                pool_size,
                strategy,
                events: Arc::new(self.events.iter().cloned().collect()),
                config: self.config.clone(),
            }));
        }
    }
}

impl Dispatcher {
    /// Publishes a new routing table when the active machines, the strategy or the routing
    /// settings changed.
    /// Connections may be admitted off the dispatcher when none of them can ever move (proxy
    /// mode) and no machine drained for health may be about to come back (its recovery is
    /// checked at admission by the dispatcher).
    fn fast_admission(&self) -> Option<FastAdmission> {
        let fixed = !self.machines.is_empty()
            && self.machines.iter().all(|m| !m.connections_can_move())
            && self.health_drained.is_empty();
        fixed.then(|| FastAdmission {
            reservation_min: self.config.load.connection_min,
            reservation_max: self.config.load.connection_max,
        })
    }

    pub(super) fn publish_routes(&mut self) {
        {
            // Most calls change nothing: compare before building a table.
            let current = self.routes.load();
            let mut active = self.machines.iter().filter(|m| m.info.is_active());
            let unchanged = current.routing == self.config.dispatcher.routing
                && current.admission == self.fast_admission()
                && current.nudge_above == policy::scale_up_goal(&self.config.autoscaler)
                && Arc::ptr_eq(&current.strategy, &self.strategy)
                && current
                    .machines
                    .iter()
                    .all(|m| active.next().is_some_and(|a| Arc::ptr_eq(&a.info, &m.info)))
                && active.next().is_none();
            if unchanged {
                return;
            }
        }
        let active = self
            .machines
            .iter()
            .filter(|m| m.info.is_active())
            .cloned()
            .collect();
        let mut table = routing_table(&self.config, active, self.strategy.clone());
        table.admission = self.fast_admission();
        if !routing::same_routes(&self.routes.load(), &table) {
            self.routes.store(Arc::new(table));
        }
    }
}

/// The routing table for `machines` (active, creation order) under `config`.
fn routing_table(
    config: &Config,
    machines: Vec<Machine>,
    strategy: Arc<dyn Strategy>,
) -> RoutingTable {
    RoutingTable {
        machines,
        strategy,
        routing: config.dispatcher.routing,
        nudge_above: policy::scale_up_goal(&config.autoscaler),
        admission: None,
    }
}

/// Whether `reservation` fits on `machine`: `used + reservation ≤ capacity`, and its
/// upstream (if any) is below its `max_connections`.
pub(super) fn fits(machine: &Machine, reservation: Units) -> bool {
    machine.info.used() + reservation <= machine.info.capacity && machine.has_connection_room()
}

/// `autoscaler.interval`, at least 1 ms.
fn tick_period(config: &Config) -> Duration {
    config.autoscaler.interval.max(Duration::from_millis(1))
}

/// The tick timer; its first tick is immediate.
fn ticker(period: Duration) -> Interval {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker
}

/// The tick timer after a reload changed the period: first tick one period from now.
fn ticker_from_now(period: Duration) -> Interval {
    let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker
}
