//! PLACEHOLDER: first fitting machine. Being replaced by the real algorithm.

use super::{MachineView, PickRequest, Strategy, StrategyKind};

/// Placeholder.
#[derive(Debug, Default)]
pub struct LeastLoad;

impl LeastLoad {
    /// Creates the strategy.
    pub fn new() -> Self {
        LeastLoad
    }
}

impl Strategy for LeastLoad {
    fn kind(&self) -> StrategyKind {
        StrategyKind::LeastLoad
    }

    fn pick(&mut self, machines: &[MachineView], _request: &PickRequest) -> Option<usize> {
        machines.iter().position(|m| m.fits)
    }
}
