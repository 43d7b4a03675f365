//! The admission queue (proxy mode, `backend.queue_timeout`): connections that no machine
//! could take wait here, oldest first, for capacity — a closing connection, a recovery, a
//! scale-up — like HAProxy's server `maxconn` queue with `timeout queue`.
//!
//! Only the dispatcher task touches it. The number waiting is mirrored in
//! [`Totals`](crate::telemetry::Totals) for `/api/stats` and `/metrics`, and lets a
//! closing [`Placement`] know whether to wake the dispatcher
//! ([`CapacityFreed`](super::placement::CapacityFreed)).

use std::collections::VecDeque;
use std::net::SocketAddr;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::handle::AdmitError;
use super::placement::Placement;
use crate::core::{MachineId, Units};

/// One connection waiting for a machine.
#[derive(Debug)]
pub(super) struct Waiting {
    /// The client.
    pub(super) peer: SocketAddr,
    /// Machines not to place it on: their upstream failed its connect, at `since`.
    pub(super) avoid: Vec<MachineId>,
    /// When it arrived (a retry: when its last connect failed).
    pub(super) since: Instant,
    /// The reservation drawn when it first arrived (kept across tries).
    pub(super) reservation: Units,
    /// Where the outcome goes.
    pub(super) reply_tx: oneshot::Sender<Result<Placement, AdmitError>>,
    /// When it is refused if still waiting.
    pub(super) deadline: Instant,
}

/// Connections waiting for a machine, oldest first.
#[derive(Debug, Default)]
pub(super) struct AdmissionQueue {
    waiting: VecDeque<Waiting>,
}

impl AdmissionQueue {
    pub(super) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    pub(super) fn len(&self) -> usize {
        self.waiting.len()
    }

    pub(super) fn push_back(&mut self, waiting: Waiting) {
        self.waiting.push_back(waiting);
    }

    /// Puts back the head after a try that found no room.
    pub(super) fn push_front(&mut self, waiting: Waiting) {
        self.waiting.push_front(waiting);
    }

    pub(super) fn pop_front(&mut self) -> Option<Waiting> {
        self.waiting.pop_front()
    }

    /// Removes and returns every entry past its deadline or whose connection went away,
    /// wherever it is in the queue (a reload may have changed `queue_timeout`).
    pub(super) fn take_expired(&mut self, now: Instant) -> Vec<Waiting> {
        if !self
            .waiting
            .iter()
            .any(|w| w.deadline <= now || w.reply_tx.is_closed())
        {
            return Vec::new();
        }
        let (expired, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|w| w.deadline <= now || w.reply_tx.is_closed());
        self.waiting = kept.into();
        expired
    }

    /// The head's deadline, if anything waits. Entries share one `queue_timeout`, so the
    /// head's comes first (after a reload changed it, the periodic tick catches the rest).
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.waiting.front().map(|w| w.deadline)
    }
}
