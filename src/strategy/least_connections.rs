//! PLACEHOLDER: first fitting machine. Being replaced by the real algorithm.

use super::{MachineView, PickRequest, Strategy, StrategyKind};

/// Placeholder.
#[derive(Debug, Default)]
pub struct LeastConnections;

impl LeastConnections {
    /// Creates the strategy.
    pub fn new() -> Self {
        LeastConnections
    }
}

impl Strategy for LeastConnections {
    fn kind(&self) -> StrategyKind {
        StrategyKind::LeastConnections
    }

    fn pick(&mut self, machines: &[MachineView], _request: &PickRequest) -> Option<usize> {
        machines.iter().position(|m| m.fits)
    }
}
