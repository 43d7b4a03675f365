//! A machine as the rest of the crate sees it: its gauges plus where its work goes.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::upstream::health::Upstream;
use crate::core::{RequestClass, Units};
use crate::telemetry::MachineInfo;

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
    /// A simulated worker: the sending half of its queue (the worker task owns the
    /// receiver) and what serving a request on the spot needs. The queue closes (and the
    /// worker exits once it has drained it) when the last handle is dropped, so a
    /// connection holding a handle to a retiring machine still gets answers.
    Worker(Arc<dyn JobSink>),
    /// A real upstream server.
    Upstream(Arc<Upstream>),
}

/// Where a simulated machine's jobs go (implemented by `simulated::worker::WorkerLink`;
/// a trait so that this file does not import the worker that imports it).
pub trait JobSink: std::fmt::Debug + Send + Sync {
    /// Queues `job` for the machine's task; see [`Machine::try_queue`].
    ///
    /// # Errors
    ///
    /// As [`Machine::try_queue`].
    fn queue(&self, info: &MachineInfo, job: Job) -> Result<oneshot::Receiver<Bytes>, SubmitError>;

    /// Serves `job` on the spot if the machine would serve it at once and instantly,
    /// appending the reply line to `out`; false, with nothing done, otherwise. See
    /// [`Machine::try_serve_now`].
    fn serve_now(&self, info: &MachineInfo, job: &JobRef<'_>, out: &mut Vec<u8>) -> bool;
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
    pub(super) fn worker(info: Arc<MachineInfo>, link: Arc<dyn JobSink>) -> Machine {
        Machine {
            info,
            endpoint: Endpoint::Worker(link),
        }
    }

    pub(super) fn upstream_backed(info: Arc<MachineInfo>, upstream: Arc<Upstream>) -> Machine {
        Machine {
            info,
            endpoint: Endpoint::Upstream(upstream),
        }
    }

    /// Queues `job` without waiting, or serves it on the spot when that cannot be told
    /// apart from queueing it: instant service (`service_ms_per_unit = 0`, or a service
    /// time that rounds to zero) on a machine with nothing queued or in service. Either way
    /// the gauges and totals move exactly as for a queued job, and a queued job's weight
    /// counts toward `used` from now until the machine has answered it.
    ///
    /// # Errors
    ///
    /// [`SubmitError::QueueFull`] when the queue is at `queue_depth`, and
    /// [`SubmitError::MachineGone`] after a hard stop (or on a machine that serves no jobs);
    /// both hand the job back.
    pub fn try_submit(&self, job: Job) -> Result<Submitted, SubmitError> {
        let mut reply = Vec::new();
        if self.try_serve_now(&job.as_ref(), &mut reply) {
            return Ok(Submitted::Answered(Bytes::from(reply)));
        }
        self.try_queue(job).map(Submitted::Queued)
    }

    /// Queues `job` for the machine's task, never serving it on the spot: the other half of
    /// [`Self::try_submit`], for a caller that tried [`Self::try_serve_now`] already.
    ///
    /// # Errors
    ///
    /// As [`Self::try_submit`].
    pub fn try_queue(&self, job: Job) -> Result<oneshot::Receiver<Bytes>, SubmitError> {
        let Endpoint::Worker(link) = &self.endpoint else {
            return Err(SubmitError::MachineGone(job));
        };
        link.queue(&self.info, job)
    }

    /// Serves `job` in the caller's task when the machine is idle and serves it instantly
    /// (simulated, `service_ms_per_unit = 0`), appending the reply line to `out` and
    /// counting it like the worker does; false, with nothing done, when it would have to
    /// wait (then [`Self::try_submit`] queues it). No allocation: the payload is borrowed
    /// and the reply goes into the caller's buffer.
    pub fn try_serve_now(&self, job: &JobRef<'_>, out: &mut Vec<u8>) -> bool {
        match &self.endpoint {
            Endpoint::Worker(link) => link.serve_now(&self.info, job, out),
            Endpoint::Upstream(_) => false,
        }
    }

    /// The upstream server this machine fronts, if it fronts one.
    pub fn upstream(&self) -> Option<&Arc<Upstream>> {
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

    /// Whether its upstream left a client unanswered a short while ago
    /// ([`Upstream::is_suspect`]): it takes new clients only when nothing else can.
    pub fn is_suspect(&self) -> bool {
        self.upstream().is_some_and(|u| u.is_suspect())
    }

    /// Whether it can take one more connection: an upstream at its `max_connections` open
    /// connections cannot (HAProxy server `maxconn`); a simulated machine always can.
    pub fn has_connection_room(&self) -> bool {
        match &self.endpoint {
            Endpoint::Upstream(upstream) => self.info.connections() < upstream.max_connections(),
            Endpoint::Worker(_) => true,
        }
    }

    /// Whether its open connections can be moved to another machine when it drains. A
    /// proxied connection is a TCP stream to this machine's upstream: it cannot.
    pub fn connections_can_move(&self) -> bool {
        matches!(self.endpoint, Endpoint::Worker(_))
    }
}

/// What became of a submitted job.
#[derive(Debug)]
pub enum Submitted {
    /// Served on the spot (and counted): the reply line.
    Answered(Bytes),
    /// Queued: the machine answers through this (always exactly once).
    Queued(oneshot::Receiver<Bytes>),
}

/// One request on its way to a machine.
#[derive(Debug)]
pub struct Job {
    /// Request class (for the reply text).
    pub class: RequestClass,
    /// Weight in load units.
    pub weight: Units,
    /// Payload (valid UTF-8, may be empty).
    pub payload: Bytes,
    /// When it was queued (request latency = queue wait + service, for `/metrics`).
    pub queued_at: Instant,
}

impl Job {
    /// The job as a [`JobRef`] (borrowing its payload).
    pub fn as_ref(&self) -> JobRef<'_> {
        JobRef {
            class: self.class,
            weight: self.weight,
            payload: &self.payload,
            queued_at: self.queued_at,
        }
    }
}

/// A request as it was read, its payload borrowed from the connection's input: what
/// serving on the spot needs ([`Machine::try_serve_now`]); [`JobRef::to_job`] makes the
/// owned [`Job`] that a queue needs.
#[derive(Debug, Clone, Copy)]
pub struct JobRef<'a> {
    /// Request class (for the reply text).
    pub class: RequestClass,
    /// Weight in load units.
    pub weight: Units,
    /// Payload (valid UTF-8, may be empty).
    pub payload: &'a [u8],
    /// When it was read.
    pub queued_at: Instant,
}

impl JobRef<'_> {
    /// An owned copy, for a queue.
    pub fn to_job(&self) -> Job {
        Job {
            class: self.class,
            weight: self.weight,
            payload: Bytes::copy_from_slice(self.payload),
            queued_at: self.queued_at,
        }
    }
}
