//! A line session (SPEC §4): one client connection speaking the line protocol.
//!
//! ```text
//!            lines                    Pending (bounded, in order)
//! socket ──► reader ──► router ──────► machine queue ──┐ oneshot
//!              │  │                                    ▼
//!              │  └─────► pending_tx ──────────────► writer ──► socket
//!              └────────────────────── (nothing owed) ────────► socket
//! ```
//!
//! The reader frames lines, answers commands locally and submits work straight to the
//! connection's machine (never through the dispatcher); a machine that serves a request on
//! the spot (instant service, idle machine) answers it at once. For every reply it owes, in
//! request order, it pushes a `Pending` slot: either a reply that is already known
//! (`PONG`, `ERR busy`, …) or the receiving half of the machine's oneshot. The writer
//! (`writer.rs`) takes the slots in order and awaits each one. Replies known at once while
//! nothing is owed before them (the closed-loop case) skip the writer: the reader writes
//! them itself at the end of its round (`input.rs`), so such a request costs one read, one
//! write and no task wake-up beyond the socket's.
//!
//! Back-pressure: the slot channel is bounded (`queue_depth + 1 + PIPELINE_SLACK`). One
//! pipelining connection can still fill its machine's queue (and get `busy` for the
//! overflow), but a client that sends without reading stops being read once that many
//! replies are owed: memory per connection stays bounded and TCP pushes back on the client.
//!
//! Both halves run in this one task (`writer::join_halves`, which does not poll the writer
//! while nothing is owed), so a connection costs one task.

mod fast;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, Instrument};

use super::access::{self, ConnCounters};
use super::close::{far_future, linger, refuse, shutting_down};
use super::context::SessionContext;
use super::input::{self, next_config, sleep_until, Direct};
use super::place::ConnectionSlot;
use super::writer::{join_halves, write_loop, InFlight, Pending, MEMORY_CAP};
use crate::backend::JobRef;
use crate::balancer::{AdmitError, Placement, RouteError, Routed};
use crate::config::Config;
use crate::core::gate::Gated;
use crate::core::Units;
use crate::protocol::{self, ErrorCode, Frame, LineFrame, Request};

/// Replies a connection may owe beyond a full machine queue before it stops reading.
const PIPELINE_SLACK: usize = 1024;

/// Serves one accepted connection, which holds `slot` (one of `listener.max_connections`),
/// until it closes; a refused one gives up `slot` before it is closed.
pub async fn serve(
    socket: TcpStream,
    peer: SocketAddr,
    ctx: Arc<SessionContext>,
    slot: ConnectionSlot,
) {
    let placement = match ctx.dispatcher.admit(peer).await {
        Ok(placement) => placement,
        Err(e) => {
            let reply = match e {
                AdmitError::Exhausted { .. } => ErrorCode::Exhausted.reply(&e.to_string()),
                AdmitError::ShuttingDown => shutting_down(),
            };
            drop(slot);
            return refuse(socket, reply, &ctx).await;
        }
    };
    let home = placement.machine().info.name.clone();
    let span = tracing::debug_span!("conn", %peer, machine = %home);
    async move {
        debug!(
            reservation = placement.reservation().as_f64(),
            "connection admitted"
        );
        let started = Instant::now();
        let counters = ConnCounters::default();
        // Linux: inherited from the listening socket (`server::bind`).
        #[cfg(not(target_os = "linux"))]
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
            counters: &counters,
        };
        let ((read_half, end), wrote_all) = join_halves(
            reader.run(read_half),
            write_loop(write_half, pending_rx, &in_flight, idle, &counters),
            &in_flight,
        )
        .await;
        let reason = match end {
            _ if !wrote_all => "write failed or client stopped reading",
            ReadEnd::ServerClose(reason) => reason,
            ReadEnd::ClientGone => "client closed",
        };
        if let ReadEnd::ServerClose(_) = end {
            linger(read_half).await;
        }
        access::closed(&ctx, peer, &home, started, &counters, reason);
        // Dropping `placement` here releases the reservation from the current machine.
    }
    .instrument(span)
    .await
}

struct Reader<'a> {
    ctx: &'a SessionContext,
    placement: &'a Placement,
    /// To the writer; closed by the writer only when the socket failed.
    pending_tx: mpsc::Sender<Pending>,
    /// Replies owed and not yet written (shared with the writer).
    in_flight: &'a InFlight,
    /// For the access log (shared with the writer).
    counters: &'a ConnCounters,
}

/// What one frame calls for.
enum Step {
    /// Nothing (an empty line).
    Nothing,
    /// Served on the spot: the reply was appended to the caller's buffer.
    Answered,
    /// One reply slot.
    Reply(Pending),
    /// This reply, then close the connection, for this reason.
    Last(&'static str, Bytes),
}

/// Why the reader stopped.
enum ReadEnd {
    /// The client closed its side (or reset): let the writer finish, nothing to linger on.
    ClientGone,
    /// We decided to close after the replies owed (QUIT, too-long, timeout, shutdown).
    ServerClose(&'static str),
}

impl Reader<'_> {
    /// Returns the read half (for lingering) and why reading ended.
    async fn run(self, mut read_half: OwnedReadHalf) -> (OwnedReadHalf, ReadEnd) {
        let end = self.read_loop(&mut read_half).await;
        (read_half, end)
    }

    async fn read_loop(&self, read_half: &mut OwnedReadHalf) -> ReadEnd {
        // The configuration in force, refreshed when a reload publishes a new one (which
        // also re-arms the idle timer of a silent connection).
        let mut config = self.ctx.config.borrow().clone();
        // NOTE: the waits that last as long as the connection (shutdown, writer gone,
        // reload, idle timer) are created and registered once, not once per read: a
        // shared `Notify` (the shutdown token, the config channel) costs a lock and a list
        // update per registration, and a timer a wheel update. The two shared ones are
        // gated (`gate.rs`): polled again only after they woke the task. (The writer's
        // channel is this connection's own: polling it is cheap, and not gating it saves
        // memory on every idle connection.)
        let mut shutdown = Gated::new(self.ctx.shutdown.cancelled());
        let writer_gone = self.pending_tx.closed();
        tokio::pin!(writer_gone);
        let mut reload = Gated::new(next_config(self.ctx.config.clone()));
        let mut watching_config = true;
        let mut last_read = Instant::now();
        // Armed for `last_read + idle` or earlier; when it fires early (input came since)
        // it is moved to the real deadline, so a busy connection never touches the timer.
        let idle_timer = tokio::time::sleep_until(far_future());
        tokio::pin!(idle_timer);
        let mut idle_armed = None;
        // Shutdown has begun but replies are still owed (see SPEC §5 "Shutdown").
        let mut stopping = false;
        let mut buf = BytesMut::new();
        let mut scanned = 0;
        // Replies to write straight to the socket at the end of this round (see `Direct`).
        let mut direct = Direct::default();
        // When the line now being received began (its first byte arrived); `None` while
        // no partial line is buffered.
        let mut line_started: Option<Instant> = None;
        // Since when the reader has stopped reading at the memory cap; `None` while reading.
        let mut capped_since: Option<Instant> = None;
        // The client half-closed: answer what it sent, then stop reading.
        let mut eof = false;
        // The line that ended an in-place round, handled and not yet handed over.
        let mut carried: Option<Step> = None;
        loop {
            let (max_line, idle, line_timeout) = {
                let l = &config.listener;
                (l.max_line_bytes, l.idle_timeout, l.line_timeout)
            };
            // Everything already buffered is "read": handle it before looking at timers or
            // shutdown, so that requests read before shutdown began are answered.
            let mut refused_late = false;
            loop {
                // A line that ended an in-place round (handled already) comes first.
                let step = match carried.take() {
                    Some(step) => step,
                    None => {
                        let Some(frame) = protocol::next_frame(&mut buf, &mut scanned, max_line)
                        else {
                            break;
                        };
                        if stopping {
                            // Shutdown began while work was in flight: every line read now is
                            // refused (and counted), and the connection closes once the
                            // replies before them are out.
                            let too_long = frame == Frame::TooLong;
                            if let Some(reply) = self.refuse_late(frame, &config) {
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
                        line_started = None;
                        let frame = match &frame {
                            Frame::Line(line) => LineFrame::Line(line),
                            Frame::TooLong => LineFrame::TooLong,
                        };
                        let mut answered = Vec::new();
                        match self.handle(frame, max_line, &config, last_read, &mut answered) {
                            Step::Answered => Step::Reply(Pending::Ready(answered.into())),
                            step => step,
                        }
                    }
                };
                match step {
                    Step::Nothing | Step::Answered => {}
                    // Nothing owed before it: it may go out directly.
                    Step::Reply(Pending::Ready(reply)) if self.in_flight.is_zero() => {
                        direct.add(reply);
                    }
                    Step::Reply(item) => {
                        if !self.hand_over(&mut direct).await || !self.push(item).await {
                            return ReadEnd::ClientGone;
                        }
                    }
                    Step::Last(reason, reply) => {
                        if !self.hand_over(&mut direct).await {
                            return ReadEnd::ClientGone;
                        }
                        return self.close_with(reason, Some(reply)).await;
                    }
                }
            }
            if !direct.is_empty() {
                // Written now, before waiting: whatever the socket does not take goes to
                // the writer, so nothing is owed only when everything is out.
                let written = direct.write(read_half.as_ref());
                self.counters.bytes_out(written);
                if !self.hand_over(&mut direct).await {
                    return ReadEnd::ClientGone;
                }
            }
            if refused_late {
                return self.close_with("shutdown", None).await;
            }
            if stopping && self.in_flight.is_zero() {
                // Shutdown seen on a read that held no complete line, and nothing owed.
                return self.close_with("shutdown", Some(shutting_down())).await;
            }
            if eof {
                return ReadEnd::ClientGone;
            }
            if buf.is_empty() {
                // Hold no read buffer while waiting for the next line (it is allocated
                // when bytes arrive), as nginx and HAProxy release theirs when idle.
                buf = BytesMut::new();
                scanned = 0;
            } else if line_started.is_none() {
                line_started = Some(last_read);
            }
            if idle_armed != Some(idle) {
                // First round, or a reload changed the timeout: arm for the real deadline.
                let deadline = match idle.is_zero() {
                    true => far_future(),
                    false => last_read.checked_add(idle).unwrap_or_else(far_future),
                };
                idle_timer.as_mut().reset(deadline);
                idle_armed = Some(idle);
            }
            // Owed replies plus unread input past the cap: stop reading until the writer
            // catches up (TCP pushes back on the client meanwhile). With nothing owed the
            // reader always reads: one line is bounded by `max_line_bytes` on its own.
            let capped =
                !self.in_flight.is_zero() && self.in_flight.bytes() + buf.len() >= MEMORY_CAP;
            // NOTE: the line clock stops while we are not reading. The rest of a line held
            // up by our own back-pressure may well be sent already; that client is not slow
            // but not reading its replies, which the writer bounds by `idle_timeout`.
            match (capped, capped_since) {
                (true, None) => capped_since = Some(Instant::now()),
                (false, Some(since)) => {
                    capped_since = None;
                    if let Some(start) = line_started.as_mut() {
                        *start = start.checked_add(since.elapsed()).unwrap_or(*start);
                    }
                }
                _ => {}
            }
            let line_deadline = match line_started {
                Some(start) if !capped && !line_timeout.is_zero() => {
                    start.checked_add(line_timeout)
                }
                _ => None,
            };
            tokio::select! {
                biased;
                _ = &mut shutdown, if !stopping => {
                    if self.in_flight.is_zero() {
                        return self.close_with("shutdown", Some(shutting_down())).await;
                    }
                    stopping = true;
                }
                _ = self.in_flight.drained.notified(), if stopping => {
                    if self.in_flight.is_zero() {
                        return self.close_with("shutdown", Some(shutting_down())).await;
                    }
                }
                // The writer stops early only on a failed write, which leaves replies owed.
                _ = &mut writer_gone, if !self.in_flight.is_zero() => return ReadEnd::ClientGone,
                changed = &mut reload, if watching_config => match changed {
                    // Loop round to apply the new limits.
                    Some(config_rx) => {
                        config = config_rx.borrow().clone();
                        reload.set(next_config(config_rx));
                    }
                    // A closed channel means no more reloads.
                    None => watching_config = false,
                },
                _ = self.in_flight.room.notified(), if capped => {}
                ready = read_half.readable(), if !capped => {
                    if let Err(e) = ready {
                        debug!(error = %e, "read failed");
                        return ReadEnd::ClientGone;
                    }
                    if buf.is_empty() && !stopping && self.in_flight.is_zero() {
                        // Nothing buffered or owed: answer the input where it was read.
                        let round = match self.read_in_place(read_half.as_ref(), &mut buf, &config) {
                            Ok(Some(round)) => round,
                            Ok(None) => return ReadEnd::ClientGone,
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                            Err(e) => {
                                debug!(error = %e, "read failed");
                                return ReadEnd::ClientGone;
                            }
                        };
                        last_read = round.read_at;
                        stopping = round.late;
                        carried = self.finish_round(round, &mut direct);
                        continue;
                    }
                    match input::read(read_half.as_ref(), &mut buf) {
                        Ok(0) if buf.is_empty() => return ReadEnd::ClientGone,
                        // A last line without its newline before the half-close is still
                        // a line: frame it, answer it, then stop.
                        Ok(0) => {
                            buf.extend_from_slice(b"\n");
                            eof = true;
                        }
                        Ok(n) => {
                            self.counters.bytes_in(n);
                            last_read = Instant::now();
                            // Shutdown began before this read, though its wake-up may not
                            // have reached this task yet: what was just read is late.
                            if !stopping && self.ctx.shutting_down() {
                                stopping = true;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => {
                            debug!(error = %e, "read failed");
                            return ReadEnd::ClientGone;
                        }
                    }
                },
                _ = sleep_until(line_deadline), if line_deadline.is_some() => {
                    // Slowloris: a line that never completes. Like too-long, it counts as
                    // a failed request of weight 0.
                    self.fail(Units::ZERO);
                    let msg = format!(
                        "line not completed within {}",
                        crate::config::duration_str::format(line_timeout)
                    );
                    let reply = ErrorCode::Timeout.reply(&msg);
                    return self.close_with("line timeout", Some(reply)).await;
                }
                () = &mut idle_timer, if !idle.is_zero() => {
                    // Idle since the later of the last byte read and the last owed reply
                    // written: a reply that took long leaves the client the whole timeout
                    // to send its next line.
                    let since = self.in_flight.drained_at().map_or(last_read, |at| at.max(last_read));
                    let due = since.checked_add(idle).unwrap_or_else(far_future);
                    if due > Instant::now() {
                        // Input came (or a reply went) since it was armed: not idle yet.
                        idle_timer.as_mut().reset(due);
                        continue;
                    }
                    if self.in_flight.is_zero() {
                        let msg = format!("idle for {}", crate::config::duration_str::format(idle));
                        let reply = ErrorCode::Timeout.reply(&msg);
                        return self.close_with("idle timeout", Some(reply)).await;
                    }
                    // Work in flight is not idleness: count the silence from now on.
                    last_read = Instant::now();
                    idle_timer.as_mut().reset(last_read.checked_add(idle).unwrap_or_else(far_future));
                }
            }
        }
    }

    /// Hands the replies not written directly to the writer (in order, before anything
    /// pushed after them); false when the writer is gone.
    async fn hand_over(&self, direct: &mut Direct) -> bool {
        match direct.take() {
            Some(rest) => self.push(Pending::Ready(rest)).await,
            None => true,
        }
    }

    /// Queues `reply` (if any), then the close marker; `reason` goes to the access log.
    async fn close_with(&self, reason: &'static str, reply: Option<Bytes>) -> ReadEnd {
        if let Some(reply) = reply {
            if !self.push(Pending::Ready(reply)).await {
                return ReadEnd::ClientGone;
            }
        }
        let _ = self.pending_tx.send(Pending::Close).await;
        ReadEnd::ServerClose(reason)
    }

    /// Counts one failed request of `weight`, in the totals and for the access log.
    fn fail(&self, weight: Units) {
        self.ctx.stats.totals.request_failed(weight);
        self.counters.request_failed();
    }

    /// Hands a reply slot to the writer; false when the writer is gone.
    async fn push(&self, item: Pending) -> bool {
        self.in_flight.add(item.size());
        self.pending_tx.send(item).await.is_ok()
    }

    /// After shutdown began: the reply for a late frame (`None` for an empty line). A work
    /// line counts as a failed request of its weight, an unreadable one of weight 0;
    /// commands are not requests and are not counted.
    fn refuse_late(&self, frame: Frame, config: &Config) -> Option<Bytes> {
        let weight = match &frame {
            Frame::TooLong => Some(Units::ZERO),
            Frame::Line(line) if line.is_empty() => return None,
            Frame::Line(line) => {
                let requests = &config.load.requests;
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
            self.fail(weight);
        }
        Some(shutting_down())
    }

    /// Turns one frame into what the connection owes for it. A request served on the spot
    /// has its reply appended to `out` ([`Step::Answered`]); `read_at` is when its line was
    /// read (the start of its latency).
    fn handle(
        &self,
        frame: LineFrame<'_>,
        max_line: usize,
        config: &Config,
        read_at: Instant,
        out: &mut Vec<u8>,
    ) -> Step {
        let line = match frame {
            LineFrame::TooLong => {
                self.fail(Units::ZERO);
                let msg = format!("line exceeds {max_line} bytes");
                return Step::Last("too-long", ErrorCode::TooLong.reply(&msg));
            }
            LineFrame::Line(line) => line,
        };
        if line.is_empty() {
            return Step::Nothing;
        }
        let weights = &config.load.requests;
        let Some(request) = protocol::parse_slice(line, weights.default_class) else {
            // `parse` gives nothing for a line that is empty once cleaned or not UTF-8;
            // which one is checked here, off the path of valid lines (validated once).
            if std::str::from_utf8(line).is_err() {
                self.fail(Units::ZERO);
                let reply = ErrorCode::BadRequest.reply("line is not valid UTF-8");
                return Step::Reply(Pending::Ready(reply));
            }
            return Step::Nothing;
        };
        let reply = match request {
            Request::Ping => Bytes::from_static(b"PONG\n"),
            Request::Info => self.info_reply(),
            Request::Stats => protocol::stats_reply(self.ctx.stats.active_loads()),
            Request::Quit => return Step::Last("quit", Bytes::from_static(b"BYE\n")),
            Request::Work { class, payload } => {
                let job = JobRef {
                    class,
                    weight: Units::from_whole(weights.weight(class)),
                    payload,
                    queued_at: read_at,
                };
                return self.submit(job, out);
            }
        };
        Step::Reply(Pending::Ready(reply))
    }

    fn submit(&self, job: JobRef<'_>, out: &mut Vec<u8>) -> Step {
        match self.ctx.router.submit(self.placement, job, out) {
            // Served on the spot (instant service on an idle machine): counted already.
            Ok(Routed::Answered) => {
                self.counters.request_ok();
                Step::Answered
            }
            // `OK <machine> <class> <payload>\n`: the payload plus a few dozen bytes.
            Ok(Routed::Queued(reply_rx)) => {
                Step::Reply(Pending::Waiting(reply_rx, job.payload.len() + 32))
            }
            Err(RouteError::Busy(message)) => {
                self.fail(job.weight);
                Step::Reply(Pending::Ready(ErrorCode::Busy.reply(&message)))
            }
            Err(RouteError::Gone) => {
                self.fail(job.weight);
                Step::Reply(Pending::Ready(shutting_down()))
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
