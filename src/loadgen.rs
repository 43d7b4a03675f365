//! `elastic-lb load`: the built-in load generator (SPEC §7).
//!
//! TODO(issue 5): not implemented yet; the command exits with an error saying so.

use std::net::SocketAddr;

/// Arguments of `elastic-lb load` (SPEC §7).
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Balancer address.
    #[arg(long, value_name = "ADDR")]
    pub target: SocketAddr,
}

/// Why a load run failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Not implemented yet.
    #[error("the load generator is not implemented yet")]
    NotImplemented,
}

/// Runs the load generator.
///
/// # Errors
///
/// [`LoadError`] when the run cannot start.
pub async fn run(args: LoadArgs) -> Result<(), LoadError> {
    let _ = args;
    Err(LoadError::NotImplemented)
}
