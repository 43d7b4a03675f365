//! The simulated machine's worker: a spawned task that serves a bounded FIFO request queue.
//!
//! The worker ([`spawn`]) serves one [`Job`] at a time in arrival order and sleeps for the
//! simulated service time `weight × service_ms_per_unit × 100 / capacity` ms. It exits when
//! every [`Machine`] handle is gone and the queue is empty, or — at the end of the shutdown
//! grace — when the hard-stop token fires, after answering what is still queued with
//! `ERR shutting-down`.
//!
//! Connections reach the worker through its [`WorkerLink`]. When service is instant and the
//! machine has nothing queued or in service, the link serves the request in the connection's
//! own task instead (`JobSink::serve_now`): the same gauges, totals and reply, without the
//! two task wake-ups (queue in, reply out) that a round trip through the worker costs.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::backend::factory::BackendContext;
use crate::backend::machine::{Job, JobRef, JobSink, Machine, SubmitError};
use crate::core::{RequestClass, Units};
use crate::protocol;
use crate::telemetry::{MachineInfo, Totals};

/// Spawns the worker task of `info` and returns the machine.
///
/// # Panics
///
/// If `info.queue_depth` is `usize::MAX` (configuration validation keeps it far below).
pub fn spawn(info: MachineInfo, ctx: BackendContext) -> Machine {
    // `MachineInfo::try_enqueue` bounds waiting + in service at `queue_depth + 1` (SPEC §1);
    // the channel is sized so that it is never the tighter bound.
    let (jobs_tx, jobs_rx) = mpsc::channel(info.queue_depth + 1);
    let info = Arc::new(info);
    let link = Arc::new(WorkerLink {
        jobs_tx,
        ctx: ctx.clone(),
    });
    tokio::spawn(serve(info.clone(), jobs_rx, ctx));
    Machine::worker(info, link)
}

/// A job in the worker's queue, with where its reply goes.
#[derive(Debug)]
struct Queued {
    job: Job,
    /// The connection's writer awaits the other half, in request order.
    reply_tx: oneshot::Sender<Bytes>,
}

/// The connections' side of a worker: its queue, plus what serving a request on the spot
/// needs. Shared by every handle of the machine; the queue closes when the last one goes.
#[derive(Debug)]
pub struct WorkerLink {
    /// Sending half of the queue; the worker task owns the receiver.
    jobs_tx: mpsc::Sender<Queued>,
    /// Configuration (service time), totals and the hard-stop token, as the worker has.
    ctx: BackendContext,
}

// === impl WorkerLink ===

impl JobSink for WorkerLink {
    /// Queues `job` for the worker. See [`Machine::try_queue`].
    fn queue(&self, info: &MachineInfo, job: Job) -> Result<oneshot::Receiver<Bytes>, SubmitError> {
        let weight = job.weight;
        if !info.try_enqueue(weight) {
            return Err(SubmitError::QueueFull(job));
        }
        let (reply_tx, reply_rx) = oneshot::channel();
        match self.jobs_tx.try_send(Queued { job, reply_tx }) {
            Ok(()) => Ok(reply_rx),
            Err(e) => {
                info.finish(weight);
                Err(match e {
                    mpsc::error::TrySendError::Full(q) => SubmitError::QueueFull(q.job),
                    mpsc::error::TrySendError::Closed(q) => SubmitError::MachineGone(q.job),
                })
            }
        }
    }

    /// Serves `job` in the caller's task if the machine is idle and its service time is
    /// zero.
    fn serve_now(&self, info: &MachineInfo, job: &JobRef<'_>, out: &mut Vec<u8>) -> bool {
        // NOTE: serving here is indistinguishable from a round trip through the worker: the
        // machine is idle (nothing queued or in service, so FIFO order is kept), the service
        // time is zero, and the slot is taken and given back with the same gauge updates
        // (`queued` 0 → 1 → 0, `pending` + w − w) and counted like `finish` counts. The
        // request neither waited nor took service time, so its latency is 0 and it adds no
        // held work. After the hard stop the queue path answers (`ERR shutting-down`), as
        // before.
        if self.ctx.hard_stop.is_cancelled()
            || !self.instant(info, job.weight)
            || !info.try_start(job.weight)
        {
            return false;
        }
        info.finish(job.weight);
        self.ctx.totals.request_ok(job.weight);
        self.ctx.totals.latencies.request(job.class, Duration::ZERO);
        ok_reply_into(out, &info.name, job.class, job.payload);
        true
    }
}

impl WorkerLink {
    /// Whether a request of `weight` takes no time on this machine.
    fn instant(&self, info: &MachineInfo, weight: Units) -> bool {
        let ms_per_unit = self.ctx.config.borrow().load.requests.service_ms_per_unit;
        service_time(weight, info.capacity, ms_per_unit).is_zero()
    }
}

/// The machine task: FIFO service until the queue closes or the hard stop fires.
async fn serve(info: Arc<MachineInfo>, mut jobs_rx: mpsc::Receiver<Queued>, ctx: BackendContext) {
    // NOTE: service is simulated on a virtual clock. A job that was already waiting starts
    // when the previous one finished (`free_at`), one that finds the machine idle starts
    // now, and the worker sleeps until the job's finish. Timer granularity (1 ms in tokio)
    // therefore delays individual replies a little, but a late wake-up is made up by the
    // jobs behind it: the machine's throughput stays `capacity / (service_ms_per_unit ×
    // 100)` units per ms whatever the timer does.
    let mut free_at = Instant::now();
    loop {
        if ctx.hard_stop.is_cancelled() {
            break;
        }
        let (Queued { job, reply_tx }, waited) = match jobs_rx.try_recv() {
            Ok(queued) => (queued, true),
            Err(mpsc::error::TryRecvError::Disconnected) => return,
            Err(mpsc::error::TryRecvError::Empty) => tokio::select! {
                biased;
                _ = ctx.hard_stop.cancelled() => break,
                queued = jobs_rx.recv() => match queued {
                    Some(queued) => (queued, false),
                    None => return, // every handle dropped and the queue is empty
                },
            },
        };
        let ms_per_unit = ctx.config.borrow().load.requests.service_ms_per_unit;
        let service = service_time(job.weight, info.capacity, ms_per_unit);
        let served_at = if service.is_zero() {
            Instant::now()
        } else {
            let start = if waited {
                free_at
            } else {
                free_at.max(Instant::now())
            };
            // Saturate far in the future instead of overflowing `Instant`.
            free_at = start
                .checked_add(service)
                .unwrap_or_else(|| start + Duration::from_secs(365 * 24 * 3600));
            tokio::select! {
                biased;
                _ = ctx.hard_stop.cancelled() => {
                    // The connection may be gone; the request was still counted.
                    let _ = reply_tx.send(finish(&info, &ctx.totals, job, None));
                    break;
                }
                _ = tokio::time::sleep_until(free_at) => {}
            }
            free_at
        };
        let _ = reply_tx.send(finish(&info, &ctx.totals, job, Some(served_at)));
    }
    // Hard stop: answer everything still queued, and refuse what comes later.
    jobs_rx.close();
    while let Some(Queued { job, reply_tx }) = jobs_rx.recv().await {
        let _ = reply_tx.send(finish(&info, &ctx.totals, job, None));
    }
}

/// The reply to `job`: `OK …` when it was served, finishing at `served_at` on the machine's
/// clock, else `ERR shutting-down`; counted *before* it goes out so that a client that has
/// all its replies sees consistent totals.
///
/// The request work it adds for the `target` policy ([`MachineInfo::record_held`]) runs from
/// its queueing to `served_at`, the end of its service on the simulated clock: the time a
/// late timer takes to wake the worker after that is not work (the machine is idle then),
/// although `used` counts the weight until this call.
fn finish(info: &MachineInfo, totals: &Totals, job: Job, served_at: Option<Instant>) -> Bytes {
    info.finish(job.weight);
    let ended = served_at.unwrap_or_else(Instant::now);
    info.record_held(job.weight, ended.saturating_duration_since(job.queued_at));
    if served_at.is_some() {
        totals.request_ok(job.weight);
        totals.latencies.request(job.class, job.queued_at.elapsed());
        ok_reply(&info.name, job.class, &job.payload)
    } else {
        totals.request_failed(job.weight);
        protocol::ErrorCode::ShuttingDown.reply("server is shutting down")
    }
}

/// `OK <machine> <class> <payload>\n`, leaving out ` <payload>` when it is empty.
fn ok_reply(machine: &str, class: RequestClass, payload: &[u8]) -> Bytes {
    // `OK ` + machine + ` ` + class (6 bytes at most) + ` ` + payload + `\n`.
    let mut out = Vec::with_capacity(12 + machine.len() + payload.len());
    ok_reply_into(&mut out, machine, class, payload);
    Bytes::from(out)
}

/// Appends [`ok_reply`]'s line to `out`.
fn ok_reply_into(out: &mut Vec<u8>, machine: &str, class: RequestClass, payload: &[u8]) {
    out.extend_from_slice(b"OK ");
    out.extend_from_slice(machine.as_bytes());
    out.push(b' ');
    out.extend_from_slice(class.as_str().as_bytes());
    if !payload.is_empty() {
        out.push(b' ');
        out.extend_from_slice(payload);
    }
    out.push(b'\n');
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
    use tokio::sync::watch;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::backend::machine::{SubmitError, Submitted};
    use crate::config::Config;
    use crate::core::{MachineId, Size};

    fn ctx() -> (BackendContext, watch::Sender<Arc<Config>>) {
        let (config_tx, config_rx) = watch::channel(Arc::new(Config::default()));
        let ctx = BackendContext {
            config: config_rx,
            totals: Arc::new(Totals::default()),
            hard_stop: CancellationToken::new(),
        };
        (ctx, config_tx)
    }

    fn job(weight: u64, payload: &'static str) -> Job {
        Job {
            class: RequestClass::Small,
            weight: Units::from_whole(weight),
            payload: Bytes::from_static(payload.as_bytes()),
            queued_at: Instant::now(),
        }
    }

    /// Submits `job`, which must be queued (not served on the spot).
    fn queue(m: &Machine, job: Job) -> oneshot::Receiver<Bytes> {
        match m.try_submit(job) {
            Ok(Submitted::Queued(reply_rx)) => reply_rx,
            other => panic!("expected a queued job, got {other:?}"),
        }
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
        let m = spawn(
            MachineInfo::new(MachineId(1), Size::Medium, Units::from_whole(100), 4),
            ctx,
        );
        let r1 = queue(&m, job(5, "one"));
        let r2 = queue(&m, job(1, "two"));
        assert_eq!(m.info.used(), Units::from_whole(6));
        assert_eq!(&r1.await.unwrap()[..], b"OK m1 small one\n");
        assert_eq!(&r2.await.unwrap()[..], b"OK m1 small two\n");
        assert_eq!(m.info.used(), Units::ZERO);
        assert_eq!(m.info.queued(), 0);
        assert_eq!(totals.snapshot().requests_ok, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn work_held_runs_from_queueing_to_the_end_of_service_on_the_machine_clock() {
        let (ctx, config_tx) = ctx();
        let mut config = Config::default();
        config.load.requests.service_ms_per_unit = 1.0;
        config_tx.send_replace(Arc::new(config));
        let m = spawn(
            MachineInfo::new(MachineId(1), Size::Medium, Units::from_whole(100), 4),
            ctx,
        );
        // Two jobs of 10 units (10 ms each) queued at once: held 10 ms and 20 ms.
        let r1 = queue(&m, job(10, "one"));
        let r2 = queue(&m, job(10, "two"));
        r1.await.unwrap();
        r2.await.unwrap();
        // 10 000 milli-units × (10 000 + 20 000) µs.
        assert_eq!(m.info.work_held(), 10_000 * 30_000);
        // A job queued alone is held for its 10 ms of service, however late its reply is
        // read.
        let r3 = queue(&m, job(10, "three"));
        tokio::time::sleep(Duration::from_millis(50)).await;
        r3.await.unwrap();
        assert_eq!(m.info.work_held(), 10_000 * 40_000);
    }

    #[tokio::test(start_paused = true)]
    async fn full_queue_hands_the_job_back() {
        let (ctx, _config_tx) = ctx();
        let m = spawn(
            MachineInfo::new(MachineId(1), Size::Medium, Units::from_whole(100), 1),
            ctx,
        );
        let mut replies = Vec::new();
        let mut full = 0;
        for _ in 0..5 {
            match m.try_submit(job(10, "x")) {
                Ok(Submitted::Queued(r)) => replies.push(r),
                Err(SubmitError::QueueFull(_)) => full += 1,
                Err(e) => panic!("unexpected {e}"),
                Ok(Submitted::Answered(_)) => panic!("a 10 ms job is never served on the spot"),
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
        let m = spawn(
            MachineInfo::new(MachineId(3), Size::Small, Units::from_whole(50), 8),
            ctx,
        );
        let r1 = queue(&m, job(10, "a"));
        let r2 = queue(&m, job(10, "b"));
        stop.cancel();
        assert!(r1.await.unwrap().starts_with(b"ERR shutting-down"));
        assert!(r2.await.unwrap().starts_with(b"ERR shutting-down"));
        let t = totals.snapshot();
        assert_eq!((t.requests_ok, t.requests_failed), (0, 2));
        assert_eq!(m.info.used(), Units::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn instant_service_on_an_idle_machine_is_answered_on_the_spot() {
        let (ctx, config_tx) = ctx();
        let totals = ctx.totals.clone();
        let mut config = Config::default();
        config.load.requests.service_ms_per_unit = 0.0;
        config_tx.send(Arc::new(config)).unwrap();
        let m = spawn(
            MachineInfo::new(MachineId(2), Size::Medium, Units::from_whole(100), 4),
            ctx,
        );
        match m.try_submit(job(5, "now")) {
            Ok(Submitted::Answered(line)) => assert_eq!(&line[..], b"OK m2 small now\n"),
            other => panic!("expected an answer on the spot, got {other:?}"),
        }
        // Counted exactly as the worker counts, and nothing left behind.
        assert_eq!(m.info.used(), Units::ZERO);
        assert_eq!(m.info.queued(), 0);
        let t = totals.snapshot();
        assert_eq!((t.requests_ok, t.requests_failed), (1, 0));

        // A machine with work queued or in service keeps FIFO order: the job is queued.
        assert!(m.info.try_start(Units::from_whole(1)));
        let r = queue(&m, job(1, "later"));
        m.info.finish(Units::from_whole(1));
        assert_eq!(&r.await.unwrap()[..], b"OK m2 small later\n");
        assert_eq!(m.info.used(), Units::ZERO);
    }
}
