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
//! Each run is a process group of its own. Past the time limit, or when the daemon exits
//! while it runs, the whole group is killed: a script's slow step (a `sleep`, the `docker`
//! or cloud CLI process) does not outlive the "none available". What left the group escapes
//! (`setsid`, a container the docker daemon runs, an API request already sent). Within the
//! limit nothing is killed: the upstream processes a local provider starts go on running.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
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
        let mut child = Command::new(&self.command)
            .arg(verb)
            .arg(arg)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start: {e}"))?;
        // Until the command has answered, dropping this kills its whole group: past the time
        // limit, and when the run is cancelled (the daemon exits). Declared after `child`, so
        // it is dropped first: the leader is reaped only after the group was killed, and its
        // id cannot have gone to another group meanwhile.
        let mut group = Group(child.id());
        let mut stdout = child.stdout.take();
        let answered = tokio::time::timeout(self.timeout, async {
            let mut out = Vec::new();
            if let Some(stdout) = stdout.as_mut() {
                // An address is one short line; more than this is not read (the command
                // then blocks writing and runs into the time limit).
                stdout.take(MAX_OUTPUT).read_to_end(&mut out).await?;
            }
            let status = child.wait().await?;
            Ok::<_, io::Error>((status, out))
        })
        .await;
        let (status, out) = match answered {
            Ok(Ok(done)) => {
                group.disarm();
                done
            }
            Ok(Err(e)) => return Err(format!("cannot read its output: {e}")),
            Err(_) => {
                let killed = if group.kill() {
                    " (its process group was killed)"
                } else {
                    ""
                };
                return Err(format!("no answer within {:?}{killed}", self.timeout));
            }
        };
        if !status.success() {
            return Err(format!("exited with {status}"));
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// Bytes of a provider command's stdout that are read.
const MAX_OUTPUT: u64 = 64 * 1024;

/// A provider command's process group, killed when dropped unless disarmed.
struct Group(Option<u32>);

impl Group {
    /// The command answered and was reaped: its group is left alone.
    fn disarm(&mut self) {
        self.0 = None;
    }

    /// Kills the group now (once); whether the signal went out.
    fn kill(&mut self) -> bool {
        self.0.take().is_some_and(kill_group)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends SIGKILL to process group `group` (the provider command and what it started);
/// whether it went out. A group that is gone already is not worth a warning.
fn kill_group(group: u32) -> bool {
    let Ok(group) = i32::try_from(group) else {
        return false;
    };
    match killpg(Pid::from_raw(group), Signal::SIGKILL) {
        Ok(()) => true,
        Err(Errno::ESRCH) => false,
        Err(e) => {
            warn!(group, error = %e, "cannot stop the provider command's process group");
            false
        }
    }
}
