//! `elastic-lb load`: the built-in load generator (SPEC §7).
//!
//! [`run`] is the command: it turns [`LoadArgs`] into a [`LoadPlan`], checks the target
//! (and, with `--plot`, the admin endpoint) once, runs [`generate`] with a progress bar on
//! a terminal, and prints a [`Summary`] as text or as one JSON object. Tests call
//! [`generate`] directly and look at the returned [`Summary`].
//!
//! Five modes, each with `--connections` workers, one task per connection:
//!
//! | mode | what each worker does |
//! | --- | --- |
//! | closed loop (default) | one request outstanding: send, await the reply, send the next |
//! | open loop (`--rate N/s`) | sends on a fixed schedule (`N / connections` per second each), replies are read as they come; latency counts from the *scheduled* send time, so a slow server cannot hide its queueing (no coordinated omission) |
//! | profiled open loop (`--profile`) | the same, with the total rate following a [`RateCurve`] over `--duration` (request `k` on connection `k mod connections`) |
//! | `--connect-per-request` | connect, one request, close, again (reports connections/s) |
//! | `--idle` | connect, `PING` (so the balancer has admitted it), then hold the connection silently |
//!
//! Both open loops start warm (without `--ramp`): every connection is opened and answered
//! `PING` before the first request is due, so set-up is in neither the schedule nor the
//! latencies.
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
//!
//! With `--profile` the same sampler runs, and the summary gains the SPEC RG Cloud
//! elasticity metrics computed from demand and supply at each sample ([`ElasticityReport`];
//! formulas in docs/elasticity.md).
//!
//! The code: `args` (the command line), `mix` (`--mix`), `plan` ([`LoadPlan`]), `profile`
//! (`--profile`: [`RateCurve`]), `warm` (opening open-loop connections first), `workers`
//! (one task per connection), `tally` (what the workers count), `report` ([`Summary`] and
//! its text form), `sampler` and `plot` (`--plot`, reading the admin API through
//! [`crate::cli::http`]), `elasticity` (demand, supply and the metrics).

mod args;
mod elasticity;
mod mix;
mod plan;
mod plot;
mod profile;
mod report;
mod sampler;
mod tally;
mod warm;
mod workers;

pub use args::LoadArgs;
pub use elasticity::{
    demand, metrics, ElasticityReport, Metrics, Point, DEMAND_CHANGE_TOLERANCE, DEMAND_FLOOR,
};
pub use mix::{Mix, MixError};
pub use plan::{LoadPlan, Mode};
pub use plot::PlotError;
pub use profile::{ProfileSpec, RateCurve, Shape};
pub use report::{render_summary, Latency, MachineShare, Summary};
pub use sampler::SAMPLE_EVERY;
pub use workers::REPLY_GRACE;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};

use crate::cli::http::{fetch_stats, FetchError};
use elasticity::{DemandModel, RunFacts};
use sampler::Sampled;
use tally::{Live, Tally};
use warm::{warm_up, Warm};
use workers::{idle, Worker};

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
    /// `--plot` or `--profile` was asked for but the admin API cannot be read.
    #[error(
        "cannot read http://{addr}/api/stats for {flag}: {} (pass --admin ADDR)",
        .source.reason()
    )]
    Admin {
        /// The admin address tried.
        addr: SocketAddr,
        /// `--plot` or `--profile`.
        flag: &'static str,
        /// Why.
        source: FetchError,
    },
    /// The plot could not be written.
    #[error("cannot write the plot {path}: {source}")]
    Plot {
        /// The file.
        path: PathBuf,
        /// Why.
        source: PlotError,
    },
    /// Bad argument values that the parser cannot catch.
    #[error("{0}")]
    Invalid(String),
}

// === running ===

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
    let mode = match (
        &args.profile,
        args.rate,
        args.connect_per_request,
        args.idle,
    ) {
        (Some(spec), rate, _, _) => {
            let curve = spec
                .load(args.duration.as_secs_f64(), rate)
                .map_err(LoadError::Invalid)?;
            Mode::Profiled {
                name: spec.to_string(),
                curve: Arc::new(curve),
            }
        }
        (None, Some(rate), _, _) => Mode::OpenLoop { rate },
        (None, None, true, _) => Mode::ConnectPerRequest,
        (None, None, false, true) => Mode::Idle,
        (None, None, false, false) => Mode::ClosedLoop,
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
    let profiled = matches!(plan.mode, Mode::Profiled { .. });
    let flag = if profiled { "--profile" } else { "--plot" };

    probe(plan.target).await?;
    if profiled || args.plot.is_some() {
        // Fail before any load is sent if the plot or the metrics could not be made.
        let stats = fetch_stats(admin)
            .await
            .map_err(|source| LoadError::Admin {
                addr: admin,
                flag,
                source,
            })?;
        if profiled && (stats.load_model.is_none() || stats.reserved.is_none()) {
            return Err(LoadError::Invalid(format!(
                "http://{admin}/api/stats has no load_model/reserved keys (an older elastic-lb): \
                 --profile needs them for the demand"
            )));
        }
    }
    let warm = warm_up(&plan).await;
    let start = Instant::now();
    let sampler = (profiled || args.plot.is_some()).then(|| {
        let stop = start + plan.duration + args.cooldown;
        tokio::spawn(sampler::sample(admin, start, stop))
    });

    let live = Arc::new(Live::default());
    let bar = progress_bar(&plan, live.clone());
    let mut summary = generate_with(&plan, live, start, warm).await;

    let mut plot_note = None;
    if let Some(sampler) = sampler {
        if let (Some(bar), true) = (&bar, !args.cooldown.is_zero()) {
            bar.set_message(format!("load done; sampling for {:?} more", args.cooldown));
        }
        let sampled = sampler.await.unwrap_or_default();
        let load_end = plan.duration.as_secs_f64();
        let model = DemandModel::of(&sampled, &plan.mix);
        if let (Mode::Profiled { name, curve }, Some(model)) = (&plan.mode, model) {
            let run = RunFacts {
                profile: name,
                curve,
                load_end,
                requests_failed: summary.requests_failed,
                p99_ms: summary.latency_ms.p99,
            };
            summary.elasticity = Some(elasticity::report(&run, &sampled.samples, model));
        }
        if let Some(path) = &args.plot {
            plot_note = Some(draw(path, &plan, &sampled, model, load_end, admin)?);
        }
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

/// Draws the `--plot` SVG (with demand when the offered rate and the load model are
/// known) and returns the note printed after the summary.
fn draw(
    path: &std::path::Path,
    plan: &LoadPlan,
    sampled: &Sampled,
    model: Option<DemandModel>,
    load_end: f64,
    admin: SocketAddr,
) -> Result<String, LoadError> {
    let demand = match (plan.mode.offered(), model) {
        (Some(curve), Some(model)) => Some(elasticity::points(
            &sampled.samples,
            &curve,
            load_end,
            model,
        )),
        _ => None,
    };
    plot::draw_plot(path, &sampled.samples, demand.as_deref(), load_end).map_err(|source| {
        LoadError::Plot {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(format!(
        "plot: {} ({} samples of http://{admin}/api/stats)",
        path.display(),
        sampled.samples.len()
    ))
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
/// `duration + REPLY_GRACE` plus connect time-outs (and, for an open loop, the warm-up of
/// at most 5 s before the load starts).
///
/// # Errors
///
/// [`LoadError::Unreachable`] when the target refuses the first connection.
pub async fn generate(plan: &LoadPlan) -> Result<Summary, LoadError> {
    probe(plan.target).await?;
    let warm = warm_up(plan).await;
    Ok(generate_with(plan, Arc::new(Live::default()), Instant::now(), warm).await)
}

/// Runs `plan` and, while it runs, samples the admin API at `admin`; returns the summary
/// with its elasticity section when the plan is a `--profile` run (what `elastic-lb load
/// --profile` prints, without the plot).
///
/// # Errors
///
/// [`LoadError::Unreachable`] when the target refuses the first connection.
pub async fn generate_sampled(plan: &LoadPlan, admin: SocketAddr) -> Result<Summary, LoadError> {
    probe(plan.target).await?;
    let warm = warm_up(plan).await;
    let start = Instant::now();
    let sampler = tokio::spawn(sampler::sample(admin, start, start + plan.duration));
    let mut summary = generate_with(plan, Arc::new(Live::default()), start, warm).await;
    let sampled = sampler.await.unwrap_or_default();
    if let (Mode::Profiled { name, curve }, Some(model)) =
        (&plan.mode, DemandModel::of(&sampled, &plan.mix))
    {
        let run = RunFacts {
            profile: name,
            curve,
            load_end: plan.duration.as_secs_f64(),
            requests_failed: summary.requests_failed,
            p99_ms: summary.latency_ms.p99,
        };
        summary.elasticity = Some(elasticity::report(&run, &sampled.samples, model));
    }
    Ok(summary)
}

async fn generate_with(plan: &LoadPlan, live: Arc<Live>, start: Instant, warm: Warm) -> Summary {
    let deadline = start + plan.duration;
    let Warm { mut streams, tally } = warm;
    let mut tally: Tally = tally;
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
                warm: streams.get_mut(id).and_then(Option::take),
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
