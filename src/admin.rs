//! The HTTP admin endpoint (SPEC §6), served by axum on its own listener.
//!
//! Every handler reads a [`StatsHandle`] snapshot (atomics plus a `watch` borrow): the admin
//! side never locks anything the request path uses, so a slow or busy admin client cannot
//! slow the balancer down.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::stats::{Snapshot, StatsHandle};

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Read side of all counters and the machine list.
    pub stats: StatsHandle,
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/api/stats", get(api_stats))
        .with_state(Arc::new(state))
}

/// Serves the admin API on `listener` until `shutdown` fires.
pub async fn serve(listener: TcpListener, state: AdminState, shutdown: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "admin interface on http://{addr}/");
    }
    let app = router(state);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
    {
        warn!(error = %e, "admin server failed");
    }
}

async fn api_stats(State(state): State<Arc<AdminState>>) -> Json<Snapshot> {
    Json(state.stats.snapshot())
}

/// `elastic-lb stats`: prints a table of machines and totals from a running daemon.
///
/// TODO(issue 4): not implemented yet.
///
/// # Errors
///
/// A one-line message when the daemon cannot be reached.
pub async fn stats_command(admin: std::net::SocketAddr, watch: bool) -> Result<(), String> {
    let _ = (admin, watch);
    Err("the stats command is not implemented yet".to_string())
}
