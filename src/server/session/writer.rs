//! The writing half of a line session: owed replies, in request order.
//!
//! The reader pushes one [`Pending`] slot per reply it owes; [`write_loop`] takes them in
//! order and awaits each, so replies keep request order even when some fail early or come
//! from two machines after a drain moved the connection.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::{timeout, Instant};
use tracing::debug;

use super::access::ConnCounters;
use super::close::shutting_down;

/// Flush the write buffer once it holds this much, even if more replies are ready.
const WRITE_BATCH: usize = 8 * 1024;

/// What one connection may hold in owed replies plus unread input before its reader stops
/// reading (TCP then pushes back on the client), whatever its payloads or `queue_depth`.
///
/// NOTE: 16 KiB of accounted bytes measure about 48 KiB of RSS per never-reading client
/// once the write batch, the allocator's overhead and cross-thread frees are added
/// (tests/memory.rs), which keeps a client under the 64 KiB promised; it is still
/// hundreds of small replies in flight, so pipelining throughput does not suffer.
pub(super) const MEMORY_CAP: usize = 16 * 1024;

/// Replies owed and not yet written, shared by the reader (adds) and the writer (removes):
/// how many, and about how many bytes they will take.
#[derive(Debug, Default)]
pub(super) struct InFlight {
    count: AtomicUsize,
    bytes: AtomicUsize,
    /// Notified when the count drops to zero (a shutting-down reader waits for it).
    pub(super) drained: Notify,
    /// Notified whenever a reply is written (a reader stopped at [`MEMORY_CAP`] waits on
    /// it; a stored permit only makes it look once more).
    pub(super) room: Notify,
    /// When the count last dropped to zero: the idle clock runs from the later of this and
    /// the last byte read ("nothing in flight and nothing received", SPEC §4).
    drained_at: Mutex<Option<Instant>>,
}

impl InFlight {
    /// One more reply owed, of about `bytes`.
    pub(super) fn add(&self, bytes: usize) {
        self.count.fetch_add(1, Ordering::AcqRel);
        self.bytes.fetch_add(bytes, Ordering::AcqRel);
    }

    /// `replies` counted by [`Self::add`], `bytes` in all, were written.
    fn done(&self, replies: usize, bytes: usize) {
        if replies == 0 {
            return;
        }
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
        self.room.notify_one();
        // Stamped before the count reaches zero, so that a reader that sees zero never sees
        // an older stamp (a stamp for a count that a new request keeps above zero is
        // harmless: the reader does not close with work in flight).
        if self.count.load(Ordering::Acquire) == replies {
            if let Ok(mut at) = self.drained_at.lock() {
                *at = Some(Instant::now());
            }
        }
        if self.count.fetch_sub(replies, Ordering::AcqRel) == replies {
            self.drained.notify_one();
        }
    }

    /// When the last owed reply was written, if one ever was.
    pub(super) fn drained_at(&self) -> Option<Instant> {
        self.drained_at.lock().map_or(None, |at| *at)
    }

    pub(super) fn is_zero(&self) -> bool {
        self.count.load(Ordering::Acquire) == 0
    }

    /// Bytes the owed replies will take (estimated for those not answered yet).
    pub(super) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }
}

/// One owed reply, in request order.
#[derive(Debug)]
pub(super) enum Pending {
    /// Known already.
    Ready(Bytes),
    /// The machine will answer; about this many bytes.
    Waiting(oneshot::Receiver<Bytes>, usize),
    /// Everything before this is the last the client gets: flush and close.
    Close,
}

impl Pending {
    /// What [`InFlight::add`] counts for this slot.
    pub(super) fn size(&self) -> usize {
        match self {
            Pending::Ready(line) => line.len(),
            Pending::Waiting(_, estimate) => *estimate,
            Pending::Close => 0,
        }
    }
}

/// Writes owed replies in order until the reader is done (channel closed) or a close marker.
///
/// Returns false when the socket failed (or the client stopped reading) before everything
/// owed was written.
pub(super) async fn write_loop(
    mut write_half: OwnedWriteHalf,
    mut pending_rx: mpsc::Receiver<Pending>,
    in_flight: &InFlight,
    idle: Duration,
    counters: &ConnCounters,
) -> bool {
    let mut out = Out {
        buf: BytesMut::new(),
        replies: 0,
        owed_bytes: 0,
    };
    loop {
        let item = match pending_rx.try_recv() {
            Ok(item) => item,
            Err(mpsc::error::TryRecvError::Empty) => {
                // Nothing more is ready: send what we have before waiting.
                if !out.flush(&mut write_half, idle, counters, in_flight).await {
                    return false;
                }
                // Nothing is owed right now: hold no buffer while waiting (an idle
                // connection should cost as little as possible).
                out.buf = BytesMut::new();
                match pending_rx.recv().await {
                    Some(item) => item,
                    None => break,
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        };
        let size = item.size();
        let line = match item {
            Pending::Ready(line) => line,
            Pending::Waiting(mut reply_rx, _) => {
                let line = match reply_rx.try_recv() {
                    Ok(line) => line,
                    Err(oneshot::error::TryRecvError::Empty) => {
                        if !out.flush(&mut write_half, idle, counters, in_flight).await {
                            return false;
                        }
                        // A machine always answers (worker::finish); a dropped oneshot
                        // would be a bug, and still gets exactly one reply.
                        reply_rx.await.unwrap_or_else(|_| shutting_down())
                    }
                    Err(oneshot::error::TryRecvError::Closed) => shutting_down(),
                };
                if line.starts_with(b"OK ") {
                    counters.request_ok();
                } else {
                    counters.request_failed();
                }
                line
            }
            Pending::Close => break,
        };
        out.buf.extend_from_slice(&line);
        out.replies += 1;
        out.owed_bytes += size;
        if out.buf.len() >= WRITE_BATCH
            && !out.flush(&mut write_half, idle, counters, in_flight).await
        {
            return false;
        }
    }
    if !out.flush(&mut write_half, idle, counters, in_flight).await {
        return false;
    }
    let _ = write_half.shutdown().await;
    true
}

/// Runs the reader and the writer to completion in this task, like `join!`, except that
/// the writer is not polled while it can have nothing to do.
///
/// NOTE: a wake-up of the task polls every future of a `join!`; here most wake-ups are
/// the socket's, for the reader, while the writer waits on its empty channel (the reader
/// writes replies itself when nothing is owed). The writer only reaches that wait with
/// nothing owed (`InFlight` zero: it wrote the last reply owed, or never had one), and
/// nothing owed becomes something owed only through the reader (`Reader::push` counts
/// before it sends; the close marker is sent when the reader is done, after which the
/// writer is always polled). So while nothing is owed and the writer's last poll left it
/// waiting with nothing owed, polling it would find the same empty channel.
pub(super) async fn join_halves<R: Future, W: Future>(
    reader: R,
    writer: W,
    in_flight: &InFlight,
) -> (R::Output, W::Output) {
    tokio::pin!(reader, writer);
    let mut read = None;
    let mut wrote = None;
    // The writer's last poll left it waiting with nothing owed.
    let mut writer_idle = false;
    std::future::poll_fn(|cx| {
        if read.is_none() {
            if let Poll::Ready(end) = reader.as_mut().poll(cx) {
                read = Some(end);
            }
        }
        let skip = read.is_none() && writer_idle && in_flight.is_zero();
        if wrote.is_none() && !skip {
            match writer.as_mut().poll(cx) {
                Poll::Ready(all) => wrote = Some(all),
                Poll::Pending => writer_idle = in_flight.is_zero(),
            }
        }
        match (read.take(), wrote.take()) {
            (Some(end), Some(all)) => Poll::Ready((end, all)),
            (r, w) => {
                read = r;
                wrote = w;
                Poll::Pending
            }
        }
    })
    .await
}

/// Replies taken off the queue and not yet written. They stay owed (counted in
/// [`InFlight`], so against [`MEMORY_CAP`]) until the socket has taken them.
struct Out {
    buf: BytesMut,
    /// Replies in `buf`.
    replies: usize,
    /// What [`InFlight::add`] counted for them.
    owed_bytes: usize,
}

impl Out {
    /// Writes `buf`; on success the replies in it are no longer owed.
    async fn flush(
        &mut self,
        write_half: &mut OwnedWriteHalf,
        idle: Duration,
        counters: &ConnCounters,
        in_flight: &InFlight,
    ) -> bool {
        if !flush(write_half, &mut self.buf, idle, counters).await {
            return false;
        }
        in_flight.done(self.replies, self.owed_bytes);
        self.replies = 0;
        self.owed_bytes = 0;
        true
    }
}

/// Writes `out` and clears it. A client that does not read for `idle` (when non-zero) is
/// given up on, like HAProxy's `timeout client`. Returns false when the socket is unusable.
async fn flush(
    write_half: &mut OwnedWriteHalf,
    out: &mut BytesMut,
    idle: Duration,
    counters: &ConnCounters,
) -> bool {
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
    let written = out.len();
    out.clear();
    match result {
        Ok(()) => {
            counters.bytes_out(written);
            true
        }
        Err(e) => {
            debug!(error = %e, "write failed");
            false
        }
    }
}
