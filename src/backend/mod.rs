//! The backend seam: where machines come from and what a connection does with one.
//!
//! Two implementations sit behind one interface, and this module is the only place that
//! asks which one is configured (`backend.mode`, in [`start`]):
//!
//! | mode | factory | machine endpoint | client session |
//! | --- | --- | --- | --- |
//! | `simulated` | [`simulated::LocalFactory`]: in-process workers from `[pool]` | a bounded job queue served by a task | [`SessionKind::Lines`]: the line protocol of SPEC §4 |
//! | `proxy` | [`upstream::UpstreamFactory`]: the `[[backend.upstreams]]` list | a real upstream server | [`SessionKind::Stream`]: bytes copied both ways (SPEC §8) |
//!
//! The balancer owns a `Box<dyn` [`MachineFactory]`>` and hands out [`Machine`]s; the
//! server picks the session kind once from [`Backend::session`]. Neither looks at the mode.
//!
//! Depends on `core`, `config`, `protocol` (reply lines) and `telemetry`.

pub mod simulated;
pub mod upstream;

use std::fmt;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{BackendMode, Config};
use crate::core::{MachineId, Size, SizeCounts};
use crate::telemetry::{MachineInfo, Totals};

pub use simulated::worker::Job;

/// What every backend needs from the rest of the process.
#[derive(Debug, Clone)]
pub struct BackendContext {
    /// Live configuration (service time is read per request, so a reload applies at once).
    pub config: watch::Receiver<Arc<Config>>,
    /// Process totals (requests ok / failed).
    pub totals: Arc<Totals>,
    /// Fires when the shutdown grace runs out: answer the rest with `ERR shutting-down`.
    pub hard_stop: CancellationToken,
}

/// How the server talks to a client of this backend; chosen once at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    /// The line protocol (SPEC §4): requests are jobs on machines' queues.
    Lines,
    /// A byte stream to the machine's upstream (SPEC §8): no protocol, no bytes added.
    Stream,
}

/// A started backend: its factory (for the balancer) and its session kind (for the server).
#[derive(Debug)]
pub struct Backend {
    /// Hands out machines; owned by the dispatcher from now on.
    pub factory: Box<dyn MachineFactory>,
    /// How connections are served.
    pub session: SessionKind,
}

/// Starts the configured backend: in proxy mode the upstreams are probed once and then
/// every `backend.health_check_interval` until `shutdown` fires.
pub async fn start(config: &Config, ctx: BackendContext, shutdown: CancellationToken) -> Backend {
    match config.backend.mode {
        BackendMode::Simulated => Backend {
            factory: Box::new(simulated::LocalFactory::new(config, ctx)),
            session: SessionKind::Lines,
        },
        BackendMode::Proxy => Backend {
            factory: Box::new(upstream::UpstreamFactory::start(config, shutdown).await),
            session: SessionKind::Stream,
        },
    }
}

/// Why no machine could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FactoryError {
    /// The pool holds no free machine of that size.
    #[error("no {0} machine left in the pool")]
    ResourceExhausted(Size),
}

/// Something that turns pool slots into running machines. Only the dispatcher calls it
/// (it owns it, like the machine table), so implementations need no locking.
pub trait MachineFactory: Send + fmt::Debug {
    /// Starts a machine of `size` named after `id`, taking one slot of the pool.
    ///
    /// # Errors
    ///
    /// [`FactoryError::ResourceExhausted`] when no machine of `size` is free.
    fn acquire(&mut self, size: Size, id: MachineId) -> Result<Machine, FactoryError>;

    /// Gives a retired machine's slot back to the pool.
    fn release(&mut self, machine: &Machine);

    /// Free machines per size.
    fn free(&self) -> SizeCounts;

    /// Machines per size the pool holds in all (free or not).
    fn pool_size(&self) -> SizeCounts;

    /// Applies a new configuration (pool sizes, capacities, queue depth) to later
    /// acquisitions; machines already running keep theirs.
    fn reconfigure(&mut self, config: &Config);
}

// === impl Machine ===

/// A machine as the rest of the crate sees it: its gauges plus its endpoint. Cheap to
/// clone; connections hold one and submit to it directly (never through the dispatcher).
#[derive(Debug, Clone)]
pub struct Machine {
    /// Identity and gauges.
    pub info: Arc<MachineInfo>,
    endpoint: Endpoint,
}

/// Where a machine's work goes.
#[derive(Debug, Clone)]
enum Endpoint {
    /// Sending half of a simulated worker's queue; the worker task owns the receiver. The
    /// queue closes (and the worker exits once it has drained it) when the last handle is
    /// dropped, so a connection holding a handle to a retiring machine still gets answers.
    Worker(mpsc::Sender<Job>),
    /// A real upstream server.
    Upstream(Arc<upstream::Upstream>),
}

/// Why a job could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The queue holds `queue_depth` waiting requests already (`ERR busy`).
    #[error("machine queue is full")]
    QueueFull(Job),
    /// The machine serves no jobs any more (its worker stopped after the shutdown grace).
    #[error("machine has stopped")]
    MachineGone(Job),
}

impl Machine {
    fn worker(info: Arc<MachineInfo>, jobs_tx: mpsc::Sender<Job>) -> Machine {
        Machine {
            info,
            endpoint: Endpoint::Worker(jobs_tx),
        }
    }

    fn upstream_backed(info: Arc<MachineInfo>, upstream: Arc<upstream::Upstream>) -> Machine {
        Machine {
            info,
            endpoint: Endpoint::Upstream(upstream),
        }
    }

    /// Queues `job` without waiting. Its weight counts toward `used` from now until the
    /// machine has answered it.
    ///
    /// # Errors
    ///
    /// [`SubmitError::QueueFull`] when the queue is at `queue_depth`, and
    /// [`SubmitError::MachineGone`] after a hard stop (or on a machine that serves no jobs);
    /// both hand the job back.
    pub fn try_submit(&self, job: Job) -> Result<(), SubmitError> {
        let Endpoint::Worker(jobs_tx) = &self.endpoint else {
            return Err(SubmitError::MachineGone(job));
        };
        let weight = job.weight;
        if !self.info.try_enqueue(weight) {
            return Err(SubmitError::QueueFull(job));
        }
        jobs_tx.try_send(job).map_err(|e| {
            self.info.finish(weight);
            match e {
                mpsc::error::TrySendError::Full(job) => SubmitError::QueueFull(job),
                mpsc::error::TrySendError::Closed(job) => SubmitError::MachineGone(job),
            }
        })
    }

    /// The upstream server this machine fronts, if it fronts one.
    pub fn upstream(&self) -> Option<&Arc<upstream::Upstream>> {
        match &self.endpoint {
            Endpoint::Upstream(upstream) => Some(upstream),
            Endpoint::Worker(_) => None,
        }
    }

    /// Whether it can take new connections: an upstream that failed its latest probe (or a
    /// connect) cannot; a simulated machine always can.
    pub fn is_healthy(&self) -> bool {
        match &self.endpoint {
            Endpoint::Upstream(upstream) => upstream.is_healthy(),
            Endpoint::Worker(_) => true,
        }
    }

    /// Whether its open connections can be moved to another machine when it drains. A
    /// proxied connection is a TCP stream to this machine's upstream: it cannot.
    pub fn connections_can_move(&self) -> bool {
        matches!(self.endpoint, Endpoint::Worker(_))
    }
}
