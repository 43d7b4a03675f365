//! The admin server's accept loop and connections: a connection cap, a header read timeout
//! and a keep-alive timeout, none of which `axum::serve` offers.
//!
//! - **Cap.** A [`Semaphore`] permit is taken *before* `accept()` (mini-redis), so at most
//!   [`Limits::max_connections`] admin connections hold a descriptor; the rest wait in the
//!   kernel's listen backlog. However hard the admin port is hit, it cannot take the
//!   descriptors the main listener needs (`server::descriptors` budgets for the cap).
//! - **Timeouts** (HAProxy's `timeout http-request` and `timeout http-keep-alive`): a
//!   request head must arrive within [`Limits::header_read_timeout`] — counted from accept
//!   for the first request and from its first byte for later ones, so trickling bytes does
//!   not extend it; between requests a connection may stay silent for
//!   [`Limits::keep_alive_timeout`]; a request being handled (its body read, its answer
//!   computed) gets [`Limits::request_timeout`]. Past a deadline the connection is closed.
//!   hyper's own `header_read_timeout` starts when the previous response ends, so it cannot
//!   tell the keep-alive wait from a slow head; the deadlines are kept here instead, from
//!   what the socket reads (`Watched`) and when the router starts and ends a request.
//! - **Shutdown.** When the token fires the loop stops accepting and every connection is
//!   asked to finish its request in progress and close.
//!
//! The router comes from the caller (`admin::serve` passes the admin routes), so this file
//! depends on no other admin module and tests can serve any `Router` with short limits.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Default for [`Limits::header_read_timeout`].
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for [`Limits::keep_alive_timeout`].
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for [`Limits::request_timeout`]; above the 5 s a strategy switch may wait.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Read buffer per connection and longest request head: a larger head is refused (431).
/// hyper's default (~400 KiB) would let 256 connections hold 100 MiB. Both limits are set:
/// `max_buf_size` alone is not a head limit, since one read may fill more of the buffer's
/// spare capacity and complete a head well past it.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Least time between two "admin connections at the cap" warnings.
const CAP_WARNING_PERIOD: Duration = Duration::from_secs(60);

/// What one admin connection may hold and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once (`admin.max_connections`).
    pub max_connections: usize,
    /// A request head must be complete this long after accept (first request) or after its
    /// first byte (later requests).
    pub header_read_timeout: Duration,
    /// A connection with no request in progress and nothing received is closed after this.
    pub keep_alive_timeout: Duration,
    /// A request being handled is given this long before its connection is closed.
    pub request_timeout: Duration,
}

impl Limits {
    /// The default timeouts with a cap of `max_connections`.
    pub fn new(max_connections: usize) -> Limits {
        Limits {
            max_connections,
            header_read_timeout: HEADER_READ_TIMEOUT,
            keep_alive_timeout: KEEP_ALIVE_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` fires, within `limits`.
pub async fn run(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut backoff = Duration::from_millis(1);
    let mut last_cap_warning: Option<Instant> = None;
    loop {
        // The permit comes first: at the cap, new connections stay in the kernel backlog
        // and cost this process no descriptor.
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => break,
            Err(TryAcquireError::NoPermits) => {
                let now = Instant::now();
                if last_cap_warning.map_or(true, |t| now >= t + CAP_WARNING_PERIOD) {
                    last_cap_warning = Some(now);
                    warn!(
                        max_connections = limits.max_connections,
                        "admin connections at admin.max_connections; new ones wait in the \
                         listen backlog"
                    );
                }
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    permit = permits.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                }
            }
        };
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => {
                backoff = Duration::from_millis(1);
                pair
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning, then retry.
                warn!(error = %e, ?backoff, "admin accept failed; backing off");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let connection = Connection {
            peer,
            router: router.clone(),
            limits,
            shutdown: shutdown.clone(),
            _permit: permit,
        };
        tokio::spawn(connection.serve(stream));
    }
}

/// One accepted admin connection.
struct Connection {
    peer: SocketAddr,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
    /// One of `max_connections`; released when the connection ends.
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    /// Serves HTTP/1.1 requests until the client closes, a deadline passes or shutdown
    /// has let the request in progress finish.
    async fn serve(self, stream: TcpStream) {
        let activity = Arc::new(Activity::new(Instant::now()));
        let io = TokioIo::new(Watched {
            stream,
            activity: activity.clone(),
        });
        let router = TowerToHyperService::new(self.router);
        let service = {
            let activity = activity.clone();
            hyper::service::service_fn(move |request| {
                let busy = BusyGuard::start(&activity);
                let response = hyper::service::Service::call(&router, request);
                async move {
                    let response = response.await;
                    drop(busy);
                    response
                }
            })
        };
        let mut builder = http1::Builder::new();
        // half_close: a client that shuts its write side right after a request (`nc -N`)
        // still gets the answer; without it hyper drops the connection, answer unsent,
        // when it reads the FIN before the handler is done.
        builder
            .max_buf_size(MAX_HEAD_BYTES)
            .max_header_size(MAX_HEAD_BYTES)
            .header_read_timeout(None)
            .half_close(true);
        let conn = builder.serve_connection(io, service);
        tokio::pin!(conn);
        let mut draining = false;
        loop {
            let deadline = activity.deadline(&self.limits);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        debug!(peer = %self.peer, error = %e, "admin connection ended with an error");
                    }
                    break;
                }
                _ = activity.changed.notified() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    // The phase may have moved on since the deadline was computed.
                    if activity.deadline(&self.limits) <= Instant::now() {
                        debug!(peer = %self.peer, phase = activity.phase_name(), "admin connection timed out; closing");
                        break;
                    }
                }
                _ = self.shutdown.cancelled(), if !draining => {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

// === impl Activity ===

/// What a connection is doing, for its deadline.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for a request head, since accept (first request) or its first byte.
    Head(Instant),
    /// Between requests since this instant; nothing of the next one received.
    Idle(Instant),
    /// This many requests are being handled, the oldest since this instant.
    Busy(usize, Instant),
}

/// The phase of one connection, shared by its socket wrapper, its service and its loop
/// (all on the connection's task; the lock is never held across an `.await`).
#[derive(Debug)]
struct Activity {
    phase: Mutex<Phase>,
    /// Signalled on every change of phase, so that the connection's loop recomputes its
    /// deadline (which may now be earlier). A signal with no waiter is kept for the next.
    changed: Notify,
}

impl Activity {
    fn new(accepted: Instant) -> Activity {
        Activity {
            phase: Mutex::new(Phase::Head(accepted)),
            changed: Notify::new(),
        }
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        // No code panics while holding it; a poisoned phase is still a valid phase.
        self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes arrived: between requests, that starts the next head.
    fn received(&self, now: Instant) {
        let mut phase = self.phase();
        if let Phase::Idle(_) = *phase {
            *phase = Phase::Head(now);
            self.changed.notify_one();
        }
    }

    fn request_started(&self, now: Instant) {
        let mut phase = self.phase();
        *phase = match *phase {
            Phase::Busy(n, since) => Phase::Busy(n + 1, since),
            Phase::Head(_) | Phase::Idle(_) => Phase::Busy(1, now),
        };
        self.changed.notify_one();
    }

    fn request_finished(&self, now: Instant) {
        let mut phase = self.phase();
        if let Phase::Busy(n, since) = *phase {
            *phase = if n > 1 {
                Phase::Busy(n - 1, since)
            } else {
                Phase::Idle(now)
            };
            self.changed.notify_one();
        }
    }

    /// When the connection must be closed if the phase does not change.
    fn deadline(&self, limits: &Limits) -> Instant {
        match *self.phase() {
            Phase::Head(since) => since + limits.header_read_timeout,
            Phase::Idle(since) => since + limits.keep_alive_timeout,
            Phase::Busy(_, since) => since + limits.request_timeout,
        }
    }

    fn phase_name(&self) -> &'static str {
        match *self.phase() {
            Phase::Head(_) => "reading a request head",
            Phase::Idle(_) => "keep-alive",
            Phase::Busy(..) => "handling a request",
        }
    }
}

/// Marks a request in progress; ends it when dropped (also when hyper drops the future).
struct BusyGuard(Arc<Activity>);

impl BusyGuard {
    fn start(activity: &Arc<Activity>) -> BusyGuard {
        activity.request_started(Instant::now());
        BusyGuard(activity.clone())
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.request_finished(Instant::now());
    }
}

// === impl Watched ===

/// The connection's socket, telling [`Activity`] when bytes arrive.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.received(Instant::now());
        }
        poll
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_connections: 1,
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_the_phase() {
        let t0 = Instant::now();
        let a = Arc::new(Activity::new(t0));
        // First request: the head timeout counts from accept, bytes do not extend it.
        assert_eq!(a.deadline(&limits()), t0 + Duration::from_secs(10));
        a.received(t0 + Duration::from_secs(3));
        assert_eq!(a.deadline(&limits()), t0 + Duration::from_secs(10));
        let busy = BusyGuard::start(&a);
        assert!(a.deadline(&limits()) >= t0 + Duration::from_secs(60));
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(busy);
        // Keep-alive from the end of the request ...
        let t1 = Instant::now();
        assert_eq!(a.deadline(&limits()), t1 + Duration::from_secs(30));
        // ... until the next head starts: then the head timeout from its first byte.
        a.received(t1 + Duration::from_secs(5));
        assert_eq!(a.deadline(&limits()), t1 + Duration::from_secs(15));
        a.received(t1 + Duration::from_secs(8));
        assert_eq!(a.deadline(&limits()), t1 + Duration::from_secs(15));
        assert_eq!(a.phase_name(), "reading a request head");
    }
}
