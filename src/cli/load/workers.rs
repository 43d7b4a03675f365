//! The workers: one task per connection, sending in one of the four modes of the module
//! docs, each counting what it sees in a [`Tally`].

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout_at, Instant};

use super::mix::request_line;
use super::plan::{LoadPlan, Mode};
use super::profile::RateCurve;
use super::tally::{Live, Outcome, Tally};

/// How long a reply still owed when the load stops is awaited.
pub const REPLY_GRACE: Duration = Duration::from_secs(5);
/// Pause before a worker reconnects after its connection was refused or failed.
const RECONNECT_PAUSE: Duration = Duration::from_millis(20);
/// Open loop: sends owed beyond this many unanswered requests on one connection are skipped.
const MAX_IN_FLIGHT: usize = 1024;
/// Idle mode: connections being set up at once (keeps the listen backlog from overflowing).
const IDLE_SETUP_PARALLELISM: usize = 128;

/// One connection's worth of load.
pub(super) struct Worker {
    pub(super) plan: LoadPlan,
    pub(super) id: usize,
    pub(super) start: Instant,
    pub(super) deadline: Instant,
    pub(super) live: Arc<Live>,
    /// A connection opened and admitted before the load started (open loops, see
    /// `warm`), used before any new one.
    pub(super) warm: Option<TcpStream>,
}

/// When an open-loop worker sends: the times its requests are due.
enum Schedule {
    /// Every `period` from `next` (`--rate`).
    Fixed { next: Instant, period: Duration },
    /// Requests `k`, `k + step`, `k + 2 step`, … of `curve`, request `n` due when the
    /// curve's integral from `start` reaches `n` (`--profile`).
    Curve {
        curve: Arc<RateCurve>,
        start: Instant,
        k: u64,
        step: u64,
    },
}

impl Schedule {
    /// The next due time, or `None` when none is left before `deadline`.
    fn advance(&mut self, deadline: Instant) -> Option<Instant> {
        let due = match self {
            Schedule::Fixed { next, period } => {
                let due = *next;
                *next += *period;
                due
            }
            Schedule::Curve {
                curve,
                start,
                k,
                step,
            } => {
                let horizon = deadline.saturating_duration_since(*start).as_secs_f64();
                let t = curve.time_of(*k as f64).filter(|&t| t < horizon)?;
                *k += *step;
                *start + Duration::from_secs_f64(t)
            }
        };
        (due < deadline).then_some(due)
    }
}

/// Why an exchange produced no reply line.
enum NoReply {
    Io,
    Closed,
    TimedOut,
}

impl NoReply {
    fn code(&self) -> &'static str {
        match self {
            NoReply::Io => "io",
            NoReply::Closed => "closed",
            NoReply::TimedOut => "no-reply",
        }
    }
}

/// Reads one reply line into `line` (cleared first), waiting until `until` at most.
async fn read_reply<R: AsyncBufReadExt + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
    until: Instant,
) -> Result<(), NoReply> {
    line.clear();
    match timeout_at(until, reader.read_until(b'\n', line)).await {
        Err(_) => Err(NoReply::TimedOut),
        Ok(Err(_)) => Err(NoReply::Io),
        Ok(Ok(0)) => Err(NoReply::Closed),
        Ok(Ok(_)) if line.last() == Some(&b'\n') => Ok(()),
        Ok(Ok(_)) => Err(NoReply::Closed),
    }
}

impl Worker {
    pub(super) async fn run(mut self) -> Tally {
        let mut tally = Tally::new();
        if !self.plan.ramp.is_zero() {
            let share = self.id as f64 / self.plan.connections as f64;
            let delay = self.plan.ramp.mul_f64(share);
            sleep_until((self.start + delay).min(self.deadline)).await;
        }
        match self.plan.mode {
            Mode::ClosedLoop => self.closed_loop(&mut tally).await,
            Mode::OpenLoop { rate } => {
                // Each connection sends every `connections / rate` s, staggered by `1 / rate`.
                let connections = self.plan.connections as f64;
                let period = Duration::from_secs_f64((connections / rate).max(1e-6));
                let offset = Duration::from_secs_f64(self.id as f64 / rate).min(period);
                // After a ramp delay the schedule starts now, not at the (past) run start.
                let next = self.start.max(Instant::now()) + offset;
                self.open_loop(Schedule::Fixed { next, period }, &mut tally)
                    .await
            }
            Mode::Profiled { ref curve, .. } => {
                // Request k goes to connection k mod connections; after a ramp delay the
                // requests already past are not sent.
                let step = self.plan.connections as u64;
                let elapsed = self.start.elapsed().as_secs_f64();
                let mut k = self.id as u64;
                while curve.time_of(k as f64).is_some_and(|t| t < elapsed) {
                    k += step;
                }
                let schedule = Schedule::Curve {
                    curve: curve.clone(),
                    start: self.start,
                    k,
                    step,
                };
                self.open_loop(schedule, &mut tally).await
            }
            Mode::ConnectPerRequest => self.connect_per_request(&mut tally).await,
            Mode::Idle => {} // handled by `idle`
        }
        tally
    }

    fn rng(&self) -> SmallRng {
        SmallRng::seed_from_u64(0x5eed ^ self.id as u64)
    }

    /// A new connection, or `None` (counted) when it cannot be made before the deadline.
    async fn connect(&self, tally: &mut Tally) -> Option<TcpStream> {
        match timeout_at(self.deadline, TcpStream::connect(self.plan.target)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                tally.opened += 1;
                Some(stream)
            }
            Ok(Err(_)) => {
                tally.refuse("connect");
                None
            }
            Err(_) => None,
        }
    }

    /// Waits a little before reconnecting, never past the deadline.
    async fn pause(&self) {
        sleep_until((Instant::now() + RECONNECT_PAUSE).min(self.deadline)).await;
    }

    async fn closed_loop(&self, tally: &mut Tally) {
        let mut rng = self.rng();
        let mut line = Vec::with_capacity(128);
        let live = &*self.live;
        while Instant::now() < self.deadline {
            let Some(stream) = self.connect(tally).await else {
                self.pause().await;
                continue;
            };
            live.open.fetch_add(1, Ordering::Relaxed);
            let mut conn = BufReader::new(stream);
            while Instant::now() < self.deadline {
                let request = request_line(self.plan.mix.pick(&mut rng));
                let sent_at = Instant::now();
                tally.sent += 1;
                if conn.get_mut().write_all(request).await.is_err() {
                    tally.fail("io", live);
                    break;
                }
                match read_reply(&mut conn, &mut line, self.deadline + REPLY_GRACE).await {
                    Ok(()) => {
                        if tally.reply(&line, sent_at.elapsed(), live).closes() {
                            break;
                        }
                    }
                    Err(e) => {
                        tally.fail(e.code(), live);
                        break;
                    }
                }
            }
            live.open.fetch_sub(1, Ordering::Relaxed);
            if Instant::now() < self.deadline {
                self.pause().await;
            }
        }
    }

    /// Sends at the times of `schedule` (a send that is late goes out at once: the
    /// schedule does not slip), reads replies as they come.
    async fn open_loop(&mut self, mut schedule: Schedule, tally: &mut Tally) {
        let mut rng = self.rng();
        let live = &*self.live;
        let mut due = schedule.advance(self.deadline);
        let mut line = Vec::with_capacity(128);
        // Scheduled send times of the requests awaiting replies, oldest first.
        let mut in_flight: VecDeque<Instant> = VecDeque::new();
        while Instant::now() < self.deadline && due.is_some() {
            let stream = match self.warm.take() {
                Some(stream) => stream,
                None => match self.connect(tally).await {
                    Some(stream) => stream,
                    None => {
                        self.pause().await;
                        continue;
                    }
                },
            };
            live.open.fetch_add(1, Ordering::Relaxed);
            let (read_half, mut write_half) = stream.into_split();
            let mut reader = BufReader::new(read_half);
            let hard_stop = self.deadline + REPLY_GRACE;
            let mut broken: Option<&'static str> = None;
            // After a reply that closes the connection nothing more is sent on it, but the
            // replies already on their way (the balancer answers every line it read) are
            // still read and counted under their own codes.
            let mut closing = false;
            line.clear();
            loop {
                let sending = !closing && Instant::now() < self.deadline && due.is_some();
                if !sending && in_flight.is_empty() {
                    break;
                }
                tokio::select! {
                    biased;
                    read = reader.read_until(b'\n', &mut line) => {
                        match read {
                            Ok(n) if n > 0 && line.last() == Some(&b'\n') => {
                                let Some(scheduled) = in_flight.pop_front() else {
                                    broken = Some("unexpected");
                                    break;
                                };
                                let outcome = tally.reply(&line, scheduled.elapsed(), live);
                                line.clear();
                                closing |= outcome.closes();
                            }
                            Ok(_) => { broken = Some("closed"); break; }
                            Err(_) => { broken = Some("io"); break; }
                        }
                    }
                    _ = sleep_until(due.unwrap_or(hard_stop)), if sending => {
                        let Some(scheduled) = due else { continue };
                        due = schedule.advance(self.deadline);
                        if in_flight.len() >= MAX_IN_FLIGHT {
                            tally.skipped += 1;
                            continue;
                        }
                        let request = request_line(self.plan.mix.pick(&mut rng));
                        tally.sent += 1;
                        in_flight.push_back(scheduled);
                        if write_half.write_all(request).await.is_err() {
                            broken = Some("io");
                            break;
                        }
                    }
                    _ = sleep_until(hard_stop) => {
                        broken = Some("no-reply");
                        break;
                    }
                }
            }
            // Whatever this connection still owed is lost with it.
            if let Some(code) = broken {
                for _ in in_flight.drain(..) {
                    tally.fail(code, live);
                }
            }
            live.open.fetch_sub(1, Ordering::Relaxed);
            if Instant::now() < self.deadline && due.is_some() {
                self.pause().await;
            }
        }
    }

    async fn connect_per_request(&self, tally: &mut Tally) {
        let mut rng = self.rng();
        let mut line = Vec::with_capacity(128);
        let live = &*self.live;
        while Instant::now() < self.deadline {
            let started = Instant::now();
            let Some(stream) = self.connect(tally).await else {
                self.pause().await;
                continue;
            };
            let mut conn = BufReader::new(stream);
            let request = request_line(self.plan.mix.pick(&mut rng));
            tally.sent += 1;
            if conn.get_mut().write_all(request).await.is_err() {
                tally.fail("io", live);
                continue;
            }
            match read_reply(&mut conn, &mut line, self.deadline + REPLY_GRACE).await {
                Ok(()) => {
                    if tally.reply(&line, started.elapsed(), live) == Outcome::Ok {
                        tally.cycles += 1;
                    }
                }
                Err(e) => tally.fail(e.code(), live),
            }
            // Dropping the stream closes it; the next cycle connects anew.
        }
    }
}

/// Idle mode: open every connection (PING each so the balancer has admitted it), report
/// readiness on stderr, hold them until the deadline, then close them all.
pub(super) async fn idle(plan: &LoadPlan, deadline: Instant, live: &Arc<Live>, tally: &mut Tally) {
    let gate = Arc::new(Semaphore::new(IDLE_SETUP_PARALLELISM));
    let mut setups = JoinSet::new();
    for _ in 0..plan.connections {
        let gate = gate.clone();
        let target = plan.target;
        let live = live.clone();
        setups.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let mut tally = Tally::new();
            let stream = match timeout_at(deadline, TcpStream::connect(target)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(_)) => {
                    tally.refuse("connect");
                    return (tally, None);
                }
                Err(_) => return (tally, None),
            };
            tally.opened += 1;
            let mut conn = BufReader::new(stream);
            let mut line = Vec::new();
            if conn.get_mut().write_all(b"PING\n").await.is_err() {
                tally.refuse("io");
                return (tally, None);
            }
            match read_reply(&mut conn, &mut line, deadline).await {
                Ok(()) if line.starts_with(b"PONG") => {
                    live.open.fetch_add(1, Ordering::Relaxed);
                    (tally, Some(conn))
                }
                Ok(()) => {
                    let code = line
                        .strip_prefix(b"ERR ")
                        .and_then(|rest| rest.split(|&b| b == b' ').next())
                        .map(|c| String::from_utf8_lossy(c).into_owned())
                        .unwrap_or_else(|| "unexpected".to_string());
                    tally.refuse(&code);
                    (tally, None)
                }
                Err(e) => {
                    tally.refuse(e.code());
                    (tally, None)
                }
            }
        });
    }
    let mut held = Vec::with_capacity(plan.connections);
    while let Some(done) = setups.join_next().await {
        if let Ok((t, conn)) = done {
            tally.merge(t);
            held.extend(conn);
        }
    }
    // Scripts wait for this line before measuring (e.g. the server's RSS).
    eprintln!("idle: {} connections open", held.len());
    sleep_until(deadline).await;
    live.open.store(0, Ordering::Relaxed);
    drop(held);
}
