//! The factory side of the seam: what the balancer calls to get and give back machines.

use std::fmt;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::machine::Machine;
use crate::config::Config;
use crate::core::{MachineId, Size, SizeCounts};
use crate::telemetry::Totals;

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

    /// Whether a connection that no machine can take waits for capacity (up to
    /// `backend.queue_timeout`) instead of being refused at once. Proxy mode queues: its
    /// refusal is a bare close the client cannot tell from an outage; simulated mode
    /// answers `ERR exhausted` at once.
    fn queue_when_full(&self) -> bool {
        false
    }

    /// Whether an `acquire` of `size` that found none asks for one to be created (proxy
    /// mode with `backend.provider`: the machine joins later, when its upstream is up).
    fn provides(&self, _size: Size) -> bool {
        false
    }

    /// Applies a new configuration (pool sizes, capacities, queue depth) to later
    /// acquisitions; machines already running keep theirs.
    fn reconfigure(&mut self, config: &Config);

    /// Machines that must drain because what backs them is leaving (proxy mode: an
    /// upstream removed by a reload or the admin API). The dispatcher asks on every tick;
    /// each machine is reported once. They retire, and are released, once their last
    /// connection closes.
    fn retiring(&mut self) -> Vec<MachineId> {
        Vec::new()
    }
}
