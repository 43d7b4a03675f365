//! `backend.provider`: the command that creates and destroys upstreams on demand.
//!
//! The contract has two verbs, both run with a time limit of `backend.provider_timeout`:
//!
//! - `COMMAND acquire SIZE` prints the new upstream's `host:port` on the first line of its
//!   stdout and exits 0. A non-zero exit, no address or the time limit means "none
//!   available" (a warning is logged; the pool waits 1 s, doubling up to 1 min, before the
//!   next try).
//! - `COMMAND release ADDRESS` destroys the upstream at `ADDRESS` (exit status logged only).
//!
//! Both run as background tasks, never in the dispatcher. The command's stderr goes to the
//! daemon's stderr. A command that starts a background process must detach that
//! process's stdout (e.g. `nohup … >/dev/null`): the answer is complete only when stdout
//! closes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tracing::{info, warn};

use crate::core::Size;

/// The configured provider command.
#[derive(Debug, Clone)]
pub struct Provider {
    command: PathBuf,
    timeout: Duration,
}

impl Provider {
    /// The provider `command`, each run limited to `timeout`.
    pub fn new(command: PathBuf, timeout: Duration) -> Self {
        Provider { command, timeout }
    }

    /// `backend.provider_timeout`.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `COMMAND acquire SIZE`; the upstream it created, or `None` (warned).
    pub async fn acquire(&self, size: Size) -> Option<SocketAddr> {
        let stdout = match self.run("acquire", size.as_str()).await {
            Ok(stdout) => stdout,
            Err(e) => {
                warn!(command = %self.command.display(), %size, error = %e, "provider acquire: none available");
                return None;
            }
        };
        let line = stdout.lines().map(str::trim).find(|l| !l.is_empty());
        let Some(line) = line else {
            warn!(command = %self.command.display(), %size, "provider acquire printed no address");
            return None;
        };
        match tokio::net::lookup_host(line).await.map(|mut a| a.next()) {
            Ok(Some(address)) if address.port() != 0 => {
                info!(upstream = %address, %size, "provider acquired an upstream");
                Some(address)
            }
            Ok(_) | Err(_) => {
                warn!(command = %self.command.display(), output = line, "provider acquire printed no usable host:port");
                None
            }
        }
    }

    /// Runs `COMMAND release ADDRESS`; failures are logged.
    pub async fn release(&self, address: SocketAddr) {
        match self.run("release", &address.to_string()).await {
            Ok(_) => info!(upstream = %address, "provider released an upstream"),
            Err(e) => {
                warn!(command = %self.command.display(), upstream = %address, error = %e, "provider release failed")
            }
        }
    }

    /// Runs the command with `verb arg`; its stdout when it exits 0 within the limit.
    async fn run(&self, verb: &str, arg: &str) -> Result<String, String> {
        let child = Command::new(&self.command)
            .arg(verb)
            .arg(arg)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start: {e}"))?;
        let output = tokio::time::timeout(self.timeout, child.wait_with_output())
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
            .map_err(|e| format!("cannot read its output: {e}"))?;
        if !output.status.success() {
            return Err(format!("exited with {}", output.status));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}
