//! The HTTP admin endpoint (SPEC §6), served by axum on its own listener, and the other
//! observability output: the periodic summary log line. (The `elastic-lb stats` command,
//! a client of this endpoint, is `cli::stats`.)
//!
//! | route | handler |
//! | --- | --- |
//! | `GET /api/stats` | JSON [`Snapshot`](crate::telemetry::Snapshot) plus the extra keys of [`StatsBody`] |
//! | `GET /metrics` | Prometheus text exposition 0.0.4 ([`metrics`]) |
//! | `PUT /api/strategy` | switch the strategy; answers once the dispatcher uses it |
//! | `GET /api/strategy` | the strategy in force |
//! | `GET /api/upstreams` | proxy mode: the upstream list ([`upstreams`]) |
//! | `POST /api/upstreams` | proxy mode: add an upstream |
//! | `DELETE /api/upstreams/{address}` | proxy mode: drain and remove an upstream |
//! | `GET /` | the live dashboard (`dashboard.html`, embedded in the binary) |
//!
//! Every read handler works on a [`StatsHandle`](crate::telemetry::StatsHandle) snapshot (atomics plus a `watch` borrow):
//! the admin side never locks anything the request path uses, so a slow or busy admin
//! client cannot slow the balancer down. Only `PUT /api/strategy` talks to the dispatcher,
//! through the same bounded command channel as everyone else.
//!
//! Around the routes: [`auth`] asks for `admin.token` on every request but `GET` and
//! `HEAD`, request bodies are limited to [`MAX_BODY_BYTES`], and [`serve`](mod@serve) runs
//! each connection itself, with `admin.max_connections` as a cap and header, keep-alive and
//! request timeouts, so that no admin client can hold descriptors or memory for long.

pub mod auth;
pub mod body;
pub mod metrics;
pub mod serve;
pub mod state;
pub mod summary;
pub mod upstreams;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::middleware;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::balancer::SwitchError;
use crate::config::AdminAddress;
use crate::core::StrategyKind;
use auth::AuthState;
use body::error;
use serve::Limits;

pub use body::{AutoscalerLimits, LoadModel, RequestWeights, StatsBody};
pub use state::AdminState;

/// The dashboard page, compiled into the binary (no files to deploy, no CDN).
pub const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// How long `PUT /api/strategy` waits for room in the dispatcher's command queue before
/// answering 503 (nothing is switched then). Once queued, the switch is always awaited.
const STRATEGY_SWITCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest request body accepted (413 beyond); the API's bodies are a few bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The admin routes, behind the token check and the body limit.
pub fn router(state: AdminState) -> Router {
    let auth = AuthState::new(state.config.clone());
    Router::new()
        .route("/", get(dashboard))
        .route("/api/stats", get(api_stats))
        .route("/api/strategy", get(get_strategy).put(put_strategy))
        .route("/api/upstreams", get(upstreams::list).post(upstreams::add))
        .route("/api/upstreams/{address}", delete(upstreams::remove))
        .route("/metrics", get(prometheus))
        .fallback(no_such_path)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(auth, auth::require_token))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(Arc::new(state))
}

/// Serves the admin API on `listener` until `shutdown` fires, with `admin.max_connections`
/// and the default timeouts of [`serve`](mod@serve). Warns when the endpoint is reachable
/// beyond loopback without `admin.token`.
pub async fn serve(listener: TcpListener, state: AdminState, shutdown: CancellationToken) {
    let admin = state.config.borrow().admin.clone();
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, max_connections = admin.max_connections, "admin interface on http://{addr}/");
        if auth::exposed(addr, &admin) {
            warn!(%addr, "{}", exposure_warning(AdminAddress::Addr(addr)));
        }
    }
    let limits = Limits::new(admin.max_connections);
    serve::run(listener, router(state), limits, shutdown).await;
}

/// The warning for an admin endpoint open beyond loopback without a token.
pub fn exposure_warning(addr: AdminAddress) -> String {
    format!(
        "the admin endpoint on {addr} is reachable beyond loopback and admin.token is not \
         set: anyone who can connect can change the strategy; set admin.token or bind it to \
         127.0.0.1"
    )
}

async fn dashboard() -> Response {
    ([(header::CACHE_CONTROL, "no-cache")], Html(DASHBOARD_HTML)).into_response()
}

async fn api_stats(State(state): State<Arc<AdminState>>) -> Json<StatsBody> {
    Json(StatsBody::new(&state))
}

async fn prometheus(State(state): State<Arc<AdminState>>) -> Response {
    let body = metrics::render(&StatsBody::new(&state), &state.stats.totals.latencies);
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response()
}

/// Body of `PUT /api/strategy` and of both strategy answers.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StrategyBody {
    strategy: String,
}

async fn get_strategy(State(state): State<Arc<AdminState>>) -> Json<StrategyBody> {
    Json(StrategyBody {
        strategy: state.stats.topology().strategy.to_string(),
    })
}

/// `PUT /api/strategy`: 200 `{"strategy": …}` once the dispatcher uses the new strategy;
/// 400 `{"error": …}` for a malformed body or an unknown name.
///
/// The body is taken as raw bytes and parsed here, so that every client error gets the JSON
/// error shape instead of axum's plain-text rejections (and so that `curl -d` works without
/// a `Content-Type` header).
async fn put_strategy(
    State(state): State<Arc<AdminState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(e) => return error(e.status(), format!("cannot read the request body: {e}")),
    };
    let request: StrategyBody = match body::json_object(&body) {
        Ok(request) => request,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(r#"malformed body ({e}); expected {{"strategy": "<name>"}}"#),
            )
        }
    };
    let kind: StrategyKind = match request.strategy.parse() {
        Ok(kind) => kind,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match state
        .dispatcher
        .set_strategy(kind, STRATEGY_SWITCH_TIMEOUT)
        .await
    {
        Ok(()) => {
            info!(strategy = %kind, "strategy set through the admin API");
            Json(StrategyBody {
                strategy: kind.to_string(),
            })
            .into_response()
        }
        Err(e @ (SwitchError::Busy | SwitchError::ShuttingDown)) => {
            error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
    }
}

/// 404 for a path the API does not have.
async fn no_such_path(uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no such path: {}", uri.path()),
    )
}

/// 405 for a method a path does not take (axum adds the `Allow` header).
async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}
