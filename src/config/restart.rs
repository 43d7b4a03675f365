//! The keys a reload cannot change: what the daemon reads once, at start.
//!
//! `listener.address`, `listener.backlog`, `listener.threads`, `listener.io`,
//! `listener.pin_threads`, `admin.address` and `admin.max_connections` are properties of
//! sockets, event loops and of the admin server bound at start, and every key of
//! `[backend]` but `upstreams` shapes the machines and health checks built at start
//! (`[[backend.upstreams]]` is applied on reload: added upstreams join the pool, removed
//! ones drain). On SIGHUP, `main` calls
//! [`keep_restart_keys`]: the new configuration keeps the running values of these keys, the
//! rest applies at once, and each key that differs is reported so that `main` can log one
//! warning per key ("changes only on restart").
//!
//! `dispatcher.seed` and `autoscaler.initial` are only read at start too (the RNG seed, the
//! boot machines). A change to them is reported the same way, but their new values stay in
//! the configuration: nothing reads them after start, and validation checks `initial`
//! against the new pool.

use toml::{Table, Value};

use super::schema::Config;

/// Tables whose every key needs a restart.
const RESTART_TABLES: [&str; 1] = ["backend"];
/// Keys of [`RESTART_TABLES`] that a reload applies: (table, key).
const RELOADABLE_KEYS: [(&str, &str); 1] = [("backend", "upstreams")];
/// Single keys that need a restart: (table, key).
const RESTART_KEYS: [(&str, &str); 7] = [
    ("listener", "address"),
    ("listener", "backlog"),
    ("listener", "threads"),
    ("listener", "io"),
    ("listener", "pin_threads"),
    ("admin", "address"),
    ("admin", "max_connections"),
];
/// Keys only read at start, whose new values are inert until then: reported, not reset.
const START_ONLY_KEYS: [(&str, &str); 2] = [("dispatcher", "seed"), ("autoscaler", "initial")];

/// A key whose new value waits for a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartChange {
    /// Dotted key, e.g. `listener.address`.
    pub key: String,
    /// The value in force, written as in TOML (`"(not set)"` when absent).
    pub running: String,
    /// The value the new configuration asks for, written the same way.
    pub wanted: String,
}

/// Puts the running values of the restart-only keys back into `next` and returns every
/// such key whose value `next` wanted to change (socket keys, then the start-only keys,
/// then `[backend]` in key order).
pub fn keep_restart_keys(running: &Config, next: &mut Config) -> Vec<RestartChange> {
    let changes = restart_changes(running, next);
    next.listener.address = running.listener.address;
    next.listener.backlog = running.listener.backlog;
    next.listener.threads = running.listener.threads;
    next.listener.io = running.listener.io;
    next.listener.pin_threads = running.listener.pin_threads;
    next.admin.address = running.admin.address;
    next.admin.max_connections = running.admin.max_connections;
    let upstreams = std::mem::take(&mut next.backend.upstreams);
    next.backend = running.backend.clone();
    // `[[backend.upstreams]]` is applied by the proxy factory on reload (SPEC §8).
    next.backend.upstreams = upstreams;
    changes
}

/// The restart-only keys whose values differ between `running` and `next`. Whole tables
/// are compared key by key through their TOML form, so that a key added to `[backend]` is
/// covered without a change here.
fn restart_changes(running: &Config, next: &Config) -> Vec<RestartChange> {
    let (old, new) = (as_table(running), as_table(next));
    let mut keys: Vec<(String, String)> = RESTART_KEYS
        .iter()
        .chain(&START_ONLY_KEYS)
        .map(|(t, k)| (t.to_string(), k.to_string()))
        .collect();
    for table in RESTART_TABLES {
        let mut names: Vec<String> = [&old, &new]
            .iter()
            .filter_map(|c| c.get(table).and_then(Value::as_table))
            .flat_map(|t| t.keys().cloned())
            .collect();
        names.sort();
        names.dedup();
        names.retain(|k| !RELOADABLE_KEYS.contains(&(table, k.as_str())));
        keys.extend(names.into_iter().map(|k| (table.to_string(), k)));
    }
    keys.into_iter()
        .filter_map(|(table, key)| {
            let value = |c: &Table| c.get(&table).and_then(|t| t.get(&key)).cloned();
            let (before, after) = (value(&old), value(&new));
            (before != after).then(|| RestartChange {
                key: format!("{table}.{key}"),
                running: show(before.as_ref()),
                wanted: show(after.as_ref()),
            })
        })
        .collect()
}

/// The configuration as a TOML table (empty if it cannot be represented, which the schema
/// rules out: `Config::to_toml` relies on the same).
fn as_table(config: &Config) -> Table {
    Table::try_from(config).unwrap_or_default()
}

/// A value as TOML writes it inline.
fn show(value: Option<&Value>) -> String {
    value.map_or_else(|| "(not set)".to_string(), Value::to_string)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::*;
    use crate::config::{AdminAddress, BackendMode, IoEngine, UpstreamConfig};
    use crate::core::{Size, StrategyKind};

    #[test]
    fn nothing_to_report_when_only_live_keys_change() {
        let running = Config::default();
        let mut next = Config::default();
        next.dispatcher.strategy = StrategyKind::RoundRobin;
        next.listener.max_connections = 5;
        let wanted = next.clone();
        assert!(keep_restart_keys(&running, &mut next).is_empty());
        assert_eq!(next, wanted, "live keys are applied as given");
    }

    #[test]
    fn socket_keys_keep_their_running_values_and_are_reported() {
        let running = Config::default();
        let mut next = Config::default();
        next.listener.address = SocketAddr::from(([127, 0, 0, 1], 9000));
        next.listener.backlog = 16;
        next.admin.address = AdminAddress::Off;
        next.admin.max_connections = 8;
        next.listener.threads = 3;
        next.listener.io = IoEngine::Epoll;
        next.listener.pin_threads = true;
        next.listener.idle_timeout = Duration::from_secs(5);
        let changes = keep_restart_keys(&running, &mut next);
        let keys: Vec<&str> = changes.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "listener.address",
                "listener.backlog",
                "listener.threads",
                "listener.io",
                "listener.pin_threads",
                "admin.address",
                "admin.max_connections"
            ]
        );
        assert_eq!(changes[0].running, "\"127.0.0.1:7070\"");
        assert_eq!(changes[0].wanted, "\"127.0.0.1:9000\"");
        assert_eq!(changes[4].wanted, "true");
        assert_eq!(changes[5].wanted, "\"off\"");
        assert_eq!(next.listener.address, running.listener.address);
        assert_eq!(next.listener.backlog, running.listener.backlog);
        assert_eq!(
            (
                next.listener.threads,
                next.listener.io,
                next.listener.pin_threads
            ),
            (0, IoEngine::Auto, false)
        );
        assert_eq!(next.admin, running.admin);
        assert_eq!(
            next.listener.idle_timeout,
            Duration::from_secs(5),
            "live key applied"
        );
    }

    #[test]
    fn start_only_keys_are_reported_but_keep_their_new_values() {
        let running = Config::default();
        let mut next = Config::default();
        next.dispatcher.seed = 9;
        next.autoscaler.initial = vec![Size::Small];
        let changes = keep_restart_keys(&running, &mut next);
        let keys: Vec<&str> = changes.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["dispatcher.seed", "autoscaler.initial"]);
        assert_eq!(changes[1].running, "[\"medium\"]");
        assert_eq!(changes[1].wanted, "[\"small\"]");
        assert_eq!(next.dispatcher.seed, 9);
        assert_eq!(next.autoscaler.initial, vec![Size::Small]);
    }

    #[test]
    fn every_changed_backend_key_is_reported_once() {
        let running = Config::default();
        let mut next = Config::default();
        next.backend.mode = BackendMode::Proxy;
        next.backend.health_check_interval = Duration::from_secs(7);
        next.backend.upstreams = vec![UpstreamConfig {
            address: SocketAddr::from(([127, 0, 0, 1], 9001)),
            size: Size::Large,
            max_connections: None,
        }];
        let changes = keep_restart_keys(&running, &mut next);
        let keys: Vec<&str> = changes.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["backend.health_check_interval", "backend.mode"]);
        assert_eq!(changes[1].running, "\"simulated\"");
        assert_eq!(changes[1].wanted, "\"proxy\"");
        assert_eq!(next.backend.mode, running.backend.mode);
        assert_eq!(
            next.backend.upstreams.len(),
            1,
            "backend.upstreams is applied on reload"
        );
        next.backend.upstreams.clear();
        assert_eq!(next.backend, running.backend);
        assert!(
            restart_changes(&running, &next).is_empty(),
            "nothing left to differ"
        );
    }
}
