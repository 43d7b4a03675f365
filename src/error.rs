//! The crate's error at its outer boundaries: start-up, binding, the client commands.
//!
//! Each layer keeps its own typed error (`ConfigError`, `AdmitError`, `FactoryError`,
//! `FetchError`, `LoadError`, …); this enum gathers the ones that can end the process, so
//! that `main` prints every one the same way: one `error: …` line and exit status 1
//! (SPEC §2), with the source chain folded into that line.

use std::io;
use std::net::SocketAddr;

use crate::cli::http::FetchError;
use crate::cli::load::LoadError;
use crate::config::ConfigError;

/// What can stop `elastic-lb` from starting or a client command from finishing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration file cannot be read or is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener cannot be bound (port in use, no permission, address not local).
    #[error("cannot listen on {addr}{}: {source}", if *.admin { " (admin)" } else { "" })]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Whether it is the admin listener.
        admin: bool,
        /// Why.
        source: io::Error,
    },
    /// The signal handlers cannot be installed.
    #[error("signals: {0}")]
    Signals(#[source] io::Error),
    /// The tokio runtime cannot be built.
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] io::Error),
    /// The server cannot start on the bound sockets.
    #[error("cannot start: {0}")]
    Start(#[source] io::Error),
    /// `elastic-lb stats`: the admin endpoint cannot be reached or gave no stats.
    #[error(transparent)]
    Stats(#[from] FetchError),
    /// `elastic-lb load` failed.
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// `Result` with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
