//! Client sessions: what happens on one accepted connection, from admission to close.
//!
//! The backend decides once, at start-up, which kind of session its clients get
//! ([`SessionKind`]): the line protocol ([`mod@line`], SPEC §4) or a proxied byte stream
//! ([`stream`], SPEC §8). [`serve`] runs the chosen one; nothing else in the server asks
//! which mode is on. Shared here: the context every session reads, refusals with a
//! lingering close, and the `ERR shutting-down` line.

mod access;
mod close;
mod context;
mod input;
pub mod line;
mod place;
pub mod stream;
mod writer;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use crate::backend::SessionKind;

pub use close::{refusal, refuse, refuse_at_once, refuse_or_linger};
pub use context::SessionContext;
pub use place::{ConnectionSlot, MAX_REFUSING};

/// Serves one accepted connection of `kind`, which holds `slot` (one of
/// `listener.max_connections`) until it closes or is refused.
pub async fn serve(
    kind: SessionKind,
    socket: TcpStream,
    peer: SocketAddr,
    ctx: Arc<SessionContext>,
    slot: ConnectionSlot,
) {
    // Boxed: a session's future is several KiB, and an unboxed one would be copied
    // whole at every step of the spawn (the task cell, the tracker's wrapper).
    match kind {
        SessionKind::Lines => Box::pin(line::serve(socket, peer, ctx, slot)).await,
        SessionKind::Stream => Box::pin(stream::serve(socket, peer, &ctx, slot)).await,
    }
}
