//! Even event loops: a connection accepted by a loop that has clearly more connections than
//! another is handed to the least loaded one.
//!
//! The kernel spreads new connections over the loops' `SO_REUSEPORT` sockets by a hash of
//! the client's address and port, which is even only on average: a burst of connections
//! can land mostly on one loop while the other idles. HAProxy hands each accepted
//! connection to the least loaded of the bind's threads. Here a loop keeps what it accepts
//! unless it holds more than [`SLACK`] connections more than the least loaded loop; then
//! the socket moves to that loop through its inbox (two `epoll_ctl` and one wake-up, paid
//! only while the loops are uneven). Measured against loops without it (two interleaved
//! runs, `docs/performance.md`): connect-per-request p99 3.81 → 3.06 and 3.35 → 3.08 ms,
//! closed-loop throughput and p99 unchanged.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::slot::ConnectionSlot;

/// How many more connections than the least loaded loop a loop keeps before handing off.
pub const SLACK: usize = 1;

/// A connection on its way to another loop.
#[derive(Debug)]
pub struct Handoff {
    /// The accepted socket, deregistered from the accepting loop.
    pub socket: std::net::TcpStream,
    /// The client.
    pub peer: SocketAddr,
    /// Its place under `listener.max_connections`.
    pub slot: ConnectionSlot,
    /// Counts it on the receiving loop until the session ends.
    pub seat: Seat,
}

/// The connections each loop serves, and the loops' inboxes.
#[derive(Debug, Clone)]
pub struct Loops {
    counts: Arc<[AtomicUsize]>,
    inboxes: Arc<[mpsc::UnboundedSender<Handoff>]>,
}

impl Loops {
    /// `n` loops; returns the shared view and each loop's inbox receiver.
    pub fn new(n: usize) -> (Loops, Vec<mpsc::UnboundedReceiver<Handoff>>) {
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..n).map(|_| mpsc::unbounded_channel()).unzip();
        let counts = (0..n).map(|_| AtomicUsize::new(0)).collect();
        let loops = Loops {
            counts,
            inboxes: senders.into(),
        };
        (loops, receivers)
    }

    /// Where a connection accepted by loop `me` should run: `me`, unless it holds more than
    /// [`SLACK`] connections more than the least loaded loop.
    pub fn place(&self, me: usize) -> usize {
        let load = |i: usize| self.counts.get(i).map_or(0, |c| c.load(Ordering::Relaxed));
        let (least, least_load) = (0..self.counts.len())
            .map(|i| (i, load(i)))
            .min_by_key(|&(_, l)| l)
            .unwrap_or((me, 0));
        if load(me) > least_load + SLACK {
            least
        } else {
            me
        }
    }

    /// Counts one connection on loop `at` until the returned seat is dropped.
    pub fn seat(&self, at: usize) -> Seat {
        if let Some(count) = self.counts.get(at) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        Seat {
            loops: self.counts.clone(),
            at,
        }
    }

    /// Sends `handoff` to loop `to`; gives it back when that loop has stopped.
    #[allow(clippy::result_large_err)]
    pub fn send(&self, to: usize, handoff: Handoff) -> Result<(), Handoff> {
        match self.inboxes.get(to) {
            Some(inbox) => inbox.send(handoff).map_err(|e| e.0),
            None => Err(handoff),
        }
    }
}

/// One connection counted on one loop.
#[derive(Debug)]
pub struct Seat {
    loops: Arc<[AtomicUsize]>,
    at: usize,
}

impl Drop for Seat {
    fn drop(&mut self) {
        if let Some(count) = self.loops.get(self.at) {
            count.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_within_slack_then_sends_to_the_least_loaded() {
        let (loops, _inboxes) = Loops::new(3);
        let first = loops.seat(0);
        assert_eq!(loops.place(0), 0, "1 vs 0: within the slack");
        let second = loops.seat(0);
        assert_eq!(loops.place(0), 1, "2 vs 0: to the first least loaded loop");
        let _on_1 = loops.seat(1);
        assert_eq!(loops.place(0), 2, "loop 2 is now the least loaded");
        drop((first, second));
        assert_eq!(loops.place(0), 0, "seats are released on drop");
        assert_eq!(loops.place(1), 1);
    }
}
