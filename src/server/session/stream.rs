//! A proxied stream session (proxy mode, SPEC §8): place the connection, connect it to its
//! machine's upstream and copy bytes both ways.

use std::net::SocketAddr;

use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{warn, Instrument};

use super::access::{self, ConnCounters};
use super::context::SessionContext;
use crate::backend::upstream;
use crate::balancer::Command;
use crate::core::Units;

/// Proxy mode (SPEC §8): place the connection, connect it to its machine's upstream and
/// copy bytes both ways. No bytes are ever added: a connection that cannot be placed is
/// closed (and counted as rejected by the dispatcher).
pub async fn serve(mut socket: TcpStream, peer: SocketAddr, ctx: &SessionContext) {
    // A failed connect marks that upstream down; try up to three machines in all.
    let mut last_reservation = Units::ZERO;
    for _ in 0..3 {
        let Ok(placement) = ctx.dispatcher.admit(peer).await else {
            return;
        };
        let machine = placement.machine();
        let Some(upstream) = machine.upstream().cloned() else {
            return;
        };
        let span = tracing::debug_span!("proxy", %peer, machine = %machine.info.name, upstream = %upstream.address);
        let idle = ctx.config.borrow().listener.idle_timeout;
        let started = Instant::now();
        match upstream::forward(socket, &upstream, idle, &ctx.hard_stop)
            .instrument(span)
            .await
        {
            Ok(done) => {
                let counters = ConnCounters::default();
                counters.bytes_in(usize::try_from(done.bytes_in).unwrap_or(usize::MAX));
                counters.bytes_out(usize::try_from(done.bytes_out).unwrap_or(usize::MAX));
                let reason = format!("{} (upstream {})", done.reason, upstream.address);
                access::closed(ctx, peer, &machine.info.name, started, &counters, &reason);
                return;
            }
            Err((returned, e)) => {
                // Never connected: not an admitted connection after all.
                ctx.stats.totals.admission_withdrawn();
                last_reservation = placement.reservation();
                warn!(%peer, upstream = %upstream.address, error = %e, "upstream connect failed; trying another machine");
                socket = returned;
                drop(placement);
                // Let the dispatcher retire the machine before we ask for another.
                let _ = ctx.dispatcher.send(Command::Tick).await;
            }
        }
    }
    // Every try failed: the client is refused (closed, no bytes added).
    ctx.stats.totals.connection_rejected(last_reservation);
}
