//! What a strategy sees (one [`MachineView`] per active machine, the [`PickRequest`]), the
//! [`Strategy`] trait every algorithm implements, and the scans several strategies share.

use std::cmp::Ordering;
use std::fmt;
use std::net::IpAddr;

use crate::core::{MachineId, StrategyKind, Units};

/// What a strategy sees of one active machine at admission time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MachineView {
    /// Stable identity (creation order; never reused in one run).
    pub id: MachineId,
    /// Capacity in load units.
    pub capacity: Units,
    /// Used capacity (reservations + queued request weights) in load units.
    pub used: Units,
    /// Whether `used + reservation ≤ capacity` for the connection being placed.
    pub fits: bool,
}

impl MachineView {
    /// Free capacity, `capacity − used`, saturating at zero.
    pub fn free(&self) -> Units {
        self.capacity.saturating_sub(self.used)
    }

    /// Load in percent, `100 × used / capacity`.
    pub fn load_percent(&self) -> f64 {
        self.used.percent_of(self.capacity)
    }
}

/// The connection being placed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PickRequest {
    /// The client's IP address (the key for `consistent-hash`).
    pub client_ip: IpAddr,
    /// The reservation the connection will hold.
    pub reservation: Units,
}

/// A placement algorithm. See the module docs for the contract.
pub trait Strategy: Send + Sync + fmt::Debug {
    /// Which kind this is (for stats and the admin API).
    fn kind(&self) -> StrategyKind;

    /// Picks a machine for `request` among `machines` (all active machines, creation order).
    ///
    /// Returns the index into `machines` of a machine whose `fits` is true, or `None` when no
    /// machine fits. Must never return a non-fitting machine.
    fn pick(&self, machines: &[MachineView], request: &PickRequest) -> Option<usize>;
}

/// The index of the fitting machine that `order` puts first, or `None` when none fits.
///
/// One pass in creation order that keeps the first of equals, so ties go to the older
/// machine. Generic over `order`: no allocation and no dynamic dispatch on the pick path.
pub(crate) fn least_fitting(
    machines: &[MachineView],
    order: impl Fn(&MachineView, &MachineView) -> Ordering,
) -> Option<usize> {
    machines
        .iter()
        .enumerate()
        .filter(|(_, m)| m.fits)
        // `min_by` returns the first of several equal minima: the older machine.
        .min_by(|(_, a), (_, b)| order(a, b))
        .map(|(i, _)| i)
}

/// The index in `machines` of the `k`-th fitting machine (0-based), or `None` when fewer fit.
pub(crate) fn nth_fitting(machines: &[MachineView], k: usize) -> Option<usize> {
    machines
        .iter()
        .enumerate()
        .filter(|(_, m)| m.fits)
        .nth(k)
        .map(|(i, _)| i)
}
