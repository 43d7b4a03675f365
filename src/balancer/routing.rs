//! Per-request routing (SPEC §9 `dispatcher.routing`): where each request line goes.
//!
//! The dispatcher publishes a [`RoutingTable`] — the active machines and the strategy in
//! force — through an `ArcSwap` whenever either changes. A connection task places each
//! request itself through its [`Router`]: one lock-free load of the table, a view of every
//! active machine (`fits` = room in its queue), one `Strategy::pick`, one `try_submit`. The
//! dispatcher task is never on this path, so request placement scales with the connection
//! tasks, not with one actor.
//!
//! With `routing = "connection"` every request goes to the connection's home machine, as
//! before per-request routing existed. Either way the connection's reservation stays on its
//! home machine ([`Placement`]).
//!
//! When the picked machine's load is past the scale-up point, or no machine has room, the
//! router nudges the dispatcher ([`ScaleHint`]) so that a scale-up check runs at once
//! instead of at the next tick.

use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::placement::{CapacityFreed, Placement};
use crate::backend::{Job, Machine, SubmitError, Submitted};
use crate::config::Routing;
use crate::strategy::rng::AtomicRng;
use crate::strategy::{MachineView, PickRequest, Strategy};
use crate::telemetry::Totals;

/// What request placement reads: published by the dispatcher, read by every connection.
#[derive(Debug)]
pub struct RoutingTable {
    /// Active machines, creation order.
    pub machines: Vec<Machine>,
    /// The strategy in force (the same instance the dispatcher admits connections with).
    pub strategy: Arc<dyn Strategy>,
    /// Per request, or per connection.
    pub routing: Routing,
    /// Load (percent) of a picked machine above which the dispatcher is nudged.
    pub nudge_above: f64,
    /// Whether (and with which reservations) connections may be admitted off the
    /// dispatcher ([`super::fast_admit`]).
    pub admission: Option<FastAdmission>,
}

/// What the dispatcher allows connection tasks to do without it: admit connections
/// themselves ([`super::fast_admit`]), drawing reservations in this range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FastAdmission {
    /// `load.connection_min`: the smallest reservation drawn.
    pub reservation_min: f64,
    /// `load.connection_max`: the largest reservation drawn.
    pub reservation_max: f64,
}

/// Wakes the dispatcher for a scale-up check between ticks, at most once per millisecond.
#[derive(Debug)]
pub struct ScaleHint {
    /// The dispatcher waits on it in its `select!`.
    pub(super) notify: Notify,
    /// Reference point of `last_ms`.
    base: Instant,
    /// Milliseconds after `base` of the latest nudge.
    last_ms: AtomicU64,
}

impl ScaleHint {
    pub(super) fn new() -> Self {
        ScaleHint {
            notify: Notify::new(),
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    /// Asks for a scale-up check, unless one was asked for within the last millisecond.
    fn nudge(&self) {
        let now = self.base.elapsed().as_millis() as u64 + 1;
        let last = self.last_ms.load(Ordering::Relaxed);
        if now > last
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.notify.notify_one();
        }
    }
}

/// Why a request could not be queued anywhere.
#[derive(Debug)]
pub enum RouteError {
    /// No machine it may go to has room (`ERR busy`); the message says which.
    Busy(Job, String),
    /// The machines have stopped (after the shutdown grace).
    Gone(Job),
}

/// A connection task's handle on request placement. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Router {
    pub(super) table: Arc<ArcSwap<RoutingTable>>,
    pub(super) hint: Arc<ScaleHint>,
    /// Connection counts, for connections admitted off the dispatcher.
    pub(super) totals: Arc<Totals>,
    /// Wakes the dispatcher when a placement closes while connections are queued.
    pub(super) freed: Arc<CapacityFreed>,
    /// Draws the reservations of connections admitted off the dispatcher.
    pub(super) rng: Arc<AtomicRng>,
}

thread_local! {
    /// Views reused across requests on this worker thread (no allocation per request).
    pub(super) static VIEWS: RefCell<Vec<MachineView>> = const { RefCell::new(Vec::new()) };
}

impl Router {
    /// Queues (or serves, see [`Machine::try_submit`]) `job` from the connection of `placement`: on the machine the strategy picks
    /// among the active machines with queue room, or on the home machine when routing is
    /// per connection.
    ///
    /// # Errors
    ///
    /// [`RouteError::Busy`] when no machine the request may go to has room,
    /// [`RouteError::Gone`] after the machines stopped; both hand the job back.
    pub fn submit(&self, placement: &Placement, job: Job) -> Result<Submitted, RouteError> {
        let table = self.table.load();
        if table.routing == Routing::Connection {
            let machine = placement.machine();
            return match machine.try_submit(job) {
                Ok(submitted) => Ok(submitted),
                Err(SubmitError::QueueFull(job)) => {
                    self.hint.nudge();
                    let message = format!(
                        "machine {} queue is full ({} waiting)",
                        machine.info.name, machine.info.queue_depth
                    );
                    Err(RouteError::Busy(job, message))
                }
                Err(SubmitError::MachineGone(job)) => Err(RouteError::Gone(job)),
            };
        }
        VIEWS.with(|views| {
            let mut views = views.borrow_mut();
            self.place(&table, placement.peer().ip(), job, &mut views)
        })
    }

    fn place(
        &self,
        table: &RoutingTable,
        client_ip: IpAddr,
        mut job: Job,
        views: &mut Vec<MachineView>,
    ) -> Result<Submitted, RouteError> {
        views.clear();
        views.extend(table.machines.iter().map(|m| MachineView {
            id: m.info.id,
            capacity: m.info.capacity,
            used: m.info.used(),
            fits: m.info.queued() <= m.info.queue_depth as u64,
        }));
        let request = PickRequest {
            client_ip,
            reservation: job.weight,
        };
        let mut gone = 0;
        // Each failed try marks one machine unfit, so this ends within one pass.
        for _ in 0..views.len() {
            let Some(i) = table
                .strategy
                .pick(views, &request)
                .filter(|&i| i < views.len() && views[i].fits)
            else {
                break;
            };
            let machine = &table.machines[i];
            match machine.try_submit(job) {
                Ok(submitted) => {
                    if machine.info.load_percent() > table.nudge_above {
                        self.hint.nudge();
                    }
                    return Ok(submitted);
                }
                // Filled up since the view was taken: try another.
                Err(SubmitError::QueueFull(back)) => job = back,
                Err(SubmitError::MachineGone(back)) => {
                    job = back;
                    gone += 1;
                }
            }
            views[i].fits = false;
        }
        if gone > 0 && gone == table.machines.len() {
            return Err(RouteError::Gone(job));
        }
        self.hint.nudge();
        let depth = table.machines.first().map_or(0, |m| m.info.queue_depth);
        let message = format!(
            "every machine's queue is full ({} machines, {depth} waiting each)",
            table.machines.len()
        );
        Err(RouteError::Busy(job, message))
    }
}

/// Whether two tables route the same way (same machines, strategy instance and settings).
pub(super) fn same_routes(a: &RoutingTable, b: &RoutingTable) -> bool {
    a.routing == b.routing
        && a.nudge_above == b.nudge_above
        && a.admission == b.admission
        && Arc::ptr_eq(&a.strategy, &b.strategy)
        && a.machines.len() == b.machines.len()
        && a.machines
            .iter()
            .zip(&b.machines)
            .all(|(x, y)| Arc::ptr_eq(&x.info, &y.info))
}
