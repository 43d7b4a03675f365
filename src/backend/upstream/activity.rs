//! What a proxied connection is given and watches while bytes move — its limits, when
//! bytes last moved, whether the upstream owes the client an answer, the timers that end it
//! from outside — and how it went (shared by the epoll and the io_uring forwarding).

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::config::SendProxy;

use super::health::{Failure, Upstream};
use super::pump::{Pump, Way};

/// The time limits and settings of one proxied connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connecting to the upstream (`backend.connect_timeout`).
    pub connect: Duration,
    /// The upstream answered nothing this long after the client's latest bytes
    /// (`backend.server_timeout`): close, and count a failure against the upstream. Time
    /// in which its answer waits for the client to read does not count.
    pub server: Duration,
    /// Nothing moved either way this long (`listener.idle_timeout`, like HAProxy's
    /// `timeout tunnel`); zero = never.
    pub idle: Duration,
    /// The PROXY protocol header written before the client's first byte
    /// (`backend.send_proxy`).
    pub send_proxy: SendProxy,
}

/// How a proxied connection went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forwarded {
    /// Bytes read from the client (and sent upstream).
    pub bytes_in: u64,
    /// Bytes read from the upstream (and sent to the client).
    pub bytes_out: u64,
    /// Why it ended: `closed` (either side), `error`, `idle timeout`, `server timeout` or
    /// `shutdown`.
    pub reason: &'static str,
}

/// The reason of a connection the upstream left unanswered for `backend.server_timeout`.
const SERVER_TIMEOUT: &str = "server timeout";

/// Why a proxied connection was ended from outside its byte streams.
pub(super) enum Watchdog {
    /// Nothing moved for `listener.idle_timeout`.
    Idle,
    /// The upstream left client bytes unanswered for `backend.server_timeout`.
    Unanswered,
    /// The shutdown grace is over.
    Stop,
}

impl Watchdog {
    /// Logs why, counts a server timeout against `upstream`, and names the reason.
    pub(super) fn ended(self, upstream: &Upstream, limits: &Limits) -> &'static str {
        match self {
            Watchdog::Idle => {
                debug!(idle = ?limits.idle, "proxied connection idle; closing");
                "idle timeout"
            }
            Watchdog::Unanswered => {
                debug!(limit = ?limits.server, "upstream did not answer; closing");
                upstream.record_failure(Failure::ServerTimeout);
                SERVER_TIMEOUT
            }
            // The shutdown grace is over: stop forwarding.
            Watchdog::Stop => "shutdown",
        }
    }
}

/// When bytes last moved on a proxied connection, in either direction.
#[derive(Debug)]
pub(crate) struct Activity {
    /// Reference point of `last_ms`.
    base: tokio::time::Instant,
    /// Milliseconds after `base` of the latest read that returned data.
    last_ms: AtomicU64,
    /// 1 + milliseconds after `base` of the latest client bytes the upstream has not
    /// answered yet; 0 while nothing is waiting for an answer.
    unanswered_since: AtomicU64,
    /// The client is not taking the upstream's answer: bytes read from the upstream wait
    /// to be written to the client, so the balancer reads no more from the upstream. The
    /// upstream is not silent then, the client is slow (`listener.idle_timeout` governs
    /// it, as HAProxy arms `timeout server` only while it wants to read from the server).
    answer_stalled: AtomicBool,
    /// Bytes read from the client and from the upstream so far.
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            base: tokio::time::Instant::now(),
            last_ms: AtomicU64::new(0),
            unanswered_since: AtomicU64::new(0),
            answer_stalled: AtomicBool::new(false),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
        }
    }
}

impl Pump for Activity {
    fn on_read(&self, way: Way, n: usize) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
        match way {
            // Client bytes (re)start the server timeout: it is an inactivity limit, like
            // HAProxy's `timeout server`, so an upload the upstream keeps reading is not cut.
            // A client's bytes are read again only once the previous ones were written, so
            // an upstream that stops reading stops the restarts ...
            Way::Up => {
                self.bytes_up.fetch_add(n as u64, Ordering::Relaxed);
                self.unanswered_since.store(ms + 1, Ordering::Relaxed);
            }
            // ... and any answer stops it.
            Way::Down => {
                self.bytes_down.fetch_add(n as u64, Ordering::Relaxed);
                self.unanswered_since.store(0, Ordering::Relaxed);
            }
        }
    }

    fn on_stall(&self, way: Way, stalled: bool) {
        if way != Way::Down {
            // An upstream that stops reading the client's bytes is the upstream's doing.
            return;
        }
        self.answer_stalled.store(stalled, Ordering::Relaxed);
        // The balancer reads the upstream again: client bytes still unanswered wait from now.
        if !stalled && self.unanswered_since.load(Ordering::Relaxed) != 0 {
            let ms = self.base.elapsed().as_millis() as u64;
            self.unanswered_since.store(ms + 1, Ordering::Relaxed);
        }
    }
}

impl Activity {
    /// Completes when the connection must end from outside: nothing moved for
    /// `limits.idle` (unless zero), the upstream left the client unanswered for
    /// `limits.server` (`server` is its socket, open while this runs), or `stop` fired.
    pub(super) async fn watch(
        &self,
        limits: &Limits,
        stop: &CancellationToken,
        server: RawFd,
    ) -> Watchdog {
        let idle = limits.idle;
        tokio::select! {
            _ = self.idle_for(idle), if !idle.is_zero() => Watchdog::Idle,
            _ = self.unanswered_for(limits.server, server) => Watchdog::Unanswered,
            _ = stop.cancelled() => Watchdog::Stop,
        }
    }

    /// How it went: the bytes each way and `reason`; an answer from the upstream counts
    /// as a success of it, unless the connection ended because the upstream then stopped
    /// answering (a keep-alive connection to a process that froze since).
    pub(super) fn forwarded(&self, upstream: &Upstream, reason: &'static str) -> Forwarded {
        let (bytes_in, bytes_out) = self.bytes();
        if bytes_out > 0 && reason != SERVER_TIMEOUT {
            upstream.record_success();
        }
        Forwarded {
            bytes_in,
            bytes_out,
            reason,
        }
    }

    /// Bytes read from the client and from the upstream so far.
    fn bytes(&self) -> (u64, u64) {
        (
            self.bytes_up.load(Ordering::Relaxed),
            self.bytes_down.load(Ordering::Relaxed),
        )
    }

    /// Completes once the client's latest bytes have waited `limit` with no answer from the
    /// upstream since, and the upstream (socket `server`) is not still reading them.
    ///
    /// What the client sent reaches the balancer's send buffer towards the upstream (up to
    /// megabytes) long before an upstream that reads slowly has taken it, so the client's
    /// last bytes are read early. At the deadline, bytes still waiting in that buffer
    /// (`SIOCOUTQ`) are looked at once more a `limit` later: if fewer wait then, the
    /// upstream is busy, not silent, and the clock starts again. So it ends one to two
    /// `limit`s after the upstream last took anything.
    async fn unanswered_for(&self, limit: Duration, server: RawFd) {
        // Bytes waiting at the last look, and the clock start that look set: once the
        // clock was started by anything else (more client bytes read, which refill the
        // buffer), the next look is a first one again.
        let mut waiting: Option<(u32, u64)> = None;
        loop {
            let since = self.unanswered_since.load(Ordering::Relaxed);
            if waiting.is_some_and(|(_, set)| set != since) {
                waiting = None;
            }
            if since == 0 || self.answer_stalled.load(Ordering::Relaxed) {
                // Nothing waiting, or the answer waits for the client: look again in one
                // limit's time.
                waiting = None;
                tokio::time::sleep(limit).await;
                continue;
            }
            let start = self.base + Duration::from_millis(since - 1);
            let deadline = start.checked_add(limit).unwrap_or(start);
            let now = tokio::time::Instant::now();
            if now < deadline {
                tokio::time::sleep_until(deadline).await;
                continue;
            }
            let queued = ringloop::unacked_bytes(server).unwrap_or(0);
            let taking = match waiting {
                // First look: bytes wait; look again a limit later.
                None => queued > 0,
                Some((before, _)) => queued < before,
            };
            if !taking {
                return;
            }
            let restart = now.duration_since(self.base).as_millis() as u64 + 1;
            // Unless an answer or more client bytes came meanwhile, the clock starts again.
            let _ = self.unanswered_since.compare_exchange(
                since,
                restart,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            waiting = Some((queued, restart));
        }
    }

    /// Completes once nothing has moved for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last.checked_add(idle).unwrap_or(last);
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}
