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
//!
//! Each run is a process group of its own. Past the time limit the whole group is killed,
//! so a script's slow step (a `docker run`, a cloud CLI call) does not outlive the "none
//! available" and create an upstream that nobody releases. Within the limit nothing is
//! killed: the upstream processes a local provider starts go on running.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
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
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start: {e}"))?;
        let group = child.id();
        let output = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(output) => output.map_err(|e| format!("cannot read its output: {e}"))?,
            Err(_) => {
                if let Some(group) = group {
                    kill_group(group);
                }
                return Err(format!(
                    "no answer within {:?} (its process group was killed)",
                    self.timeout
                ));
            }
        };
        if !output.status.success() {
            return Err(format!("exited with {}", output.status));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

/// Sends SIGKILL to process group `group` (the provider command and what it started). It
/// may be gone already; that is fine.
fn kill_group(group: u32) {
    let Ok(group) = i32::try_from(group) else {
        return;
    };
    if let Err(e) = killpg(Pid::from_raw(group), Signal::SIGKILL) {
        if e != Errno::ESRCH {
            warn!(group, error = %e, "cannot stop the provider command's process group");
        }
    }
}
