//! PLACEHOLDER: first fitting machine. Being replaced by the real algorithm.

use super::{MachineView, PickRequest, Strategy, StrategyKind};

/// Placeholder.
#[derive(Debug, Default)]
pub struct ConsistentHash;

impl ConsistentHash {
    /// Creates the strategy.
    pub fn new() -> Self {
        ConsistentHash
    }
}

impl Strategy for ConsistentHash {
    fn kind(&self) -> StrategyKind {
        StrategyKind::ConsistentHash
    }

    fn pick(&mut self, machines: &[MachineView], _request: &PickRequest) -> Option<usize> {
        machines.iter().position(|m| m.fits)
    }
}
