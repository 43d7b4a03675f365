//! Simulated mode: machines are in-process workers drawn from the finite `[pool]`.
//!
//! Acquiring from an empty pool is a typed [`FactoryError::ResourceExhausted`], never a
//! panic; the dispatcher turns it into `ERR exhausted` for a connection that fits nowhere.

pub mod worker;

use crate::backend::factory::{BackendContext, FactoryError, MachineFactory};
use crate::backend::machine::Machine;
use crate::config::Config;
use crate::core::{MachineId, Size, SizeCounts, Units};
use crate::telemetry::MachineInfo;

/// The simulated-mode factory: machines are in-process tasks ([`worker::spawn`]).
#[derive(Debug)]
pub struct LocalFactory {
    /// Pool size per size (`[pool]`).
    limits: SizeCounts,
    /// Machines handed out and not yet released, per size.
    in_use: SizeCounts,
    config: Config,
    ctx: BackendContext,
}

impl LocalFactory {
    /// A factory drawing from `config.pool`; machines get `ctx`.
    pub fn new(config: &Config, ctx: BackendContext) -> Self {
        let mut factory = LocalFactory {
            limits: SizeCounts::EMPTY,
            in_use: SizeCounts::EMPTY,
            config: config.clone(),
            ctx,
        };
        factory.reconfigure(config);
        factory
    }
}

impl MachineFactory for LocalFactory {
    fn acquire(&mut self, size: Size, id: MachineId) -> Result<Machine, FactoryError> {
        if self.in_use.get(size) >= self.limits.get(size) {
            return Err(FactoryError::ResourceExhausted(size));
        }
        *self.in_use.get_mut(size) += 1;
        let capacity = Units::from_whole(self.config.machines.capacity(size));
        let info = MachineInfo::new(id, size, capacity, self.config.machines.queue_depth);
        Ok(worker::spawn(info, self.ctx.clone()))
    }

    fn release(&mut self, machine: &Machine) {
        let n = self.in_use.get_mut(machine.info.size);
        *n = n.saturating_sub(1);
    }

    fn free(&self) -> SizeCounts {
        let mut free = SizeCounts::EMPTY;
        for size in Size::ALL {
            // A pool shrunk by a reload below what is in use has none free (not negative).
            *free.get_mut(size) = self.limits.get(size).saturating_sub(self.in_use.get(size));
        }
        free
    }

    fn pool_size(&self) -> SizeCounts {
        self.limits
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
    use crate::telemetry::Totals;

    fn factory(pool_medium: u32) -> LocalFactory {
        let mut config = Config::default();
        config.pool.medium = pool_medium;
        let (_tx, rx) = watch::channel(Arc::new(config.clone()));
        let ctx = BackendContext {
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
        f.release(&m);
        assert_eq!(f.free().medium, 1);
        assert!(f.acquire(Size::Medium, MachineId(3)).is_ok());
    }

    #[tokio::test]
    async fn shrinking_the_pool_never_goes_negative() {
        let mut f = factory(2);
        let m1 = f.acquire(Size::Medium, MachineId(1)).unwrap();
        let m2 = f.acquire(Size::Medium, MachineId(2)).unwrap();
        let mut smaller = Config::default();
        smaller.pool.medium = 1;
        f.reconfigure(&smaller);
        assert_eq!(f.free().medium, 0);
        f.release(&m1);
        assert_eq!(f.free().medium, 0);
        f.release(&m2);
        assert_eq!(f.free().medium, 1);
    }
}
