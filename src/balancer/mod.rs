//! The balancer: one actor that owns the machine table and decides placement and scaling.
//!
//! - [`dispatcher`] — the actor ([`Dispatcher`]): admission, the periodic autoscaler tick,
//!   strategy switches, reloads. It alone owns the machines, the strategy and the factory.
//! - `admission` and [`queue`] — proxy mode: connections no machine can take wait in a
//!   FIFO (`backend.queue_timeout`) and are placed head-first when capacity appears.
//! - [`scaling`] — the dispatcher's scale-up, drain, retire and replacement steps.
//! - [`policy`] — the pure autoscale rules the dispatcher applies.
//! - [`routing`] — per-request placement by connection tasks, off the dispatcher
//!   ([`Router`]).
//! - [`fast_admit`] — proxy mode: connections placed by their own task, off the dispatcher.
//! - [`placement`] — a connection's binding to a machine ([`Placement`]), which releases
//!   its reservation on drop from wherever the connection is at that moment.
//!
//! Everybody else talks to the actor through [`Command`]s on a bounded channel, via a
//! cloneable [`DispatcherHandle`]. Serialising admission, ticks, switches and reloads
//! through one task makes admission atomic (fits, reserve, scale-up are one step) without
//! locks. The request path does NOT come through the actor: a connection holds its
//! [`Placement`] (home machine and reservation) and places each request itself through the
//! [`Router`].
//!
//! Depends on `core`, `config`, `strategy`, `telemetry` and `backend`.

mod admission;
pub mod dispatcher;
pub mod fast_admit;
pub mod handle;
pub mod placement;
pub mod policy;
pub mod queue;
pub mod routing;
pub mod scaling;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::backend::MachineFactory;
use crate::config::Config;
use crate::telemetry::{Topology, Totals};

pub use dispatcher::Dispatcher;
pub use handle::{AdmitError, Command, DispatcherHandle, Exhaustion, SwitchError};
pub use placement::Placement;
pub use routing::{RouteError, Routed, Router};

/// What [`spawn`] returns: the ways to reach a running dispatcher.
#[derive(Debug)]
pub struct Spawned {
    /// Commands (admission, switches, reloads).
    pub handle: DispatcherHandle,
    /// The published topology, for stats readers.
    pub topology: watch::Receiver<Arc<Topology>>,
    /// Per-request placement, for connection tasks.
    pub router: Router,
}

/// Builds the dispatcher (starting the initial machines), spawns it, and returns its
/// handle, topology receiver and router. Its periodic tick stops when `shutdown` fires; the
/// task itself ends when every [`DispatcherHandle`] is dropped.
pub fn spawn(
    config: Arc<Config>,
    factory: Box<dyn MachineFactory>,
    totals: Arc<Totals>,
    shutdown: CancellationToken,
) -> Spawned {
    let (dispatcher, topology) = Dispatcher::new(config, factory, totals);
    let router = dispatcher.router();
    let (commands_tx, commands_rx) = mpsc::channel(handle::COMMAND_QUEUE);
    tokio::spawn(dispatcher.run(commands_rx, shutdown));
    Spawned {
        handle: DispatcherHandle { commands_tx },
        topology,
        router,
    }
}
