//! The accept loop: connection cap, accept-error backoff, one task per connection.
//!
//! Each accepted socket first takes a [`ConnectionSlot`] — one of `listener.max_connections`
//! (read live, so a reload changes the limit at once). With no slot left the connection is
//! answered `ERR overloaded …` and closed: the listener keeps accepting, so the client learns
//! why instead of hanging in the backlog (HAProxy's `maxconn` queues instead; SPEC §4 asks
//! for the explicit refusal). The slot moves into the connection task and is released on
//! drop when the task ends, like mini-redis's semaphore permit. A counter replaces the
//! semaphore because a semaphore cannot shrink while its permits are out.
//!
//! Connection tasks are spawned on a [`TaskTracker`] so that shutdown can wait for them.
//! Each runs the session kind the backend chose at start-up. The loop runs either on the
//! shared runtime or, once per thread, on event loops of its own ([`spawn_loops`]).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::balance::{spawn_loop_threads, Handoff, Loops, Seat};
use super::session::{self, ConnectionSlot, SessionContext};
use super::slot::Acceptor;
use crate::backend::SessionKind;
use crate::protocol::ErrorCode;

/// The accept loop's state.
#[derive(Debug)]
pub struct Listener {
    /// The bound listening socket; dropped (port closed) when the loop ends.
    pub listener: TcpListener,
    /// Open connections (accepted, not yet closed), against `listener.max_connections`.
    pub open: Arc<AtomicUsize>,
    /// Shared by all connection tasks.
    pub ctx: Arc<SessionContext>,
    /// What every connection runs (chosen by the backend).
    pub session: SessionKind,
    /// Connection tasks; shutdown waits on it.
    pub tracker: TaskTracker,
    /// Fires when graceful shutdown begins: stop accepting.
    pub shutdown: CancellationToken,
    /// On an event loop: all loops, and this loop's index (see [`super::balance`]).
    pub balance: Option<(Loops, usize)>,
}

impl Listener {
    /// Accepts until `shutdown` fires.
    pub async fn run(self) {
        let mut acceptor = Acceptor::new(self.open.clone());
        loop {
            let accepted = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            let (socket, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) if acceptor.failed(&e, &self.shutdown).await => continue,
                Err(_) => break,
            };
            match acceptor.admit(&self.ctx) {
                Ok(slot) => match &self.balance {
                    None => self.spawn_session(socket, peer, slot, None),
                    Some((loops, me)) => self.place(loops, *me, socket, peer, slot),
                },
                Err(limit) => {
                    let msg = format!("too many connections (max_connections = {limit})");
                    let reply = session::refusal(self.session, ErrorCode::Overloaded, &msg);
                    // The reply, then the lingering close (so that what the client sent
                    // cannot turn the close into a reset), or at once under a flood.
                    if let Some(lingering) = session::refuse_or_linger(socket, reply, &self.ctx) {
                        self.tracker.spawn(lingering);
                    }
                }
            }
        }
        debug!("accept loop closed");
    }
}

impl Listener {
    fn spawn_session(
        &self,
        socket: TcpStream,
        peer: SocketAddr,
        slot: ConnectionSlot,
        seat: Option<Seat>,
    ) {
        let (ctx, kind) = (self.ctx.clone(), self.session);
        self.tracker.spawn(async move {
            session::serve(kind, socket, peer, ctx, slot).await;
            drop(seat);
        });
    }

    /// Serves the connection on this loop, or hands it to the least loaded one.
    fn place(
        &self,
        loops: &Loops,
        me: usize,
        socket: TcpStream,
        peer: SocketAddr,
        slot: ConnectionSlot,
    ) {
        let to = loops.place(me);
        if to == me {
            return self.spawn_session(socket, peer, slot, Some(loops.seat(me)));
        }
        let socket = match socket.into_std() {
            Ok(socket) => socket,
            Err(e) => {
                debug!(error = %e, "cannot move a connection to another loop; closed");
                return;
            }
        };
        let handoff = Handoff {
            socket,
            peer,
            slot,
            seat: loops.seat(to),
        };
        if let Err(back) = loops.send(to, handoff) {
            // That loop has stopped (shutdown): serve it here after all.
            match TcpStream::from_std(back.socket) {
                Ok(socket) => self.spawn_session(socket, peer, back.slot, Some(loops.seat(me))),
                Err(e) => debug!(error = %e, "cannot register a connection; closed"),
            }
        }
    }
}

/// Serves the connections other loops hand to this one, until every loop stopped accepting.
async fn receive(
    mut inbox: mpsc::UnboundedReceiver<Handoff>,
    ctx: Arc<SessionContext>,
    kind: SessionKind,
    connections: TaskTracker,
) {
    while let Some(handoff) = inbox.recv().await {
        let Handoff {
            socket,
            peer,
            slot,
            seat,
        } = handoff;
        match TcpStream::from_std(socket) {
            Ok(socket) => {
                let ctx = ctx.clone();
                connections.spawn(async move {
                    session::serve(kind, socket, peer, ctx, slot).await;
                    drop(seat);
                });
            }
            Err(e) => debug!(error = %e, "cannot register a handed-over connection; closed"),
        }
    }
}

/// Starts one event-loop thread per socket of a [`super::bind::bind_group`]: each runs a
/// current-thread runtime with its own accept loop ([`Listener::run`]; `open`, `ctx` and
/// `session` shared by all loops) and the connections it accepts, start to end — no work
/// stealing (HAProxy's and nginx's model); a new connection moves to another loop only to
/// even the loops out ([`super::balance`]). Each thread holds a token of `tracker` until
/// its last connection has ended ([`spawn_loop_threads`]). Returns once every loop runs (or
/// one could not start).
///
/// # Errors
///
/// When a thread, its runtime or its socket's registration cannot be created. The loops
/// already running stop when `shutdown` fires (the caller cancels it).
pub async fn spawn_loops(
    sockets: Vec<std::net::TcpListener>,
    pin: bool,
    open: &Arc<AtomicUsize>,
    ctx: &Arc<SessionContext>,
    session: SessionKind,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> io::Result<()> {
    spawn_loop_threads(
        "elastic-lb-loop",
        sockets,
        pin,
        tracker,
        |socket, balance, inbox| {
            let (open, ctx, shutdown) = (open.clone(), ctx.clone(), shutdown.clone());
            move || {
                let (runtime, listener) = start_loop(socket)?;
                Ok(move || {
                    let connections = TaskTracker::new();
                    let receiving = receive(inbox, ctx.clone(), session, connections.clone());
                    let accept_loop = Listener {
                        listener,
                        open,
                        ctx,
                        session,
                        tracker: connections.clone(),
                        shutdown,
                        balance: Some(balance),
                    };
                    runtime.block_on(async move {
                        connections.spawn(receiving);
                        accept_loop.run().await;
                        connections.close();
                        connections.wait().await;
                    });
                })
            }
        },
    )
    .await
}

/// An event loop's runtime and its listening socket, registered with that runtime.
fn start_loop(socket: std::net::TcpListener) -> io::Result<(Runtime, TcpListener)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    socket.set_nonblocking(true)?;
    let listener = {
        let _entered = runtime.enter();
        TcpListener::from_std(socket)?
    };
    Ok((runtime, listener))
}
