//! The body of `GET /api/stats`: the SPEC §6 keys plus the extra keys the dashboard and
//! `elastic-lb load --profile` use; and how request bodies are read (`json_object`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::state::AdminState;
use crate::core::{RequestClass, Units};
use crate::telemetry::{PoolSnapshot, Snapshot};

/// The autoscaler settings the dashboard draws (extra key `autoscaler` of `/api/stats`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoscalerLimits {
    /// `autoscaler.scale_up_threshold`, percent.
    pub scale_up_threshold: f64,
    /// `autoscaler.scale_down_threshold`, percent.
    pub scale_down_threshold: f64,
    /// `autoscaler.min_machines`.
    pub min_machines: usize,
    /// `autoscaler.max_machines`.
    pub max_machines: usize,
}

/// Weight of each request class in load units (`[load.requests]`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct RequestWeights {
    pub small: u64,
    pub medium: u64,
    pub large: u64,
}

impl RequestWeights {
    /// Weight of `class`.
    pub fn weight(&self, class: RequestClass) -> u64 {
        match class {
            RequestClass::Small => self.small,
            RequestClass::Medium => self.medium,
            RequestClass::Large => self.large,
        }
    }
}

/// The load model in force (extra key `load_model` of `/api/stats`, SPEC §1): what a client
/// needs to turn the requests it offers into the capacity they need (docs/elasticity.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadModel {
    /// `load.requests.service_ms_per_unit`: a request of weight `w` takes
    /// `w × this × 100 / capacity` ms.
    pub service_ms_per_unit: f64,
    /// `load.requests.small` / `medium` / `large`.
    pub requests: RequestWeights,
    /// `load.connection_min`.
    pub connection_min: f64,
    /// `load.connection_max`.
    pub connection_max: f64,
}

/// The body of `GET /api/stats`: the SPEC §6 keys (flattened [`Snapshot`], which also carries
/// `events`) plus extra keys. Extra keys only ever get added, never renamed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsBody {
    /// The SPEC §6 keys and `events`.
    #[serde(flatten)]
    pub snapshot: Snapshot,
    /// Thresholds and machine limits in force.
    pub autoscaler: AutoscalerLimits,
    /// Configured pool size per size (`pool` holds what is free of it).
    pub pool_size: PoolSnapshot,
    /// Request weights, service time and reservation range in force (`None` only when
    /// read from a daemon older than this key).
    #[serde(default)]
    pub load_model: Option<LoadModel>,
    /// Σ reservations of the open connections on active and draining machines, load units
    /// (the part of `Σ used` that is not request weights). `None` only when read from a
    /// daemon older than this key.
    #[serde(default)]
    pub reserved: Option<f64>,
}

impl StatsBody {
    /// The body for the current state.
    pub fn new(state: &AdminState) -> StatsBody {
        // One published topology: the strategy, the machines and the thresholds shown all
        // belong to the same configuration, even while reloads come in.
        let (snapshot, pool_size, config) = state.stats.consistent_snapshot();
        let a = &config.autoscaler;
        let r = &config.load.requests;
        // Read a moment after the snapshot (from the same kind of lock-free gauges).
        let reserved: Units = state
            .stats
            .topology()
            .machines
            .iter()
            .map(|m| m.reserved())
            .sum();
        StatsBody {
            snapshot,
            autoscaler: AutoscalerLimits {
                scale_up_threshold: a.scale_up_threshold,
                scale_down_threshold: a.scale_down_threshold,
                min_machines: a.min_machines,
                max_machines: a.max_machines,
            },
            pool_size,
            load_model: Some(LoadModel {
                service_ms_per_unit: r.service_ms_per_unit,
                requests: RequestWeights {
                    small: r.small,
                    medium: r.medium,
                    large: r.large,
                },
                connection_min: config.load.connection_min,
                connection_max: config.load.connection_max,
            }),
            reserved: Some(reserved.as_f64()),
        }
    }
}

/// A request body that must be one JSON object of `T`'s fields. serde would also take a
/// struct from a JSON array of its fields in order (`["127.0.0.1:9003", "large"]`); an
/// admin API takes the named form only. The error is one line for a `400`.
pub(super) fn json_object<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    // Checked on the text, so that parsing straight into `T` still refuses a duplicate key.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err("not a JSON object".to_string());
    }
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

/// `{"error": message}` with `status`: the shape of every admin error.
pub(super) fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::json_object;

    #[derive(Debug, PartialEq, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        name: String,
    }

    #[test]
    fn only_an_object_of_known_fields_is_taken() {
        let ok: Result<Body, _> = json_object(br#"{"name": "x"}"#);
        assert_eq!(ok, Ok(Body { name: "x".into() }));
        for bad in [
            &br#"["x"]"#[..],
            b"7",
            b"\"x\"",
            b"null",
            br#"{"name":"x","y":1}"#,
            b"{",
            br#"{"name":"x","name":"y"}"#,
            br#" ["x"]"#,
        ] {
            let e = json_object::<Body>(bad).expect_err("refused");
            assert!(!e.is_empty(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
