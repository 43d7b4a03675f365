//! Client sessions: what happens on one accepted connection, from admission to close.
//!
//! The backend decides once, at start-up, which kind of session its clients get
//! ([`SessionKind`]): the line protocol ([`mod@line`], SPEC §4) or a proxied byte stream
//! ([`stream`], SPEC §8). [`serve`] runs the chosen one; nothing else in the server asks
//! which mode is on. Shared here: the context every session reads, refusals with a
//! lingering close, and the `ERR shutting-down` line.

pub mod line;
pub mod stream;
mod writer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

use crate::backend::SessionKind;
use crate::balancer::DispatcherHandle;
use crate::config::Config;
use crate::protocol::ErrorCode;
use crate::telemetry::StatsHandle;

/// How long a closing connection keeps reading (and discarding) so that its last reply is
/// not destroyed by a reset (see `linger`).
const LINGER: Duration = Duration::from_secs(2);

/// What every connection task needs. Built once and shared.
#[derive(Debug)]
pub struct SessionContext {
    /// Live configuration.
    pub config: watch::Receiver<Arc<Config>>,
    /// Counters and the machine list (`STATS`).
    pub stats: StatsHandle,
    /// Where connections ask for a machine.
    pub dispatcher: DispatcherHandle,
    /// Fires when graceful shutdown begins.
    pub shutdown: CancellationToken,
    /// Fires when the shutdown grace runs out (proxied streams are cut then).
    pub hard_stop: CancellationToken,
}

/// Serves one accepted connection of `kind` until it closes.
pub async fn serve(
    kind: SessionKind,
    socket: TcpStream,
    peer: SocketAddr,
    ctx: Arc<SessionContext>,
) {
    match kind {
        SessionKind::Lines => line::serve(socket, peer, ctx).await,
        SessionKind::Stream => stream::serve(socket, peer, &ctx).await,
    }
}

/// The one-line refusal a client of `kind` gets before its connection is closed: the
/// line protocol names the reason; a proxied stream adds no bytes (SPEC §8).
pub fn refusal(kind: SessionKind, code: ErrorCode, message: &str) -> Option<Bytes> {
    match kind {
        SessionKind::Lines => Some(code.reply(message)),
        SessionKind::Stream => None,
    }
}

/// Sends one error line to a connection that is not admitted, then closes it gracefully.
pub async fn refuse(mut socket: TcpStream, reply: Bytes) {
    let sent = timeout(LINGER, socket.write_all(&reply)).await;
    if matches!(sent, Ok(Ok(()))) {
        let _ = socket.shutdown().await;
        let (read_half, _write_half) = socket.into_split();
        linger(read_half).await;
    }
}

/// Reads and discards what the client still sends, until it closes or [`LINGER`] passes.
///
/// Closing a socket with unread input makes the kernel send a reset, which can destroy the
/// last reply before the client reads it; nginx's `lingering_close` exists for the same
/// reason. Bounded in time and bytes, so it cannot be abused.
async fn linger(mut read_half: OwnedReadHalf) {
    let mut sink = [0u8; 4096];
    let mut budget: usize = 1 << 20;
    let deadline = Instant::now() + LINGER;
    while budget > 0 {
        match tokio::time::timeout_at(deadline, read_half.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => budget = budget.saturating_sub(n),
            _ => break,
        }
    }
}

/// A deadline that never comes in practice (a year from now).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(365 * 24 * 3600)
}

/// `ERR shutting-down …`
fn shutting_down() -> Bytes {
    ErrorCode::ShuttingDown.reply("server is shutting down")
}
