//! Per-request routing (SPEC §9 `dispatcher.routing`): where each request line goes.
//!
//! The dispatcher publishes a [`RoutingTable`] — the active machines and the strategy in
//! force — through an `ArcSwap` whenever either changes. A connection task places each
//! request itself through its [`Router`]: one lock-free load of the table, a view of every
//! active machine (`fits` = room in its queue), one `Strategy::pick`, then the machine
//! serves it on the spot (`try_serve_now`) or queues it (`try_queue`). The dispatcher task
//! is never on this path, so request placement scales with the connection tasks, not with
//! one actor.
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
use bytes::Bytes;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use super::placement::{CapacityFreed, Placement};
use crate::backend::{Job, JobRef, Machine, SubmitError};
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

/// Where a request went ([`Router::submit`]).
#[derive(Debug)]
pub enum Routed {
    /// Served on the spot (and counted): its reply line was appended to the caller's buffer.
    Answered,
    /// Queued: the machine answers through this (always exactly once).
    Queued(oneshot::Receiver<Bytes>),
}

/// Why a request could not be queued anywhere.
#[derive(Debug)]
pub enum RouteError {
    /// No machine it may go to has room (`ERR busy`); the message says which.
    Busy(String),
    /// The machines have stopped (after the shutdown grace).
    Gone,
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
    /// Serves `job` on the spot or queues it, from the connection of `placement`: on the
    /// machine the strategy picks among the active machines with queue room, or on the home
    /// machine when routing is per connection. A reply served on the spot is appended to
    /// `out` ([`Machine::try_serve_now`]); the payload is copied only when the request is
    /// queued.
    ///
    /// # Errors
    ///
    /// [`RouteError::Busy`] when no machine the request may go to has room,
    /// [`RouteError::Gone`] after the machines stopped.
    pub fn submit(
        &self,
        placement: &Placement,
        job: JobRef<'_>,
        out: &mut Vec<u8>,
    ) -> Result<Routed, RouteError> {
        let table = self.table.load();
        if table.routing == Routing::Connection {
            let machine = placement.machine();
            return match offer(&machine, &job, &mut None, out) {
                Ok(routed) => Ok(routed),
                Err(SubmitError::QueueFull(_)) => {
                    self.hint.nudge();
                    let message = format!(
                        "machine {} queue is full ({} waiting)",
                        machine.info.name, machine.info.queue_depth
                    );
                    Err(RouteError::Busy(message))
                }
                Err(SubmitError::MachineGone(_)) => Err(RouteError::Gone),
            };
        }
        VIEWS.with(|views| {
            let mut views = views.borrow_mut();
            self.place(&table, placement.peer().ip(), job, out, &mut views)
        })
    }

    fn place(
        &self,
        table: &RoutingTable,
        client_ip: IpAddr,
        job: JobRef<'_>,
        out: &mut Vec<u8>,
        views: &mut Vec<MachineView>,
    ) -> Result<Routed, RouteError> {
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
        // The owned copy, made at the first queueing and handed back by a full queue.
        let mut owned = None;
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
            match offer(machine, &job, &mut owned, out) {
                Ok(routed) => {
                    if machine.info.load_percent() > table.nudge_above {
                        self.hint.nudge();
                    }
                    return Ok(routed);
                }
                // Filled up since the view was taken: try another.
                Err(SubmitError::QueueFull(back)) => owned = Some(back),
                Err(SubmitError::MachineGone(back)) => {
                    owned = Some(back);
                    gone += 1;
                }
            }
            views[i].fits = false;
        }
        if gone > 0 && gone == table.machines.len() {
            return Err(RouteError::Gone);
        }
        self.hint.nudge();
        let depth = table.machines.first().map_or(0, |m| m.info.queue_depth);
        let machines = table.machines.len();
        let plural = if machines == 1 { "" } else { "s" };
        let message = format!(
            "every machine's queue is full ({machines} machine{plural}, {depth} waiting each)"
        );
        Err(RouteError::Busy(message))
    }
}

/// Serves `job` on `machine` on the spot, else queues it there; the owned copy a queue
/// needs is made once (`owned` keeps it between tries).
fn offer(
    machine: &Machine,
    job: &JobRef<'_>,
    owned: &mut Option<Job>,
    out: &mut Vec<u8>,
) -> Result<Routed, SubmitError> {
    if machine.try_serve_now(job, out) {
        return Ok(Routed::Answered);
    }
    let queued = owned.take().unwrap_or_else(|| job.to_job());
    machine.try_queue(queued).map(Routed::Queued)
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
