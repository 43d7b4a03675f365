//! Load amounts in exact fixed point.

use std::fmt;

/// An amount of load in fixed point: 1 load unit = 1000 milli-units.
///
/// Fixed point keeps the accounting exact: a reservation added to a machine's `used` is
/// subtracted again to the last bit when the connection closes, so `used` returns to 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Units(pub u64);

impl Units {
    /// Zero load.
    pub const ZERO: Units = Units(0);
    /// Milli-units per load unit.
    pub const SCALE: u64 = 1000;

    /// Converts load units (rounded to the nearest milli-unit; negatives become 0).
    pub fn from_f64(units: f64) -> Units {
        if units.is_finite() && units > 0.0 {
            Units((units * Self::SCALE as f64).round() as u64)
        } else {
            Units(0)
        }
    }

    /// Whole load units.
    pub fn from_whole(units: u64) -> Units {
        Units(units.saturating_mul(Self::SCALE))
    }

    /// The amount in load units.
    pub fn as_f64(self) -> f64 {
        self.0 as f64 / Self::SCALE as f64
    }

    /// `self − other`, saturating at zero.
    pub fn saturating_sub(self, other: Units) -> Units {
        Units(self.0.saturating_sub(other.0))
    }

    /// `100 × self / capacity`; 0 for a zero capacity.
    pub fn percent_of(self, capacity: Units) -> f64 {
        if capacity.0 == 0 {
            0.0
        } else {
            100.0 * self.0 as f64 / capacity.0 as f64
        }
    }
}

impl std::ops::Add for Units {
    type Output = Units;
    fn add(self, rhs: Units) -> Units {
        Units(self.0.saturating_add(rhs.0))
    }
}

impl std::iter::Sum for Units {
    fn sum<I: Iterator<Item = Units>>(iter: I) -> Units {
        iter.fold(Units::ZERO, |a, b| a + b)
    }
}

impl fmt::Display for Units {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.2}", self.as_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_and_display() {
        assert_eq!(Units::from_f64(7.3456), Units(7346));
        assert_eq!(
            Units::from_whole(25).percent_of(Units::from_whole(50)),
            50.0
        );
        assert_eq!(Units::from_whole(1).percent_of(Units::ZERO), 0.0);
        assert_eq!(Units::from_f64(10.0).to_string(), "10.00");
        assert_eq!(Units::from_f64(-3.0), Units::ZERO);
    }
}
