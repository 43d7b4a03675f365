//! Strategy names (`dispatcher.strategy`, SPEC §5). The algorithms live in `crate::strategy`.

use std::fmt;
use std::str::FromStr;

/// The strategy names of `dispatcher.strategy` (SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StrategyKind {
    /// `round-robin`
    RoundRobin,
    /// `random`
    Random,
    /// `least-connections`
    LeastConnections,
    /// `least-load`
    LeastLoad,
    /// `power-of-two`
    PowerOfTwo,
    /// `consistent-hash`
    ConsistentHash,
    /// `first`
    First,
}

impl StrategyKind {
    /// Every kind, in the order the docs list them.
    pub const ALL: [StrategyKind; 7] = [
        StrategyKind::RoundRobin,
        StrategyKind::Random,
        StrategyKind::LeastConnections,
        StrategyKind::LeastLoad,
        StrategyKind::PowerOfTwo,
        StrategyKind::ConsistentHash,
        StrategyKind::First,
    ];

    /// The configuration name, e.g. `"least-connections"`.
    pub fn as_str(self) -> &'static str {
        match self {
            StrategyKind::RoundRobin => "round-robin",
            StrategyKind::Random => "random",
            StrategyKind::LeastConnections => "least-connections",
            StrategyKind::LeastLoad => "least-load",
            StrategyKind::PowerOfTwo => "power-of-two",
            StrategyKind::ConsistentHash => "consistent-hash",
            StrategyKind::First => "first",
        }
    }
}

impl fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for a name that is not a strategy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown strategy \"{0}\" (expected one of round-robin, random, least-connections, least-load, power-of-two, consistent-hash, first)")]
pub struct UnknownStrategy(pub String);

impl FromStr for StrategyKind {
    type Err = UnknownStrategy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StrategyKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownStrategy(s.to_string()))
    }
}

impl TryFrom<String> for StrategyKind {
    type Error = UnknownStrategy;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<StrategyKind> for String {
    fn from(k: StrategyKind) -> String {
        k.as_str().to_string()
    }
}

impl serde::Serialize for StrategyKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for StrategyKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
