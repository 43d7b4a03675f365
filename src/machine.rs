//! A backend machine: a spawned task that serves a bounded FIFO request queue (SPEC §1).
//!
//! Three parts, in the handle / worker / message split of linkerd's balance queue:
//!
//! - [`MachineInfo`] — identity plus lock-free gauges (`used`, `connections`, `queued`,
//!   state). Shared by the dispatcher (placement), every connection placed on the machine
//!   (it adds and removes load), the machine task (it removes served weight) and the stats
//!   readers (admin API, `STATS`, autoscaler). Nobody locks it to read a load.
//! - [`MachineHandle`] — the `Arc<MachineInfo>` plus the sending half of the request queue.
//!   Connections hold a clone and submit jobs *directly*: the request path never goes
//!   through the dispatcher.
//! - [`Job`] — one request: its class, weight, payload and a oneshot for the reply line.
//!
//! The worker ([`spawn`]) serves one job at a time in arrival order and sleeps for the
//! simulated service time `weight × service_ms_per_unit × 100 / capacity` ms. It exits when
//! every handle is gone and the queue is empty, or — at the end of the shutdown grace — when
//! the hard-stop token fires, after answering what is still queued with `ERR shutting-down`.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::core::{MachineId, MachineState, RequestClass, Size, Units};
use crate::protocol;
use crate::stats::{Totals, UnitsGauge};

// === impl MachineInfo ===

/// A machine's identity and lock-free gauges. See the module docs for who shares it.
#[derive(Debug)]
pub struct MachineInfo {
    /// Creation-order identity.
    pub id: MachineId,
    /// `m<id>`.
    pub name: String,
    /// Size it was acquired as.
    pub size: Size,
    /// Capacity in load units.
    pub capacity: Units,
    /// Σ reservations of the connections placed here.
    pub reserved: UnitsGauge,
    /// Σ weights of requests queued or in service here.
    pub pending: UnitsGauge,
    /// Open connections placed here.
    pub connections: AtomicU64,
    /// Requests waiting plus the one in service.
    pub queued: AtomicU64,
    /// Queue bound (waiting requests, not counting the one in service).
    pub queue_depth: usize,
    /// Proxy mode: the upstream server this machine fronts (`None` when simulated).
    pub upstream: Option<Arc<crate::proxy::Upstream>>,
    state: AtomicU8,
}

impl MachineInfo {
    /// A fresh, active machine with no load (the factory spawns its task).
    pub fn new(id: MachineId, size: Size, capacity: Units, queue_depth: usize) -> Self {
        MachineInfo {
            id,
            name: id.to_string(),
            size,
            capacity,
            reserved: UnitsGauge::default(),
            pending: UnitsGauge::default(),
            connections: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            queue_depth,
            upstream: None,
            state: AtomicU8::new(MachineState::Active as u8),
        }
    }

    /// The same machine fronting `upstream` (proxy mode).
    pub fn with_upstream(mut self, upstream: Arc<crate::proxy::Upstream>) -> Self {
        self.upstream = Some(upstream);
        self
    }

    /// Used capacity: reservations plus pending request weights (SPEC §1).
    pub fn used(&self) -> Units {
        self.reserved.get() + self.pending.get()
    }

    /// `100 × used / capacity`.
    pub fn load_percent(&self) -> f64 {
        self.used().percent_of(self.capacity)
    }

    /// The lifecycle state.
    pub fn state(&self) -> MachineState {
        match self.state.load(Ordering::Acquire) {
            0 => MachineState::Active,
            1 => MachineState::Draining,
            _ => MachineState::Retired,
        }
    }

    /// Sets the lifecycle state (dispatcher only).
    pub fn set_state(&self, state: MachineState) {
        self.state.store(state as u8, Ordering::Release);
    }

    /// Whether it takes new connections.
    pub fn is_active(&self) -> bool {
        self.state() == MachineState::Active
    }

    /// A plain copy for the admin API.
    pub fn snapshot(&self) -> crate::stats::MachineSnapshot {
        let used = self.used();
        crate::stats::MachineSnapshot {
            name: self.name.clone(),
            size: self.size,
            capacity: self.capacity.as_f64(),
            used: used.as_f64(),
            load: used.percent_of(self.capacity),
            connections: self.connections.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
            state: self.state(),
        }
    }
}

// === impl MachineHandle ===

/// Why a job could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The queue holds `queue_depth` waiting requests already (`ERR busy`).
    #[error("machine queue is full")]
    QueueFull(Job),
    /// The machine task has stopped (only after the shutdown grace ran out).
    #[error("machine has stopped")]
    MachineGone(Job),
}

/// A cheap, cloneable handle: the machine's gauges plus the sending half of its queue.
///
/// The queue closes (and the task exits once it has drained it) when the last handle is
/// dropped, so a connection still holding a handle to a retiring machine can always get an
/// answer to what it submitted.
#[derive(Debug, Clone)]
pub struct MachineHandle {
    /// Identity and gauges.
    pub info: Arc<MachineInfo>,
    /// Sending half of the request queue; the receiver is owned by the machine task.
    jobs_tx: mpsc::Sender<Job>,
}

impl MachineHandle {
    /// Queues `job` without waiting. Its weight counts toward `used` from now until the
    /// machine has answered it.
    ///
    /// # Errors
    ///
    /// [`SubmitError::QueueFull`] when the queue is at `queue_depth`, and
    /// [`SubmitError::MachineGone`] after a hard stop; both hand the job back.
    pub fn try_submit(&self, job: Job) -> Result<(), SubmitError> {
        // The bound is on `queued` (waiting + in service), not on the channel: a request
        // that reaches an idle machine is in service at once, even if the task has not been
        // scheduled yet to take it off the channel. So `queue_depth + 1` may be queued.
        let limit = self.info.queue_depth as u64 + 1;
        let taken = self
            .info
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            });
        if taken.is_err() {
            return Err(SubmitError::QueueFull(job));
        }
        // Count the weight before sending: the machine may serve and subtract it before
        // try_send returns.
        let weight = job.weight;
        self.info.pending.add(weight);
        match self.jobs_tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.info.pending.sub(weight);
                self.info.queued.fetch_sub(1, Ordering::AcqRel);
                Err(match e {
                    mpsc::error::TrySendError::Full(job) => SubmitError::QueueFull(job),
                    mpsc::error::TrySendError::Closed(job) => SubmitError::MachineGone(job),
                })
            }
        }
    }

    /// Whether the machine task has exited (queue closed).
    pub fn is_stopped(&self) -> bool {
        self.jobs_tx.is_closed()
    }
}

/// One request on its way to a machine.
#[derive(Debug)]
pub struct Job {
    /// Request class (for the reply text).
    pub class: RequestClass,
    /// Weight in load units.
    pub weight: Units,
    /// Payload (valid UTF-8, may be empty).
    pub payload: Bytes,
    /// Where the reply line goes; the connection's writer awaits the other half in order.
    pub reply_tx: oneshot::Sender<Bytes>,
}

/// What every machine task needs from the rest of the process.
#[derive(Debug, Clone)]
pub struct MachineContext {
    /// Live configuration (service time is read per request, so a reload applies at once).
    pub config: watch::Receiver<Arc<Config>>,
    /// Process totals (requests ok / failed).
    pub totals: Arc<Totals>,
    /// Fires when the shutdown grace runs out: answer the rest with `ERR shutting-down`.
    pub hard_stop: CancellationToken,
}

/// Spawns machine `id` of `size` with `capacity` and a queue of `queue_depth` waiting
/// requests, and returns its handle.
///
/// # Panics
///
/// If `queue_depth` is 0 (configuration validation rejects that).
pub fn spawn(
    id: MachineId,
    size: Size,
    capacity: Units,
    queue_depth: usize,
    ctx: MachineContext,
) -> MachineHandle {
    spawn_info(MachineInfo::new(id, size, capacity, queue_depth), ctx)
}

/// Spawns the task of an already-built [`MachineInfo`] and returns its handle.
///
/// # Panics
///
/// If `info.queue_depth` is `usize::MAX` (configuration validation keeps it sane).
pub fn spawn_info(info: MachineInfo, ctx: MachineContext) -> MachineHandle {
    // `try_submit` bounds waiting + in service at `queue_depth + 1` (SPEC §1); the channel
    // is sized so that it is never the tighter bound.
    let (jobs_tx, jobs_rx) = mpsc::channel(info.queue_depth + 1);
    let info = Arc::new(info);
    tokio::spawn(serve(info.clone(), jobs_rx, ctx));
    MachineHandle { info, jobs_tx }
}

/// The machine task: FIFO service until the queue closes or the hard stop fires.
async fn serve(info: Arc<MachineInfo>, mut jobs_rx: mpsc::Receiver<Job>, ctx: MachineContext) {
    // NOTE: service is simulated on a virtual clock. Each job finishes `service time` after
    // the later of its arrival and the previous job's finish, and we sleep until then. Timer
    // granularity (1 ms in tokio) therefore delays individual replies a little but never
    // lowers the machine's throughput below `capacity / (service_ms_per_unit × 100)` units/ms.
    let mut free_at = Instant::now();
    loop {
        let job = tokio::select! {
            biased;
            _ = ctx.hard_stop.cancelled() => break,
            job = jobs_rx.recv() => match job {
                Some(job) => job,
                None => return, // every handle dropped and the queue is empty
            },
        };
        let ms_per_unit = ctx.config.borrow().load.requests.service_ms_per_unit;
        let service = service_time(job.weight, info.capacity, ms_per_unit);
        if !service.is_zero() {
            let start = free_at.max(Instant::now());
            // Saturate far in the future instead of overflowing `Instant`.
            free_at = start
                .checked_add(service)
                .unwrap_or_else(|| start + Duration::from_secs(365 * 24 * 3600));
            tokio::select! {
                biased;
                _ = ctx.hard_stop.cancelled() => {
                    finish(&info, &ctx.totals, job, false);
                    break;
                }
                _ = tokio::time::sleep_until(free_at) => {}
            }
        }
        finish(&info, &ctx.totals, job, true);
    }
    // Hard stop: answer everything still queued, and refuse what comes later.
    jobs_rx.close();
    while let Some(job) = jobs_rx.recv().await {
        finish(&info, &ctx.totals, job, false);
    }
}

/// Answers `job` (`OK …` when `served`, else `ERR shutting-down`), counting it *before* the
/// reply goes out so that a client that has all its replies sees consistent totals.
fn finish(info: &MachineInfo, totals: &Totals, job: Job, served: bool) {
    info.pending.sub(job.weight);
    info.queued.fetch_sub(1, Ordering::AcqRel);
    let reply = if served {
        totals.request_ok(job.weight);
        ok_reply(&info.name, job.class, &job.payload)
    } else {
        totals.request_failed(job.weight);
        protocol::ErrorCode::ShuttingDown.reply("server is shutting down")
    };
    // The connection may be gone; the request was still served and counted.
    let _ = job.reply_tx.send(reply);
}

/// `OK <machine> <class> <payload>\n`, leaving out ` <payload>` when it is empty.
fn ok_reply(machine: &str, class: RequestClass, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(8 + machine.len() + payload.len());
    out.put_slice(b"OK ");
    out.put_slice(machine.as_bytes());
    out.put_u8(b' ');
    out.put_slice(class.as_str().as_bytes());
    if !payload.is_empty() {
        out.put_u8(b' ');
        out.put_slice(payload);
    }
    out.put_u8(b'\n');
    out.freeze()
}

/// `weight × ms_per_unit × 100 / capacity` milliseconds.
pub fn service_time(weight: Units, capacity: Units, ms_per_unit: f64) -> Duration {
    // NaN and negatives count as "instant" (validation rejects them anyway).
    if capacity == Units::ZERO || ms_per_unit.is_nan() || ms_per_unit <= 0.0 {
        return Duration::ZERO;
    }
    let ms = weight.as_f64() * ms_per_unit * 100.0 / capacity.as_f64();
    // Validation bounds the inputs; saturate anyway rather than panic in a machine task.
    Duration::try_from_secs_f64(ms / 1000.0).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> (MachineContext, watch::Sender<Arc<Config>>) {
        let (config_tx, config_rx) = watch::channel(Arc::new(Config::default()));
        let ctx = MachineContext {
            config: config_rx,
            totals: Arc::new(Totals::default()),
            hard_stop: CancellationToken::new(),
        };
        (ctx, config_tx)
    }

    fn job(weight: u64, payload: &'static str) -> (Job, oneshot::Receiver<Bytes>) {
        let (reply_tx, reply_rx) = oneshot::channel();
        let job = Job {
            class: RequestClass::Small,
            weight: Units::from_whole(weight),
            payload: Bytes::from_static(payload.as_bytes()),
            reply_tx,
        };
        (job, reply_rx)
    }

    #[test]
    fn service_time_scales_with_capacity() {
        let w = Units::from_whole(10);
        assert_eq!(
            service_time(w, Units::from_whole(100), 1.0),
            Duration::from_millis(10)
        );
        assert_eq!(
            service_time(w, Units::from_whole(200), 1.0),
            Duration::from_millis(5)
        );
        assert_eq!(service_time(w, Units::from_whole(100), 0.0), Duration::ZERO);
    }

    #[test]
    fn ok_reply_leaves_out_empty_payload() {
        assert_eq!(
            &ok_reply("m1", RequestClass::Large, b"")[..],
            b"OK m1 large\n"
        );
        assert_eq!(
            &ok_reply("m2", RequestClass::Small, b"a b")[..],
            b"OK m2 small a b\n"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn serves_in_order_and_returns_weight() {
        let (ctx, _config_tx) = ctx();
        let totals = ctx.totals.clone();
        let m = spawn(MachineId(1), Size::Medium, Units::from_whole(100), 4, ctx);
        let (j1, r1) = job(5, "one");
        let (j2, r2) = job(1, "two");
        m.try_submit(j1).unwrap();
        m.try_submit(j2).unwrap();
        assert_eq!(m.info.used(), Units::from_whole(6));
        assert_eq!(&r1.await.unwrap()[..], b"OK m1 small one\n");
        assert_eq!(&r2.await.unwrap()[..], b"OK m1 small two\n");
        assert_eq!(m.info.used(), Units::ZERO);
        assert_eq!(m.info.queued.load(Ordering::Relaxed), 0);
        assert_eq!(totals.snapshot().requests_ok, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn full_queue_hands_the_job_back() {
        let (ctx, _config_tx) = ctx();
        let m = spawn(MachineId(1), Size::Medium, Units::from_whole(100), 1, ctx);
        let mut replies = Vec::new();
        let mut full = 0;
        for _ in 0..5 {
            let (j, r) = job(10, "x");
            match m.try_submit(j) {
                Ok(()) => replies.push(r),
                Err(SubmitError::QueueFull(_)) => full += 1,
                Err(e) => panic!("unexpected {e}"),
            }
        }
        // One in service + one waiting; the rest were refused and left no weight behind.
        assert_eq!(replies.len(), 2);
        assert_eq!(full, 3);
        for r in replies {
            r.await.unwrap();
        }
        assert_eq!(m.info.used(), Units::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn hard_stop_answers_the_rest_with_shutting_down() {
        let (ctx, _config_tx) = ctx();
        let stop = ctx.hard_stop.clone();
        let totals = ctx.totals.clone();
        let m = spawn(MachineId(3), Size::Small, Units::from_whole(50), 8, ctx);
        let (j1, r1) = job(10, "a");
        let (j2, r2) = job(10, "b");
        m.try_submit(j1).unwrap();
        m.try_submit(j2).unwrap();
        stop.cancel();
        assert!(r1.await.unwrap().starts_with(b"ERR shutting-down"));
        assert!(r2.await.unwrap().starts_with(b"ERR shutting-down"));
        let t = totals.snapshot();
        assert_eq!((t.requests_ok, t.requests_failed), (0, 2));
        assert_eq!(m.info.used(), Units::ZERO);
    }
}
