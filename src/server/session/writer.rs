//! The writing half of a line session: owed replies, in request order.
//!
//! The reader pushes one [`Pending`] slot per reply it owes; [`write_loop`] takes them in
//! order and awaits each, so replies keep request order even when some fail early or come
//! from two machines after a drain moved the connection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::timeout;
use tracing::debug;

use super::access::ConnCounters;
use super::close::shutting_down;

/// Flush the write buffer once it holds this much, even if more replies are ready.
const WRITE_BATCH: usize = 64 * 1024;

/// Replies owed and not yet written, shared by the reader (adds) and the writer (removes).
#[derive(Debug, Default)]
pub(super) struct InFlight {
    count: AtomicUsize,
    /// Notified when the count drops to zero (a shutting-down reader waits for it).
    pub(super) drained: Notify,
}

impl InFlight {
    pub(super) fn add(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
    }

    pub(super) fn done(&self) {
        if self.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.drained.notify_one();
        }
    }

    pub(super) fn is_zero(&self) -> bool {
        self.count.load(Ordering::Acquire) == 0
    }
}

/// One owed reply, in request order.
#[derive(Debug)]
pub(super) enum Pending {
    /// Known already.
    Ready(Bytes),
    /// The machine will answer.
    Waiting(oneshot::Receiver<Bytes>),
    /// Everything before this is the last the client gets: flush and close.
    Close,
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
    let mut out = BytesMut::new();
    loop {
        let item = match pending_rx.try_recv() {
            Ok(item) => item,
            Err(mpsc::error::TryRecvError::Empty) => {
                // Nothing more is ready: send what we have before waiting.
                if !flush(&mut write_half, &mut out, idle, counters).await {
                    return false;
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
            Pending::Waiting(mut reply_rx) => {
                let line = match reply_rx.try_recv() {
                    Ok(line) => line,
                    Err(oneshot::error::TryRecvError::Empty) => {
                        if !flush(&mut write_half, &mut out, idle, counters).await {
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
        out.extend_from_slice(&line);
        in_flight.done();
        if out.len() >= WRITE_BATCH && !flush(&mut write_half, &mut out, idle, counters).await {
            return false;
        }
    }
    if !flush(&mut write_half, &mut out, idle, counters).await {
        return false;
    }
    let _ = write_half.shutdown().await;
    true
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
