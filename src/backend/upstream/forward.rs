//! Byte forwarding between a client and its machine's upstream.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::health::Upstream;
use super::proxy_header;
use crate::config::SendProxy;

/// The time limits and settings of one proxied connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connecting to the upstream (`backend.connect_timeout`).
    pub connect: Duration,
    /// The client sent bytes and the upstream answered nothing this long
    /// (`backend.server_timeout`): close, and count a failure against the upstream.
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
            upstream.record_failure("connect");
            return Err((client, e));
        }
    };
    let idle = limits.idle;
    let _ = server.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let activity = Activity::default();
    let mut client = Tracked::new(client, &activity, Side::Client);
    let mut server = Tracked::new(server, &activity, Side::Server);
    let reason = tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut server) => match copied {
            Ok(_) => "closed",
            Err(e) => {
                debug!(error = %e, "proxied connection ended");
                "error"
            }
        },
        _ = activity.idle_for(idle), if !idle.is_zero() => {
            debug!(?idle, "proxied connection idle; closing");
            let _ = client.inner.shutdown().await;
            let _ = server.inner.shutdown().await;
            "idle timeout"
        }
        _ = activity.unanswered_for(limits.server) => {
            debug!(limit = ?limits.server, "upstream did not answer; closing");
            upstream.record_failure("server timeout");
            let _ = client.inner.shutdown().await;
            let _ = server.inner.shutdown().await;
            "server timeout"
        }
        _ = stop.cancelled() => {
            // The shutdown grace is over: stop forwarding; both sides see an orderly close.
            let _ = client.inner.shutdown().await;
            let _ = server.inner.shutdown().await;
            "shutdown"
        }
    };
    if server.bytes_read > 0 {
        upstream.record_success();
    }
    Ok(Forwarded {
        bytes_in: client.bytes_read,
        bytes_out: server.bytes_read,
        reason,
    })
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
    /// 1 + milliseconds after `base` of the first client bytes the upstream has not
    /// answered yet; 0 while nothing is waiting for an answer.
    unanswered_since: AtomicU64,
}

/// Which side a [`Tracked`] stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            base: tokio::time::Instant::now(),
            last_ms: AtomicU64::new(0),
            unanswered_since: AtomicU64::new(0),
        }
    }
}

impl Activity {
    fn touch(&self, side: Side) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
        match side {
            // The first unanswered client bytes start the server timeout ...
            Side::Client => {
                let _ = self.unanswered_since.compare_exchange(
                    0,
                    ms + 1,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            // ... and any answer stops it.
            Side::Server => self.unanswered_since.store(0, Ordering::Relaxed),
        }
    }

    /// Completes once client bytes have waited `limit` for an answer from the upstream.
    async fn unanswered_for(&self, limit: Duration) {
        loop {
            let since = self.unanswered_since.load(Ordering::Relaxed);
            if since == 0 {
                // Nothing waiting: look again in one limit's time.
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

/// A stream that records every read that returns data in an [`Activity`].
#[derive(Debug)]
struct Tracked<'a> {
    inner: TcpStream,
    activity: &'a Activity,
    side: Side,
    /// Bytes read from `inner` so far.
    bytes_read: u64,
}

impl<'a> Tracked<'a> {
    fn new(inner: TcpStream, activity: &'a Activity, side: Side) -> Self {
        Tracked {
            inner,
            activity,
            side,
            bytes_read: 0,
        }
    }
}

impl AsyncRead for Tracked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.bytes_read += read as u64;
            self.activity.touch(self.side);
        }
        polled
    }
}

impl AsyncWrite for Tracked<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
