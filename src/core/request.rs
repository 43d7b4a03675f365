//! Request classes (`[load.requests]`, SPEC §4).

use std::fmt;
use std::str::FromStr;

/// Request classes (`[load.requests]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestClass {
    /// `SMALL`
    Small,
    /// `MEDIUM`
    Medium,
    /// `LARGE`
    Large,
}

impl RequestClass {
    /// All classes.
    pub const ALL: [RequestClass; 3] = [
        RequestClass::Small,
        RequestClass::Medium,
        RequestClass::Large,
    ];

    /// Lower-case name (as in replies and configuration).
    pub fn as_str(self) -> &'static str {
        match self {
            RequestClass::Small => "small",
            RequestClass::Medium => "medium",
            RequestClass::Large => "large",
        }
    }
}

impl fmt::Display for RequestClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for a name that is not a request class.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown request class \"{0}\" (expected one of small, medium, large)")]
pub struct UnknownClass(pub String);

impl FromStr for RequestClass {
    type Err = UnknownClass;

    /// Case-insensitive, as on the wire.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RequestClass::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownClass(s.to_string()))
    }
}

impl serde::Serialize for RequestClass {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for RequestClass {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        // The configuration spells classes in lower case only.
        if s.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(serde::de::Error::custom(UnknownClass(s)));
        }
        s.parse().map_err(serde::de::Error::custom)
    }
}
