//! Admission: where the dispatcher places a connection ([`Dispatcher::place`]: the
//! strategy's pick, a machine acquired on the spot, a suspect upstream as the last
//! resort); the queue (proxy mode, `backend.queue_timeout`), where a connection that no
//! machine can take waits in the dispatcher's [`AdmissionQueue`](super::queue) instead of
//! being refused at once, and is placed head-first as soon as capacity appears; and the
//! refusal itself, queued or not ([`Dispatcher::refuse`]).

use std::net::SocketAddr;

use tracing::{debug, warn};

use super::dispatcher::{fits, Dispatcher};
use super::handle::{AdmitError, Exhaustion};
use super::placement::Placement;
use super::queue::Waiting;
use crate::backend::Machine;
use crate::core::{MachineId, Units};
use crate::strategy::PickRequest;
use tokio::time::Instant;

impl Dispatcher {
    /// Places `waiting` now, or queues it when nothing can take it and the factory queues
    /// (proxy mode); else refuses it.
    pub(super) fn admit_or_queue(&mut self, waiting: Waiting) {
        match self.place(waiting.peer, &waiting.avoid, waiting.reservation) {
            Some(placement) => reply(waiting, Ok(placement)),
            None if self.factory.queue_when_full() => self.enqueue(waiting),
            None => {
                let refused = self.refuse(waiting.peer, waiting.reservation);
                reply(waiting, Err(refused));
            }
        }
    }

    /// Places a connection holding `reservation`, or `None` when nothing can take it (not
    /// counted as a refusal yet).
    pub(super) fn place(
        &mut self,
        peer: SocketAddr,
        avoid: &[MachineId],
        reservation: Units,
    ) -> Option<Placement> {
        if !self.health_drained.is_empty() {
            // An upstream that came back takes this client already, not a tick later.
            self.recover_healthy();
        }
        let request = PickRequest {
            client_ip: peer.ip(),
            reservation,
        };
        // A machine whose upstream left a client unanswered (a frozen process passes its
        // probes) is the last resort: after the others and after a new machine.
        let index = match self.pick(&request, avoid, false) {
            Some(index) => index,
            // Fits nowhere: the autoscaler is asked for a machine on the spot (SPEC §1).
            None => match self.acquire_fitting(reservation) {
                Some(index) if fits(&self.machines[index], reservation) => index,
                _ if self.machines.iter().any(Machine::is_suspect) => {
                    self.pick(&request, avoid, true)?
                }
                _ => return None,
            },
        };
        let placement = self.bind(peer, reservation, index);
        self.scale_up();
        self.publish();
        Some(placement)
    }

    /// The strategy's pick among the active machines that fit, not in `avoid`, and not
    /// suspect unless `suspect_too`; as a table index.
    fn pick(
        &mut self,
        request: &PickRequest,
        avoid: &[MachineId],
        suspect_too: bool,
    ) -> Option<usize> {
        self.fill_views(request.reservation);
        for (view, &i) in self.views.iter_mut().zip(&self.view_index) {
            if avoid.contains(&view.id) || (!suspect_too && self.machines[i].is_suspect()) {
                view.fits = false;
            }
        }
        self.strategy
            .pick(&self.views, request)
            // Defence in depth: a strategy must never return a machine that does not fit.
            .filter(|&v| v < self.views.len() && self.views[v].fits)
            .map(|v| self.view_index[v])
    }

    pub(super) fn enqueue(&mut self, waiting: Waiting) {
        debug!(peer = %waiting.peer, queued = self.queue.len() + 1, "no machine can take the connection: queued");
        self.totals.connection_queued();
        self.queue.push_back(waiting);
    }

    /// Refuses what waited too long (or went away), then places the queue head-first for as
    /// long as something can take the head (passing over retries that only the machines they
    /// avoid could take).
    pub(super) fn serve_queue(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        let waited = self.config.backend.queue_timeout;
        for gone in self.queue.take_expired(Instant::now()) {
            self.totals.connection_dequeued();
            if !gone.reply_tx.is_closed() {
                let refused = self.refuse_for(
                    gone.peer,
                    gone.reservation,
                    Exhaustion::QueueTimeout(waited),
                );
                reply(gone, Err(refused));
            }
        }
        // A retry after a failed upstream connect waits for a machine other than the ones
        // it avoids (until a probe shows them back); it must not hold up the connections
        // behind it, which any machine may take.
        let mut passed = Vec::new();
        while let Some(mut head) = self.queue.pop_front() {
            // An avoided machine whose upstream has connected a probe since the client's
            // connect failed is fine again (HAProxy retries the same server, too).
            head.avoid.retain(|&id| {
                !self.machines.iter().any(|m| {
                    m.info.id == id && m.upstream().is_some_and(|u| u.back_since(head.since))
                })
            });
            match self.place(head.peer, &head.avoid, head.reservation) {
                Some(placement) => {
                    self.totals.connection_dequeued();
                    reply(head, Ok(placement));
                }
                None if !head.avoid.is_empty() => passed.push(head),
                None => {
                    self.queue.push_front(head);
                    break;
                }
            }
        }
        for waiting in passed.into_iter().rev() {
            self.queue.push_front(waiting);
        }
    }

    /// Refuses everything queued (the process is shutting down): counted as rejected.
    pub(super) fn refuse_queue(&mut self) {
        while let Some(waiting) = self.queue.pop_front() {
            self.totals.connection_dequeued();
            self.totals.connection_rejected(waiting.reservation);
            reply(waiting, Err(AdmitError::ShuttingDown));
        }
        self.publish();
    }

    /// Counts and logs a connection that nothing can take.
    pub(super) fn refuse(&mut self, peer: SocketAddr, reservation: Units) -> AdmitError {
        // As `acquire_fitting` counts: machines drained for health do not count.
        let counted = self.machines.len() - self.health_drained.len();
        let max_machines = self.config.autoscaler.max_machines;
        let limit = if counted >= max_machines {
            Exhaustion::MaxMachines(max_machines)
        } else {
            Exhaustion::Pool
        };
        self.refuse_for(peer, reservation, limit)
    }

    /// [`refuse`](Self::refuse), for the reason `limit`.
    fn refuse_for(
        &mut self,
        peer: SocketAddr,
        reservation: Units,
        limit: Exhaustion,
    ) -> AdmitError {
        self.totals.connection_rejected(reservation);
        self.publish();
        debug!(%peer, reservation = reservation.as_f64(), %limit, "connection refused");
        if let Some(refused) = self.exhausted_log.refused(Instant::now()) {
            warn!(
                refused,
                machines = self.machines.len(),
                "connections refused (exhausted: no machine fits, {limit}) since the last report"
            );
        }
        AdmitError::Exhausted { reservation, limit }
    }
}

/// Answers a connection; one that went away meanwhile drops its placement, which releases
/// the reservation again.
fn reply(waiting: Waiting, result: Result<Placement, AdmitError>) {
    if let Err(Ok(placement)) = waiting.reply_tx.send(result) {
        drop(placement);
    }
}
