//! The `elastic-lb` binary: parse the command line, load the configuration, bind, run.
//!
//! Everything testable lives in the library crate; this file only wires it to the process
//! (arguments, logging, signals, exit status).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{Parser, Subcommand, ValueEnum};
use elastic_lb::config::{self, AdminAddress, Config, ConfigSource};
use elastic_lb::core::StrategyKind;
use elastic_lb::server::bind::{self, Listening};
use elastic_lb::server::descriptors;
use elastic_lb::{Error, Result, Server};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

/// What `--help` adds after the options: how the daemon is driven and what it answers.
const OPERATIONS_HELP: &str = "\
Configuration:
  --config PATH, else ./config/elastic-lb.toml, else /etc/elastic-lb/elastic-lb.toml,
  else the built-in defaults. `elastic-lb check` prints the effective configuration.

Signals (daemon):
  SIGHUP           reload the configuration file (keys that need a restart are logged)
  SIGINT, SIGTERM  graceful shutdown: stop accepting, answer what was read, wait up to
                   shutdown.grace; a second SIGINT/SIGTERM exits at once with status 130

Logs:
  on stderr; RUST_LOG filters them (default info, e.g. RUST_LOG=debug), --log-format json
  writes one JSON object per line

Exit status:
  0    clean exit: graceful shutdown, `check` accepted the file, `stats`/`load` finished
  1    a start-up or usage error (bad flag, invalid configuration, port in use, admin
       endpoint or target unreachable), printed on stderr
  130  a second SIGINT/SIGTERM during a graceful shutdown";

/// An asynchronous, elastic TCP load balancer.
#[derive(Debug, Parser)]
#[command(name = "elastic-lb", version, about, after_help = OPERATIONS_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon (the default).
    #[command(after_help = OPERATIONS_HELP)]
    Run(RunArgs),
    /// Validate the configuration and print the effective configuration as TOML.
    Check {
        /// Configuration file [default: ./config/elastic-lb.toml, else
        /// /etc/elastic-lb/elastic-lb.toml, else built-in]
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Print a table of machines and totals from a running daemon's admin endpoint.
    Stats {
        /// Admin address of the daemon.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7071", value_parser = config::resolve_addr)]
        admin: SocketAddr,
        /// Refresh every second until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// Generate load against a balancer and report throughput, latency and errors.
    Load(elastic_lb::cli::load::LoadArgs),
}

#[derive(Debug, Clone, clap::Args)]
struct RunArgs {
    /// Configuration file [default: ./config/elastic-lb.toml, else
    /// /etc/elastic-lb/elastic-lb.toml, else built-in]
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Address to listen on (overrides listener.address).
    #[arg(long, value_name = "ADDR", value_parser = listen_address)]
    listen: Option<SocketAddr>,
    /// Admin address, or "off" (overrides admin.address).
    #[arg(long, value_name = "ADDR|off")]
    admin: Option<AdminAddress>,
    /// Placement strategy (overrides dispatcher.strategy).
    #[arg(long, value_name = "NAME")]
    strategy: Option<StrategyKind>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help, --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // Status 1 like every start-up error (SPEC §2), where clap's `exit()` would use
            // 2. A bad value (`--strategy fastest`) is one line naming it and what is
            // allowed; other usage errors keep clap's rendering: what is missing, a
            // suggestion for a typo and the usage line.
            match e.kind() {
                ErrorKind::InvalidValue | ErrorKind::ValueValidation => {
                    eprintln!("{}", one_line(&e.render().to_string()));
                }
                _ => {
                    let _ = e.print();
                }
            }
            return ExitCode::FAILURE;
        }
    };
    let outcome = match cli.command {
        Some(Command::Check { config }) => check(config.as_deref()),
        Some(Command::Run(args)) => run(args),
        Some(Command::Stats { admin, watch }) => {
            client(async move { Ok(elastic_lb::cli::stats::run(admin, watch).await?) })
        }
        Some(Command::Load(args)) => {
            client(async move { Ok(elastic_lb::cli::load::run(args).await?) })
        }
        None => run(cli.run),
    };
    // Every error ends the process the same way: one line and status 1 (SPEC §2).
    outcome.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    })
}

/// clap's rendering of a bad value as one line: the first line, with the possible values
/// (clap's next line) appended; the usage hint dropped.
fn one_line(rendered: &str) -> String {
    let mut lines = rendered.lines();
    let mut line = lines.next().unwrap_or_default().trim_end().to_string();
    if let Some(values) = lines
        .map(str::trim)
        .find(|l| l.starts_with("[possible values"))
    {
        line.push(' ');
        line.push_str(values);
    }
    line
}

/// `--listen`: an `IP:port`; the error says so, as the file's `listener.address` does.
fn listen_address(value: &str) -> std::result::Result<SocketAddr, String> {
    value
        .parse()
        .map_err(|_| "expected ip:port, e.g. \"127.0.0.1:7070\"".to_string())
}

/// A multi-threaded tokio runtime.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)
}

/// Runs a client command (`stats`, `load`) on a runtime.
fn client(command: impl std::future::Future<Output = Result<()>>) -> Result<ExitCode> {
    runtime()?.block_on(command)?;
    Ok(ExitCode::SUCCESS)
}

/// `elastic-lb check`: print the effective configuration (exit 0), or fail.
fn check(path: Option<&Path>) -> Result<ExitCode> {
    let config = ConfigSource::find(path, config::SEARCH_PATH).load()?;
    config.check_upstream_loop()?;
    print!("{}", config.to_toml());
    Ok(ExitCode::SUCCESS)
}

/// The `run` flags that override the file, kept so that a reload applies them again.
#[derive(Debug, Clone, Copy)]
struct Overrides {
    listen: Option<SocketAddr>,
    admin: Option<AdminAddress>,
}

impl Overrides {
    /// The addresses given on the command line win over the file's. (`--strategy` is
    /// applied at start only: a reload applies the file's strategy again, SPEC §6.)
    fn apply(&self, config: &mut Config) {
        if let Some(listen) = self.listen {
            config.listener.address = listen;
        }
        if let Some(admin) = self.admin {
            config.admin.address = admin;
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, never in files or pipes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn run(args: RunArgs) -> Result<ExitCode> {
    init_tracing(args.log_format);
    // The configuration is loaded and validated before any socket is bound.
    let source = ConfigSource::find(args.config.as_deref(), config::SEARCH_PATH);
    let mut config = source.load()?;
    let overrides = Overrides {
        listen: args.listen,
        admin: args.admin,
    };
    overrides.apply(&mut config);
    if let Some(strategy) = args.strategy {
        config.dispatcher.strategy = strategy;
    }
    // The file's addresses were checked against each other; with the flags' they must
    // still differ (a clear line rather than the second bind's "address in use").
    if let AdminAddress::Addr(admin) = config.admin.address {
        let listen = config.listener.address;
        if (args.listen.is_some() || args.admin.is_some())
            && config::listeners_collide(admin, listen)
        {
            return Err(config::ConfigError::Invalid(format!(
                "the listener ({listen}) and the admin endpoint ({admin}) would share port {}: \
                 give --listen or --admin another address",
                listen.port()
            ))
            .into());
        }
    }
    config.check_upstream_loop()?;
    let runtime = runtime()?;
    match runtime.block_on(serve(config, source, overrides))? {
        Served::Stopped => Ok(ExitCode::SUCCESS),
        // The event-loop threads may still be serving connections on the runtime's timers:
        // dropping the runtime under them would make them panic on the way out. A second
        // signal means "now", so the process ends here, runtime and all.
        Served::Forced => std::process::exit(130),
    }
}

/// Warns when `autoscaler.min_machines` is more than the pool can ever hold.
fn warn_min_machines(config: &Config) {
    if let Some(pool) = config.min_machines_beyond_pool() {
        warn!(
            min_machines = config.autoscaler.min_machines,
            pool,
            "autoscaler.min_machines is more than the pool holds (pool = {pool}): the minimum cannot be met"
        );
    }
}

/// How [`serve`] ended.
enum Served {
    /// The graceful shutdown completed.
    Stopped,
    /// A second SIGINT/SIGTERM cut it short.
    Forced,
}

/// Binds, runs until a signal, shuts down.
async fn serve(config: Config, source: ConfigSource, overrides: Overrides) -> Result<Served> {
    // Signal handlers are installed before the listener binds (SPEC §5).
    let mut sigint = signal(SignalKind::interrupt()).map_err(Error::Signals)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(Error::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(Error::Signals)?;

    let requested = config.listener.backlog;
    let backlog = bind::effective_backlog(requested, bind::somaxconn());
    let addr = config.listener.address;
    let loops = elastic_lb::backend::event_loops(&config);
    let listener = Listening::bind(addr, backlog, loops).map_err(|source| Error::Bind {
        addr,
        admin: false,
        source,
    })?;
    let admin_listener = match config.admin.address {
        AdminAddress::Off => None,
        AdminAddress::Addr(addr) => {
            Some(bind::bind(addr, backlog).map_err(|source| Error::Bind {
                addr,
                admin: true,
                source,
            })?)
        }
    };
    // Warnings come after the binds, so that a start-up error stays the only line.
    if backlog < requested {
        warn!(
            requested,
            granted = backlog,
            "listener.backlog is capped by the kernel (net.core.somaxconn)"
        );
    }
    descriptors::raise_and_check(&config);
    warn_min_machines(&config);
    let server = Server::start(config, listener, admin_listener)
        .await
        .map_err(Error::Start)?;
    let admin = server
        .admin_addr()
        .map_or(AdminAddress::Off, AdminAddress::Addr);
    info!(
        version = %env!("CARGO_PKG_VERSION"),
        pid = std::process::id(),
        config = %source,
        listen = %server.local_addr(),
        %admin,
        strategy = %server.config().dispatcher.strategy,
        "elastic-lb ready"
    );

    // What the restart-only keys are in force with, for every reload to compare against.
    let started = server.config();
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => reload(&server, &started, source.path(), overrides).await,
        }
    }

    // A second signal during the graceful shutdown exits at once.
    let grace = server.config().shutdown.grace;
    tokio::select! {
        _ = server.shutdown(grace) => Ok(Served::Stopped),
        _ = sigint.recv() => {
            info!("second signal: exiting now");
            Ok(Served::Forced)
        }
        _ = sigterm.recv() => {
            info!("second signal: exiting now");
            Ok(Served::Forced)
        }
    }
}

/// SIGHUP: read the file again; apply it, or keep the old configuration and log one error.
/// Keys that need a restart keep their running values, with one warning per key that
/// differs from the value the daemon `started` with (and still runs with).
async fn reload(server: &Server, started: &Config, path: Option<&Path>, overrides: Overrides) {
    let Some(path) = path else {
        info!("reload: no configuration file in use; nothing to reload");
        return;
    };
    // The file is read off the runtime's worker threads.
    let path_buf = path.to_path_buf();
    let loaded = tokio::task::spawn_blocking(move || Config::load(&path_buf))
        .await
        .unwrap_or_else(|e| {
            Err(config::ConfigError::Invalid(format!(
                "reload task failed: {e}"
            )))
        });
    let mut config = match loaded {
        Ok(config) => config,
        Err(e) => {
            error!("reload failed, keeping the old configuration: {e}");
            return;
        }
    };
    // What a restart would run: the file with the command line's addresses. The strategy
    // is the file's again, also after --strategy or a switch through the admin API.
    overrides.apply(&mut config);
    // The restart-only keys are compared with what the daemon started with: a start-only
    // key (`dispatcher.seed`, `autoscaler.initial`) keeps the file's value in the running
    // configuration, but the value in force is still the one it started with.
    let waiting = config::keep_restart_keys(started, &mut config);
    // The file was valid on its own; with the running [backend] kept it must still be
    // (e.g. `autoscaler.initial` against the running upstreams).
    let checked = config
        .validate()
        .map_err(|e| e.to_string())
        .and_then(|()| config.check_upstream_loop().map_err(|e| e.to_string()));
    if let Err(e) = checked {
        error!(
            "reload failed, keeping the old configuration: {}: {e} (with the running \
             restart-only [backend] keys, of which only the upstream list reloads)",
            path.display()
        );
        return;
    }
    for change in &waiting {
        warn!(
            key = %change.key,
            running = %change.running,
            file = %change.wanted,
            "reload: {} changes only on restart; keeping the running value",
            change.key
        );
    }
    info!(
        path = %path.display(),
        strategy = %config.dispatcher.strategy,
        restart_pending = waiting.len(),
        "configuration reloaded"
    );
    warn_min_machines(&config);
    server.reload(config).await;
}
