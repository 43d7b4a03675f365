//! The accept loop: connection cap, accept-error backoff, one task per connection.
//!
//! Each accepted socket first takes a [`ConnectionSlot`] — one of `listener.max_connections`
//! (read live, so a reload changes the limit at once). With no slot left the connection is
//! answered `ERR overloaded …` and closed: the listener keeps accepting, so the client learns
//! why instead of hanging in the backlog (HAProxy's `maxconn` queues instead; SPEC §4 asks
//! for the explicit refusal). The slot moves into the connection task and is released on
//! drop when the task ends, like mini-redis's semaphore permit. A counter replaces the
//! semaphore because a semaphore cannot shrink while its permits are out.
//!
//! Connection tasks are spawned on a [`TaskTracker`] so that shutdown can wait for them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::BackendMode;
use crate::connection::{self, ConnectionContext};
use crate::protocol::ErrorCode;

/// The accept loop's state.
#[derive(Debug)]
pub struct Listener {
    /// The bound listening socket; dropped (port closed) when the loop ends.
    pub listener: TcpListener,
    /// Open connections (accepted, not yet closed), against `listener.max_connections`.
    pub open: Arc<AtomicUsize>,
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
        if let Ok(addr) = self.listener.local_addr() {
            info!(%addr, "listening");
        }
        let mut backoff = Duration::from_millis(1);
        let refusing = Arc::new(AtomicUsize::new(0));
        let mut overloaded_log = RefusalLog::default();
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
            let limit = self.ctx.config.borrow().listener.max_connections;
            match ConnectionSlot::try_take(&self.open, limit) {
                Some(slot) => {
                    let ctx = self.ctx.clone();
                    self.tracker.spawn(async move {
                        connection::serve(socket, peer, ctx).await;
                        drop(slot);
                    });
                }
                None => {
                    let totals = &self.ctx.stats.totals;
                    totals.connections_rejected.fetch_add(1, Ordering::Relaxed);
                    if let Some(refused) = overloaded_log.refused(Instant::now()) {
                        warn!(
                            refused,
                            max_connections = limit,
                            "connections refused (overloaded) since the last report"
                        );
                    }
                    if self.ctx.config.borrow().backend.mode == BackendMode::Proxy {
                        // Proxy mode adds no bytes: the refusal is a plain close.
                        drop(socket);
                        continue;
                    }
                    // Each refusal holds its socket for up to a few seconds (write, then
                    // lingering close). Under a flood, past MAX_REFUSING of them a refused
                    // socket is closed at once so that refusals cannot exhaust descriptors.
                    let Some(refusing) = ConnectionSlot::try_take(&refusing, MAX_REFUSING) else {
                        drop(socket);
                        continue;
                    };
                    let msg = format!("too many connections (max_connections = {limit})");
                    self.tracker.spawn(async move {
                        connection::refuse(socket, ErrorCode::Overloaded.reply(&msg)).await;
                        drop(refusing);
                    });
                }
            }
        }
        info!("listener closed");
    }
}

/// Rate limiter for the refused-connection warnings: at most one line per second per
/// reason, summarising how many were refused since the last line.
///
/// A flood of refusals is exactly when logs must stay readable, so one line per refused
/// connection is out. Owned by a single task (the listener for `overloaded`, the
/// dispatcher for `exhausted`), so it needs no synchronisation; the owner writes the
/// `warn!` itself, so the line carries the owner's module as its target.
///
/// NOTE: refusals after the last line of a burst are only reported with the next refusal;
/// the periodic summary line (`admin::summary`) still counts them all.
#[derive(Debug, Default)]
pub struct RefusalLog {
    /// Refused since the last line.
    pending: u64,
    /// When the last line was written.
    last: Option<Instant>,
}

impl RefusalLog {
    /// Minimum time between two lines.
    pub const PERIOD: Duration = Duration::from_secs(1);

    /// Counts one refusal at `now`. Returns `Some(n)` when a line is due (the last one is
    /// [`Self::PERIOD`] old): `n` refusals since the last line, this one included.
    pub fn refused(&mut self, now: Instant) -> Option<u64> {
        self.pending += 1;
        if self.last.is_some_and(|last| now < last + Self::PERIOD) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.pending))
    }
}

/// Refusals (`ERR overloaded` being written) in progress at once, at most.
const MAX_REFUSING: usize = 256;

/// One of `max_connections`; released on drop.
#[derive(Debug)]
pub struct ConnectionSlot {
    open: Arc<AtomicUsize>,
}

impl ConnectionSlot {
    /// Takes a slot if fewer than `limit` are taken.
    pub fn try_take(open: &Arc<AtomicUsize>, limit: usize) -> Option<ConnectionSlot> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < limit).then_some(n + 1)
        })
        .ok()
        .map(|_| ConnectionSlot { open: open.clone() })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_respect_a_changing_limit() {
        let open = Arc::new(AtomicUsize::new(0));
        let a = ConnectionSlot::try_take(&open, 2).unwrap();
        let _b = ConnectionSlot::try_take(&open, 2).unwrap();
        assert!(ConnectionSlot::try_take(&open, 2).is_none());
        // Lowered by a reload: nobody is cut off, but nobody new gets in.
        assert!(ConnectionSlot::try_take(&open, 1).is_none());
        drop(a);
        assert!(ConnectionSlot::try_take(&open, 1).is_none());
        assert!(ConnectionSlot::try_take(&open, 3).is_some());
    }

    #[test]
    fn refusal_log_writes_at_most_one_line_per_second() {
        let mut log = RefusalLog::default();
        let t0 = Instant::now();
        assert_eq!(
            log.refused(t0),
            Some(1),
            "the first refusal is reported at once"
        );
        for ms in 1..=999 {
            assert_eq!(log.refused(t0 + Duration::from_millis(ms)), None);
        }
        assert_eq!(log.refused(t0 + Duration::from_secs(1)), Some(1000));
        assert_eq!(log.refused(t0 + Duration::from_millis(1500)), None);
    }
}
