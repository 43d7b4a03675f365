//! Ending a connection well: refusals, the lingering close, the `ERR shutting-down` line.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use crate::backend::SessionKind;
use crate::protocol::ErrorCode;

/// How long a closing connection keeps reading (and discarding) so that its last reply is
/// not destroyed by a reset (see `linger`).
pub(super) const LINGER: Duration = Duration::from_secs(2);

/// The one-line refusal a client of `kind` gets before its connection is closed: the
/// line protocol names the reason; a proxied stream adds no bytes (SPEC §8): empty.
pub fn refusal(kind: SessionKind, code: ErrorCode, message: &str) -> Bytes {
    match kind {
        SessionKind::Lines => code.reply(message),
        SessionKind::Stream => Bytes::new(),
    }
}

/// Sends the refusal (an error line, or nothing for a proxied stream) to a connection that
/// is not admitted, then closes it gracefully: a FIN and the lingering close, never a reset.
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
/// reason. Bounded in time only — however much a client keeps sending (say, after
/// `ERR too-long`), it is drained for [`LINGER`] and its last reply is not lost — so it
/// cannot be abused for longer than that.
pub(super) async fn linger(mut read_half: OwnedReadHalf) {
    let mut sink = [0u8; 4096];
    let deadline = Instant::now() + LINGER;
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, read_half.read(&mut sink)).await {
        if n == 0 {
            break;
        }
    }
}

/// A deadline that never comes in practice (a year from now).
pub(super) fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(365 * 24 * 3600)
}

/// `ERR shutting-down …`
pub(super) fn shutting_down() -> Bytes {
    ErrorCode::ShuttingDown.reply("server is shutting down")
}
