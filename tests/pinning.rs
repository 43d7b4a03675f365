//! `listener.pin_threads`: each event-loop thread stays on one CPU, the loops taking the
//! CPUs the process may use in turn; without it a loop may run on any of them. (A test
//! binary of its own: it reads every thread of the process.)

mod common;

use std::time::Duration;

use common::echo::{proxy_config, round_trip, Echo};
use common::{start_lb_loops, wait_until, TIMEOUT};
use tokio::net::TcpStream;

/// Expands a kernel CPU list such as `0-2,5` into `[0, 1, 2, 5]`.
fn cpu_list(text: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (from, to) = part.split_once('-').unwrap_or((part, part));
        let (from, to): (usize, usize) = (from.parse().expect("cpu"), to.parse().expect("cpu"));
        cpus.extend(from..=to);
    }
    cpus
}

/// The `Cpus_allowed_list` of a `/proc/.../status` file.
fn allowed(status_path: &str) -> Option<Vec<usize>> {
    let status = std::fs::read_to_string(status_path).ok()?;
    let line = status
        .lines()
        .find(|l| l.starts_with("Cpus_allowed_list:"))?;
    Some(cpu_list(line.trim_start_matches("Cpus_allowed_list:")))
}

/// The allowed CPUs of each event-loop thread of this process (thread names are cut to 15
/// bytes by the kernel, so the loop's index is not there).
fn loop_threads() -> Vec<Vec<usize>> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .flatten()
    {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.starts_with("elastic-lb-ring") || comm.starts_with("elastic-lb-loop") {
            if let Some(cpus) = allowed(&path.join("status").to_string_lossy()) {
                found.push(cpus);
            }
        }
    }
    found.sort();
    found
}

async fn serve_and_stop(pin: bool, loops: usize) -> Vec<Vec<usize>> {
    let echo = Echo::start().await;
    let mut cfg = proxy_config(1.0, &[echo.addr]);
    cfg.listener.pin_threads = pin;
    let lb = start_lb_loops(cfg, loops).await;
    let mut client = TcpStream::connect(lb.addr).await.expect("connect");
    assert_eq!(round_trip(&mut client, b"pinned?").await, b"pinned?");
    let threads = loop_threads();
    drop(client);
    tokio::time::timeout(TIMEOUT, lb.server.shutdown(Duration::from_secs(5)))
        .await
        .expect("shutdown ends");
    wait_until(TIMEOUT, "the loop threads ended", || {
        loop_threads().is_empty()
    })
    .await;
    threads
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_loops_each_keep_one_cpu_and_take_the_cpus_in_turn() {
    // What the daemon pins to: the online CPUs of the affinity mask (`Cpus_allowed_list`
    // may also name CPUs that are offline).
    let usable = elastic_lb::server::affinity::allowed_cpus();
    let mask = allowed("/proc/self/status").expect("Cpus_allowed_list");
    assert!(!usable.is_empty() && usable.iter().all(|cpu| mask.contains(cpu)));

    let pinned = serve_and_stop(true, 3).await;
    let mut expected: Vec<Vec<usize>> = (0..3).map(|i| vec![usable[i % usable.len()]]).collect();
    expected.sort();
    assert_eq!(
        pinned, expected,
        "one CPU per loop, in turn over {usable:?}"
    );

    let unpinned = serve_and_stop(false, 3).await;
    assert_eq!(
        unpinned,
        vec![mask.clone(); 3],
        "unpinned loops may run anywhere"
    );
    if mask.len() < 2 {
        eprintln!("one CPU only: pinned and unpinned loops look the same here");
    }
}
