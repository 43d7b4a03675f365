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

#[cfg(test)]
mod tests {
    use crate::config::{Config, SendProxy};

    fn err(text: &str) -> String {
        match Config::from_toml(text, "x.toml") {
            Ok(c) => panic!("accepted {text:?}: {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn named_values_are_strings_only() {
        // serde would also take `{ proxy = {} }` for these; the reference documents strings.
        for (table, key, value) in [
            ("listener", "io", "epoll"),
            ("dispatcher", "routing", "connection"),
            ("autoscaler", "policy", "target"),
            ("backend", "mode", "proxy"),
            ("backend", "send_proxy", "v1"),
        ] {
            let as_table = err(&format!("[{table}]\n{key} = {{ {value} = {{}} }}\n"));
            assert_eq!(
                as_table,
                format!("x.toml:2: {table}.{key}: invalid type: map, expected a string")
            );
            let as_number = err(&format!("[{table}]\n{key} = 5\n"));
            assert_eq!(
                as_number,
                format!("x.toml:2: {table}.{key}: invalid type: integer `5`, expected a string")
            );
        }
        let ok = Config::from_toml("[backend]\nsend_proxy = \"v2\"\n", "x.toml").expect("ok");
        assert_eq!(ok.backend.send_proxy, SendProxy::V2);
    }
}
