//! The line session's fast path: input answered where it was read.
//!
//! When nothing is buffered and nothing is owed (the closed-loop case), the reader reads
//! into its worker thread's scratch buffer, frames and answers the complete lines right
//! there, gathers the replies into the thread's output buffer (requests served on the spot
//! write theirs straight into it) and sends them in one `write`: no buffer of the
//! connection's own and no allocation per request, as in the bare baseline server. The
//! first line that needs more than that — a request queued on a busy machine, a reply that
//! ends the connection — ends the round: it is handed back, already handled, to the
//! reader's usual path ([`Round::step`]), and the input after it goes to the connection's
//! buffer, as does a partial line at the end.

use std::cell::RefCell;
use std::io;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{Reader, Step};
use crate::config::Config;
use crate::protocol;
use crate::server::session::input::{self, Direct};
use crate::server::session::writer::Pending;

/// The output buffer is given back to the allocator past this size (a pipelining burst).
const KEEP_OUT: usize = 64 * 1024;

thread_local! {
    /// Replies of one round, one per worker thread: filled and written without awaiting in
    /// between, so no connection owns it.
    static OUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// What one round of [`Reader::read_in_place`] did.
pub(super) struct Round {
    /// Bytes read.
    read: usize,
    /// When they were read.
    pub(super) read_at: Instant,
    /// Shutdown had begun before the read: nothing was answered, the input is in the
    /// connection's buffer for the late-line path.
    pub(super) late: bool,
    /// Bytes of replies the socket took.
    written: usize,
    /// Replies it did not take: owed before anything else.
    unwritten: Option<Bytes>,
    /// The line that ended the round, handled already.
    step: Option<Step>,
}

impl Reader<'_> {
    /// Reads and answers what the socket holds (see the module's documentation). `Ok(None)`
    /// is the end of the stream; `WouldBlock` means nothing was there. Call it only when
    /// `buf` is empty and no reply is owed.
    pub(super) fn read_in_place(
        &self,
        socket: &TcpStream,
        buf: &mut BytesMut,
        config: &Config,
    ) -> io::Result<Option<Round>> {
        input::read_with(socket, |data| {
            let read_at = Instant::now();
            let mut round = Round {
                read: data.len(),
                read_at,
                late: false,
                written: 0,
                unwritten: None,
                step: None,
            };
            // Shutdown began before this read, though its wake-up may not have reached
            // this task yet: what was just read is late.
            if self.ctx.shutting_down() {
                buf.extend_from_slice(data);
                round.late = true;
                return round;
            }
            OUT.with(|out| {
                let mut out = out.borrow_mut();
                let (used, step) = self.answer(data, config, read_at, &mut out);
                buf.extend_from_slice(&data[used..]);
                round.step = step;
                if !out.is_empty() {
                    // Errors are left to the writer, which meets them on the rest.
                    round.written = socket.try_write(&out).unwrap_or(0);
                    if round.written < out.len() {
                        round.unwritten = Some(Bytes::copy_from_slice(&out[round.written..]));
                    }
                    out.clear();
                    if out.capacity() > KEEP_OUT {
                        *out = Vec::new();
                    }
                }
            });
            round
        })
    }

    /// Answers the complete lines at the front of `data` into `out`, up to the first one
    /// that needs the usual path; returns how many bytes were used and that line's step.
    fn answer(
        &self,
        data: &[u8],
        config: &Config,
        read_at: Instant,
        out: &mut Vec<u8>,
    ) -> (usize, Option<Step>) {
        let max_line = config.listener.max_line_bytes;
        let mut used = 0;
        while let Some((frame, len)) = protocol::first_line(&data[used..], max_line) {
            used += len;
            match self.handle(frame, max_line, config, read_at, out) {
                Step::Nothing | Step::Answered => {}
                Step::Reply(Pending::Ready(reply)) => out.extend_from_slice(&reply),
                step => return (used, Some(step)),
            }
        }
        (used, None)
    }

    /// Accounts a round; what it left owed goes into `direct` (written or handed to the
    /// writer before anything else), and the line that ended it is returned for the
    /// reader's usual path. (Nothing is awaited here: an await point would grow every
    /// connection's future by the round it holds.)
    pub(super) fn finish_round(&self, round: Round, direct: &mut Direct) -> Option<Step> {
        self.counters.bytes_in(round.read);
        self.counters.bytes_out(round.written);
        if let Some(rest) = round.unwritten {
            direct.add(rest);
        }
        round.step
    }
}
