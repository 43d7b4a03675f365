//! The line session's socket work on the hot path: reading without a buffer of its own
//! while idle and without the extra `read` that only finds the socket empty, and writing
//! replies straight to the socket when nothing is owed before them.

use std::cell::RefCell;
use std::io;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::Config;

/// Bytes read at most per read call.
const READ_CHUNK: usize = 4096;

thread_local! {
    /// The read buffer, one per worker thread: a connection reads into it and copies out
    /// what it read without awaiting in between, so no connection owns a read buffer of
    /// this size (the bare baseline server does the same).
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
}

/// Reads what the socket holds (up to [`READ_CHUNK`] bytes) and appends it to `buf`.
/// `Ok(0)` is the end of the stream; `WouldBlock` means nothing was there.
pub(super) fn read(socket: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let got = read_with(socket, |data| {
        buf.extend_from_slice(data);
        data.len()
    })?;
    Ok(got.unwrap_or(0))
}

/// Reads what the socket holds (up to [`READ_CHUNK`] bytes) into this thread's scratch
/// buffer and hands it to `f`, which must not keep it; `Ok(None)` is the end of the stream,
/// `WouldBlock` means nothing was there.
///
/// A short read (fewer bytes than asked for) means the socket is drained: its readiness is
/// cleared then, as HAProxy does, instead of asking again only to get `EAGAIN`. This is
/// safe because tokio clears readiness only if no new event arrived since it was observed
/// (`ScheduledIo` ticks): bytes that come after the read raise a new edge-triggered event
/// and wake the reader again. It never clears `READ_CLOSED`, so a half-close that came with
/// or after the data is still seen (the next read returns 0).
pub(super) fn read_with<R>(
    socket: &TcpStream,
    f: impl FnOnce(&[u8]) -> R,
) -> io::Result<Option<R>> {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let mut got = 0;
        let result = socket.try_io(Interest::READABLE, || {
            got = socket.try_read(&mut scratch)?;
            if got > 0 && got < scratch.len() {
                // Drained: let `try_io` clear the readiness it observed.
                Err(io::ErrorKind::WouldBlock.into())
            } else {
                Ok(got)
            }
        });
        match result {
            // Read something (maybe reported as `WouldBlock` by the drained case above).
            Ok(_) | Err(_) if got > 0 => Ok(Some(f(&scratch[..got]))),
            Ok(_) => Ok(None),
            // Nothing there, or an error.
            Err(e) => Err(e),
        }
    })
}

/// Replies that nothing owed precedes, gathered during one round of the reader and written
/// by it at the end of the round, in one `write`. Replies on this path never go through the
/// writer's queue, so serving a request costs no task wake-up. Whatever the socket does not
/// take is handed to the writer ([`Direct::take`]) and is owed like any other reply.
#[derive(Debug, Default)]
pub(super) struct Direct {
    /// One reply, not copied (the common case: one request per read).
    one: Option<Bytes>,
    /// Two or more replies, in order.
    many: BytesMut,
}

impl Direct {
    pub(super) fn add(&mut self, reply: Bytes) {
        if self.many.is_empty() {
            match self.one.take() {
                None => {
                    self.one = Some(reply);
                    return;
                }
                Some(first) => self.many.extend_from_slice(&first),
            }
        }
        self.many.extend_from_slice(&reply);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.one.is_none() && self.many.is_empty()
    }

    /// Writes as much as the socket takes now, without waiting; returns how many bytes.
    /// Errors are left to the writer, which meets them on the rest.
    pub(super) fn write(&mut self, socket: &TcpStream) -> usize {
        let bytes: &[u8] = match &self.one {
            Some(one) => one,
            None => &self.many,
        };
        let len = bytes.len();
        let written = socket.try_write(bytes).unwrap_or(0);
        if written == len {
            // All out (the usual case): nothing to keep, nothing to split, and no buffer
            // held while the connection waits.
            self.one = None;
            self.many = BytesMut::new();
        } else if let Some(one) = &mut self.one {
            one.advance(written);
        } else {
            self.many.advance(written);
        }
        written
    }

    /// What is left, for the writer.
    pub(super) fn take(&mut self) -> Option<Bytes> {
        if let Some(one) = self.one.take() {
            return Some(one);
        }
        if self.many.is_empty() {
            return None;
        }
        Some(std::mem::take(&mut self.many).freeze())
    }
}

/// Waits for the next configuration and gives the receiver back (`None`: no more reloads).
pub(super) async fn next_config(
    mut config_rx: watch::Receiver<Arc<Config>>,
) -> Option<watch::Receiver<Arc<Config>>> {
    config_rx.changed().await.ok()?;
    Some(config_rx)
}

/// Sleeps until `deadline`; forever when there is none. No timer is made until polled.
pub(super) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
