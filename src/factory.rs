//! The machine factory: hands out machines from a finite pool (SPEC §1 "pool").
//!
//! Only the dispatcher calls the factory (it owns it, like it owns the machine table), so
//! the pool needs no locking. Acquiring from an empty pool is a typed
//! [`FactoryError::ResourceExhausted`], never a panic; the dispatcher turns it into
//! `ERR exhausted` for a connection that fits nowhere.

use std::fmt;

use crate::config::Config;
use crate::core::{MachineId, Size, Units};
use crate::machine::{self, MachineContext, MachineHandle, MachineInfo};
use crate::stats::PoolSnapshot;

/// Why no machine could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FactoryError {
    /// The pool holds no free machine of that size.
    #[error("no {0} machine left in the pool")]
    ResourceExhausted(Size),
}

/// Something that turns pool slots into running machines.
pub trait MachineFactory: Send + fmt::Debug {
    /// Starts a machine of `size` named after `id`, taking one slot of the pool.
    ///
    /// # Errors
    ///
    /// [`FactoryError::ResourceExhausted`] when no machine of `size` is free.
    fn acquire(&mut self, size: Size, id: MachineId) -> Result<MachineHandle, FactoryError>;

    /// Gives a retired machine's slot back to the pool.
    fn release(&mut self, machine: &MachineInfo);

    /// Free machines per size.
    fn free(&self) -> PoolSnapshot;

    /// Applies a new configuration (pool sizes, capacities, queue depth) to later
    /// acquisitions; machines already running keep theirs.
    fn reconfigure(&mut self, config: &Config);
}

/// The simulated-mode factory: machines are in-process tasks ([`machine::spawn`]).
#[derive(Debug)]
pub struct LocalFactory {
    /// Pool size per size (`[pool]`).
    limits: PoolSnapshot,
    /// Machines handed out and not yet released, per size.
    in_use: PoolSnapshot,
    config: Config,
    ctx: MachineContext,
}

impl LocalFactory {
    /// A factory drawing from `config.pool`; machines get `ctx`.
    pub fn new(config: &Config, ctx: MachineContext) -> Self {
        let mut factory = LocalFactory {
            limits: PoolSnapshot::EMPTY,
            in_use: PoolSnapshot::EMPTY,
            config: config.clone(),
            ctx,
        };
        factory.reconfigure(config);
        factory
    }
}

impl MachineFactory for LocalFactory {
    fn acquire(&mut self, size: Size, id: MachineId) -> Result<MachineHandle, FactoryError> {
        if self.in_use.get(size) >= self.limits.get(size) {
            return Err(FactoryError::ResourceExhausted(size));
        }
        *self.in_use.get_mut(size) += 1;
        let capacity = Units::from_whole(self.config.machines.capacity(size));
        Ok(machine::spawn(
            id,
            size,
            capacity,
            self.config.machines.queue_depth,
            self.ctx.clone(),
        ))
    }

    fn release(&mut self, machine: &MachineInfo) {
        let n = self.in_use.get_mut(machine.size);
        *n = n.saturating_sub(1);
    }

    fn free(&self) -> PoolSnapshot {
        let mut free = PoolSnapshot::EMPTY;
        for size in Size::ALL {
            // A pool shrunk by a reload below what is in use has none free (not negative).
            *free.get_mut(size) = self.limits.get(size).saturating_sub(self.in_use.get(size));
        }
        free
    }

    fn reconfigure(&mut self, config: &Config) {
        self.limits = config.pool.counts();
        self.config = config.clone();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::watch;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::stats::Totals;

    fn factory(pool_medium: u32) -> LocalFactory {
        let mut config = Config::default();
        config.pool.medium = pool_medium;
        let (_tx, rx) = watch::channel(Arc::new(config.clone()));
        let ctx = MachineContext {
            config: rx,
            totals: Arc::new(Totals::default()),
            hard_stop: CancellationToken::new(),
        };
        LocalFactory::new(&config, ctx)
    }

    #[tokio::test]
    async fn empty_pool_is_a_typed_error() {
        let mut f = factory(1);
        let m = f.acquire(Size::Medium, MachineId(1)).unwrap();
        assert_eq!(m.info.capacity, Units::from_whole(100));
        assert_eq!(f.free().medium, 0);
        assert_eq!(
            f.acquire(Size::Medium, MachineId(2)).unwrap_err(),
            FactoryError::ResourceExhausted(Size::Medium)
        );
        f.release(&MachineInfo::new(
            MachineId(9),
            Size::Medium,
            Units::ZERO,
            1,
        ));
        assert_eq!(f.free().medium, 1);
        assert!(f.acquire(Size::Medium, MachineId(3)).is_ok());
    }

    #[tokio::test]
    async fn shrinking_the_pool_never_goes_negative() {
        let mut f = factory(2);
        f.acquire(Size::Medium, MachineId(1)).unwrap();
        f.acquire(Size::Medium, MachineId(2)).unwrap();
        let mut smaller = Config::default();
        smaller.pool.medium = 1;
        f.reconfigure(&smaller);
        assert_eq!(f.free().medium, 0);
        f.release(&MachineInfo::new(
            MachineId(9),
            Size::Medium,
            Units::ZERO,
            1,
        ));
        assert_eq!(f.free().medium, 0);
        f.release(&MachineInfo::new(
            MachineId(9),
            Size::Medium,
            Units::ZERO,
            1,
        ));
        assert_eq!(f.free().medium, 1);
    }
}
