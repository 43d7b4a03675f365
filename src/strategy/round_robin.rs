//! PLACEHOLDER: first fitting machine. Being replaced by the real algorithm.

use super::{MachineView, PickRequest, Strategy, StrategyKind};

/// Placeholder.
#[derive(Debug, Default)]
pub struct RoundRobin;

impl RoundRobin {
    /// Creates the strategy.
    pub fn new() -> Self {
        RoundRobin
    }
}

impl Strategy for RoundRobin {
    fn kind(&self) -> StrategyKind {
        StrategyKind::RoundRobin
    }

    fn pick(&mut self, machines: &[MachineView], _request: &PickRequest) -> Option<usize> {
        machines.iter().position(|m| m.fits)
    }
}
