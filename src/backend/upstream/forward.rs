//! Byte forwarding between a client and its machine's upstream.

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
    let _ = server.set_nodelay(true);
    // Linux: inherited from the listening socket (`server::bind`).
    #[cfg(not(target_os = "linux"))]
    let _ = client.set_nodelay(true);
    let (mut client, mut server) = (client, server);
    let activity = Activity::default();
    // The timers and the shutdown signal are polled only when one of them fires, not on
    // every read and write (`Gated`).
    let mut watchdog = Gated::new(activity.watch(&limits, stop));
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
            let reason = why.ended(upstream, &limits);
            // Both sides see an orderly close.
            let _ = client.shutdown().await;
            let _ = server.shutdown().await;
            reason
        }
    };
    Ok(activity.forwarded(upstream, reason))
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
