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

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;
use tracing::warn;

use super::affinity;
use super::session::ConnectionSlot;

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

/// Starts one event-loop thread per listening socket, named `{name}-{i}`, and returns once
/// every loop runs (or one could not start). `loop_body` gets each loop's socket, its place
/// among the loops and its inbox, and returns the thread's body: it starts the loop on the
/// thread (a runtime is built and dropped on its own thread only) and returns what runs it.
/// Each thread holds a token of `tracker` until its loop has run, so
/// [`crate::Server::shutdown`] waits for the loops' connections as for the shared runtime's.
/// With `pin`, thread `i` stays on the `i`-th CPU this process may use (in turn when there
/// are more loops than CPUs; [`super::affinity`]).
///
/// # Errors
///
/// When a thread cannot be created or a loop cannot start. The loops already running stop
/// when the caller cancels their shutdown token.
pub async fn spawn_loop_threads<Start, Run>(
    name: &str,
    sockets: Vec<std::net::TcpListener>,
    pin: bool,
    tracker: &TaskTracker,
    mut loop_body: impl FnMut(
        std::net::TcpListener,
        (Loops, usize),
        mpsc::UnboundedReceiver<Handoff>,
    ) -> Start,
) -> io::Result<()>
where
    Start: FnOnce() -> io::Result<Run> + Send + 'static,
    Run: FnOnce(),
{
    let (loops, inboxes) = Loops::new(sockets.len());
    let cpus = if pin {
        affinity::allowed_cpus()
    } else {
        Vec::new()
    };
    if !cpus.is_empty() && cpus.len() < sockets.len() {
        warn!(
            loops = sockets.len(),
            cpus = cpus.len(),
            "more event loops than CPUs: pinned loops share CPUs (listener.threads)"
        );
    }
    for (i, (socket, inbox)) in sockets.into_iter().zip(inboxes).enumerate() {
        let start = loop_body(socket, (loops.clone(), i), inbox);
        let token = tracker.token();
        let (started_tx, started_rx) = oneshot::channel();
        let cpu = affinity::cpu_for(&cpus, i);
        std::thread::Builder::new()
            .name(format!("{name}-{i}"))
            .spawn(move || {
                if let Some(cpu) = cpu {
                    affinity::pin_current_thread(cpu);
                }
                let run = match start() {
                    Ok(run) => {
                        let _ = started_tx.send(Ok(()));
                        run
                    }
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                };
                run();
                drop(token);
            })?;
        started_rx
            .await
            .unwrap_or_else(|_| Err(io::Error::other("event-loop thread ended at start")))?;
    }
    Ok(())
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
