//! One client connection, from admission to close (SPEC §4).
//!
//! ```text
//!            lines                    Pending (bounded, in order)
//! socket ──► reader ──► try_submit ──► machine queue ──┐ oneshot
//!              │                                       ▼
//!              └────────► pending_tx ──────────────► writer ──► socket
//! ```
//!
//! The reader frames lines, answers commands locally and submits work straight to the
//! connection's machine (never through the dispatcher). For every reply it owes, in
//! request order, it pushes a `Pending` slot: either a reply that is already known
//! (`PONG`, `ERR busy`, …) or the receiving half of the machine's oneshot. The writer takes
//! the slots in order and awaits each one, so replies keep request order even when some
//! fail early or — after a drain moved the connection — come from two machines.
//!
//! Back-pressure: the slot channel is bounded (`queue_depth + 1 + PIPELINE_SLACK`). One
//! pipelining connection can still fill its machine's queue (and get `busy` for the
//! overflow), but a client that sends without reading stops being read once that many
//! replies are owed: memory per connection stays bounded and TCP pushes back on the client.
//!
//! Both halves run in this one task (`join!`), so a connection costs one task.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn, Instrument};

use crate::config::BackendMode;
use crate::config::Config;
use crate::core::{RequestClass, Units};
use crate::dispatcher::{AdmitError, Command, DispatcherHandle, Placement};
use crate::machine::{Job, SubmitError};
use crate::protocol::{self, ErrorCode, Frame, Request};
use crate::proxy;
use crate::stats::StatsHandle;

/// Replies a connection may owe beyond a full machine queue before it stops reading.
const PIPELINE_SLACK: usize = 1024;
/// Flush the write buffer once it holds this much, even if more replies are ready.
const WRITE_BATCH: usize = 64 * 1024;
/// How long a closing connection keeps reading (and discarding) so that its last reply is
/// not destroyed by a reset (see `linger`).
const LINGER: Duration = Duration::from_secs(2);

/// What every connection task needs. Built once and shared.
#[derive(Debug)]
pub struct ConnectionContext {
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

/// Replies owed and not yet written, shared by the reader (adds) and the writer (removes).
#[derive(Debug, Default)]
struct InFlight {
    count: AtomicUsize,
    /// Notified when the count drops to zero (a shutting-down reader waits for it).
    drained: Notify,
}

impl InFlight {
    fn add(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    fn done(&self) {
        if self.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.drained.notify_one();
        }
    }

    fn is_zero(&self) -> bool {
        self.count.load(Ordering::Acquire) == 0
    }
}

/// One owed reply, in request order.
#[derive(Debug)]
enum Pending {
    /// Known already.
    Ready(Bytes),
    /// The machine will answer.
    Waiting(oneshot::Receiver<Bytes>),
    /// Everything before this is the last the client gets: flush and close.
    Close,
}

/// Serves one accepted connection until it closes.
pub async fn serve(socket: TcpStream, peer: SocketAddr, ctx: Arc<ConnectionContext>) {
    if ctx.config.borrow().backend.mode == BackendMode::Proxy {
        return serve_proxied(socket, peer, &ctx).await;
    }
    let placement = match ctx.dispatcher.admit(peer).await {
        Ok(placement) => placement,
        Err(AdmitError::Exhausted { reservation }) => {
            let msg = format!(
                "no machine can take the connection (reservation {reservation}, pool exhausted)"
            );
            refuse(socket, ErrorCode::Exhausted.reply(&msg)).await;
            return;
        }
        Err(AdmitError::ShuttingDown) => {
            refuse(socket, shutting_down()).await;
            return;
        }
    };
    let span = tracing::debug_span!("conn", %peer, machine = %placement.machine().info.name);
    async move {
        debug!(reservation = %placement.reservation(), "connection admitted");
        let _ = socket.set_nodelay(true);
        let (read_half, write_half) = socket.into_split();
        let depth = ctx.config.borrow().machines.queue_depth;
        let (pending_tx, pending_rx) = mpsc::channel(depth.saturating_add(1 + PIPELINE_SLACK));
        let in_flight = InFlight::default();
        let idle = ctx.config.borrow().listener.idle_timeout;
        let reader = Reader {
            ctx: &ctx,
            placement: &placement,
            pending_tx,
            in_flight: &in_flight,
        };
        let (read_half, linger_after) = tokio::join!(
            reader.run(read_half),
            write_loop(write_half, pending_rx, &in_flight, idle),
        )
        .0;
        if linger_after {
            linger(read_half).await;
        }
        debug!("connection closed");
        // Dropping `placement` here releases the reservation from the current machine.
    }
    .instrument(span)
    .await
}

/// Proxy mode (SPEC §8): place the connection, connect it to its machine's upstream and
/// copy bytes both ways. No bytes are ever added: a connection that cannot be placed is
/// closed (and counted as rejected by the dispatcher).
async fn serve_proxied(mut socket: TcpStream, peer: SocketAddr, ctx: &ConnectionContext) {
    // A failed connect marks that upstream down; try up to three machines in all.
    let mut last_reservation = Units::ZERO;
    for _ in 0..3 {
        let Ok(placement) = ctx.dispatcher.admit(peer).await else {
            return;
        };
        let machine = placement.machine();
        let Some(upstream) = machine.info.upstream.clone() else {
            return;
        };
        let span = tracing::debug_span!("proxy", %peer, machine = %machine.info.name, upstream = %upstream.address);
        let idle = ctx.config.borrow().listener.idle_timeout;
        match proxy::forward(socket, &upstream, idle, &ctx.hard_stop)
            .instrument(span)
            .await
        {
            Ok(()) => return,
            Err((returned, e)) => {
                // Never connected: not an admitted connection after all.
                let totals = &ctx.stats.totals;
                totals.connections_admitted.fetch_sub(1, Ordering::Relaxed);
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

// === reader ===

struct Reader<'a> {
    ctx: &'a ConnectionContext,
    placement: &'a Placement,
    /// To the writer; closed by the writer only when the socket failed.
    pending_tx: mpsc::Sender<Pending>,
    /// Replies owed and not yet written (shared with the writer).
    in_flight: &'a InFlight,
}

/// What one frame calls for.
enum Step {
    /// Nothing (an empty line).
    Nothing,
    /// One reply slot.
    Reply(Pending),
    /// This reply, then close the connection.
    Last(Bytes),
}

/// Why the reader stopped.
enum ReadEnd {
    /// The client closed its side (or reset): let the writer finish, nothing to linger on.
    ClientGone,
    /// We decided to close after the replies owed (QUIT, too-long, timeout, shutdown).
    ServerClose,
}

impl Reader<'_> {
    /// Returns the read half (for lingering) and whether to linger.
    async fn run(self, mut read_half: OwnedReadHalf) -> (OwnedReadHalf, bool) {
        let end = self.read_loop(&mut read_half).await;
        (read_half, matches!(end, ReadEnd::ServerClose))
    }

    async fn read_loop(&self, read_half: &mut OwnedReadHalf) -> ReadEnd {
        // Woken by a reload so that a new idle_timeout re-arms even a silent connection.
        let mut config_rx = self.ctx.config.clone();
        let mut watching_config = true;
        // Shutdown has begun but replies are still owed (see SPEC §5 "Shutdown").
        let mut stopping = false;
        let mut buf = BytesMut::new();
        let mut scanned = 0;
        let mut last_read = Instant::now();
        loop {
            // Read per round so that a reload applies to open connections too.
            let (max_line, idle) = {
                let config = self.ctx.config.borrow();
                (config.listener.max_line_bytes, config.listener.idle_timeout)
            };
            // Everything already buffered is "read": handle it before looking at timers or
            // shutdown, so that requests read before shutdown began are answered.
            let mut refused_late = false;
            while let Some(frame) = protocol::next_frame(&mut buf, &mut scanned, max_line) {
                if stopping {
                    // Shutdown began while work was in flight: every line read now is
                    // refused (and counted), and the connection closes once the replies
                    // before them are out.
                    let too_long = frame == Frame::TooLong;
                    if let Some(reply) = self.refuse_late(frame) {
                        if !self.push(Pending::Ready(reply)).await {
                            return ReadEnd::ClientGone;
                        }
                        refused_late = true;
                    }
                    if too_long {
                        break; // the rest of the buffer is not framed
                    }
                    continue;
                }
                match self.handle(frame, max_line) {
                    Step::Nothing => {}
                    Step::Reply(item) => {
                        if !self.push(item).await {
                            return ReadEnd::ClientGone;
                        }
                    }
                    Step::Last(reply) => return self.close_with(Some(reply)).await,
                }
            }
            if refused_late {
                return self.close_with(None).await;
            }
            if buf.capacity() - buf.len() < 512 {
                buf.reserve(4096);
            }
            tokio::select! {
                biased;
                _ = self.ctx.shutdown.cancelled(), if !stopping => {
                    if self.in_flight.is_zero() {
                        return self.close_with(Some(shutting_down())).await;
                    }
                    stopping = true;
                }
                _ = self.in_flight.drained.notified(), if stopping => {
                    if self.in_flight.is_zero() {
                        return self.close_with(Some(shutting_down())).await;
                    }
                }
                _ = self.pending_tx.closed() => return ReadEnd::ClientGone,
                changed = config_rx.changed(), if watching_config => {
                    // Loop round to re-read the limits; a closed channel means no more reloads.
                    watching_config = changed.is_ok();
                }
                read = read_half.read_buf(&mut buf) => match read {
                    Ok(0) => return ReadEnd::ClientGone,
                    Ok(_) => last_read = Instant::now(),
                    Err(e) => {
                        debug!(error = %e, "read failed");
                        return ReadEnd::ClientGone;
                    }
                },
                _ = tokio::time::sleep_until(last_read.checked_add(idle).unwrap_or_else(far_future)), if !idle.is_zero() => {
                    if self.in_flight.is_zero() {
                        let msg = format!("idle for {}", crate::config::duration_str::format(idle));
                        return self.close_with(Some(ErrorCode::Timeout.reply(&msg))).await;
                    }
                    // Work in flight is not idleness: count the silence from now on.
                    last_read = Instant::now();
                }
            }
        }
    }

    /// Queues `reply` (if any), then the close marker.
    async fn close_with(&self, reply: Option<Bytes>) -> ReadEnd {
        if let Some(reply) = reply {
            if !self.push(Pending::Ready(reply)).await {
                return ReadEnd::ClientGone;
            }
        }
        let _ = self.pending_tx.send(Pending::Close).await;
        ReadEnd::ServerClose
    }

    /// Hands a reply slot to the writer; false when the writer is gone.
    async fn push(&self, item: Pending) -> bool {
        self.in_flight.add();
        self.pending_tx.send(item).await.is_ok()
    }

    /// After shutdown began: the reply for a late frame (`None` for an empty line). A work
    /// line counts as a failed request of its weight, an unreadable one of weight 0;
    /// commands are not requests and are not counted.
    fn refuse_late(&self, frame: Frame) -> Option<Bytes> {
        let weight = match &frame {
            Frame::TooLong => Some(Units::ZERO),
            Frame::Line(line) if line.is_empty() => return None,
            Frame::Line(line) => {
                let requests = self.ctx.config.borrow().load.requests.clone();
                match protocol::parse(line, requests.default_class) {
                    Some(Request::Work { class, .. }) => {
                        Some(Units::from_whole(requests.weight(class)))
                    }
                    Some(_) => None,
                    None => Some(Units::ZERO), // not UTF-8
                }
            }
        };
        if let Some(weight) = weight {
            self.ctx.stats.totals.request_failed(weight);
        }
        Some(shutting_down())
    }

    /// Turns one frame into what the connection owes for it.
    fn handle(&self, frame: Frame, max_line: usize) -> Step {
        let totals = &self.ctx.stats.totals;
        let line = match frame {
            Frame::TooLong => {
                totals.request_failed(Units::ZERO);
                let msg = format!("line exceeds {max_line} bytes");
                return Step::Last(ErrorCode::TooLong.reply(&msg));
            }
            Frame::Line(line) => line,
        };
        if line.is_empty() {
            return Step::Nothing;
        }
        if std::str::from_utf8(&line).is_err() {
            totals.request_failed(Units::ZERO);
            let reply = ErrorCode::BadRequest.reply("line is not valid UTF-8");
            return Step::Reply(Pending::Ready(reply));
        }
        let (default_class, weights) = {
            let config = self.ctx.config.borrow();
            (
                config.load.requests.default_class,
                config.load.requests.clone(),
            )
        };
        let Some(request) = protocol::parse(&line, default_class) else {
            return Step::Nothing;
        };
        let reply = match request {
            Request::Ping => Bytes::from_static(b"PONG\n"),
            Request::Info => self.info_reply(),
            Request::Stats => protocol::stats_reply(self.ctx.stats.active_loads()),
            Request::Quit => return Step::Last(Bytes::from_static(b"BYE\n")),
            Request::Work { class, payload } => {
                let weight = Units::from_whole(weights.weight(class));
                return Step::Reply(self.submit(class, weight, payload));
            }
        };
        Step::Reply(Pending::Ready(reply))
    }

    fn submit(&self, class: RequestClass, weight: Units, payload: Bytes) -> Pending {
        let (reply_tx, reply_rx) = oneshot::channel();
        let job = Job {
            class,
            weight,
            payload,
            reply_tx,
        };
        let machine = self.placement.machine();
        match machine.try_submit(job) {
            Ok(()) => Pending::Waiting(reply_rx),
            Err(SubmitError::QueueFull(_)) => {
                self.ctx.stats.totals.request_failed(weight);
                let msg = format!(
                    "machine {} queue is full ({} waiting)",
                    machine.info.name, machine.info.queue_depth
                );
                Pending::Ready(ErrorCode::Busy.reply(&msg))
            }
            Err(SubmitError::MachineGone(_)) => {
                self.ctx.stats.totals.request_failed(weight);
                Pending::Ready(shutting_down())
            }
        }
    }

    fn info_reply(&self) -> Bytes {
        let machine = self.placement.machine();
        Bytes::from(format!(
            "OK machine={} size={} load={:.2} connection={} reservation={}\n",
            machine.info.name,
            machine.info.size,
            machine.info.load_percent(),
            self.placement.peer(),
            self.placement.reservation(),
        ))
    }
}

// === writer ===

/// Writes owed replies in order until the reader is done (channel closed) or a close marker.
async fn write_loop(
    mut write_half: OwnedWriteHalf,
    mut pending_rx: mpsc::Receiver<Pending>,
    in_flight: &InFlight,
    idle: Duration,
) {
    let mut out = BytesMut::new();
    loop {
        let item = match pending_rx.try_recv() {
            Ok(item) => item,
            Err(mpsc::error::TryRecvError::Empty) => {
                // Nothing more is ready: send what we have before waiting.
                if !flush(&mut write_half, &mut out, idle).await {
                    return;
                }
                match pending_rx.recv().await {
                    Some(item) => item,
                    None => break,
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        };
        let line = match item {
            Pending::Ready(line) => line,
            Pending::Waiting(mut reply_rx) => match reply_rx.try_recv() {
                Ok(line) => line,
                Err(oneshot::error::TryRecvError::Empty) => {
                    if !flush(&mut write_half, &mut out, idle).await {
                        return;
                    }
                    // A machine always answers (machine::finish); a dropped oneshot would
                    // be a bug, and still gets exactly one reply.
                    reply_rx.await.unwrap_or_else(|_| shutting_down())
                }
                Err(oneshot::error::TryRecvError::Closed) => shutting_down(),
            },
            Pending::Close => break,
        };
        out.extend_from_slice(&line);
        in_flight.done();
        if out.len() >= WRITE_BATCH && !flush(&mut write_half, &mut out, idle).await {
            return;
        }
    }
    if flush(&mut write_half, &mut out, idle).await {
        let _ = write_half.shutdown().await;
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

/// Writes `out` and clears it. A client that does not read for `idle` (when non-zero) is
/// given up on, like HAProxy's `timeout client`. Returns false when the socket is unusable.
async fn flush(write_half: &mut OwnedWriteHalf, out: &mut BytesMut, idle: Duration) -> bool {
    if out.is_empty() {
        return true;
    }
    let write = write_half.write_all(out);
    let result = if idle.is_zero() {
        write.await
    } else {
        match timeout(idle, write).await {
            Ok(result) => result,
            Err(_) => {
                debug!("client stopped reading; closing");
                return false;
            }
        }
    };
    out.clear();
    match result {
        Ok(()) => true,
        Err(e) => {
            debug!(error = %e, "write failed");
            false
        }
    }
}
