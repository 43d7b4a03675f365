//! The rules of SPEC §3 that serde cannot check: ranges, upper bounds the daemon can run
//! with, and cross-field constraints ([`Config::validate`]).
//!
//! A broken rule is a [`ValidationError`] naming the dotted key, the offending value as
//! written in TOML and what would be valid; `diagnostics` adds the file and line.

use std::time::Duration;

use super::duration;
use super::schema::{AdminAddress, BackendMode, Config};
use super::token::AdminToken;
use crate::core::{Size, SizeCounts};

/// Longest duration any key accepts.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// Largest `listener.max_connections`.
pub const MAX_CONNECTIONS: u64 = 1_000_000;
/// Largest `listener.max_line_bytes` (64 MiB).
pub const MAX_LINE_BYTES: u64 = 64 << 20;
/// Largest `machines.queue_depth`.
pub const MAX_QUEUE_DEPTH: u64 = 1 << 20;
/// Largest `autoscaler.max_machines` (and so `min_machines` and the number of `initial`
/// machines). The dispatcher starts `min_machines` machines at boot, and start-up grows
/// with the square of that number (10,000 machines: 1.4 s in a debug build, 100,000: two
/// minutes), so an unbounded value let `check` accept a daemon that never comes up.
pub const MAX_MACHINES: u64 = 1024;
/// Largest capacity or request weight, load units.
pub const MAX_UNITS: u64 = 1_000_000_000;
/// Largest `load.requests.service_ms_per_unit` (one minute per unit).
pub const MAX_SERVICE_MS_PER_UNIT: f64 = 60_000.0;
/// Largest `autoscaler.max_step`.
pub const MAX_STEP: usize = 10_000;
/// Most `listener.threads` (each is an OS thread with its own event loop).
const MAX_LISTENER_THREADS: usize = 256;
/// Largest `listener.backlog` (the kernel caps it further at `net.core.somaxconn`).
pub const MAX_BACKLOG: u32 = 65_535;
/// Largest `admin.max_connections`.
pub const MAX_ADMIN_CONNECTIONS: usize = 10_000;

/// A broken rule of SPEC §3, found by [`Config::validate`]: `<key> = <value>: <message>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} = {value}: {message}")]
pub struct ValidationError {
    /// Dotted key, e.g. `autoscaler.min_machines`.
    pub key: String,
    /// The offending value, written as in TOML (`-5`, `"0s"`, `["large", "large"]`).
    pub value: String,
    /// What is wrong and what would be valid.
    pub message: String,
    /// The other key of a cross-field rule (`autoscaler.max_machines` for
    /// `min_machines > max_machines`); its line is reported when `key` is not in the file.
    pub related: Option<String>,
    /// For a key of an array of tables (`backend.upstreams.address`): which entry, from 0,
    /// so that the line reported is that entry's and not the first one's.
    pub entry: Option<usize>,
}

impl ValidationError {
    fn new(key: &str, value: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError {
            key: key.to_string(),
            value: value.into(),
            message: message.into(),
            related: None,
            entry: None,
        }
    }

    fn entry(mut self, index: usize) -> Self {
        self.entry = Some(index);
        self
    }

    fn related(mut self, key: &str) -> Self {
        self.related = Some(key.to_string());
        self
    }
}

impl Config {
    /// Checks the rules of SPEC §3 that serde cannot: ranges and cross-field constraints.
    ///
    /// # Errors
    ///
    /// The first broken rule, naming the key and the offending value.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let at_least_one = "must be at least 1";
        let l = &self.listener;
        if l.max_connections == 0 {
            return Err(ValidationError::new(
                "listener.max_connections",
                "0",
                at_least_one,
            ));
        }
        if l.max_line_bytes == 0 {
            return Err(ValidationError::new(
                "listener.max_line_bytes",
                "0",
                at_least_one,
            ));
        }
        if let AdminAddress::Addr(admin) = self.admin.address {
            if super::addr::listeners_collide(admin, l.address) {
                return Err(ValidationError::new(
                    "admin.address",
                    quoted(admin),
                    format!(
                        "must differ from listener.address (\"{}\"): the two cannot share a port",
                        l.address
                    ),
                )
                .related("listener.address"));
            }
        }

        self.validate_sockets()?;

        let load = &self.load;
        for (key, v) in [
            ("load.connection_min", load.connection_min),
            ("load.connection_max", load.connection_max),
            (
                "load.requests.service_ms_per_unit",
                load.requests.service_ms_per_unit,
            ),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(ValidationError::new(
                    key,
                    float(v),
                    "must be a finite number >= 0",
                ));
            }
        }
        if load.connection_min > load.connection_max {
            return Err(ValidationError::new(
                "load.connection_min",
                float(load.connection_min),
                format!(
                    "must be <= load.connection_max ({})",
                    float(load.connection_max)
                ),
            )
            .related("load.connection_max"));
        }

        let m = &self.machines;
        for size in Size::ALL {
            let capacity = match size {
                Size::Small => m.small,
                Size::Medium => m.medium,
                Size::Large => m.large,
                Size::Xlarge => m.xlarge,
            };
            if capacity <= 0 {
                return Err(ValidationError::new(
                    &format!("machines.{size}"),
                    capacity.to_string(),
                    "capacity must be > 0",
                ));
            }
        }
        if m.queue_depth == 0 {
            return Err(ValidationError::new(
                "machines.queue_depth",
                "0",
                at_least_one,
            ));
        }

        self.validate_bounds()?;

        let b = &self.backend;
        for (key, d) in [
            ("backend.health_check_interval", b.health_check_interval),
            ("backend.health_check_timeout", b.health_check_timeout),
            ("backend.connect_timeout", b.connect_timeout),
            ("backend.server_timeout", b.server_timeout),
            ("backend.eject_for", b.eject_for),
            ("backend.provider_timeout", b.provider_timeout),
            ("backend.queue_timeout", b.queue_timeout),
        ] {
            if d.is_zero() {
                return Err(ValidationError::new(
                    key,
                    quoted(duration::format(d)),
                    "must be > 0",
                ));
            }
        }
        for (key, n) in [
            ("backend.health_check_rise", b.health_check_rise),
            ("backend.health_check_fall", b.health_check_fall),
            ("backend.max_fails", b.max_fails),
        ] {
            if n == 0 || n > 1000 {
                return Err(ValidationError::new(
                    key,
                    n.to_string(),
                    "must be between 1 and 1000",
                ));
            }
        }
        if let Some((i, u)) =
            (b.upstreams.iter().enumerate()).find(|(_, u)| u.max_connections == Some(0))
        {
            return Err(ValidationError::new(
                "backend.upstreams.max_connections",
                "0",
                format!(
                    "upstream {}: must be at least 1 (omit it for no limit)",
                    u.address
                ),
            )
            .entry(i));
        }
        if b.mode == BackendMode::Proxy && b.upstreams.is_empty() && b.provider.is_none() {
            return Err(ValidationError::new(
                "backend.mode",
                "\"proxy\"",
                "proxy mode needs at least one [[backend.upstreams]] entry or a backend.provider",
            ));
        }
        if let Some(provider) = &b.provider {
            if provider.command.as_os_str().is_empty() {
                return Err(ValidationError::new(
                    "backend.provider.command",
                    "\"\"",
                    "must name the provider command",
                ));
            }
        }
        for (i, u) in b.upstreams.iter().enumerate() {
            if u.address.port() == 0 {
                return Err(ValidationError::new(
                    "backend.upstreams.address",
                    quoted(u.address),
                    "port 0: an upstream is connected to on the port it listens on",
                )
                .entry(i));
            }
            if b.upstreams[..i].iter().any(|o| o.address == u.address) {
                return Err(ValidationError::new(
                    "backend.upstreams.address",
                    quoted(u.address),
                    "address listed twice in [[backend.upstreams]]",
                )
                .entry(i));
            }
        }
        self.validate_autoscaler()
    }

    /// Upper bounds: every value `check` accepts must be one the daemon can run with (no
    /// timer overflow, no allocation of an absurd queue, no connection that can never fit).
    fn validate_bounds(&self) -> Result<(), ValidationError> {
        let durations = [
            ("listener.idle_timeout", self.listener.idle_timeout),
            ("listener.line_timeout", self.listener.line_timeout),
            (
                "autoscaler.scale_down_after",
                self.autoscaler.scale_down_after,
            ),
            ("autoscaler.interval", self.autoscaler.interval),
            ("shutdown.grace", self.shutdown.grace),
            (
                "backend.health_check_interval",
                self.backend.health_check_interval,
            ),
            (
                "backend.health_check_timeout",
                self.backend.health_check_timeout,
            ),
            ("backend.connect_timeout", self.backend.connect_timeout),
            ("backend.server_timeout", self.backend.server_timeout),
            ("backend.eject_for", self.backend.eject_for),
            ("backend.provider_timeout", self.backend.provider_timeout),
            ("backend.queue_timeout", self.backend.queue_timeout),
        ];
        for (key, d) in durations {
            if d > MAX_DURATION {
                return Err(ValidationError::new(
                    key,
                    quoted(duration::format(d)),
                    "must be at most 365 days",
                ));
            }
        }
        let counts = [
            (
                "listener.max_connections",
                self.listener.max_connections as u64,
                MAX_CONNECTIONS,
            ),
            (
                "listener.max_line_bytes",
                self.listener.max_line_bytes as u64,
                MAX_LINE_BYTES,
            ),
            (
                "machines.queue_depth",
                self.machines.queue_depth as u64,
                MAX_QUEUE_DEPTH,
            ),
            (
                "autoscaler.max_machines",
                self.autoscaler.max_machines as u64,
                MAX_MACHINES,
            ),
            ("load.requests.small", self.load.requests.small, MAX_UNITS),
            ("load.requests.medium", self.load.requests.medium, MAX_UNITS),
            ("load.requests.large", self.load.requests.large, MAX_UNITS),
        ];
        for (key, v, max) in counts {
            if v > max {
                return Err(ValidationError::new(
                    key,
                    v.to_string(),
                    format!("must be at most {max}"),
                ));
            }
        }
        for size in Size::ALL {
            let capacity = self.machines.capacity(size);
            if capacity > MAX_UNITS {
                return Err(ValidationError::new(
                    &format!("machines.{size}"),
                    capacity.to_string(),
                    format!("must be at most {MAX_UNITS}"),
                ));
            }
        }
        let ms = self.load.requests.service_ms_per_unit;
        if ms > MAX_SERVICE_MS_PER_UNIT {
            return Err(ValidationError::new(
                "load.requests.service_ms_per_unit",
                float(ms),
                format!("must be at most {MAX_SERVICE_MS_PER_UNIT}"),
            ));
        }
        // A reservation larger than every capacity could never be placed: every such
        // connection would drain the pool and still be refused.
        let largest = Size::ALL
            .into_iter()
            .map(|s| self.machines.capacity(s))
            .max()
            .unwrap_or(0);
        if self.load.connection_max > largest as f64 {
            return Err(ValidationError::new(
                "load.connection_max",
                float(self.load.connection_max),
                format!("must be <= the largest machine capacity ({largest})"),
            ));
        }
        Ok(())
    }

    /// The `[autoscaler]` rules, including `initial` against the pool.
    fn validate_autoscaler(&self) -> Result<(), ValidationError> {
        let a = &self.autoscaler;
        if a.max_machines == 0 {
            return Err(ValidationError::new(
                "autoscaler.max_machines",
                "0",
                "must be at least 1",
            ));
        }
        if a.min_machines > a.max_machines {
            return Err(ValidationError::new(
                "autoscaler.min_machines",
                a.min_machines.to_string(),
                format!("must be <= autoscaler.max_machines ({})", a.max_machines),
            )
            .related("autoscaler.max_machines"));
        }
        for (key, v) in [
            ("autoscaler.scale_up_threshold", a.scale_up_threshold),
            ("autoscaler.scale_down_threshold", a.scale_down_threshold),
        ] {
            if !(0.0..=100.0).contains(&v) {
                return Err(ValidationError::new(
                    key,
                    float(v),
                    "must be between 0 and 100 (percent of capacity)",
                ));
            }
        }
        if a.scale_down_threshold >= a.scale_up_threshold {
            return Err(ValidationError::new(
                "autoscaler.scale_down_threshold",
                float(a.scale_down_threshold),
                format!(
                    "must be below autoscaler.scale_up_threshold ({})",
                    float(a.scale_up_threshold)
                ),
            )
            .related("autoscaler.scale_up_threshold"));
        }
        if a.interval.is_zero() {
            return Err(ValidationError::new(
                "autoscaler.interval",
                quoted(duration::format(a.interval)),
                "must be > 0",
            ));
        }
        if !(a.target > 0.0 && a.target <= 100.0) {
            return Err(ValidationError::new(
                "autoscaler.target",
                float(a.target),
                "must be above 0 and at most 100 (percent of capacity)",
            ));
        }
        if !(0.0..1.0).contains(&a.tolerance) {
            return Err(ValidationError::new(
                "autoscaler.tolerance",
                float(a.tolerance),
                "must be at least 0 and below 1 (a fraction of the target)",
            ));
        }
        if let Some(up) = a.scale_up_tolerance {
            if !(0.0..1.0).contains(&up) {
                return Err(ValidationError::new(
                    "autoscaler.scale_up_tolerance",
                    float(up),
                    "must be at least 0 and below 1 (a fraction of the target)",
                ));
            }
        }
        if a.max_step == 0 || a.max_step > MAX_STEP {
            return Err(ValidationError::new(
                "autoscaler.max_step",
                a.max_step.to_string(),
                format!("must be between 1 and {MAX_STEP}"),
            ));
        }
        if !(0.0..=100.0).contains(&a.rebalance_tolerance) {
            return Err(ValidationError::new(
                "autoscaler.rebalance_tolerance",
                float(a.rebalance_tolerance),
                "must be between 0 (off) and 100 (percentage points)",
            ));
        }

        let initial = || {
            let names: Vec<String> = a.initial.iter().map(quoted).collect();
            format!("[{}]", names.join(", "))
        };
        if a.initial.len() > a.max_machines {
            return Err(ValidationError::new(
                "autoscaler.initial",
                initial(),
                format!(
                    "{} machines exceed autoscaler.max_machines ({})",
                    a.initial.len(),
                    a.max_machines
                ),
            )
            .related("autoscaler.max_machines"));
        }
        let proxy = self.backend.mode == BackendMode::Proxy;
        // A provider creates upstreams on demand: the list is no bound then.
        let provided = proxy && self.backend.provider.is_some();
        for size in Size::ALL.into_iter().filter(|_| !provided) {
            let wanted = a.initial.iter().filter(|s| **s == size).count();
            let available = usize::try_from(pool_sizes(self).get(size)).unwrap_or(usize::MAX);
            if wanted > available {
                let supply = if proxy {
                    format!("[[backend.upstreams]] has {available} of size {size}")
                } else {
                    format!("pool.{size} = {available}")
                };
                let error = ValidationError::new(
                    "autoscaler.initial",
                    initial(),
                    format!("{wanted} {size} machines requested but {supply}"),
                );
                return Err(if proxy {
                    error
                } else {
                    error.related(&format!("pool.{size}"))
                });
            }
        }
        Ok(())
    }
}

impl Config {
    /// `listener.backlog` and the `[admin]` keys beyond the address: the connection cap and
    /// the token.
    fn validate_sockets(&self) -> Result<(), ValidationError> {
        let backlog = self.listener.backlog;
        if !(1..=MAX_BACKLOG).contains(&backlog) {
            return Err(ValidationError::new(
                "listener.backlog",
                backlog.to_string(),
                format!("must be between 1 and {MAX_BACKLOG}"),
            ));
        }
        let threads = self.listener.threads;
        if threads > MAX_LISTENER_THREADS {
            return Err(ValidationError::new(
                "listener.threads",
                threads.to_string(),
                format!("must be between 0 (one per core) and {MAX_LISTENER_THREADS}"),
            ));
        }
        let admin = &self.admin;
        if !(1..=MAX_ADMIN_CONNECTIONS).contains(&admin.max_connections) {
            return Err(ValidationError::new(
                "admin.max_connections",
                admin.max_connections.to_string(),
                format!("must be between 1 and {MAX_ADMIN_CONNECTIONS}"),
            ));
        }
        if let Some(problem) = admin.token.as_ref().and_then(AdminToken::problem) {
            // The value is a secret: the message names the key, never the token.
            return Err(ValidationError::new("admin.token", "\"<hidden>\"", problem));
        }
        Ok(())
    }
}

/// A value written as a TOML string: `"x"`.
fn quoted(v: impl std::fmt::Display) -> String {
    format!("\"{v}\"")
}

/// A float as TOML writes it (`50.0`, not `50`).
fn float(v: f64) -> String {
    format!("{v:?}")
}

impl Config {
    /// `autoscaler.min_machines` above what the pool can ever hand out (no provider): the
    /// pool's size then, for a start-up and reload warning. Valid — upstreams can be added at
    /// run time — but the minimum cannot hold.
    pub fn min_machines_beyond_pool(&self) -> Option<u64> {
        if self.backend.provider.is_some() {
            return None;
        }
        let pool = pool_sizes(self);
        let total: u64 = Size::ALL.iter().map(|&s| u64::from(pool.get(s))).sum();
        (self.autoscaler.min_machines as u64 > total).then_some(total)
    }
}

/// Machines of each size the backend can hand out at most: `[pool]`, or in proxy mode the
/// `[[backend.upstreams]]` of each size (SPEC §8: the upstreams are the pool). The running
/// factories report the same through `MachineFactory::pool_size`.
fn pool_sizes(config: &Config) -> SizeCounts {
    match config.backend.mode {
        BackendMode::Simulated => config.pool.counts(),
        BackendMode::Proxy => {
            let mut sizes = SizeCounts::EMPTY;
            for u in &config.backend.upstreams {
                *sizes.get_mut(u.size) += 1;
            }
            sizes
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    #[test]
    fn min_machines_beyond_the_pool_is_valid_but_flagged() {
        let parse = |text: &str| Config::from_toml(text, "x.toml").expect("valid");
        let pool = "[pool]\nsmall = 0\nmedium = 1\nlarge = 1\nxlarge = 0\n";
        let c = parse(&format!(
            "{pool}[autoscaler]\nmin_machines = 3\nmax_machines = 3\n"
        ));
        assert_eq!(c.min_machines_beyond_pool(), Some(2));
        let c = parse(&format!(
            "{pool}[autoscaler]\nmin_machines = 2\nmax_machines = 3\n"
        ));
        assert_eq!(c.min_machines_beyond_pool(), None);
        assert_eq!(Config::default().min_machines_beyond_pool(), None);
        // Proxy mode: the upstreams are the pool, unless a provider creates more.
        let proxy = "[autoscaler]\nmin_machines = 2\n[backend]\nmode = \"proxy\"\n";
        let one = "[[backend.upstreams]]\naddress = \"127.0.0.1:9001\"\n";
        let c = parse(&format!("{proxy}{one}"));
        assert_eq!(c.min_machines_beyond_pool(), Some(1));
        let c = parse(&format!(
            "{proxy}provider = {{ command = \"/bin/true\" }}\n{one}"
        ));
        assert_eq!(c.min_machines_beyond_pool(), None);
    }
}
