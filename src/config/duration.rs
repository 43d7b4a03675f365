//! Serde for durations written as strings like `"250ms"`, `"10s"`, `"0s"`.
//!
//! Used as `#[serde(with = "duration_str")]` on the duration fields of the schema, and by
//! the command line (`elastic-lb load --duration`) and log messages through the public path
//! `crate::config::duration_str`.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// A duration that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration \"{value}\" ({reason}; expected e.g. \"250ms\", \"10s\")")]
pub struct DurationError {
    /// What was written.
    pub value: String,
    /// Why it is not a duration.
    pub reason: String,
}

/// Parses `"250ms"`, `"10s"`, `"1m"`, `"0s"`.
///
/// # Errors
///
/// [`DurationError`], naming the bad value.
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    humantime::parse_duration(s.trim()).map_err(|e| DurationError {
        value: s.to_string(),
        reason: e.to_string(),
    })
}

/// Renders whole seconds as `"10s"`, anything else as `"250ms"`.
pub fn format(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos() % 1_000_000 == 0 {
        format!("{}ms", d.as_millis())
    } else {
        humantime::format_duration(d).to_string()
    }
}

/// Serde `serialize_with`.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*d))
}

/// Serde `deserialize_with`.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse(&s).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_render_as_strings() {
        assert_eq!(format(Duration::from_secs(60)), "60s");
        assert_eq!(format(Duration::from_millis(250)), "250ms");
        assert_eq!(format(Duration::ZERO), "0s");
        assert_eq!(parse(" 10s "), Ok(Duration::from_secs(10)));
    }
}
