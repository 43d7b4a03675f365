//! What the tests that run the built binary share: free loopback ports, a scratch directory
//! per test, and the child's stderr collected line by line.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};

/// A loopback address with a port that was free a moment ago (the OS picked it).
pub fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr")
}

/// A fresh, empty directory `<test binary>-<name>-<pid>` under `CARGO_TARGET_TMPDIR`.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "{}-{name}-{}",
        env!("CARGO_CRATE_NAME"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Takes `child`'s piped stderr and collects its lines from a thread of their own; the
/// returned vector holds the lines read so far.
pub fn capture_stderr(child: &mut Child) -> Arc<Mutex<Vec<String>>> {
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let pipe = child.stderr.take().expect("stderr piped");
    let sink = stderr.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
    stderr
}
