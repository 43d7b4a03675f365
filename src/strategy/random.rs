//! PLACEHOLDER: first fitting machine. Being replaced by the real algorithm.

use super::{MachineView, PickRequest, Strategy, StrategyKind};

/// Placeholder.
#[derive(Debug, Default)]
pub struct Random;

impl Random {
    /// Creates the strategy with an RNG seeded from `seed`.
    pub fn new(_seed: u64) -> Self {
        Random
    }
}

impl Strategy for Random {
    fn kind(&self) -> StrategyKind {
        StrategyKind::Random
    }

    fn pick(&mut self, machines: &[MachineView], _request: &PickRequest) -> Option<usize> {
        machines.iter().position(|m| m.fits)
    }
}
