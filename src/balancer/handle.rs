//! The dispatcher's mailbox: the [`Command`]s it takes and the cloneable
//! [`DispatcherHandle`] everybody else sends them through.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::placement::Placement;
use crate::config::Config;
use crate::core::{MachineId, StrategyKind, Units};

/// Commands queued for the dispatcher at most; senders wait when it is full.
pub(super) const COMMAND_QUEUE: usize = 1024;

/// Messages to the dispatcher task.
#[derive(Debug)]
pub enum Command {
    /// Place a new connection from `peer`.
    Admit {
        /// The client.
        peer: SocketAddr,
        /// Machines not to place it on (proxy mode: their upstream just failed it).
        avoid: Vec<MachineId>,
        /// Where the outcome goes; the connection task awaits it.
        reply_tx: oneshot::Sender<Result<Placement, AdmitError>>,
    },
    /// Run the autoscaler's checks now (scale up, scale down, finish drains, replace
    /// unhealthy machines), as the periodic tick does.
    Tick,
    /// Switch the strategy at run time; the optional sender is signalled once the new
    /// strategy is in force (the admin API answers only then).
    SetStrategy(StrategyKind, Option<oneshot::Sender<()>>),
    /// Apply a reloaded configuration (strategy, thresholds, pool sizes, interval, ...);
    /// the optional sender is signalled once it is in force.
    Reconfigure(Arc<Config>, Option<oneshot::Sender<()>>),
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AdmitError {
    /// No machine fits and the pool (or `max_machines`) can supply none.
    #[error("no machine can take the connection (reservation {reservation}, {limit})")]
    Exhausted {
        /// The reservation that did not fit.
        reservation: Units,
        /// What stopped the acquisition of another machine.
        limit: Exhaustion,
    },
    /// The dispatcher has stopped.
    #[error("server is shutting down")]
    ShuttingDown,
}

/// What kept the autoscaler from acquiring a machine for a connection that fits nowhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Exhaustion {
    /// No size whose capacity holds the reservation is left in the pool.
    #[error("pool exhausted")]
    Pool,
    /// The set already has `autoscaler.max_machines` machines (the pool may have more).
    #[error("max_machines = {0} reached")]
    MaxMachines(usize),
    /// It waited `backend.queue_timeout` in the admission queue (proxy mode) and no machine
    /// had room meanwhile: full upstreams (`max_connections`), unhealthy ones, or the above.
    #[error("none had room within queue_timeout = {0:?}")]
    QueueTimeout(std::time::Duration),
}

/// Why a strategy switch was not made. Either way the strategy in force is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwitchError {
    /// The command queue stayed full for the whole wait; nothing was sent.
    #[error("the dispatcher did not take the command in time")]
    Busy,
    /// The dispatcher has stopped.
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// The sending side of the dispatcher's command channel.
#[derive(Debug, Clone)]
pub struct DispatcherHandle {
    /// The dispatcher task holds the receiver; it stops when every handle is dropped.
    pub(super) commands_tx: mpsc::Sender<Command>,
}

impl DispatcherHandle {
    /// Asks for a placement for a connection from `peer`.
    ///
    /// # Errors
    ///
    /// [`AdmitError::Exhausted`] when nothing fits and no machine can be acquired,
    /// [`AdmitError::ShuttingDown`] when the dispatcher is gone.
    pub async fn admit(&self, peer: SocketAddr) -> Result<Placement, AdmitError> {
        self.admit_avoiding(peer, Vec::new()).await
    }

    /// [`Self::admit`], never on one of the machines in `avoid`.
    ///
    /// # Errors
    ///
    /// As [`Self::admit`].
    pub async fn admit_avoiding(
        &self,
        peer: SocketAddr,
        avoid: Vec<MachineId>,
    ) -> Result<Placement, AdmitError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        self.commands_tx
            .send(Command::Admit {
                peer,
                avoid,
                reply_tx,
            })
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

    /// Switches the strategy and returns once the dispatcher uses it.
    ///
    /// `send_within` bounds only the wait for room in the command queue. Once the command
    /// is queued the switch will happen, so the confirmation is awaited without a deadline:
    /// an error is never answered for a switch that is then applied.
    ///
    /// # Errors
    ///
    /// [`SwitchError::Busy`] when no room was found in time (nothing was sent),
    /// [`SwitchError::ShuttingDown`] when the dispatcher is gone.
    pub async fn set_strategy(
        &self,
        kind: StrategyKind,
        send_within: Duration,
    ) -> Result<(), SwitchError> {
        let permit = tokio::time::timeout(send_within, self.commands_tx.reserve())
            .await
            .map_err(|_| SwitchError::Busy)?
            .map_err(|_| SwitchError::ShuttingDown)?;
        let (done_tx, done_rx) = oneshot::channel();
        permit.send(Command::SetStrategy(kind, Some(done_tx)));
        done_rx.await.map_err(|_| SwitchError::ShuttingDown)
    }
}
