//! `/api/upstreams` (proxy mode): the run-time upstream list, like HAProxy's runtime
//! `show servers state` / `add server` / `del server`.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /api/upstreams` | 200, JSON list of [`UpstreamView`] (`[]` in simulated mode) |
//! | `POST /api/upstreams` `{"address": "host:port", "size": "medium", "max_connections": 4}` | 201 (probed, then in the pool; a host name is resolved once, to its first address); 400 bad body or a name that does not resolve; 409 exists |
//! | `DELETE /api/upstreams/{address}` (as listed, or the host name it was added by) | 202 (idle: gone; else its machine drains and retires when its last connection closes); 404 unknown |
//!
//! Each handler locks the shared list for a few list operations and never across an
//! `.await`; draining is left to the dispatcher's next tick.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use tracing::info;

use super::body::error;
use super::state::AdminState;
use crate::backend::upstream::{AddError, Origin, RemoveError, Removed, UpstreamView};
use crate::config::resolve_addr;
use crate::core::Size;

/// Body of `POST /api/upstreams`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    address: String,
    #[serde(default)]
    size: Option<String>,
    /// As `max_connections` of a `[[backend.upstreams]]` entry (at least 1; none = no
    /// limit).
    #[serde(default)]
    max_connections: Option<NonZeroU32>,
}

/// `GET /api/upstreams`.
pub(super) async fn list(State(state): State<Arc<AdminState>>) -> Json<Vec<UpstreamView>> {
    Json(
        state
            .upstreams
            .as_ref()
            .map(|p| p.list())
            .unwrap_or_default(),
    )
}

/// `POST /api/upstreams`.
pub(super) async fn add(
    State(state): State<Arc<AdminState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(pool) = &state.upstreams else {
        return not_proxy();
    };
    let body = match body {
        Ok(body) => body,
        Err(e) => return error(e.status(), format!("cannot read the request body: {e}")),
    };
    let request: AddBody = match super::body::json_object(&body) {
        Ok(request) => request,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    r#"malformed body ({e}); expected {{"address": "host:port", "size": "<size>", "max_connections": <n>}} (size and max_connections optional)"#
                ),
            )
        }
    };
    let address = match resolve(request.address).await {
        Ok(address) if address.port() == 0 => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("address {address}: port 0 (expected the port the upstream listens on)"),
            )
        }
        Ok(address) => address,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let size = match request.size.as_deref().map(str::parse::<Size>) {
        None => Size::Medium,
        Some(Ok(size)) => size,
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let max_connections = request.max_connections.map(NonZeroU32::get);
    match pool.add(address, size, max_connections, Origin::Admin) {
        Ok(()) => {
            info!(upstream = %address, %size, max_connections = ?max_connections, "upstream added through the admin API");
            let view = pool
                .list()
                .into_iter()
                .find(|v| v.address == address.to_string());
            (StatusCode::CREATED, Json(view)).into_response()
        }
        Err(e @ (AddError::Exists(_) | AddError::Draining(_))) => {
            error(StatusCode::CONFLICT, e.to_string())
        }
    }
}

/// `DELETE /api/upstreams/{address}`.
pub(super) async fn remove(
    State(state): State<Arc<AdminState>>,
    Path(address): Path<String>,
) -> Response {
    let Some(pool) = &state.upstreams else {
        return not_proxy();
    };
    // As listed (`IP:port`), or the host name it was added by.
    let Ok(parsed) = resolve(address.clone()).await else {
        return error(StatusCode::NOT_FOUND, format!("no upstream {address}"));
    };
    match pool.remove(parsed) {
        Ok(removed) => {
            let state = match removed {
                Removed::Gone => "removed",
                Removed::Draining => "draining",
            };
            info!(upstream = %parsed, state, "upstream removed through the admin API");
            let body = serde_json::json!({ "address": parsed.to_string(), "state": state });
            (StatusCode::ACCEPTED, Json(body)).into_response()
        }
        Err(e @ RemoveError::Unknown(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
    }
}

/// `IP:port` as is; `host:port` through the system's resolver, off the runtime's worker
/// threads (a lookup may wait on a DNS server). The error is one line naming the address.
async fn resolve(address: String) -> Result<SocketAddr, String> {
    if let Ok(address) = address.parse() {
        return Ok(address);
    }
    tokio::task::spawn_blocking(move || resolve_addr(&address).map_err(|e| e.to_string()))
        .await
        .unwrap_or_else(|e| Err(format!("address lookup failed: {e}")))
}

fn not_proxy() -> Response {
    error(
        StatusCode::CONFLICT,
        "upstreams exist in proxy mode only (backend.mode = \"proxy\")".to_string(),
    )
}
