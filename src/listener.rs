//! The accept loop: connection cap, accept-error backoff, one task per connection.
//!
//! Each accepted socket first takes a permit from a semaphore of `listener.max_connections`
//! permits. With no permit left the connection is answered `ERR overloaded …` and closed —
//! the listener keeps accepting, so the client learns why instead of hanging in the backlog
//! (HAProxy's `maxconn` queues instead; SPEC §4 asks for the explicit refusal). The permit
//! moves into the connection task and is released when the task ends (mini-redis).
//!
//! Connection tasks are spawned on a [`TaskTracker`] so that shutdown can wait for them.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::connection::{self, ConnectionContext};
use crate::protocol::ErrorCode;

/// The accept loop's state.
#[derive(Debug)]
pub struct Listener {
    /// The bound listening socket; dropped (port closed) when the loop ends.
    pub listener: TcpListener,
    /// `max_connections` permits; each connection task holds one.
    pub permits: Arc<Semaphore>,
    /// Shared by all connection tasks.
    pub ctx: Arc<ConnectionContext>,
    /// Connection tasks; shutdown waits on it.
    pub tracker: TaskTracker,
    /// Fires when graceful shutdown begins: stop accepting.
    pub shutdown: CancellationToken,
}

impl Listener {
    /// Accepts until `shutdown` fires.
    pub async fn run(self) {
        let limit = self.permits.available_permits();
        if let Ok(addr) = self.listener.local_addr() {
            info!(%addr, max_connections = limit, "listening");
        }
        let mut backoff = Duration::from_millis(1);
        loop {
            let accepted = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            let (socket, peer) = match accepted {
                Ok(pair) => {
                    backoff = Duration::from_millis(1);
                    pair
                }
                Err(e) => {
                    // EMFILE / ENFILE / ENOBUFS: back off instead of spinning, then retry.
                    warn!(error = %e, ?backoff, "accept failed; backing off");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    let ctx = self.ctx.clone();
                    self.tracker.spawn(async move {
                        connection::serve(socket, peer, ctx).await;
                        drop(permit);
                    });
                }
                Err(_) => {
                    let totals = &self.ctx.stats.totals;
                    totals.connections_rejected.fetch_add(1, Ordering::Relaxed);
                    let msg = format!("too many connections (max_connections = {limit})");
                    self.tracker
                        .spawn(connection::refuse(socket, ErrorCode::Overloaded.reply(&msg)));
                }
            }
        }
        info!("listener closed");
    }
}
