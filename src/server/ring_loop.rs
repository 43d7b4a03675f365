//! Proxy mode's event loops on io_uring (`listener.io`): one thread per listening socket of
//! a [`super::bind::bind_group`], each running a [`ringloop::Runtime`] — accepts, connects,
//! reads and writes go through the thread's ring, and the thread waits in `io_uring_enter`
//! instead of `epoll_wait`.
//!
//! Everything else is shared with the epoll loops: the connection cap and its slots, the
//! session ([`session::stream::serve_ring`]: admission, upstream retries, access lines), and
//! shutdown (a token of the daemon's tracker per thread until its last connection ended).
//! The thread enters the daemon's tokio runtime, so timers (connect, server and idle
//! timeouts, the lingering close) and the dispatcher's channels work as on tokio's loops;
//! their wake-ups reach the ring through its eventfd. Loops even out as the epoll loops do
//! ([`super::balance`]): a loop that holds more than one connection more than another hands
//! a new connection to the least loaded one — which costs even less here, the socket being
//! registered nowhere.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info};

use super::balance::{spawn_loop_threads, Handoff, Loops, Seat};
use super::session::{self, ConnectionSlot, SessionContext};
use super::slot::Acceptor;
use crate::backend::upstream;
use crate::backend::SessionKind;
use crate::config::IoEngine;

/// The I/O engine the event loops run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// tokio current-thread runtimes ([`super::listener::spawn_loops`]).
    Epoll,
    /// ringloop runtimes ([`spawn_ring_loops`]).
    IoUring,
}

/// The engine for `listener.io` and the backend's sessions: io_uring serves proxied
/// streams only (the line protocol stays on tokio's loops); `auto` takes it where this
/// kernel allows it.
///
/// # Errors
///
/// `listener.io = "io_uring"` in proxy mode where io_uring is unavailable.
pub fn engine(io: IoEngine, session: SessionKind) -> io::Result<Engine> {
    if session != SessionKind::Stream {
        return Ok(Engine::Epoll);
    }
    match io {
        IoEngine::Epoll => Ok(Engine::Epoll),
        IoEngine::Auto if ringloop::available() => Ok(Engine::IoUring),
        IoEngine::Auto => {
            info!("listener.io = \"auto\": io_uring is not available here; the event loops use epoll");
            Ok(Engine::Epoll)
        }
        IoEngine::IoUring if ringloop::available() => Ok(Engine::IoUring),
        IoEngine::IoUring => Err(io::Error::other(
            "listener.io = \"io_uring\": io_uring is not available here (Linux 6.1 or later, \
             not disabled by kernel.io_uring_disabled or a seccomp profile); use \"epoll\" or \"auto\"",
        )),
    }
}

/// Accepts each loop keeps in flight on its listening socket: a burst of connections is
/// taken in one pass of the loop, not one per pass (HAProxy's `tune.maxaccept` in spirit).
const ACCEPTS_IN_FLIGHT: usize = 4;

/// Submission-queue entries of each loop's ring (completions: four times as many).
const RING_ENTRIES: u32 = 4096;

/// Starts one io_uring event-loop thread per socket; returns once every loop runs (or one
/// could not start). Must be called inside the daemon's tokio runtime, which the threads
/// enter for timers.
///
/// # Errors
///
/// When a thread or its ring cannot be created. The loops already running stop when
/// `shutdown` fires (the caller cancels it).
pub async fn spawn_ring_loops(
    sockets: Vec<std::net::TcpListener>,
    pin: bool,
    open: &Arc<AtomicUsize>,
    ctx: &Arc<SessionContext>,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) -> io::Result<()> {
    let handle = tokio::runtime::Handle::current();
    spawn_loop_threads(
        "elastic-lb-ring",
        sockets,
        pin,
        tracker,
        |socket, balance, inbox| {
            let (open, ctx, shutdown, handle) =
                (open.clone(), ctx.clone(), shutdown.clone(), handle.clone());
            move || {
                let runtime = upstream::ring::runtime(RING_ENTRIES)?;
                let listener = ringloop::TcpListener::from_std(socket)?;
                Ok(move || {
                    let _tokio = handle.enter();
                    let i = balance.1;
                    let connections = TaskTracker::new();
                    let receiving = receive(inbox, ctx.clone(), connections.clone());
                    let listener = Rc::new(listener);
                    let first = Acceptor::new(open);
                    let acceptors: Vec<_> = (0..ACCEPTS_IN_FLIGHT)
                        .map(|_| {
                            let (listener, acceptor, ctx) =
                                (listener.clone(), first.sibling(), ctx.clone());
                            let (shutdown, balance) = (shutdown.clone(), balance.clone());
                            accept(
                                listener,
                                acceptor,
                                ctx,
                                connections.clone(),
                                shutdown,
                                balance,
                            )
                        })
                        .collect();
                    // The port closes when the last acceptor ends (on shutdown), and the other
                    // loops' inboxes when every acceptor of every loop has ended.
                    drop((listener, balance));
                    let ran = runtime.block_on(async move {
                        if ringloop::spawn(connections.track_future(receiving)).is_err() {
                            debug!("no io_uring runtime on this thread");
                        }
                        let accepting = TaskTracker::new();
                        for acceptor in acceptors {
                            let _ = ringloop::spawn(accepting.track_future(acceptor));
                        }
                        accepting.close();
                        accepting.wait().await;
                        connections.close();
                        connections.wait().await;
                    });
                    if let Err(e) = ran {
                        error!(loop_index = i, error = %e, "io_uring event loop failed");
                    }
                    drop(runtime);
                })
            }
        },
    )
    .await
}

/// Accepts until `shutdown` fires (one of the loop's [`ACCEPTS_IN_FLIGHT`] acceptors); each
/// connection takes a slot of `listener.max_connections` and runs as a task of this loop.
async fn accept(
    listener: Rc<ringloop::TcpListener>,
    mut acceptor: Acceptor,
    ctx: Arc<SessionContext>,
    connections: TaskTracker,
    shutdown: CancellationToken,
    (loops, me): (Loops, usize),
) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (socket, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) if acceptor.failed(&e, &shutdown).await => continue,
            Err(_) => break,
        };
        let Ok(slot) = acceptor.admit(&ctx) else {
            // A proxied stream adds no bytes, but what the client sent must not turn the
            // close into a reset: the lingering close, or at once under a flood.
            let Some(place) = ctx.refusing_place() else {
                session::refuse_at_once(socket.into_std(), &[]);
                continue;
            };
            let refusal = connections.track_future(session::stream::refuse_ring(socket, place));
            if ringloop::spawn(refusal).is_err() {
                debug!("no io_uring runtime on this thread; connection closed");
            }
            continue;
        };
        let to = loops.place(me);
        if to == me {
            spawn_session(
                socket,
                peer,
                ctx.clone(),
                (slot, loops.seat(me)),
                &connections,
            );
            continue;
        }
        let handoff = Handoff {
            socket: socket.into_std(),
            peer,
            slot,
            seat: loops.seat(to),
        };
        if let Err(back) = loops.send(to, handoff) {
            // That loop has stopped (shutdown): serve it here after all.
            match ringloop::TcpStream::from_std(back.socket) {
                Ok(socket) => {
                    let held = (back.slot, loops.seat(me));
                    spawn_session(socket, peer, ctx.clone(), held, &connections);
                }
                Err(e) => debug!(error = %e, "cannot take a connection back; closed"),
            }
        }
    }
    debug!("io_uring accept loop closed");
}

/// Serves the connections other loops hand to this one, until every loop stopped accepting.
async fn receive(
    mut inbox: tokio::sync::mpsc::UnboundedReceiver<Handoff>,
    ctx: Arc<SessionContext>,
    connections: TaskTracker,
) {
    while let Some(Handoff {
        socket,
        peer,
        slot,
        seat,
    }) = inbox.recv().await
    {
        match ringloop::TcpStream::from_std(socket) {
            Ok(socket) => spawn_session(socket, peer, ctx.clone(), (slot, seat), &connections),
            Err(e) => debug!(error = %e, "cannot take a handed-over connection; closed"),
        }
    }
}

fn spawn_session(
    socket: ringloop::TcpStream,
    peer: SocketAddr,
    ctx: Arc<SessionContext>,
    held: (ConnectionSlot, Seat),
    connections: &TaskTracker,
) {
    let session = connections.track_future(async move {
        let (slot, seat) = held;
        session::stream::serve_ring(socket, peer, &ctx, slot).await;
        drop(seat);
    });
    if ringloop::spawn(session).is_err() {
        // Only called from the loop's own `block_on`.
        debug!("no io_uring runtime on this thread; connection closed");
    }
}
