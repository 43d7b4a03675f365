//! Byte forwarding between a client and its machine's upstream.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::health::{Failure, Upstream};
use super::proxy_header;
use super::pump::{self, Pump, Way};
use crate::config::SendProxy;
use crate::core::gate::Gated;

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

/// Connects `client` to `upstream` and copies bytes both ways until either side closes,
/// the upstream leaves the client unanswered for `limits.server`, nothing moves for
/// `limits.idle`, or `stop` fires (the end of the shutdown grace). A failed connect and a
/// server timeout count as passive failures of the upstream; an answer resets them.
///
/// # Errors
///
/// The connect error (the caller may try another machine); errors while copying only end
/// the connection and are logged.
pub async fn forward(
    client: TcpStream,
    upstream: &Upstream,
    limits: Limits,
    stop: &CancellationToken,
) -> Result<Forwarded, (TcpStream, std::io::Error)> {
    let connected = tokio::time::timeout(limits.connect, TcpStream::connect(upstream.address))
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
    let connected = match connected {
        Ok(server) if limits.send_proxy != SendProxy::Off => {
            send_proxy_header(server, &client, limits).await
        }
        other => other,
    };
    let server = match connected {
        Ok(server) => server,
        Err(e) => {
            upstream.record_failure(Failure::Connect);
            return Err((client, e));
        }
    };
    let idle = limits.idle;
    let _ = server.set_nodelay(true);
    // Linux: inherited from the listening socket (`server::bind`).
    #[cfg(not(target_os = "linux"))]
    let _ = client.set_nodelay(true);
    let (mut client, mut server) = (client, server);
    let activity = Activity::default();
    // The timers and the shutdown signal are polled only when one of them fires, not on
    // every read and write (`Gated`).
    let mut watchdog = Gated::new(async {
        tokio::select! {
            _ = activity.idle_for(idle), if !idle.is_zero() => Watchdog::Idle,
            _ = activity.unanswered_for(limits.server) => Watchdog::Unanswered,
            _ = stop.cancelled() => Watchdog::Stop,
        }
    });
    let pumped = tokio::select! {
        biased;
        pumped = pump::pump(&mut client, &mut server, &activity) => Ok(pumped),
        why = &mut watchdog => Err(why),
    };
    drop(watchdog);
    let reason = match pumped {
        Ok(Ok(_)) => "closed",
        Ok(Err(e)) => {
            debug!(error = %e, "proxied connection ended");
            "error"
        }
        Err(why) => {
            let reason = match why {
                Watchdog::Idle => {
                    debug!(?idle, "proxied connection idle; closing");
                    "idle timeout"
                }
                Watchdog::Unanswered => {
                    debug!(limit = ?limits.server, "upstream did not answer; closing");
                    upstream.record_failure(Failure::ServerTimeout);
                    "server timeout"
                }
                // The shutdown grace is over: stop forwarding.
                Watchdog::Stop => "shutdown",
            };
            // Both sides see an orderly close.
            let _ = client.shutdown().await;
            let _ = server.shutdown().await;
            reason
        }
    };
    let bytes = activity.bytes();
    if bytes.1 > 0 {
        upstream.record_success();
    }
    Ok(Forwarded {
        bytes_in: bytes.0,
        bytes_out: bytes.1,
        reason,
    })
}

/// Why a proxied connection was ended from outside its byte streams.
enum Watchdog {
    /// Nothing moved for `listener.idle_timeout`.
    Idle,
    /// The upstream left client bytes unanswered for `backend.server_timeout`.
    Unanswered,
    /// The shutdown grace is over.
    Stop,
}

/// Writes the PROXY header (client's peer address → the balancer's local address of the
/// client connection) to a freshly connected upstream, within the connect timeout.
async fn send_proxy_header(
    mut server: TcpStream,
    client: &TcpStream,
    limits: Limits,
) -> std::io::Result<TcpStream> {
    let header = proxy_header::header(limits.send_proxy, client.peer_addr()?, client.local_addr()?);
    tokio::time::timeout(limits.connect, server.write_all(&header))
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))?;
    Ok(server)
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

/// When bytes last moved on a proxied connection, in either direction.
#[derive(Debug)]
struct Activity {
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
    /// Bytes read from the client and from the upstream so far.
    fn bytes(&self) -> (u64, u64) {
        (
            self.bytes_up.load(Ordering::Relaxed),
            self.bytes_down.load(Ordering::Relaxed),
        )
    }

    /// Completes once the client's latest bytes have waited `limit` with no answer from the
    /// upstream since.
    async fn unanswered_for(&self, limit: Duration) {
        loop {
            let since = self.unanswered_since.load(Ordering::Relaxed);
            if since == 0 || self.answer_stalled.load(Ordering::Relaxed) {
                // Nothing waiting, or the answer waits for the client: look again in one
                // limit's time.
                tokio::time::sleep(limit).await;
                continue;
            }
            let start = self.base + Duration::from_millis(since - 1);
            let deadline = start.checked_add(limit).unwrap_or(start);
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
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
