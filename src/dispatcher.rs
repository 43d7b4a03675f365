//! The dispatcher: owns the machine table and places every new connection (SPEC §1, §5).
//!
//! One task ([`Dispatcher::run`]) owns, and alone mutates:
//!
//! - the machine table (`Vec<MachineHandle>`, active and draining machines, creation order),
//! - the `Box<dyn Strategy>`,
//! - the [`MachineFactory`] (and so the pool),
//! - the autoscaler's scale-down timer.
//!
//! Everybody else talks to it through [`Command`]s on a bounded channel via a cloneable
//! [`DispatcherHandle`]: connections ask to be admitted, the autoscaler ticks, the admin API
//! switches strategy, a reload swaps the configuration. Serialising all of this through one
//! task makes admission atomic (check-fits, reserve, scale-up are one step) without locks.
//!
//! The request path does NOT come through here: an admitted connection gets a
//! [`Placement`] and submits jobs to its machine's queue directly.
//!
//! Whenever the machine set, the pool or the strategy changes, the dispatcher publishes a
//! fresh [`Topology`] on a `watch` channel for the stats readers.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::autoscaler::{self, ScaleDownTimer};
use crate::config::Config;
use crate::core::{MachineId, MachineState, Size, StrategyKind, Units};
use crate::factory::MachineFactory;
use crate::listener::RefusalLog;
use crate::machine::MachineHandle;
use crate::stats::{self, ScaleEvent, ScaleEventKind, Topology, Totals};
use crate::strategy::{self, MachineView, PickRequest, Strategy};

/// Messages to the dispatcher task.
#[derive(Debug)]
pub enum Command {
    /// Place a new connection from `peer`.
    Admit {
        /// The client.
        peer: SocketAddr,
        /// Where the outcome goes; the connection task awaits it.
        reply_tx: oneshot::Sender<Result<Placement, AdmitError>>,
    },
    /// Periodic autoscaler check (scale up, scale down, finish drains).
    Tick,
    /// Switch the strategy at run time; the optional sender is signalled once the new
    /// strategy is in force (the admin API answers only then).
    SetStrategy(StrategyKind, Option<oneshot::Sender<()>>),
    /// Apply a reloaded configuration (strategy, thresholds, pool sizes, ...).
    Reconfigure(Arc<Config>),
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AdmitError {
    /// No machine fits and the pool (or `max_machines`) can supply none.
    #[error("no machine can take the connection (reservation {reservation}, pool exhausted)")]
    Exhausted {
        /// The reservation that did not fit.
        reservation: Units,
    },
    /// The dispatcher has stopped.
    #[error("server is shutting down")]
    ShuttingDown,
}

/// The sending side of the dispatcher's command channel.
#[derive(Debug, Clone)]
pub struct DispatcherHandle {
    commands_tx: mpsc::Sender<Command>,
}

impl DispatcherHandle {
    /// Asks for a placement for a connection from `peer`.
    ///
    /// # Errors
    ///
    /// [`AdmitError::Exhausted`] when nothing fits and no machine can be acquired,
    /// [`AdmitError::ShuttingDown`] when the dispatcher is gone.
    pub async fn admit(&self, peer: SocketAddr) -> Result<Placement, AdmitError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.commands_tx
            .send(Command::Admit { peer, reply_tx })
            .await
            .map_err(|_| AdmitError::ShuttingDown)?;
        reply_rx.await.map_err(|_| AdmitError::ShuttingDown)?
    }

    /// Sends a command without waiting for its effect.
    ///
    /// # Errors
    ///
    /// [`AdmitError::ShuttingDown`] when the dispatcher is gone.
    pub async fn send(&self, command: Command) -> Result<(), AdmitError> {
        self.commands_tx
            .send(command)
            .await
            .map_err(|_| AdmitError::ShuttingDown)
    }

    /// The raw sender (for the autoscaler's ticker).
    pub fn sender(&self) -> mpsc::Sender<Command> {
        self.commands_tx.clone()
    }
}

// === impl Placement ===

/// A connection's binding to a machine, with the reservation it holds there.
///
/// Owned by the connection task. Dropping it releases the reservation from whichever
/// machine the connection is on at that moment (the dispatcher may have moved it while its
/// machine drained), so reservations can never leak.
#[derive(Debug)]
pub struct Placement {
    shared: Arc<PlacementShared>,
}

#[derive(Debug)]
struct PlacementShared {
    peer: SocketAddr,
    reservation: Units,
    totals: Arc<Totals>,
    /// The current machine; swapped by the dispatcher during a drain. `None` once closed.
    ///
    /// NOTE: a std mutex held for a few instructions, never across an `.await`. Both the
    /// connection's close and the dispatcher's migration take it, which is what makes
    /// "move the reservation" and "release the reservation" mutually exclusive.
    machine: Mutex<Option<MachineHandle>>,
}

impl PlacementShared {
    fn lock(&self) -> MutexGuard<'_, Option<MachineHandle>> {
        // A poisoned lock only means a panic elsewhere while holding it; the Option inside
        // is still consistent (every critical section is a single assignment).
        self.machine.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Placement {
    /// The machine the connection is on now.
    ///
    /// # Panics
    ///
    /// Never: the machine is only taken by `Drop`.
    pub fn machine(&self) -> MachineHandle {
        self.shared
            .lock()
            .clone()
            .expect("a live placement always has a machine")
    }

    /// The reservation held.
    pub fn reservation(&self) -> Units {
        self.shared.reservation
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.shared.peer
    }
}

impl Drop for Placement {
    fn drop(&mut self) {
        if let Some(machine) = self.shared.lock().take() {
            machine.info.reserved.sub(self.shared.reservation);
            machine.info.connections.fetch_sub(1, Ordering::Relaxed);
        }
        self.shared
            .totals
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

// === impl Dispatcher ===

/// The dispatcher task's state. See the module docs.
#[derive(Debug)]
pub struct Dispatcher {
    config: Arc<Config>,
    /// Active and draining machines, creation order.
    machines: Vec<MachineHandle>,
    strategy: Box<dyn Strategy>,
    factory: Box<dyn MachineFactory>,
    /// Draws reservations.
    rng: SmallRng,
    /// Seed for strategies built later (switch, reload), derived from `dispatcher.seed`.
    strategy_seed: u64,
    next_id: u32,
    totals: Arc<Totals>,
    /// Every placement handed out; pruned of closed ones on each tick. Used to find the
    /// connections of a draining machine.
    placements: Vec<Weak<PlacementShared>>,
    scale_down: ScaleDownTimer,
    /// Recent scale events, oldest first (at most `stats::RECENT_EVENTS`).
    events: std::collections::VecDeque<ScaleEvent>,
    /// Set when `events` changed since the last publish.
    events_dirty: bool,
    /// False while the initial machines start: those are not counted as scale-ups.
    booted: bool,
    topology_tx: watch::Sender<Arc<Topology>>,
    /// Rate-limited `warn!` for `exhausted` refusals.
    exhausted_log: RefusalLog,
    /// Reused per admission to avoid allocating.
    views: Vec<MachineView>,
    view_index: Vec<usize>,
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
        let strategy = strategy::build(config.dispatcher.strategy, strategy_seed);
        let (topology_tx, topology_rx) = watch::channel(Arc::new(Topology {
            machines: Vec::new(),
            pool: factory.free(),
            strategy: config.dispatcher.strategy,
            events: Arc::default(),
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
            scale_down: ScaleDownTimer::default(),
            events: std::collections::VecDeque::new(),
            events_dirty: false,
            booted: false,
            topology_tx,
            exhausted_log: RefusalLog::default(),
            views: Vec::new(),
            view_index: Vec::new(),
        };
        let initial = dispatcher.config.autoscaler.initial.clone();
        for size in initial {
            if dispatcher.acquire_sized(size).is_none() {
                warn!(%size, "initial machine not available from the pool");
            }
        }
        dispatcher.top_up();
        dispatcher.booted = true;
        dispatcher.publish();
        (dispatcher, topology_rx)
    }

    /// Serves commands until every [`DispatcherHandle`] is dropped.
    pub async fn run(mut self, mut commands_rx: mpsc::Receiver<Command>) {
        while let Some(command) = commands_rx.recv().await {
            match command {
                Command::Admit { peer, reply_tx } => {
                    let result = self.admit(peer);
                    if let Err(Ok(placement)) = reply_tx.send(result) {
                        // The connection went away while waiting; dropping the placement
                        // releases its reservation again.
                        drop(placement);
                    }
                }
                Command::Tick => self.tick(Instant::now()),
                Command::SetStrategy(kind, done_tx) => {
                    self.set_strategy(kind);
                    if let Some(done_tx) = done_tx {
                        // The requester may have given up waiting; nothing to undo then.
                        let _ = done_tx.send(());
                    }
                }
                Command::Reconfigure(config) => self.reconfigure(config),
            }
        }
        debug!("dispatcher stopped");
    }

    /// Places a connection from `peer`: draw a reservation, let the strategy pick among the
    /// machines it fits on, acquire a machine on the spot when it fits nowhere, then run the
    /// scale-up check.
    fn admit(&mut self, peer: SocketAddr) -> Result<Placement, AdmitError> {
        let reservation = self.draw_reservation();
        let request = PickRequest {
            client_ip: peer.ip(),
            reservation,
        };
        self.fill_views(reservation);
        let picked = self
            .strategy
            .pick(&self.views, &request)
            // Defence in depth: a strategy must never return a machine that does not fit.
            .filter(|&v| v < self.views.len() && self.views[v].fits)
            .map(|v| self.view_index[v]);
        let index = match picked {
            Some(index) => index,
            // Fits nowhere: the autoscaler is asked for a machine on the spot (SPEC §1).
            None => match self.acquire_fitting(reservation) {
                Some(index) if fits(&self.machines[index], reservation) => index,
                _ => {
                    self.totals.connection_rejected(reservation);
                    self.publish();
                    debug!(%peer, %reservation, "connection refused: pool exhausted");
                    if let Some(refused) = self.exhausted_log.refused(Instant::now()) {
                        warn!(
                            refused,
                            machines = self.machines.len(),
                            "connections refused (exhausted: no machine fits, pool empty) since the last report"
                        );
                    }
                    return Err(AdmitError::Exhausted { reservation });
                }
            },
        };
        let placement = self.bind(peer, reservation, index);
        self.scale_up();
        self.publish();
        Ok(placement)
    }

    fn draw_reservation(&mut self) -> Units {
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
    fn fill_views(&mut self, reservation: Units) {
        self.views.clear();
        self.view_index.clear();
        for (i, m) in self.machines.iter().enumerate() {
            if m.info.is_active() {
                self.views.push(MachineView {
                    id: m.info.id,
                    capacity: m.info.capacity,
                    used: m.info.used(),
                    fits: fits(m, reservation),
                });
                self.view_index.push(i);
            }
        }
    }

    fn bind(&mut self, peer: SocketAddr, reservation: Units, index: usize) -> Placement {
        let machine = self.machines[index].clone();
        machine.info.reserved.add(reservation);
        machine.info.connections.fetch_add(1, Ordering::Relaxed);
        self.totals
            .connections_admitted
            .fetch_add(1, Ordering::Relaxed);
        self.totals.connections_open.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(PlacementShared {
            peer,
            reservation,
            totals: self.totals.clone(),
            machine: Mutex::new(Some(machine)),
        });
        self.placements.push(Arc::downgrade(&shared));
        Placement { shared }
    }

    /// Acquires machines until `min_machines` are active (at boot, and again whenever the
    /// pool allows it after machines were lost, e.g. proxy upstreams that went down).
    fn top_up(&mut self) {
        while self.active_count() < self.config.autoscaler.min_machines {
            if self.acquire_one().is_none() {
                break;
            }
        }
    }

    /// Acquires machines while the average load is above `scale_up_threshold`.
    fn scale_up(&mut self) {
        let threshold = self.config.autoscaler.scale_up_threshold;
        while self.average_load() > threshold {
            if self.acquire_one().is_none() {
                break;
            }
        }
    }

    /// Acquires one machine of the preferred size, falling back per
    /// [`autoscaler::size_preference`]; `None` when `max_machines` or the pool stops it.
    /// Returns its index in the table.
    fn acquire_one(&mut self) -> Option<usize> {
        self.acquire_fitting(Units::ZERO)
    }

    /// [`Self::acquire_one`] for a connection that fits nowhere: only sizes whose capacity
    /// can hold `reservation` are tried, so no machine is taken from the pool in vain.
    fn acquire_fitting(&mut self, reservation: Units) -> Option<usize> {
        if self.machines.len() >= self.config.autoscaler.max_machines {
            return None;
        }
        let machines = &self.config.machines;
        let sizes: Vec<_> = autoscaler::size_preference(self.config.autoscaler.scale_up_size)
            .into_iter()
            .filter(|&size| Units::from_whole(machines.capacity(size)) >= reservation)
            .collect();
        sizes.into_iter().find_map(|size| self.acquire_sized(size))
    }

    fn acquire_sized(&mut self, size: Size) -> Option<usize> {
        let id = MachineId(self.next_id);
        let machine = self.factory.acquire(size, id).ok()?;
        self.next_id += 1;
        if self.booted {
            self.totals.scale_ups.fetch_add(1, Ordering::Relaxed);
        }
        self.scale_down.reset();
        let (name, capacity, machines) = (
            &machine.info.name,
            machine.info.capacity,
            self.machines.len() + 1,
        );
        if self.booted {
            info!(machine = %name, %size, %capacity, machines, "scale up: machine added");
        } else {
            info!(machine = %name, %size, %capacity, machines, "initial machine started");
        }
        self.machines.push(machine);
        let index = self.machines.len() - 1;
        if self.booted {
            self.record(ScaleEventKind::Up, index);
        }
        Some(index)
    }

    /// The periodic check: scale up, scale down, finish drains, prune closed placements.
    fn tick(&mut self, now: Instant) {
        self.placements.retain(|p| p.strong_count() > 0);
        // Retire before starting new drains: a machine whose drain starts in this tick is
        // retired in a later one at the earliest. A connection that picked up its machine's
        // handle just before the migration has submitted by then, so nothing lands on a
        // machine that is already back in the pool.
        self.finish_drains();
        self.replace_down_upstreams();
        self.top_up();
        self.scale_up();
        let avg = self.average_load();
        if self.scale_down.observe(now, avg, &self.config.autoscaler) {
            let infos: Vec<_> = self.machines.iter().map(|m| &*m.info).collect();
            if let Some(index) = autoscaler::pick_retiree(&infos, &self.config.autoscaler) {
                self.drain(index);
            }
        }
        self.publish();
    }

    /// Starts draining machine `index`: no new connections; its connections move to other
    /// machines with their reservations; its queued requests finish where they are.
    fn drain(&mut self, index: usize) {
        let leaving = self.machines[index].clone();
        leaving.info.set_state(MachineState::Draining);
        // A proxied connection is a TCP stream to this machine's upstream: it cannot move.
        // It keeps its reservation here until it closes; the machine retires after that.
        let live: Vec<Arc<PlacementShared>> = if leaving.info.upstream.is_some() {
            Vec::new()
        } else {
            self.placements.iter().filter_map(Weak::upgrade).collect()
        };
        let mut moved = 0;
        for shared in live {
            // Holding the placement's lock while moving makes the move and a concurrent
            // close of the connection mutually exclusive: the reservation is released from
            // exactly the machine it is on.
            let mut slot = shared.lock();
            if !matches!(&*slot, Some(m) if m.info.id == leaving.info.id) {
                continue;
            }
            let Some(target) = self.migration_target(shared.peer, shared.reservation) else {
                // No other active machine (min_machines ≥ 1 keeps one): stay and finish here.
                continue;
            };
            let target = self.machines[target].clone();
            leaving.info.reserved.sub(shared.reservation);
            leaving.info.connections.fetch_sub(1, Ordering::Relaxed);
            target.info.reserved.add(shared.reservation);
            target.info.connections.fetch_add(1, Ordering::Relaxed);
            *slot = Some(target);
            moved += 1;
        }
        self.record(ScaleEventKind::Drain, index);
        info!(
            machine = %leaving.info.name,
            moved_connections = moved,
            queued = leaving.info.queued.load(Ordering::Relaxed),
            "scale down: machine draining"
        );
    }

    /// Proxy mode: an active machine whose upstream failed its probe (or a connect) takes no
    /// new connections — it drains — and the autoscaler acquires a replacement.
    fn replace_down_upstreams(&mut self) {
        let down: Vec<usize> = (0..self.machines.len())
            .filter(|&i| {
                let info = &self.machines[i].info;
                info.is_active() && info.upstream.as_ref().is_some_and(|u| !u.is_healthy())
            })
            .collect();
        for index in down {
            warn!(machine = %self.machines[index].info.name, "upstream down: machine draining");
            self.drain(index);
            if self.acquire_one().is_none() {
                warn!("no healthy upstream left in the pool to replace it");
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
    fn finish_drains(&mut self) {
        let mut i = 0;
        while i < self.machines.len() {
            let info = &self.machines[i].info;
            let done = info.state() == MachineState::Draining
                && info.connections.load(Ordering::Relaxed) == 0
                && info.queued.load(Ordering::Relaxed) == 0;
            if done {
                self.record(ScaleEventKind::Down, i);
                let machine = self.machines.remove(i);
                // Unlist it before marking it retired, so readers never see "retired".
                self.publish();
                machine.info.set_state(MachineState::Retired);
                self.factory.release(&machine.info);
                self.totals.scale_downs.fetch_add(1, Ordering::Relaxed);
                info!(
                    machine = %machine.info.name,
                    machines = self.machines.len(),
                    "scale down: machine retired"
                );
            } else {
                i += 1;
            }
        }
    }

    fn set_strategy(&mut self, kind: StrategyKind) {
        if kind != self.strategy.kind() {
            info!(from = %self.strategy.kind(), to = %kind, "strategy switched");
        }
        self.strategy = strategy::build(kind, self.strategy_seed);
        self.publish();
    }

    fn reconfigure(&mut self, config: Arc<Config>) {
        self.factory.reconfigure(&config);
        self.config = config;
        // A reload applies the file's strategy again, even after a run-time switch (SPEC §6).
        let kind = self.config.dispatcher.strategy;
        self.set_strategy(kind);
        self.scale_up();
        self.publish();
    }

    /// Remembers a scale event for machine `index` (for the admin API and dashboard).
    fn record(&mut self, kind: ScaleEventKind, index: usize) {
        let info = &self.machines[index].info;
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let machines = match kind {
            ScaleEventKind::Down => self.machines.len() - 1,
            _ => self.machines.len(),
        };
        let event = ScaleEvent {
            at_ms,
            kind,
            machine: info.name.clone(),
            size: info.size,
            machines,
            avg_load: self.average_load(),
        };
        if self.events.len() == stats::RECENT_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(event);
        self.events_dirty = true;
    }

    fn active_count(&self) -> usize {
        self.machines.iter().filter(|m| m.info.is_active()).count()
    }

    fn average_load(&self) -> f64 {
        stats::average_load(self.machines.iter().map(|m| &*m.info))
    }

    fn publish(&mut self) {
        let pool = self.factory.free();
        let strategy = self.strategy.kind();
        let same_set = {
            let current = self.topology_tx.borrow();
            current.pool == pool
                && current.strategy == strategy
                && current.machines.len() == self.machines.len()
                && current
                    .machines
                    .iter()
                    .zip(&self.machines)
                    .all(|(a, b)| Arc::ptr_eq(a, &b.info))
        };
        // Machine states (draining) are read live from each MachineInfo, so only the set,
        // the pool, the strategy and the event list need a new Topology.
        if !same_set || self.events_dirty {
            self.events_dirty = false;
            self.topology_tx.send_replace(Arc::new(Topology {
                machines: self.machines.iter().map(|m| m.info.clone()).collect(),
                pool,
                strategy,
                events: Arc::new(self.events.iter().cloned().collect()),
            }));
        }
    }
}

/// Whether `reservation` fits on `machine`: `used + reservation ≤ capacity`.
fn fits(machine: &MachineHandle, reservation: Units) -> bool {
    machine.info.used() + reservation <= machine.info.capacity
}

/// Spawns the dispatcher task and returns its handle and topology receiver.
pub fn spawn(
    config: Arc<Config>,
    factory: Box<dyn MachineFactory>,
    totals: Arc<Totals>,
) -> (DispatcherHandle, watch::Receiver<Arc<Topology>>) {
    let (dispatcher, topology_rx) = Dispatcher::new(config, factory, totals);
    let (commands_tx, commands_rx) = mpsc::channel(1024);
    tokio::spawn(dispatcher.run(commands_rx));
    (DispatcherHandle { commands_tx }, topology_rx)
}

#[cfg(test)]
mod tests {
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::core::RequestClass;
    use crate::factory::LocalFactory;
    use crate::machine::{Job, MachineContext};

    /// A dispatcher with a fixed reservation of `reservation` units per connection.
    fn dispatcher(mut config: Config, reservation: f64) -> (Dispatcher, Arc<Totals>) {
        config.dispatcher.seed = 7;
        config.load.connection_min = reservation;
        config.load.connection_max = reservation;
        let config = Arc::new(config);
        let (_config_tx, config_rx) = watch::channel(config.clone());
        let totals = Arc::new(Totals::default());
        let ctx = MachineContext {
            config: config_rx,
            totals: totals.clone(),
            hard_stop: CancellationToken::new(),
        };
        let factory = Box::new(LocalFactory::new(&config, ctx));
        let (d, _topology) = Dispatcher::new(config, factory, totals.clone());
        (d, totals)
    }

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[tokio::test]
    async fn scale_up_keeps_the_average_at_or_below_the_threshold() {
        let (mut d, totals) = dispatcher(Config::default(), 10.0);
        let mut open = Vec::new();
        for i in 0..20 {
            open.push(d.admit(peer(1000 + i)).unwrap());
            assert!(d.average_load() <= 50.0, "avg {}", d.average_load());
        }
        // 200 units at ≤ 50 % of 100-unit machines: four machines.
        assert_eq!(d.machines.len(), 4);
        assert_eq!(totals.snapshot().scale_ups, 3);
        drop(open);
        assert!(d.machines.iter().all(|m| m.info.used() == Units::ZERO));
    }

    #[tokio::test]
    async fn exhausted_pool_refuses_and_counts_the_reservation() {
        let mut config = Config::default();
        config.pool = crate::config::PoolConfig {
            small: 0,
            medium: 1,
            large: 0,
            xlarge: 0,
        };
        let (mut d, totals) = dispatcher(config, 60.0);
        let first = d.admit(peer(1)).unwrap();
        assert_eq!(
            d.admit(peer(2)).unwrap_err(),
            AdmitError::Exhausted {
                reservation: Units::from_whole(60)
            }
        );
        let t = totals.snapshot();
        assert_eq!((t.connections_admitted, t.connections_rejected), (1, 1));
        assert_eq!(t.weighted_failed, 60.0);
        drop(first);
    }

    #[tokio::test]
    async fn on_the_spot_acquisition_skips_sizes_too_small_for_the_reservation() {
        let mut config = Config::default();
        config.autoscaler.initial = vec![Size::Small];
        config.autoscaler.scale_up_size = Size::Small; // capacity 50
        let (mut d, totals) = dispatcher(config, 60.0);
        let p = d.admit(peer(1)).unwrap();
        // Small (50) cannot hold 60: the next larger size, medium, is taken instead.
        assert_eq!(p.machine().info.size, Size::Medium);
        assert_eq!(d.machines.len(), 2);
        assert_eq!(d.factory.free().small, 7, "no small machine taken in vain");
        assert_eq!(totals.snapshot().connections_rejected, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_moves_connections_and_lets_queued_requests_finish() {
        let mut config = Config::default();
        config.autoscaler.initial = vec![Size::Medium, Size::Medium];
        config.load.requests.service_ms_per_unit = 100.0; // a LARGE takes 1 s on medium
        let (mut d, totals) = dispatcher(config, 10.0);
        let p1 = d.admit(peer(1)).unwrap();
        let p2 = d.admit(peer(2)).unwrap();
        assert_eq!(p1.machine().info.name, "m1");
        assert_eq!(p2.machine().info.name, "m2");

        // A slow request queued on m2 before it drains.
        let (reply_tx, reply_rx) = oneshot::channel();
        let job = Job {
            class: RequestClass::Large,
            weight: Units::from_whole(10),
            payload: bytes::Bytes::new(),
            reply_tx,
        };
        p2.machine().try_submit(job).unwrap();

        d.drain(1);
        let (m1, m2) = (d.machines[0].info.clone(), d.machines[1].info.clone());
        assert_eq!(m2.state(), MachineState::Draining);
        // The connection moved with its reservation; the queued request stayed.
        assert_eq!(p2.machine().info.name, "m1");
        assert_eq!(m1.reserved.get(), Units::from_whole(20));
        assert_eq!(m1.connections.load(Ordering::Relaxed), 2);
        assert_eq!(m2.reserved.get(), Units::ZERO);
        assert_eq!(m2.queued.load(Ordering::Relaxed), 1);

        // Not retired while its queue holds work.
        d.finish_drains();
        assert_eq!(d.machines.len(), 2);
        assert_eq!(&reply_rx.await.unwrap()[..], b"OK m2 large\n");
        d.finish_drains();
        assert_eq!(d.machines.len(), 1);
        assert_eq!(m2.state(), MachineState::Retired);
        assert_eq!(d.factory.free().medium, 7);
        assert_eq!(totals.snapshot().scale_downs, 1);

        // Closing releases from the machine the connection is on now.
        drop(p2);
        drop(p1);
        assert_eq!(m1.used(), Units::ZERO);
        assert_eq!(m2.used(), Units::ZERO);
    }

    #[tokio::test]
    async fn migrated_connection_that_closes_mid_drain_leaks_nothing() {
        let mut config = Config::default();
        config.autoscaler.initial = vec![Size::Medium, Size::Medium];
        let (mut d, totals) = dispatcher(config, 10.0);
        let _p1 = d.admit(peer(1)).unwrap();
        let p2 = d.admit(peer(2)).unwrap();
        drop(p2); // closes before the drain finds it
        d.drain(1);
        d.finish_drains();
        assert_eq!(d.machines.len(), 1);
        assert_eq!(d.machines[0].info.reserved.get(), Units::from_whole(10));
        assert_eq!(totals.snapshot().connections_open, 1);
    }
}
