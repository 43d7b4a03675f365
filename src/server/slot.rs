//! [`Acceptor`], what every accept loop does around `accept`: error backoff, and a
//! [`ConnectionSlot`] — one of `listener.max_connections`, held by a connection while it is
//! served (also while it moves to another event loop) and released on drop.

use std::io;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::session::{ConnectionSlot, SessionContext};
use crate::core::Units;
use crate::telemetry::RefusalLog;

/// An accept loop's state around `accept`, the same on tokio's and io_uring's loops.
#[derive(Debug)]
pub struct Acceptor {
    open: Arc<AtomicUsize>,
    backoff: Duration,
    /// Connections refused at `max_connections`, and failed accepts (under descriptor
    /// exhaustion every acceptor fails many times a second): at most one line a second
    /// for each, with the count, shared by the acceptors of a loop ([`Acceptor::sibling`]).
    overloaded_log: Arc<Mutex<RefusalLog>>,
    failure_log: Arc<Mutex<RefusalLog>>,
}

impl Acceptor {
    /// For a loop whose connections count in `open` (shared by all loops).
    pub fn new(open: Arc<AtomicUsize>) -> Acceptor {
        Acceptor {
            open,
            backoff: FIRST_BACKOFF,
            overloaded_log: Arc::default(),
            failure_log: Arc::default(),
        }
    }

    /// Another acceptor on the same socket (an io_uring loop keeps several accepts in
    /// flight): its own backoff, the same connection count and logs.
    pub fn sibling(&self) -> Acceptor {
        Acceptor {
            open: self.open.clone(),
            backoff: FIRST_BACKOFF,
            overloaded_log: self.overloaded_log.clone(),
            failure_log: self.failure_log.clone(),
        }
    }

    /// After a failed accept (EMFILE / ENFILE / ENOBUFS): logs it (at most once a second)
    /// and waits, doubling the wait up to a second, instead of spinning. `false` when
    /// `shutdown` fired meanwhile.
    pub async fn failed(&mut self, e: &io::Error, shutdown: &CancellationToken) -> bool {
        if let Some(failures) = due(&self.failure_log) {
            warn!(error = %e, failures, backoff = ?self.backoff, "accept failed; backing off");
        }
        let waited = tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(self.backoff) => true,
        };
        self.backoff = (self.backoff * 2).min(Duration::from_secs(1));
        waited
    }

    /// After a successful accept: a slot under `listener.max_connections` (read live), or
    /// `Err(limit)` once the refusal is counted (and logged, at most once a report period).
    pub fn admit(&mut self, ctx: &SessionContext) -> Result<ConnectionSlot, usize> {
        self.backoff = FIRST_BACKOFF;
        let limit = ctx.config.borrow().listener.max_connections;
        if let Some(slot) = ConnectionSlot::try_take(&self.open, limit) {
            return Ok(slot);
        }
        ctx.stats.totals.connection_rejected(Units::ZERO);
        if let Some(refused) = due(&self.overloaded_log) {
            warn!(
                refused,
                max_connections = limit,
                "connections refused (overloaded) since the last report"
            );
        }
        Err(limit)
    }
}

/// Counts one event in `log`; `Some(count)` when a line is due.
fn due(log: &Mutex<RefusalLog>) -> Option<u64> {
    log.lock()
        .map_or(None, |mut log| log.refused(Instant::now()))
}

/// The first wait after a failed accept.
const FIRST_BACKOFF: Duration = Duration::from_millis(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn failed_accepts_back_off_doubling_to_a_second_and_stop_on_shutdown() {
        let acceptor = Acceptor::new(Arc::new(AtomicUsize::new(0)));
        let mut sibling = acceptor.sibling();
        let shutdown = CancellationToken::new();
        let e = io::Error::other("Too many open files");
        let mut waits = Vec::new();
        for _ in 0..12 {
            let started = Instant::now();
            assert!(sibling.failed(&e, &shutdown).await);
            waits.push(started.elapsed().as_millis());
        }
        assert_eq!(
            waits,
            [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 1000],
            "doubling from 1 ms, capped at a second"
        );
        // A sibling shares the failure log, not the backoff.
        assert_eq!(acceptor.backoff, FIRST_BACKOFF);
        assert!(Arc::ptr_eq(&acceptor.failure_log, &sibling.failure_log));
        assert!(Arc::ptr_eq(
            &acceptor.overloaded_log,
            &sibling.overloaded_log
        ));
        shutdown.cancel();
        assert!(
            !sibling.failed(&e, &shutdown).await,
            "shutdown ends the wait"
        );
    }
}
