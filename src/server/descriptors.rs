//! File descriptors: the budget a configuration needs and the process limit it runs under.
//!
//! Every client holds one descriptor, two in proxy mode (its upstream); the listener may
//! hold [`MAX_REFUSING`] more for refusals being written; the admin server up to
//! `admin.max_connections`; health probes one per upstream; and a few are taken for good by
//! the listeners, stdio, epoll and the signal pipe ([`MARGIN`]). At start `main` calls
//! [`raise_and_check`]: like HAProxy, it raises the soft `RLIMIT_NOFILE` to the hard limit
//! (an unprivileged process may), then warns when even that is below the budget, because a
//! daemon that starts silently and fails later with "Too many open files" is worse than one
//! that says so at once.

use std::io;

use rlimit::Resource;
use tracing::{info, warn};

use super::session::MAX_REFUSING;
use crate::config::{AdminAddress, BackendMode, Config};

/// Descriptors set aside for what is always open: two listeners, stdin/stdout/stderr, the
/// epoll instance and its waker, the signal pipe, a configuration file being re-read.
pub const MARGIN: u64 = 32;

/// Largest soft limit asked for when the hard limit is unlimited (Linux refuses
/// `RLIM_INFINITY` for open files; `fs.nr_open` defaults to this).
const UNLIMITED_FALLBACK: u64 = 1 << 20;

/// What a configuration may hold open at once, by purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// `listener.max_connections`.
    pub clients: u64,
    /// Descriptors per client: 1, or 2 in proxy mode (client and upstream).
    pub per_client: u64,
    /// Refused sockets closing lingering ([`MAX_REFUSING`]; past those, closed at once).
    pub refusals: u64,
    /// `admin.max_connections`, or 0 with the admin endpoint off.
    pub admin: u64,
    /// Proxy mode: one health probe per upstream.
    pub probes: u64,
    /// [`MARGIN`].
    pub margin: u64,
}

impl Budget {
    /// The budget of `config`.
    pub fn for_config(config: &Config) -> Budget {
        let proxy = config.backend.mode == BackendMode::Proxy;
        Budget {
            clients: config.listener.max_connections as u64,
            per_client: if proxy { 2 } else { 1 },
            refusals: MAX_REFUSING as u64,
            admin: match config.admin.address {
                AdminAddress::Off => 0,
                AdminAddress::Addr(_) => config.admin.max_connections as u64,
            },
            probes: if proxy {
                config.backend.upstreams.len() as u64
            } else {
                0
            },
            margin: MARGIN,
        }
    }

    /// All of it.
    pub fn total(&self) -> u64 {
        self.clients * self.per_client + self.refusals + self.admin + self.probes + self.margin
    }
}

/// The open-files limit before and after [`raise_soft_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    /// Soft limit found at start.
    pub before: u64,
    /// Soft limit now.
    pub soft: u64,
    /// Hard limit (the ceiling for an unprivileged process).
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit when it is lower.
///
/// # Errors
///
/// When the limit cannot be read or set.
pub fn raise_soft_limit() -> io::Result<NofileLimit> {
    let (before, hard) = Resource::NOFILE.get()?;
    let target = if hard == rlimit::INFINITY {
        UNLIMITED_FALLBACK
    } else {
        hard
    };
    if before >= target {
        return Ok(NofileLimit {
            before,
            soft: before,
            hard,
        });
    }
    Resource::NOFILE.set(target, hard)?;
    Ok(NofileLimit {
        before,
        soft: target,
        hard,
    })
}

/// The descriptors missing under a soft limit of `soft`, if any.
pub fn shortfall(soft: u64, budget: &Budget) -> Option<u64> {
    budget
        .total()
        .checked_sub(soft)
        .filter(|&missing| missing > 0)
}

/// Raises the soft limit and logs what happened: an `info` line when it was raised, a
/// `warn` line when the limit is still below what `config` needs (or cannot be read).
/// Never fails: a low limit is worth a warning, not a refusal to start.
pub fn raise_and_check(config: &Config) {
    let budget = Budget::for_config(config);
    let limit = match raise_soft_limit() {
        Ok(limit) => limit,
        Err(e) => {
            warn!(error = %e, "cannot read or raise the open-files limit (RLIMIT_NOFILE)");
            return;
        }
    };
    if limit.soft > limit.before {
        info!(
            from = limit.before,
            to = limit.soft,
            "raised the open-files soft limit to the hard limit"
        );
    }
    if let Some(missing) = shortfall(limit.soft, &budget) {
        warn!(
            limit = limit.soft,
            needed = budget.total(),
            missing,
            max_connections = budget.clients,
            per_client = budget.per_client,
            admin_max_connections = budget.admin,
            "the open-files limit is below what listener.max_connections needs; past it \
             accepts fail with \"Too many open files\": raise the hard limit (ulimit -Hn, \
             systemd LimitNOFILE=) or lower listener.max_connections"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::config::UpstreamConfig;
    use crate::core::Size;

    #[test]
    fn default_budget_is_one_descriptor_per_client_plus_admin_and_margin() {
        let budget = Budget::for_config(&Config::default());
        assert_eq!(budget.clients, 10_000);
        assert_eq!(budget.per_client, 1);
        assert_eq!(budget.admin, 256);
        assert_eq!(budget.probes, 0);
        assert_eq!(budget.total(), 10_000 + 256 + 256 + MARGIN);
    }

    #[test]
    fn proxy_mode_counts_two_per_client_and_a_probe_per_upstream() {
        let mut config = Config::default();
        config.backend.mode = BackendMode::Proxy;
        config.backend.upstreams = (0..3)
            .map(|i| UpstreamConfig {
                address: SocketAddr::from(([127, 0, 0, 1], 9000 + i)),
                size: Size::Medium,
                max_connections: None,
            })
            .collect();
        config.listener.max_connections = 100;
        config.admin.address = AdminAddress::Off;
        let budget = Budget::for_config(&config);
        assert_eq!((budget.per_client, budget.probes, budget.admin), (2, 3, 0));
        assert_eq!(budget.total(), 200 + 256 + 3 + MARGIN);
    }

    #[test]
    fn shortfall_only_below_the_budget() {
        let budget = Budget::for_config(&Config::default());
        let need = budget.total();
        assert_eq!(shortfall(1024, &budget), Some(need - 1024));
        assert_eq!(shortfall(need, &budget), None);
        assert_eq!(shortfall(need + 1, &budget), None);
    }

    #[test]
    fn raising_never_lowers_the_limit() {
        let (soft, hard) = Resource::NOFILE.get().expect("getrlimit");
        let limit = raise_soft_limit().expect("raise");
        assert_eq!(limit.before, soft);
        assert!(limit.soft >= soft);
        assert_eq!(limit.hard, hard);
        assert_eq!(Resource::NOFILE.get().expect("getrlimit").0, limit.soft);
    }
}
