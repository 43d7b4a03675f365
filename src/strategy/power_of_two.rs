//! PLACEHOLDER: first fitting machine. Being replaced by the real algorithm.

use super::{MachineView, PickRequest, Strategy, StrategyKind};

/// Placeholder.
#[derive(Debug, Default)]
pub struct PowerOfTwo;

impl PowerOfTwo {
    /// Creates the strategy with an RNG seeded from `seed`.
    pub fn new(_seed: u64) -> Self {
        PowerOfTwo
    }
}

impl Strategy for PowerOfTwo {
    fn kind(&self) -> StrategyKind {
        StrategyKind::PowerOfTwo
    }

    fn pick(&mut self, machines: &[MachineView], _request: &PickRequest) -> Option<usize> {
        machines.iter().position(|m| m.fits)
    }
}
