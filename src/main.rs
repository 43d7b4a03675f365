//! The `elastic-lb` binary: parse the command line, load the configuration, bind, run.
//!
//! Everything testable lives in the library crate; this file only wires it to the process
//! (arguments, logging, signals, exit status).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use elastic_lb::config::{self, AdminAddress, Config};
use elastic_lb::core::StrategyKind;
use elastic_lb::{Error, Result, Server};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info};

/// An asynchronous, elastic TCP load balancer.
#[derive(Debug, Parser)]
#[command(name = "elastic-lb", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Run(RunArgs),
    /// Validate the configuration and print the effective configuration as TOML.
    Check {
        /// Configuration file (default: config/elastic-lb.toml if present, else built-in).
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
    /// Generate load against a balancer (see `elastic-lb load --help`).
    Load(elastic_lb::cli::load::LoadArgs),
}

#[derive(Debug, Clone, clap::Args)]
struct RunArgs {
    /// Configuration file (default: config/elastic-lb.toml if present, else built-in).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Address to listen on (overrides listener.address).
    #[arg(long, value_name = "ADDR")]
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
            // One line naming the problem and status 1, like every start-up error (SPEC §2).
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid command line");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("error: {first} (see --help)");
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
    let (config, _) = load_config(path)?;
    print!("{}", config.to_toml());
    Ok(ExitCode::SUCCESS)
}

/// Loads `path`, or `config/elastic-lb.toml` when it exists, or the built-in defaults.
/// Returns the file it read, if any (for SIGHUP reloads).
fn load_config(path: Option<&Path>) -> Result<(Config, Option<PathBuf>), config::ConfigError> {
    let path = match path {
        Some(p) => Some(p.to_path_buf()),
        None => Some(PathBuf::from(config::DEFAULT_PATH)).filter(|p| p.exists()),
    };
    match path {
        Some(p) => Ok((Config::load(&p)?, Some(p))),
        None => Ok((Config::default(), None)),
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
    let (mut config, path) = load_config(args.config.as_deref())?;
    if let Some(listen) = args.listen {
        config.listener.address = listen;
    }
    if let Some(admin) = args.admin {
        config.admin.address = admin;
    }
    if let Some(strategy) = args.strategy {
        config.dispatcher.strategy = strategy;
    }
    runtime()?.block_on(serve(config, path))
}

/// Binds, runs until a signal, shuts down.
async fn serve(config: Config, path: Option<PathBuf>) -> Result<ExitCode> {
    // Signal handlers are installed before the listener binds (SPEC §5).
    let mut sigint = signal(SignalKind::interrupt()).map_err(Error::Signals)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(Error::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(Error::Signals)?;

    let listener = bind(config.listener.address, false).await?;
    let admin_listener = match config.admin.address {
        AdminAddress::Off => None,
        AdminAddress::Addr(addr) => Some(bind(addr, true).await?),
    };
    let server = Server::start(config, listener, admin_listener)
        .await
        .map_err(Error::Start)?;
    info!(
        addr = %server.local_addr(),
        strategy = %server.config().dispatcher.strategy,
        "elastic-lb ready"
    );

    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => reload(&server, path.as_deref()).await,
        }
    }

    // A second signal during the graceful shutdown exits at once.
    let grace = server.config().shutdown.grace;
    tokio::select! {
        _ = server.shutdown(grace) => Ok(ExitCode::SUCCESS),
        _ = sigint.recv() => {
            info!("second signal: exiting now");
            Ok(ExitCode::from(130))
        }
        _ = sigterm.recv() => {
            info!("second signal: exiting now");
            Ok(ExitCode::from(130))
        }
    }
}

/// Binds a listener (`admin` only changes the error message).
async fn bind(addr: SocketAddr, admin: bool) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|source| Error::Bind {
        addr,
        admin,
        source,
    })
}

/// SIGHUP: read the file again; apply it, or keep the old configuration and log one error.
async fn reload(server: &Server, path: Option<&Path>) {
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
    match loaded {
        Ok(config) if config.backend != server.config().backend => {
            error!(
                "reload failed, keeping the old configuration: [backend] changes need a restart"
            );
        }
        Ok(mut config) => {
            // Listen addresses change only on restart; command-line overrides stay, except
            // the strategy: a reload applies the file's strategy again (SPEC §6).
            let current = server.config();
            config.listener.address = current.listener.address;
            config.admin.address = current.admin.address;
            info!(path = %path.display(), strategy = %config.dispatcher.strategy, "configuration reloaded");
            server.reload(config).await;
        }
        Err(e) => error!("reload failed, keeping the old configuration: {e}"),
    }
}
