//! The configuration schema: one struct per TOML table of SPEC §3, with its built-in
//! defaults (`Default`, the values of the shipped `config/elastic-lb.toml`).
//!
//! Every table is `deny_unknown_fields` and `default`, so every key is optional and a typo
//! is an error. Durations are strings (`"250ms"`, see [`duration`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration;
use super::token::AdminToken;
use crate::core::{RequestClass, Size, SizeCounts, StrategyKind};

/// The whole configuration (SPEC §3). Every key is optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[listener]`
    pub listener: ListenerConfig,
    /// `[admin]`
    pub admin: AdminConfig,
    /// `[dispatcher]`
    pub dispatcher: DispatcherConfig,
    /// `[load]`
    pub load: LoadConfig,
    /// `[machines]`
    pub machines: MachinesConfig,
    /// `[pool]`
    pub pool: PoolConfig,
    /// `[autoscaler]`
    pub autoscaler: AutoscalerConfig,
    /// `[shutdown]`
    pub shutdown: ShutdownConfig,
    /// `[log]`
    pub log: LogConfig,
    /// `[backend]`
    pub backend: BackendConfig,
}

/// `[listener]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerConfig {
    /// Address the balancer listens on.
    pub address: SocketAddr,
    /// Open connections beyond this get `ERR overloaded` and are closed.
    pub max_connections: usize,
    /// Longest accepted line, not counting `\r\n`.
    pub max_line_bytes: usize,
    /// A client silent this long (with nothing in flight) is closed; zero = never.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// A line must be completed within this from its first byte; zero = no limit.
    #[serde(with = "duration")]
    pub line_timeout: Duration,
    /// Listen backlog of the main and the admin listener (the kernel caps it at
    /// `net.core.somaxconn`). Read once at start.
    pub backlog: u32,
    /// Event-loop threads that accept and serve connections, each with its own listening
    /// socket (`SO_REUSEPORT`); 0 = one per core where the backend's sessions can run on
    /// their own loops (proxy mode). Read once at start.
    pub threads: usize,
    /// How the event loops of proxy mode do their I/O: readiness (`epoll`, tokio) or
    /// completions (`io_uring`, ringloop); `auto` picks io_uring where the kernel allows
    /// it. Read once at start.
    #[serde(deserialize_with = "super::variant::named")]
    pub io: IoEngine,
    /// Pin each event-loop thread to one CPU of those the process may use, in turn (nginx
    /// `worker_cpu_affinity auto`, HAProxy `cpu-map`). Read once at start.
    pub pin_threads: bool,
}

/// `listener.io`: the I/O engine of proxy mode's event loops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoEngine {
    /// io_uring when this kernel and process may use it (Linux 6.1+, not disabled by
    /// `kernel.io_uring_disabled` or a seccomp profile), epoll otherwise.
    Auto,
    /// tokio's epoll-based runtime, one per loop.
    Epoll,
    /// One io_uring per loop; starting fails where io_uring is unavailable.
    IoUring,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            address: SocketAddr::from(([127, 0, 0, 1], 7070)),
            max_connections: 10_000,
            max_line_bytes: 8192,
            idle_timeout: Duration::from_secs(60),
            line_timeout: Duration::from_secs(10),
            backlog: 1024,
            threads: 0,
            io: IoEngine::Auto,
            pin_threads: false,
        }
    }
}

/// `[admin]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// HTTP admin address, or off.
    pub address: AdminAddress,
    /// Admin connections served at once; more wait in the kernel backlog. Read once at start.
    pub max_connections: usize,
    /// When set, mutating requests (`PUT`, `POST`, `DELETE`, …) need
    /// `Authorization: Bearer <token>`. Read live, so a reload can set or rotate it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<AdminToken>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            address: AdminAddress::Addr(SocketAddr::from(([127, 0, 0, 1], 7071))),
            max_connections: 256,
            token: None,
        }
    }
}

/// An admin address or `"off"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAddress {
    /// The admin endpoint is disabled.
    Off,
    /// Serve the admin endpoint here.
    Addr(SocketAddr),
}

/// An admin address that is neither `IP:port` nor `off`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid address \"{0}\" (expected ip:port, e.g. \"127.0.0.1:7071\", or \"off\")")]
pub struct AdminAddressError(pub String);

impl std::str::FromStr for AdminAddress {
    type Err = AdminAddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(AdminAddress::Off);
        }
        s.parse()
            .map(AdminAddress::Addr)
            .map_err(|_| AdminAddressError(s.to_string()))
    }
}

impl std::fmt::Display for AdminAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminAddress::Off => f.write_str("off"),
            AdminAddress::Addr(a) => a.fmt(f),
        }
    }
}

impl Serialize for AdminAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AdminAddress {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `[dispatcher]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatcherConfig {
    /// Placement strategy.
    pub strategy: StrategyKind,
    /// RNG seed; 0 = seed from the OS.
    pub seed: u64,
    /// What the strategy places: every request line, or only each connection.
    #[serde(deserialize_with = "super::variant::named")]
    pub routing: Routing,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        DispatcherConfig {
            strategy: StrategyKind::LeastConnections,
            seed: 0,
            routing: Routing::Request,
        }
    }
}

/// `dispatcher.routing` (SPEC §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Routing {
    /// Every request line is placed by the strategy among the active machines with queue
    /// room; the connection's reservation stays on its home machine.
    Request,
    /// Every request goes to the connection's home machine (until that machine drains).
    Connection,
}

/// `autoscaler.policy` (SPEC §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScalingPolicy {
    /// Acquire while the average load is above `scale_up_threshold`.
    Threshold,
    /// Target tracking: as many machines as keep the average at `autoscaler.target`.
    Target,
}

/// `[load]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadConfig {
    /// Smallest reservation (inclusive).
    pub connection_min: f64,
    /// Largest reservation (exclusive; equal to min = fixed reservation).
    pub connection_max: f64,
    /// `[load.requests]`
    pub requests: RequestsConfig,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            connection_min: 1.0,
            connection_max: 11.0,
            requests: RequestsConfig::default(),
        }
    }
}

/// `[load.requests]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestsConfig {
    /// Weight of a `SMALL` request.
    pub small: u64,
    /// Weight of a `MEDIUM` request.
    pub medium: u64,
    /// Weight of a `LARGE` request.
    pub large: u64,
    /// Class of a line that names none.
    pub default_class: RequestClass,
    /// Simulated service time per weight unit on a capacity-100 machine, ms (0 = instant).
    pub service_ms_per_unit: f64,
}

impl RequestsConfig {
    /// Weight of `class`, in load units.
    pub fn weight(&self, class: RequestClass) -> u64 {
        match class {
            RequestClass::Small => self.small,
            RequestClass::Medium => self.medium,
            RequestClass::Large => self.large,
        }
    }
}

impl Default for RequestsConfig {
    fn default() -> Self {
        RequestsConfig {
            small: 1,
            medium: 5,
            large: 10,
            default_class: RequestClass::Small,
            service_ms_per_unit: 1.0,
        }
    }
}

/// `[machines]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MachinesConfig {
    /// Capacity of a small machine.
    pub small: i64,
    /// Capacity of a medium machine.
    pub medium: i64,
    /// Capacity of a large machine.
    pub large: i64,
    /// Capacity of an xlarge machine.
    pub xlarge: i64,
    /// Bounded request queue of every machine.
    pub queue_depth: usize,
}

impl MachinesConfig {
    /// Capacity of `size`, in load units (validation guarantees it is positive).
    pub fn capacity(&self, size: Size) -> u64 {
        let c = match size {
            Size::Small => self.small,
            Size::Medium => self.medium,
            Size::Large => self.large,
            Size::Xlarge => self.xlarge,
        };
        c.max(0) as u64
    }
}

impl Default for MachinesConfig {
    fn default() -> Self {
        MachinesConfig {
            small: 50,
            medium: 100,
            large: 200,
            xlarge: 400,
            queue_depth: 1024,
        }
    }
}

/// `[pool]`: machines of each size the factory can hand out at once. Also used for the
/// free counts the admin API reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Small machines.
    pub small: u32,
    /// Medium machines.
    pub medium: u32,
    /// Large machines.
    pub large: u32,
    /// Xlarge machines.
    pub xlarge: u32,
}

impl PoolConfig {
    /// The pool sizes as plain per-size counts.
    pub fn counts(&self) -> SizeCounts {
        SizeCounts {
            small: self.small,
            medium: self.medium,
            large: self.large,
            xlarge: self.xlarge,
        }
    }

    /// Pool size of `size`.
    pub fn get(&self, size: Size) -> u32 {
        self.counts().get(size)
    }

    /// All zero.
    pub const EMPTY: PoolConfig = PoolConfig {
        small: 0,
        medium: 0,
        large: 0,
        xlarge: 0,
    };
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            small: 8,
            medium: 8,
            large: 4,
            xlarge: 2,
        }
    }
}

/// `[autoscaler]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoscalerConfig {
    /// Machines started at boot.
    pub initial: Vec<Size>,
    /// Never retire below this many machines.
    pub min_machines: usize,
    /// Never hold more than this many (active + draining) machines.
    pub max_machines: usize,
    /// Average load above this: acquire machines.
    pub scale_up_threshold: f64,
    /// Preferred size to acquire.
    pub scale_up_size: Size,
    /// Average load below this for `scale_down_after`: retire one machine.
    pub scale_down_threshold: f64,
    /// How long the average must stay low before a retirement.
    #[serde(with = "duration")]
    pub scale_down_after: Duration,
    /// Periodic check interval.
    #[serde(with = "duration")]
    pub interval: Duration,
    /// How the number of machines is decided.
    #[serde(deserialize_with = "super::variant::named")]
    pub policy: ScalingPolicy,
    /// `target` policy: the average load (percent) it steers towards.
    pub target: f64,
    /// `target` policy: no change while `|average / target − 1|` is within this.
    pub tolerance: f64,
    /// `target` policy: acquire once `average / target − 1` passes this instead of
    /// `tolerance` (the band's upper side; as the HPA's `behavior.scaleUp.tolerance`).
    /// Unset: `tolerance`.
    pub scale_up_tolerance: Option<f64>,
    /// At most `max(max_step, active machines)` acquisitions per `interval`.
    pub max_step: usize,
    /// After a scale-up, connections move off machines more than this many points above
    /// the average onto the newcomer; 0 = off.
    pub rebalance_tolerance: f64,
}

impl Default for AutoscalerConfig {
    fn default() -> Self {
        AutoscalerConfig {
            initial: vec![Size::Medium],
            min_machines: 1,
            max_machines: 16,
            scale_up_threshold: 50.0,
            scale_up_size: Size::Medium,
            scale_down_threshold: 20.0,
            scale_down_after: Duration::from_secs(10),
            interval: Duration::from_millis(100),
            policy: ScalingPolicy::Threshold,
            target: 50.0,
            tolerance: 0.1,
            scale_up_tolerance: None,
            max_step: 4,
            rebalance_tolerance: 10.0,
        }
    }
}

impl AutoscalerConfig {
    /// The `target` band's upper side: `scale_up_tolerance`, or `tolerance` when unset.
    pub fn up_tolerance(&self) -> f64 {
        self.scale_up_tolerance.unwrap_or(self.tolerance)
    }
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// One access-log line (target `access`) per closed connection.
    pub access: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { access: true }
    }
}

/// `[shutdown]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// How long shutdown waits for queued requests.
    #[serde(with = "duration")]
    pub grace: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            grace: Duration::from_secs(10),
        }
    }
}

/// `[backend]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendConfig {
    /// `simulated` or `proxy`.
    #[serde(deserialize_with = "super::variant::named")]
    pub mode: BackendMode,
    /// Proxy mode: how often upstreams are probed.
    #[serde(with = "duration")]
    pub health_check_interval: Duration,
    /// Proxy mode: one probe's time limit.
    #[serde(with = "duration")]
    pub health_check_timeout: Duration,
    /// Proxy mode: consecutive successful probes that mark a down upstream up.
    pub health_check_rise: u32,
    /// Proxy mode: consecutive failed probes that mark an up upstream down.
    pub health_check_fall: u32,
    /// Proxy mode: time limit of a connect to an upstream.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Proxy mode: the upstream answered nothing for this long after the client's latest
    /// bytes: close, count a failure.
    #[serde(with = "duration")]
    pub server_timeout: Duration,
    /// Proxy mode: consecutive connect failures or server timeouts that eject an upstream.
    pub max_fails: u32,
    /// Proxy mode: how long an ejection lasts (doubling on each repeat).
    #[serde(with = "duration")]
    pub eject_for: Duration,
    /// Proxy mode: the command that creates upstreams on demand (`acquire SIZE`) and
    /// destroys them (`release ADDRESS`); none by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderConfig>,
    /// Proxy mode: time limit of one provider command.
    #[serde(with = "duration")]
    pub provider_timeout: Duration,
    /// Proxy mode: the PROXY protocol header written to the upstream before the client's
    /// first byte (`off`, `v1` or `v2`).
    #[serde(deserialize_with = "super::variant::named")]
    pub send_proxy: SendProxy,
    /// Proxy mode: how long a connection no machine can take waits for capacity before it
    /// is refused.
    #[serde(with = "duration")]
    pub queue_timeout: Duration,
    /// Proxy mode: the upstream servers (the pool).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<UpstreamConfig>,
}

/// `backend.provider`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Path of the provider command.
    pub command: PathBuf,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            mode: BackendMode::Simulated,
            health_check_interval: Duration::from_secs(2),
            health_check_timeout: Duration::from_secs(1),
            health_check_rise: 2,
            health_check_fall: 3,
            connect_timeout: Duration::from_secs(1),
            server_timeout: Duration::from_secs(5),
            max_fails: 3,
            eject_for: Duration::from_secs(10),
            provider: None,
            provider_timeout: Duration::from_secs(30),
            send_proxy: SendProxy::Off,
            queue_timeout: Duration::from_secs(5),
            upstreams: Vec::new(),
        }
    }
}

/// `backend.mode`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendMode {
    /// In-process machines speaking the line protocol.
    Simulated,
    /// Machines front real upstream servers.
    Proxy,
}

/// `backend.send_proxy`: the PROXY protocol version written to upstreams (HAProxy
/// `send-proxy` / `send-proxy-v2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SendProxy {
    /// No header: the upstream sees the balancer's address only.
    Off,
    /// The text header (`PROXY TCP4 ...\r\n`).
    V1,
    /// The binary header.
    V2,
}

/// `[[backend.upstreams]]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Upstream address: `IP:port`, or `host:port` resolved when the file is read (at start
    /// and on every reload) to the first address the system's resolver gives; the resolved
    /// `IP:port` is the upstream's identity from then on.
    #[serde(deserialize_with = "super::addr::deserialize_resolved")]
    pub address: SocketAddr,
    /// Size (capacity) it counts as.
    #[serde(default = "default_upstream_size")]
    pub size: Size,
    /// Proxied connections it takes at most (HAProxy server `maxconn`); none = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
}

fn default_upstream_size() -> Size {
    Size::Medium
}
