//! Keys whose value is one of a few names (`listener.io`, `dispatcher.routing`,
//! `autoscaler.policy`, `backend.mode`, `backend.send_proxy`): a string, and nothing else.
//!
//! serde's derived enums would also take a table naming the variant
//! (`mode = { proxy = {} }`), which the reference does not document, and say "wanted
//! string or table" for a number. Reading a string first gives the same error as every
//! other string key (`invalid type: integer `5`, expected a string`) and the same
//! "unknown variant" one for a wrong name.

use serde::de::IntoDeserializer;
use serde::{Deserialize, Deserializer};

/// `#[serde(deserialize_with = "variant::named")]` for a field of a unit-variant enum.
pub(super) fn named<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let name = String::deserialize(d)?;
    T::deserialize(IntoDeserializer::<D::Error>::into_deserializer(name))
}
