//! Machine identity, sizes and lifecycle states.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A machine's identity: `m1`, `m2`, … in creation order, never reused in one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MachineId(pub u32);

impl fmt::Display for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m{}", self.0)
    }
}

/// Machine sizes (`[machines]` and `[pool]` tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Size {
    /// `small`
    Small,
    /// `medium`
    Medium,
    /// `large`
    Large,
    /// `xlarge`
    Xlarge,
}

impl Size {
    /// All sizes, smallest first.
    pub const ALL: [Size; 4] = [Size::Small, Size::Medium, Size::Large, Size::Xlarge];

    /// The configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Medium => "medium",
            Size::Large => "large",
            Size::Xlarge => "xlarge",
        }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for a name that is not a size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown size \"{0}\" (expected one of small, medium, large, xlarge)")]
pub struct UnknownSize(pub String);

impl FromStr for Size {
    type Err = UnknownSize;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Size::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownSize(s.to_string()))
    }
}

impl Serialize for Size {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A count per machine size: pool sizes, free machines, machines in use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SizeCounts {
    /// Small machines.
    pub small: u32,
    /// Medium machines.
    pub medium: u32,
    /// Large machines.
    pub large: u32,
    /// Xlarge machines.
    pub xlarge: u32,
}

impl SizeCounts {
    /// All zero.
    pub const EMPTY: SizeCounts = SizeCounts {
        small: 0,
        medium: 0,
        large: 0,
        xlarge: 0,
    };

    /// The count of `size`.
    pub fn get(&self, size: Size) -> u32 {
        match size {
            Size::Small => self.small,
            Size::Medium => self.medium,
            Size::Large => self.large,
            Size::Xlarge => self.xlarge,
        }
    }

    /// Mutable access to the count of `size`.
    pub fn get_mut(&mut self, size: Size) -> &mut u32 {
        match size {
            Size::Small => &mut self.small,
            Size::Medium => &mut self.medium,
            Size::Large => &mut self.large,
            Size::Xlarge => &mut self.xlarge,
        }
    }
}

/// Lifecycle state of a machine (SPEC §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineState {
    /// Takes new connections.
    Active,
    /// Takes no new connections; finishing its queue before retiring.
    Draining,
    /// Gone back to the pool.
    Retired,
}

impl MachineState {
    /// The lower-case name (`active`, `draining`, `retired`).
    pub fn as_str(self) -> &'static str {
        match self {
            MachineState::Active => "active",
            MachineState::Draining => "draining",
            MachineState::Retired => "retired",
        }
    }
}

impl fmt::Display for MachineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
