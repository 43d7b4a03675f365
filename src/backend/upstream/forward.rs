//! Byte forwarding between a client and its machine's upstream, the same over tokio's
//! sockets and an io_uring loop's.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::activity::{Activity, Forwarded, Limits};
use super::health::{Failure, Upstream};
use super::proxy_header;
use super::pump;
use crate::config::SendProxy;
use crate::core::gate::Gated;

/// What [`forward`] needs of a socket: tokio's (here) or an io_uring loop's
/// ([`super::ring`]).
pub(crate) trait Socket: Sized {
    /// Opens a connection to `addr`.
    fn connect(addr: SocketAddr) -> impl Future<Output = io::Result<Self>>;

    /// The peer's address and the local one.
    fn addresses(&self) -> io::Result<(SocketAddr, SocketAddr)>;

    /// The socket's pending error (`SO_ERROR`), taken: a reset from the peer, say.
    fn take_error(&self) -> io::Result<Option<io::Error>>;

    /// The descriptor (for [`ringloop::unacked_bytes`] while the socket is open).
    fn raw_fd(&self) -> RawFd;

    /// Sets `TCP_NODELAY` (best effort).
    fn set_nodelay(&self);

    /// Writes all of `bytes`.
    fn write_all(&mut self, bytes: &[u8]) -> impl Future<Output = io::Result<()>>;

    /// Copies bytes both ways until both directions have ended (see [`pump::pump`]).
    fn pump(
        client: &mut Self,
        server: &mut Self,
        observer: &Activity,
    ) -> impl Future<Output = io::Result<()>>;

    /// Sends a FIN (best effort): the connection ends from outside.
    fn shutdown_write(&mut self) -> impl Future<Output = ()>;
}

impl Socket for TcpStream {
    async fn connect(addr: SocketAddr) -> io::Result<Self> {
        TcpStream::connect(addr).await
    }

    fn addresses(&self) -> io::Result<(SocketAddr, SocketAddr)> {
        Ok((self.peer_addr()?, self.local_addr()?))
    }

    fn take_error(&self) -> io::Result<Option<io::Error>> {
        TcpStream::take_error(self)
    }

    fn raw_fd(&self) -> RawFd {
        self.as_raw_fd()
    }

    fn set_nodelay(&self) {
        let _ = TcpStream::set_nodelay(self, true);
    }

    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        AsyncWriteExt::write_all(self, bytes).await
    }

    async fn pump(client: &mut Self, server: &mut Self, observer: &Activity) -> io::Result<()> {
        pump::pump(client, server, observer).await.map(|_| ())
    }

    async fn shutdown_write(&mut self) {
        let _ = AsyncWriteExt::shutdown(self).await;
    }
}

/// Connects `client` to `upstream` and copies bytes both ways until either side closes,
/// the upstream leaves the client unanswered for `limits.server`, nothing moves for
/// `limits.idle`, or `stop` fires (the end of the shutdown grace). A failed connect and a
/// server timeout count as passive failures of the upstream; an answer resets them. The
/// same for a client on the shared runtime, an epoll loop or an io_uring loop ([`Socket`]).
///
/// # Errors
///
/// The connect error, with the client back (the caller may try another machine); errors
/// while copying only end the connection and are logged.
pub(crate) async fn forward<S: Socket>(
    client: S,
    upstream: &Upstream,
    limits: Limits,
    stop: &CancellationToken,
) -> Result<Forwarded, (S, io::Error)> {
    let connected = tokio::time::timeout(limits.connect, S::connect(upstream.address))
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()));
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
    server.set_nodelay();
    // Linux: inherited from the listening socket (`server::bind`).
    #[cfg(not(target_os = "linux"))]
    client.set_nodelay();
    let (mut client, mut server) = (client, server);
    let activity = Activity::default();
    // The timers and the shutdown signal are polled only when one of them fires, not on
    // every read and write (`Gated`).
    let mut watchdog = Gated::new(activity.watch(&limits, stop, server.raw_fd()));
    let pumped = tokio::select! {
        biased;
        pumped = S::pump(&mut client, &mut server, &activity) => Ok(pumped),
        why = &mut watchdog => Err(why),
    };
    drop(watchdog);
    let reason = match pumped {
        Ok(Ok(())) => "closed",
        Ok(Err(e)) => {
            debug!(error = %e, "proxied connection ended");
            "error"
        }
        Err(why) => {
            let reason = why.ended(upstream, &limits);
            // Both sides see an orderly close.
            client.shutdown_write().await;
            server.shutdown_write().await;
            reason
        }
    };
    Ok(activity.forwarded(upstream, reason))
}

/// Writes the PROXY header (client's peer address → the balancer's local address of the
/// client connection) to a freshly connected upstream, within the connect timeout.
async fn send_proxy_header<S: Socket>(mut server: S, client: &S, limits: Limits) -> io::Result<S> {
    let (peer, local) = client.addresses()?;
    let header = proxy_header::header(limits.send_proxy, peer, local);
    tokio::time::timeout(limits.connect, server.write_all(&header))
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))?;
    Ok(server)
}
