//! Ending a connection well: refusals, the lingering close, the `ERR shutting-down` line.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use super::context::SessionContext;
use super::place::ConnectionSlot;
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
/// is not admitted (or no longer: its `listener.max_connections` place is given up before
/// this), then closes it gracefully: lingering as one of
/// [`MAX_REFUSING`](super::MAX_REFUSING) refusals at most (`refuse_lingering`); past
/// those, at once ([`refuse_at_once`]).
pub async fn refuse(socket: TcpStream, reply: Bytes, ctx: &SessionContext) {
    if let Some(lingering) = refuse_or_linger(socket, reply, ctx) {
        lingering.await;
    }
}

/// [`refuse`] without waiting: the lingering close to run (as one of
/// [`MAX_REFUSING`](super::MAX_REFUSING)), or `None` once the socket was refused at once.
/// An accept loop spawns the future, so that a flood past the cap spawns nothing.
pub fn refuse_or_linger(
    socket: TcpStream,
    reply: Bytes,
    ctx: &SessionContext,
) -> Option<impl std::future::Future<Output = ()>> {
    match ctx.refusing_place() {
        Some(place) => Some(refuse_lingering(socket, reply, place)),
        None => {
            if let Ok(socket) = socket.into_std() {
                refuse_at_once(socket, &reply);
            }
            None
        }
    }
}

/// The reply, a FIN and the lingering close (never a reset), holding `_place` (one of
/// [`MAX_REFUSING`](super::MAX_REFUSING)) until done.
async fn refuse_lingering(socket: TcpStream, reply: Bytes, _place: ConnectionSlot) {
    let (read_half, mut write_half) = socket.into_split();
    let sent = timeout(LINGER, write_half.write_all(&reply)).await;
    if matches!(sent, Ok(Ok(()))) && write_half.shutdown().await.is_ok() {
        linger(read_half).await;
    }
}

/// Refuses a connection without waiting, when [`MAX_REFUSING`](super::MAX_REFUSING)
/// refusals are lingering already (a flood): the reply written if the socket takes it at
/// once (a new socket's empty send buffer always does), what the client sent so far read
/// and discarded (at most 64 KiB), so that the close is a FIN and not a reset, then closed.
/// A client that sends more after this (or more than that) gets a reset, but its line has
/// arrived before it.
pub fn refuse_at_once(mut socket: std::net::TcpStream, reply: &[u8]) {
    use std::io::{Read, Write};
    if socket.set_nonblocking(true).is_err() {
        return;
    }
    if !reply.is_empty() {
        let _ = socket.write(reply);
    }
    let mut sink = [0u8; 4096];
    for _ in 0..16 {
        match socket.read(&mut sink) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
    let _ = socket.shutdown(std::net::Shutdown::Write);
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
