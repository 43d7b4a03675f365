//! `listener.pin_threads`: each event-loop thread stays on one CPU (nginx's
//! `worker_cpu_affinity auto`, HAProxy's `cpu-map`).
//!
//! Without it the scheduler may put two loops on the same CPU for a while, and the
//! connections of one wait for the other; pinned, each loop keeps its own CPU's run queue.
//! Measured on this project's 2-core benchmark host, where the load generator and the
//! upstream share the CPUs: closed-loop p99 1.86 → 1.54 ms and 1.75 → 1.47 ms, 16–17 %
//! lower (`docs/performance.md`, "Pinned event loops").

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use tracing::warn;

/// The CPUs the calling thread may run on (the daemon's: the process's affinity mask, e.g. a
/// container's cpuset, less offline CPUs), in ascending order. Empty when unknown, which
/// includes hosts with CPU numbers of 1024 and above (`CpuSet`'s size): loops then run
/// unpinned.
pub fn allowed_cpus() -> Vec<usize> {
    match sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count())
            .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
            .collect(),
        Err(e) => {
            warn!(error = %e, "cannot read the CPUs this process may use; loops are not pinned");
            Vec::new()
        }
    }
}

/// The CPU for loop `index` among `cpus`: the loops take the CPUs in turn.
pub fn cpu_for(cpus: &[usize], index: usize) -> Option<usize> {
    cpus.get(index.checked_rem(cpus.len())?).copied()
}

/// Keeps the calling thread on `cpu`; a failure is logged and the thread runs unpinned.
pub fn pin_current_thread(cpu: usize) {
    let mut set = CpuSet::new();
    let pinned = set
        .set(cpu)
        .and_then(|()| sched_setaffinity(Pid::from_raw(0), &set));
    if let Err(e) = pinned {
        warn!(cpu, error = %e, "cannot pin an event-loop thread; it runs unpinned");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loops_take_the_allowed_cpus_in_turn() {
        let cpus = [2, 3, 6];
        let picked: Vec<_> = (0..5).map(|i| cpu_for(&cpus, i)).collect();
        assert_eq!(picked, [Some(2), Some(3), Some(6), Some(2), Some(3)]);
        assert_eq!(cpu_for(&[], 0), None);
    }

    #[test]
    fn this_process_may_run_somewhere() {
        assert!(!allowed_cpus().is_empty());
    }
}
