//! `elastic-lb load`: the built-in load generator (SPEC §7).
//!
//! [`run`] is the command: it turns [`LoadArgs`] into a [`LoadPlan`], checks the target
//! (and, with `--plot`, the admin endpoint) once, runs [`generate`] with a progress bar on
//! a terminal, and prints a [`Summary`] as text or as one JSON object. Tests call
//! [`generate`] directly and look at the returned [`Summary`].
//!
//! Four modes, each with `--connections` workers, one task per connection:
//!
//! | mode | what each worker does |
//! | --- | --- |
//! | closed loop (default) | one request outstanding: send, await the reply, send the next |
//! | open loop (`--rate N/s`) | sends on a fixed schedule (`N / connections` per second each), replies are read as they come; latency counts from the *scheduled* send time, so a slow server cannot hide its queueing (no coordinated omission) |
//! | `--connect-per-request` | connect, one request, close, again (reports connections/s) |
//! | `--idle` | connect, `PING` (so the balancer has admitted it), then hold the connection silently |
//!
//! Every run is bounded: no request is sent after `--duration`; a reply still owed then is
//! awaited for at most [`REPLY_GRACE`] and otherwise counted as a `no-reply` failure, so
//! `requests_sent = requests_ok + requests_failed` always holds.
//!
//! With `--plot FILE.svg` a sampler polls `GET /api/stats` every [`SAMPLE_EVERY`] during
//! the run and for `--cooldown` after it, and draws the number of machines and the average
//! load over time with `plotters`. Only the SVG backend is built, without any font feature:
//! the SVG backend writes text as `<text>` elements that the viewer renders with its own
//! fonts, so no font file and no system font library is needed.

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, timeout, timeout_at, Instant, MissedTickBehavior};

use crate::core::RequestClass;
use crate::telemetry::Snapshot;

/// How long a reply still owed when the load stops is awaited.
pub const REPLY_GRACE: Duration = Duration::from_secs(5);
/// Admin API sampling period for `--plot`.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// Pause before a worker reconnects after its connection was refused or failed.
const RECONNECT_PAUSE: Duration = Duration::from_millis(20);
/// Open loop: sends owed beyond this many unanswered requests on one connection are skipped.
const MAX_IN_FLIGHT: usize = 1024;
/// Idle mode: connections being set up at once (keeps the listen backlog from overflowing).
const IDLE_SETUP_PARALLELISM: usize = 128;
/// Latency histogram range: 1 µs to 60 s, 2 significant digits (≈ 20 KiB per worker).
const LATENCY_MAX_US: u64 = 60_000_000;

// === command line ===

/// Arguments of `elastic-lb load` (SPEC §7).
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Balancer address (only what you pass is ever contacted).
    #[arg(long, value_name = "ADDR", value_parser = crate::config::resolve_addr)]
    pub target: SocketAddr,
    /// Connections to open and keep (one worker each).
    #[arg(long, value_name = "N", default_value = "50", value_parser = parse_connections)]
    pub connections: usize,
    /// How long to send load; the run stops by itself afterwards.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_positive_duration)]
    pub duration: Duration,
    /// Open loop at this many requests per second in total, spread over the connections
    /// (e.g. `2000/s`). Without it: closed loop, one outstanding request per connection.
    #[arg(long, value_name = "N/s", value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Request classes and their relative weights.
    #[arg(long, value_name = "CLASS=W,...", default_value = "small=70,medium=20,large=10", value_parser = parse_mix)]
    pub mix: Mix,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Sample the admin API while running and draw machines and average load as an SVG.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Admin address to sample for --plot (default: the target's host, port + 1).
    #[arg(long, value_name = "ADDR", value_parser = crate::config::resolve_addr)]
    pub admin: Option<SocketAddr>,
    /// With --plot: keep sampling this long after the load stops (to see scale-down).
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub cooldown: Duration,
    /// Start the connections one by one, evenly spread over this long (0s: all at once).
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub ramp: Duration,
    /// Connect, send one request, close; repeat (reports connections/s).
    #[arg(long, conflicts_with_all = ["rate", "idle"])]
    pub connect_per_request: bool,
    /// Open the connections, PING each once, and hold them silently for --duration.
    #[arg(long, conflicts_with = "rate")]
    pub idle: bool,
}

fn parse_connections(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("\"{s}\" is not a whole number")),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::config::duration_str::parse(s)
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("must be longer than 0s".to_string());
    }
    Ok(d)
}

/// `2000/s` or `2000` → 2000.0 requests per second (must be positive and finite).
fn parse_rate(s: &str) -> Result<f64, String> {
    let number = s.trim().strip_suffix("/s").unwrap_or(s.trim());
    match number.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "\"{s}\" is not a positive rate (expected e.g. 2000/s)"
        )),
    }
}

fn parse_mix(s: &str) -> Result<Mix, String> {
    s.parse()
}

// === mix ===

/// Relative weights of the request classes, e.g. `small=70,medium=20,large=10`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    /// `(class, weight)` with weight > 0, in the order given.
    weights: Vec<(RequestClass, u32)>,
    total: u32,
}

impl Mix {
    /// Only `class`.
    pub fn only(class: RequestClass) -> Mix {
        Mix {
            weights: vec![(class, 1)],
            total: 1,
        }
    }

    /// A class drawn by weight.
    fn pick(&self, rng: &mut SmallRng) -> RequestClass {
        let mut ticket = rng.random_range(0..self.total);
        for &(class, weight) in &self.weights {
            if ticket < weight {
                return class;
            }
            ticket -= weight;
        }
        // Unreachable: tickets are below the sum of the weights.
        self.weights[0].0
    }
}

impl std::str::FromStr for Mix {
    type Err = String;

    fn from_str(s: &str) -> Result<Mix, String> {
        let mut weights: Vec<(RequestClass, u32)> = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("\"{part}\" is not CLASS=WEIGHT (e.g. small=70)"))?;
            let class: RequestClass = name.trim().parse().map_err(|e| format!("{e}"))?;
            let weight: u32 = weight.trim().parse().map_err(|_| {
                format!(
                    "weight of {class} \"{}\" is not a whole number",
                    weight.trim()
                )
            })?;
            if weights.iter().any(|&(c, _)| c == class) {
                return Err(format!("{class} is given twice"));
            }
            if weight > 0 {
                weights.push((class, weight));
            }
        }
        let total = weights
            .iter()
            .try_fold(0u32, |sum, &(_, w)| sum.checked_add(w));
        match total {
            Some(total) if total > 0 => Ok(Mix { weights, total }),
            Some(_) => Err(format!("\"{s}\" gives no class a weight above 0")),
            None => Err("weights are too large".to_string()),
        }
    }
}

fn request_line(class: RequestClass) -> &'static [u8] {
    match class {
        RequestClass::Small => b"SMALL\n",
        RequestClass::Medium => b"MEDIUM\n",
        RequestClass::Large => b"LARGE\n",
    }
}

// === plan and summary ===

/// How the workers send.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// One outstanding request per connection.
    ClosedLoop,
    /// `rate` requests per second in total, on a fixed schedule.
    OpenLoop {
        /// Requests per second over all connections.
        rate: f64,
    },
    /// Connect, one request, close, repeat.
    ConnectPerRequest,
    /// Connect, `PING`, hold silently.
    Idle,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::ClosedLoop => "closed-loop",
            Mode::OpenLoop { .. } => "open-loop",
            Mode::ConnectPerRequest => "connect-per-request",
            Mode::Idle => "idle",
        }
    }
}

/// What to run (the library form of [`LoadArgs`]).
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// Balancer address.
    pub target: SocketAddr,
    /// Workers (connections).
    pub connections: usize,
    /// When to stop sending.
    pub duration: Duration,
    /// How to send.
    pub mode: Mode,
    /// Request classes by weight.
    pub mix: Mix,
    /// Worker `i` of `n` starts `i × ramp / n` after the start (not in idle mode).
    pub ramp: Duration,
}

impl LoadPlan {
    /// A closed-loop plan of small requests.
    pub fn closed_loop(target: SocketAddr, connections: usize, duration: Duration) -> LoadPlan {
        LoadPlan {
            target,
            connections,
            duration,
            mode: Mode::ClosedLoop,
            mix: Mix::only(RequestClass::Small),
            ramp: Duration::ZERO,
        }
    }
}

/// Latency of successful requests, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
#[allow(missing_docs)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// `OK` replies from one machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MachineShare {
    /// `m1`, `m2`, …
    pub machine: String,
    /// Successful requests it answered.
    pub ok: u64,
}

/// The outcome of a run.
///
/// Invariant: `requests_sent = requests_ok + requests_failed`, and `requests_failed` is the
/// sum of `errors`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Target address.
    pub target: String,
    /// `closed-loop`, `open-loop`, `connect-per-request` or `idle`.
    pub mode: &'static str,
    /// Workers.
    pub connections: usize,
    /// Measured length of the load phase, seconds.
    pub duration_s: f64,
    /// Requests written.
    pub requests_sent: u64,
    /// Requests answered `OK`.
    pub requests_ok: u64,
    /// Requests that failed (an `ERR` reply, an I/O error, no reply).
    pub requests_failed: u64,
    /// `requests_ok / duration_s`.
    pub requests_per_s: f64,
    /// Open loop: scheduled sends skipped because a connection owed too many replies.
    pub sends_skipped: u64,
    /// Connections established (TCP) during the run.
    pub connections_opened: u64,
    /// Connections the balancer refused (`exhausted`, `overloaded`) or that failed to
    /// connect (`connect`), by code.
    pub connections_refused: BTreeMap<String, u64>,
    /// Connect-per-request: completed connect-request-close cycles per second.
    pub connections_per_s: f64,
    /// Latency of `OK` replies (connect-per-request: the whole cycle).
    pub latency_ms: Latency,
    /// Failed requests by code: the `ERR` code, or `io`, `closed` (EOF), `no-reply`,
    /// `unexpected`.
    pub errors: BTreeMap<String, u64>,
    /// `OK` replies per machine, in machine order.
    pub machines: Vec<MachineShare>,
}

/// Why a load run could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The target does not accept connections.
    #[error("cannot connect to {addr}: {source}")]
    Unreachable {
        /// The target.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// `--plot` was asked for but the admin API cannot be read.
    #[error("cannot read http://{addr}/api/stats for --plot: {reason} (pass --admin ADDR)")]
    Admin {
        /// The admin address tried.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The plot could not be written.
    #[error("cannot write the plot {path}: {reason}")]
    Plot {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Bad argument values that the parser cannot catch.
    #[error("{0}")]
    Invalid(String),
}

// === running ===

/// Counters the progress bar reads while workers run.
#[derive(Debug, Default)]
struct Live {
    ok: AtomicU64,
    failed: AtomicU64,
    open: AtomicU64,
}

/// Runs `elastic-lb load`: checks, generates, prints. See the module docs.
///
/// # Errors
///
/// [`LoadError`] when the target (or, with `--plot`, the admin API) cannot be reached, or
/// the plot cannot be written.
pub async fn run(args: LoadArgs) -> Result<(), LoadError> {
    if !args.cooldown.is_zero() && args.plot.is_none() {
        return Err(LoadError::Invalid(
            "--cooldown only applies with --plot FILE.svg".to_string(),
        ));
    }
    let mode = match (args.rate, args.connect_per_request, args.idle) {
        (Some(rate), _, _) => Mode::OpenLoop { rate },
        (None, true, _) => Mode::ConnectPerRequest,
        (None, false, true) => Mode::Idle,
        (None, false, false) => Mode::ClosedLoop,
    };
    let plan = LoadPlan {
        target: args.target,
        connections: args.connections,
        duration: args.duration,
        mode,
        mix: args.mix.clone(),
        ramp: args.ramp,
    };
    let admin = args
        .admin
        .unwrap_or_else(|| SocketAddr::new(args.target.ip(), args.target.port().saturating_add(1)));

    probe(plan.target).await?;
    let sampler = match &args.plot {
        Some(_) => {
            // Fail before any load is sent if the plot could not be drawn.
            get_stats(admin).await.map_err(|reason| LoadError::Admin {
                addr: admin,
                reason,
            })?;
            let stop = Instant::now() + plan.duration + args.cooldown;
            Some(tokio::spawn(sample(admin, Instant::now(), stop)))
        }
        None => None,
    };

    let live = Arc::new(Live::default());
    let bar = progress_bar(&plan, live.clone());
    let summary = generate_with(&plan, live).await;

    let mut plot_note = None;
    if let (Some(path), Some(sampler)) = (&args.plot, sampler) {
        if let Some(bar) = &bar {
            bar.set_message(format!("load done; sampling for {:?} more", args.cooldown));
        }
        let samples = sampler.await.unwrap_or_default();
        draw_plot(path, &samples, summary.duration_s).map_err(|reason| LoadError::Plot {
            path: path.clone(),
            reason,
        })?;
        plot_note = Some(format!(
            "plot: {} ({} samples of http://{admin}/api/stats)",
            path.display(),
            samples.len()
        ));
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }

    if args.json {
        match serde_json::to_string(&summary) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                return Err(LoadError::Invalid(format!(
                    "cannot encode the summary: {e}"
                )))
            }
        }
    } else {
        print!("{}", render_summary(&summary));
    }
    if let Some(note) = plot_note {
        // The summary first, even when stdout and stderr go to the same place.
        let _ = std::io::Write::flush(&mut std::io::stdout());
        eprintln!("{note}");
    }
    Ok(())
}

/// One connection attempt, so that a wrong address is one clear error before any load.
async fn probe(target: SocketAddr) -> Result<(), LoadError> {
    match timeout(Duration::from_secs(5), TcpStream::connect(target)).await {
        Ok(Ok(_stream)) => Ok(()),
        Ok(Err(source)) => Err(LoadError::Unreachable {
            addr: target,
            source,
        }),
        Err(_) => Err(LoadError::Unreachable {
            addr: target,
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out after 5s"),
        }),
    }
}

/// A progress bar on a terminal (stderr), updated from `live`; `None` when stderr is not
/// a terminal (scripts get the summary only).
fn progress_bar(plan: &LoadPlan, live: Arc<Live>) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let total_ms = plan.duration.as_millis().max(1) as u64;
    let bar = indicatif::ProgressBar::new(total_ms);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{elapsed:>4} {bar:30.cyan/blue} {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    let ticker = bar.clone();
    let start = Instant::now();
    tokio::spawn(async move {
        let mut last = (start, 0u64);
        while !ticker.is_finished() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = Instant::now();
            let elapsed = now.duration_since(start).as_millis() as u64;
            if elapsed <= total_ms {
                ticker.set_position(elapsed);
                let ok = live.ok.load(Ordering::Relaxed);
                let rate = (ok - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
                last = (now, ok);
                ticker.set_message(format!(
                    "{ok} ok, {} failed, {rate:.0} req/s, {} open",
                    live.failed.load(Ordering::Relaxed),
                    live.open.load(Ordering::Relaxed)
                ));
            }
        }
    });
    Some(bar)
}

/// Runs `plan` and returns its summary. Bounded: it returns within
/// `duration + REPLY_GRACE` plus connect time-outs.
///
/// # Errors
///
/// [`LoadError::Unreachable`] when the target refuses the first connection.
pub async fn generate(plan: &LoadPlan) -> Result<Summary, LoadError> {
    probe(plan.target).await?;
    Ok(generate_with(plan, Arc::new(Live::default())).await)
}

async fn generate_with(plan: &LoadPlan, live: Arc<Live>) -> Summary {
    let start = Instant::now();
    let deadline = start + plan.duration;
    let mut tally = Tally::new();
    if plan.mode == Mode::Idle {
        idle(plan, deadline, &live, &mut tally).await;
    } else {
        let mut workers = JoinSet::new();
        for id in 0..plan.connections {
            let worker = Worker {
                plan: plan.clone(),
                id,
                start,
                deadline,
                live: live.clone(),
            };
            workers.spawn(worker.run());
        }
        while let Some(done) = workers.join_next().await {
            if let Ok(t) = done {
                tally.merge(t);
            }
        }
    }
    // The load phase ends at the deadline; replies awaited after it do not stretch it.
    let elapsed = Instant::now().min(deadline).duration_since(start);
    tally.summary(plan, elapsed)
}

/// What one worker saw; merged into the [`Summary`].
struct Tally {
    sent: u64,
    ok: u64,
    failed: u64,
    skipped: u64,
    opened: u64,
    cycles: u64,
    errors: BTreeMap<String, u64>,
    refused: BTreeMap<String, u64>,
    /// `OK` replies per machine name (few machines: a linear scan beats hashing).
    machines: Vec<(Vec<u8>, u64)>,
    latency_us: Histogram<u64>,
}

/// How a reply line ended a request.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    Failed,
    /// `ERR exhausted` / `ERR overloaded`: the balancer is closing the connection.
    Refused,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            sent: 0,
            ok: 0,
            failed: 0,
            skipped: 0,
            opened: 0,
            cycles: 0,
            errors: BTreeMap::new(),
            refused: BTreeMap::new(),
            machines: Vec::new(),
            latency_us: Histogram::new_with_bounds(1, LATENCY_MAX_US, 2)
                .expect("constant histogram bounds are valid"),
        }
    }

    fn fail(&mut self, code: &str, live: &Live) {
        self.failed += 1;
        live.failed.fetch_add(1, Ordering::Relaxed);
        *self.errors.entry(code.to_string()).or_default() += 1;
    }

    fn refuse(&mut self, code: &str) {
        *self.refused.entry(code.to_string()).or_default() += 1;
    }

    /// Counts one reply line (with its `\n`) that answered a request sent `latency` ago.
    fn reply(&mut self, line: &[u8], latency: Duration, live: &Live) -> Outcome {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(rest) = line.strip_prefix(b"OK ") {
            let machine = rest.split(|&b| b == b' ').next().unwrap_or(rest);
            match self.machines.iter_mut().find(|(m, _)| m == machine) {
                Some((_, n)) => *n += 1,
                None => self.machines.push((machine.to_vec(), 1)),
            }
            self.ok += 1;
            live.ok.fetch_add(1, Ordering::Relaxed);
            let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
            self.latency_us.saturating_record(us.max(1));
            return Outcome::Ok;
        }
        if let Some(rest) = line.strip_prefix(b"ERR ") {
            let code = rest.split(|&b| b == b' ').next().unwrap_or(rest);
            let code = String::from_utf8_lossy(code);
            self.fail(&code, live);
            if code == "exhausted" || code == "overloaded" {
                self.refuse(&code);
                return Outcome::Refused;
            }
            return Outcome::Failed;
        }
        self.fail("unexpected", live);
        Outcome::Failed
    }

    fn merge(&mut self, other: Tally) {
        self.sent += other.sent;
        self.ok += other.ok;
        self.failed += other.failed;
        self.skipped += other.skipped;
        self.opened += other.opened;
        self.cycles += other.cycles;
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
        for (code, n) in other.refused {
            *self.refused.entry(code).or_default() += n;
        }
        for (machine, n) in other.machines {
            match self.machines.iter_mut().find(|(m, _)| *m == machine) {
                Some((_, total)) => *total += n,
                None => self.machines.push((machine, n)),
            }
        }
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
    }

    fn summary(mut self, plan: &LoadPlan, elapsed: Duration) -> Summary {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let h = &self.latency_us;
        let ms = |us: u64| us as f64 / 1000.0;
        let latency_ms = if h.is_empty() {
            Latency::default()
        } else {
            Latency {
                p50: ms(h.value_at_quantile(0.50)),
                p90: ms(h.value_at_quantile(0.90)),
                p99: ms(h.value_at_quantile(0.99)),
                max: ms(h.max()),
                mean: h.mean() / 1000.0,
            }
        };
        // m2 before m10: by the number after the `m`, then by name.
        self.machines.sort_by(|(a, _), (b, _)| {
            let num = |m: &[u8]| -> u64 {
                std::str::from_utf8(m.get(1..).unwrap_or_default())
                    .ok()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(u64::MAX)
            };
            num(a).cmp(&num(b)).then_with(|| a.cmp(b))
        });
        Summary {
            target: plan.target.to_string(),
            mode: plan.mode.name(),
            connections: plan.connections,
            duration_s: secs,
            requests_sent: self.sent,
            requests_ok: self.ok,
            requests_failed: self.failed,
            requests_per_s: self.ok as f64 / secs,
            sends_skipped: self.skipped,
            connections_opened: self.opened,
            connections_refused: self.refused,
            connections_per_s: self.cycles as f64 / secs,
            latency_ms,
            errors: self.errors,
            machines: self
                .machines
                .into_iter()
                .map(|(m, ok)| MachineShare {
                    machine: String::from_utf8_lossy(&m).into_owned(),
                    ok,
                })
                .collect(),
        }
    }
}

/// One connection's worth of load.
struct Worker {
    plan: LoadPlan,
    id: usize,
    start: Instant,
    deadline: Instant,
    live: Arc<Live>,
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
    async fn run(self) -> Tally {
        let mut tally = Tally::new();
        if !self.plan.ramp.is_zero() {
            let share = self.id as f64 / self.plan.connections as f64;
            let delay = self.plan.ramp.mul_f64(share);
            sleep_until((self.start + delay).min(self.deadline)).await;
        }
        match self.plan.mode {
            Mode::ClosedLoop => self.closed_loop(&mut tally).await,
            Mode::OpenLoop { rate } => self.open_loop(rate, &mut tally).await,
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
                        if tally.reply(&line, sent_at.elapsed(), live) == Outcome::Refused {
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

    async fn open_loop(&self, rate: f64, tally: &mut Tally) {
        let mut rng = self.rng();
        let live = &*self.live;
        let connections = self.plan.connections as f64;
        // Each connection sends every `connections / rate` s, staggered by `1 / rate`.
        let period = Duration::from_secs_f64((connections / rate).max(1e-6));
        let offset = Duration::from_secs_f64(self.id as f64 / rate).min(period);
        // After a ramp delay the schedule starts now, not at the (past) run start.
        let first = self.start.max(Instant::now()) + offset;
        let mut ticker = tokio::time::interval_at(first, period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let mut line = Vec::with_capacity(128);
        // Scheduled send times of the requests awaiting replies, oldest first.
        let mut in_flight: VecDeque<Instant> = VecDeque::new();
        while Instant::now() < self.deadline {
            let Some(stream) = self.connect(tally).await else {
                self.pause().await;
                continue;
            };
            live.open.fetch_add(1, Ordering::Relaxed);
            let (read_half, mut write_half) = stream.into_split();
            let mut reader = BufReader::new(read_half);
            let hard_stop = self.deadline + REPLY_GRACE;
            let mut broken: Option<&'static str> = None;
            line.clear();
            loop {
                let sending = Instant::now() < self.deadline;
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
                                if outcome == Outcome::Refused {
                                    broken = Some("closed");
                                    break;
                                }
                            }
                            Ok(_) => { broken = Some("closed"); break; }
                            Err(_) => { broken = Some("io"); break; }
                        }
                    }
                    scheduled = ticker.tick(), if sending => {
                        if scheduled >= self.deadline {
                            continue;
                        }
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
            if Instant::now() < self.deadline {
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
async fn idle(plan: &LoadPlan, deadline: Instant, live: &Arc<Live>, tally: &mut Tally) {
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

// === text summary ===

/// The human-readable summary (what `elastic-lb load` prints without `--json`).
pub fn render_summary(s: &Summary) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "target      {} ({}, {} connections, {:.1} s)",
        s.target, s.mode, s.connections, s.duration_s
    );
    let _ = writeln!(
        out,
        "requests    {} sent, {} ok, {} failed — {:.0} ok/s",
        s.requests_sent, s.requests_ok, s.requests_failed, s.requests_per_s
    );
    if s.mode == Mode::ConnectPerRequest.name() {
        let _ = writeln!(out, "conn rate   {:.0} connections/s", s.connections_per_s);
    }
    if s.sends_skipped > 0 {
        let _ = writeln!(
            out,
            "skipped     {} scheduled sends (too many replies owed)",
            s.sends_skipped
        );
    }
    let l = &s.latency_ms;
    let _ = writeln!(
        out,
        "latency     p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
        l.p50, l.p90, l.p99, l.max
    );
    let _ = writeln!(out, "errors      {}", counts(&s.errors));
    let _ = writeln!(
        out,
        "connections {} opened, refused: {}",
        s.connections_opened,
        counts(&s.connections_refused)
    );
    if !s.machines.is_empty() {
        let _ = writeln!(out, "per machine (OK replies):");
        let top = s.machines.iter().map(|m| m.ok).max().unwrap_or(1).max(1);
        for m in &s.machines {
            let share = 100.0 * m.ok as f64 / s.requests_ok.max(1) as f64;
            let bar = "#".repeat(((40 * m.ok).div_ceil(top)) as usize);
            let _ = writeln!(out, "  {:>5} {:>10} {:>5.1}% {bar}", m.machine, m.ok, share);
        }
    }
    out
}

fn counts(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "none".to_string();
    }
    map.iter()
        .map(|(code, n)| format!("{code}={n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

// === admin sampling and the plot ===

/// One admin API sample.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    /// Seconds since the load started.
    t: f64,
    active: usize,
    draining: usize,
    avg_load: f64,
}

/// Samples `GET /api/stats` every [`SAMPLE_EVERY`] until `stop`. Failed samples are skipped.
async fn sample(admin: SocketAddr, start: Instant, stop: Instant) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut ticker = tokio::time::interval(SAMPLE_EVERY);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let at = ticker.tick().await;
        if at > stop {
            break;
        }
        if let Ok(Ok(snap)) = timeout(Duration::from_secs(1), get_stats(admin)).await {
            let draining = snap
                .machines
                .iter()
                .filter(|m| m.state == crate::core::MachineState::Draining)
                .count();
            samples.push(Sample {
                t: at.duration_since(start).as_secs_f64(),
                active: snap.machines.len() - draining,
                draining,
                avg_load: snap.avg_load,
            });
        }
    }
    samples
}

/// `GET /api/stats` over a plain HTTP/1.1 connection (`Connection: close`).
async fn get_stats(admin: SocketAddr) -> Result<Snapshot, String> {
    let mut stream = timeout(Duration::from_secs(2), TcpStream::connect(admin))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET /api/stats HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\nAccept: application/json\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    timeout(Duration::from_secs(2), stream.read_to_end(&mut raw))
        .await
        .map_err(|_| "read timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "not an HTTP response".to_string())?;
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    if status != "200" {
        return Err(format!("HTTP status {status}"));
    }
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body).ok_or_else(|| "bad chunked body".to_string())?
    } else {
        body.to_string()
    };
    serde_json::from_str::<Snapshot>(&body).map_err(|e| format!("not /api/stats JSON: {e}"))
}

fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size_line, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size_line.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size + 2..)?;
    }
}

/// Draws average load (top) and machines (bottom) over time as an SVG at `path`.
fn draw_plot(path: &Path, samples: &[Sample], load_end_s: f64) -> Result<(), String> {
    use plotters::prelude::*;

    let err = |e: &dyn std::fmt::Display| e.to_string();
    let t_max = samples.last().map_or(1.0, |s| s.t).max(load_end_s).max(1.0);
    let load_max = samples
        .iter()
        .map(|s| s.avg_load)
        .fold(100.0f64, f64::max)
        .ceil();
    let machines_max = samples
        .iter()
        .map(|s| s.active + s.draining)
        .max()
        .unwrap_or(1)
        .max(1) as f64
        + 1.0;

    let root = SVGBackend::new(path, (960, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root
        .titled(
            "elastic-lb load: average load and machines over time",
            ("sans-serif", 22),
        )
        .map_err(|e| err(&e))?;
    let (upper, lower) = root.split_vertically(310);
    let stop_color = RGBColor(200, 60, 60);
    let x_desc = "seconds since the load started";

    // Average load, with the load phase marked.
    let mut chart = ChartBuilder::on(&upper)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..t_max, 0.0..load_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("average load (%)")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new(
            samples.iter().map(|s| (s.t, s.avg_load)),
            BLUE.stroke_width(2),
        ))
        .map_err(|e| err(&e))?
        .label("average load over active machines")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    chart
        .draw_series(LineSeries::new(
            [(load_end_s, 0.0), (load_end_s, load_max)],
            stop_color.stroke_width(1),
        ))
        .map_err(|e| err(&e))?
        .label("load stops")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], stop_color));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| err(&e))?;

    // Machines: active, and active + draining, as step lines.
    let mut chart = ChartBuilder::on(&lower)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..t_max, 0.0..machines_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("machines")
        .y_labels(machines_max as usize + 1)
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| err(&e))?;
    let steps = |value: fn(&Sample) -> f64| -> Vec<(f64, f64)> {
        let mut points = Vec::with_capacity(samples.len() * 2);
        for (i, s) in samples.iter().enumerate() {
            if i > 0 {
                points.push((s.t, value(&samples[i - 1])));
            }
            points.push((s.t, value(s)));
        }
        points
    };
    let total_color = RGBColor(230, 140, 20);
    chart
        .draw_series(LineSeries::new(
            steps(|s| (s.active + s.draining) as f64),
            total_color.stroke_width(2),
        ))
        .map_err(|e| err(&e))?
        .label("active + draining")
        .legend(move |(x, y)| {
            PathElement::new(vec![(x, y), (x + 20, y)], total_color.stroke_width(2))
        });
    let active_color = RGBColor(30, 140, 60);
    chart
        .draw_series(LineSeries::new(
            steps(|s| s.active as f64),
            active_color.stroke_width(2),
        ))
        .map_err(|e| err(&e))?
        .label("active machines")
        .legend(move |(x, y)| {
            PathElement::new(vec![(x, y), (x + 20, y)], active_color.stroke_width(2))
        });
    chart
        .draw_series(LineSeries::new(
            [(load_end_s, 0.0), (load_end_s, machines_max)],
            stop_color.stroke_width(1),
        ))
        .map_err(|e| err(&e))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parses_and_rejects() {
        let m: Mix = "small=70,medium=20,large=10".parse().unwrap();
        assert_eq!(m.total, 100);
        assert!("small=0".parse::<Mix>().is_err());
        assert!("tiny=5"
            .parse::<Mix>()
            .unwrap_err()
            .contains("unknown request class"));
        assert!("small".parse::<Mix>().is_err());
        assert!("small=x".parse::<Mix>().is_err());
        assert!("small=1,small=2".parse::<Mix>().is_err());
        assert!("".parse::<Mix>().is_err());
    }

    #[test]
    fn mix_picks_by_weight() {
        let m: Mix = "small=3,large=1".parse().unwrap();
        let mut rng = SmallRng::seed_from_u64(1);
        let large = (0..4000)
            .filter(|_| m.pick(&mut rng) == RequestClass::Large)
            .count();
        assert!((800..1200).contains(&large), "{large}");
    }

    #[test]
    fn rates_and_connections() {
        assert_eq!(parse_rate("2000/s"), Ok(2000.0));
        assert_eq!(parse_rate("5"), Ok(5.0));
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_connections("0").is_err());
        assert_eq!(parse_connections("4"), Ok(4));
    }

    #[test]
    fn replies_are_classified() {
        let live = Live::default();
        let mut t = Tally::new();
        let d = Duration::from_micros(300);
        assert_eq!(t.reply(b"OK m2 small\n", d, &live), Outcome::Ok);
        assert_eq!(t.reply(b"OK m2 large x\n", d, &live), Outcome::Ok);
        assert_eq!(t.reply(b"ERR busy full\n", d, &live), Outcome::Failed);
        assert_eq!(
            t.reply(b"ERR exhausted no machine\n", d, &live),
            Outcome::Refused
        );
        assert_eq!(t.reply(b"PONG\n", d, &live), Outcome::Failed);
        assert_eq!((t.ok, t.failed), (2, 3));
        assert_eq!(t.machines, vec![(b"m2".to_vec(), 2)]);
        assert_eq!(t.refused.get("exhausted"), Some(&1));
        assert_eq!(t.errors.get("unexpected"), Some(&1));
    }
}
