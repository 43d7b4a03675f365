//! A proxied stream session (proxy mode, SPEC §8): place the connection, connect it to its
//! machine's upstream and copy bytes both ways.

use std::net::{Shutdown, SocketAddr};

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, warn, Instrument};

use super::access::{self, ConnCounters};
use super::close::{refuse, refuse_at_once, LINGER};
use super::context::SessionContext;
use super::place::ConnectionSlot;
use crate::backend::upstream;
use crate::core::{MachineId, Units};

/// Upstreams a client is tried on at most before it is refused.
const CONNECT_TRIES: usize = 3;

/// Proxy mode (SPEC §8): place the connection, connect it to its machine's upstream and
/// copy bytes both ways. No bytes are ever added: a connection that cannot be placed is
/// closed (and counted as rejected by the dispatcher) — an orderly close: a FIN, then a
/// lingering read of what the client sent while it waited, so that it sees no reset.
///
/// A connect that fails (within `backend.connect_timeout`) counts against that upstream
/// and the client is placed again at once, never on a machine that already failed it, up
/// to `CONNECT_TRIES` (3) upstreams in all.
pub async fn serve(
    socket: TcpStream,
    peer: SocketAddr,
    ctx: &SessionContext,
    slot: ConnectionSlot,
) {
    serve_client(socket, peer, ctx, slot).await;
}

/// [`serve`] for a client accepted on an io_uring event loop (`listener.io`).
pub async fn serve_ring(
    socket: ringloop::TcpStream,
    peer: SocketAddr,
    ctx: &SessionContext,
    slot: ConnectionSlot,
) {
    serve_client(socket, peer, ctx, slot).await;
}

/// Closes a client refused on an io_uring event loop, holding `_place` (one of
/// [`MAX_REFUSING`](super::MAX_REFUSING)): a FIN, then the lingering read, no bytes added.
pub async fn refuse_ring(socket: ringloop::TcpStream, _place: ConnectionSlot) {
    if socket.get_ref().shutdown(Shutdown::Write).is_ok() {
        let deadline = Instant::now() + LINGER;
        let mut sink = vec![0u8; 4096];
        loop {
            match tokio::time::timeout_at(deadline, socket.recv(sink)).await {
                Ok((Ok(n), back)) if n > 0 => sink = back,
                _ => break,
            }
        }
    }
}

/// A proxied client's socket, tokio's or an io_uring loop's: forwarded by
/// [`upstream::forward`] ([`upstream::Socket`]), and refused in its own way.
trait Client: upstream::Socket {
    /// Closes without adding bytes: a FIN, then what the client sent while it waited is
    /// read and discarded (the lingering close, bounded in time, as one of
    /// [`MAX_REFUSING`](super::MAX_REFUSING); past those, at once). Dropping a socket
    /// with unread input would reset it, and an HTTP client such as `ab` aborts its whole
    /// run on a reset.
    async fn refuse(self, ctx: &SessionContext);
}

impl Client for TcpStream {
    async fn refuse(self, ctx: &SessionContext) {
        refuse(self, Bytes::new(), ctx).await;
    }
}

impl Client for ringloop::TcpStream {
    async fn refuse(self, ctx: &SessionContext) {
        match ctx.refusing_place() {
            Some(place) => refuse_ring(self, place).await,
            None => refuse_at_once(self.into_std(), &[]),
        }
    }
}

async fn serve_client<C: Client>(
    mut socket: C,
    peer: SocketAddr,
    ctx: &SessionContext,
    slot: ConnectionSlot,
) {
    let mut avoid: Vec<MachineId> = Vec::new();
    let mut last_reservation = Units::ZERO;
    for _ in 0..CONNECT_TRIES {
        // Placed by this task when it can be (proxy machines never move a connection), by
        // the dispatcher otherwise and on every retry.
        let fast = if avoid.is_empty() {
            ctx.router.admit_fast(peer)
        } else {
            None
        };
        let placement = match fast {
            Some(placement) => placement,
            None => match ctx.dispatcher.admit_avoiding(peer, avoid.clone()).await {
                // A client that reset its connection while it waited (in the admission
                // queue, say) is gone: what it sent is not delivered to an upstream.
                Ok(_) if matches!(socket.take_error(), Ok(Some(_))) => {
                    ctx.stats.totals.admission_withdrawn();
                    debug!(%peer, "client reset its connection while it waited; not forwarded");
                    return;
                }
                Ok(placement) => placement,
                Err(_) => {
                    drop(slot);
                    return socket.refuse(ctx).await;
                }
            },
        };
        let machine = placement.machine();
        let Some(upstream) = machine.upstream().cloned() else {
            return;
        };
        let span = tracing::debug_span!("proxy", %peer, machine = %machine.info.name, upstream = %upstream.address);
        let limits = {
            let config = ctx.config.borrow();
            upstream::Limits {
                connect: config.backend.connect_timeout,
                server: config.backend.server_timeout,
                idle: config.listener.idle_timeout,
                send_proxy: config.backend.send_proxy,
            }
        };
        let started = Instant::now();
        match upstream::forward(socket, &upstream, limits, &ctx.hard_stop)
            .instrument(span)
            .await
        {
            Ok(done) => {
                let counters = ConnCounters::default();
                counters.bytes_in(usize::try_from(done.bytes_in).unwrap_or(usize::MAX));
                counters.bytes_out(usize::try_from(done.bytes_out).unwrap_or(usize::MAX));
                // Formatted only if the access line is written.
                let reason = format_args!("{} (upstream {})", done.reason, upstream.address);
                access::closed(ctx, peer, &machine.info.name, started, &counters, reason);
                return;
            }
            Err((returned, e)) => {
                // Never connected: not an admitted connection after all.
                ctx.stats.totals.admission_withdrawn();
                last_reservation = placement.reservation();
                warn!(%peer, upstream = %upstream.address, error = %e, "upstream connect failed; trying another machine");
                socket = returned;
                avoid.push(machine.info.id);
            }
        }
    }
    // Every try failed: the client is refused (closed, no bytes added).
    ctx.stats.totals.connection_rejected(last_reservation);
    drop(slot);
    socket.refuse(ctx).await;
}
