//! A machine as the rest of the crate sees it: its gauges plus where its work goes.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
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
    /// Sending half of a simulated worker's queue; the worker task owns the receiver. The
    /// queue closes (and the worker exits once it has drained it) when the last handle is
    /// dropped, so a connection holding a handle to a retiring machine still gets answers.
    Worker(mpsc::Sender<Job>),
    /// A real upstream server.
    Upstream(Arc<Upstream>),
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
    pub(super) fn worker(info: Arc<MachineInfo>, jobs_tx: mpsc::Sender<Job>) -> Machine {
        Machine {
            info,
            endpoint: Endpoint::Worker(jobs_tx),
        }
    }

    pub(super) fn upstream_backed(info: Arc<MachineInfo>, upstream: Arc<Upstream>) -> Machine {
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

/// One request on its way to a machine.
#[derive(Debug)]
pub struct Job {
    /// Request class (for the reply text).
    pub class: RequestClass,
    /// Weight in load units.
    pub weight: Units,
    /// Payload (valid UTF-8, may be empty).
    pub payload: Bytes,
    /// Where the reply line goes; the connection's writer awaits the other half in order.
    pub reply_tx: oneshot::Sender<Bytes>,
    /// When it was queued (request latency = queue wait + service, for `/metrics`).
    pub queued_at: Instant,
}
