//! An upstream server and its health, from two sources:
//!
//! - **active checks**, as HAProxy's `check inter/rise/fall`: a TCP connect to every
//!   upstream once at start (whose result is taken as is) and then every
//!   `backend.health_check_interval`, each limited by `backend.health_check_timeout`; an
//!   up upstream goes down after `health_check_fall` consecutive failures, a down one comes
//!   back after `health_check_rise` consecutive successes;
//! - **passive checks**, as Envoy's outlier detection: `backend.max_fails` consecutive
//!   connect failures or server timeouts seen by real connections eject the upstream for
//!   `backend.eject_for`, doubled on each ejection that follows without a good exchange in
//!   between. A frozen process still accepts TCP connections (its kernel does), so only
//!   this notices it. Failures seen while ejected (connections placed before) do not count.
//!   An ejection for connect failures alone ends at the first good probe (a probe is a
//!   connect: Envoy's `successful_active_health_check_uneject_host`); one that involved a
//!   server timeout lasts its time, since a frozen process passes probes.
//!
//! [`Upstream::is_healthy`] combines both; the factory, admission, migration and the
//! dispatcher's replacement of unhealthy machines all read it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::proxy_header;
use crate::config::{BackendConfig, SendProxy};
use crate::core::Size;

/// The longest ejection, however often an upstream repeats its failures (64 × eject_for).
const MAX_EJECTION_DOUBLINGS: u32 = 6;

/// A failure seen by a real connection (a passive check).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The connect failed or timed out (`backend.connect_timeout`).
    Connect,
    /// The client sent bytes and the upstream answered nothing for `server_timeout`.
    ServerTimeout,
}

impl Failure {
    fn as_str(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::ServerTimeout => "server timeout",
        }
    }
}

/// The health rules of `[backend]`, copied into every upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Consecutive good probes that bring a down upstream back.
    pub rise: u32,
    /// Consecutive failed probes that take an up upstream down.
    pub fall: u32,
    /// Consecutive passive failures that eject an upstream.
    pub max_fails: u32,
    /// The first ejection's length.
    pub eject_for: Duration,
    /// `backend.send_proxy`: probes then start with a PROXY header too (command LOCAL, as
    /// HAProxy's checks of a `send-proxy` server), so an upstream that requires the header
    /// does not log every probe as a broken connection.
    pub send_proxy: SendProxy,
}

impl HealthPolicy {
    /// The policy of `backend`.
    pub fn of(backend: &BackendConfig) -> Self {
        HealthPolicy {
            rise: backend.health_check_rise.max(1),
            fall: backend.health_check_fall.max(1),
            max_fails: backend.max_fails.max(1),
            eject_for: backend.eject_for,
            send_proxy: backend.send_proxy,
        }
    }
}

/// One upstream server and its health.
#[derive(Debug)]
pub struct Upstream {
    /// Where it listens.
    pub address: SocketAddr,
    /// The size (capacity) it counts as.
    pub size: Size,
    policy: HealthPolicy,
    /// The active checks' verdict.
    up: AtomicBool,
    /// Consecutive probe results against the verdict (successes while down, failures
    /// while up); reset by a result that agrees with it.
    streak: AtomicU32,
    /// Consecutive passive failures (connect failures, server timeouts).
    fails: AtomicU32,
    /// Whether a server timeout is among `fails`.
    timed_out: AtomicBool,
    /// Milliseconds after `base` until which it is suspect (see [`Upstream::is_suspect`]);
    /// 0 when no suspicion began since its last good exchange.
    suspect_until_ms: AtomicU64,
    /// Suspicions since the last good exchange (each one twice as long as the one before).
    suspicions: AtomicU32,
    /// Held while a suspicion starts or is cleared: two loops timing out at once start one
    /// suspicion, and an answer that comes meanwhile clears what was just set.
    suspicion_lock: Mutex<()>,
    /// Whether a good probe ends the current ejection (it was for connect failures only).
    probe_lifts: AtomicBool,
    /// Ejections since the last good exchange (each one twice as long as the one before).
    ejections: AtomicU32,
    /// Milliseconds after `base` (plus one) of the latest probe that connected (0: none).
    last_good_probe_ms: AtomicU64,
    /// Milliseconds after `base` until which the upstream is ejected (0: not ejected).
    ejected_until_ms: AtomicU64,
    base: Instant,
    /// Proxied connections it takes at most (`max_connections`; `u64::MAX` = no limit).
    /// A reload may change it.
    max_connections: AtomicU64,
}

impl Upstream {
    /// A new upstream, not yet known to be healthy.
    pub fn new(address: SocketAddr, size: Size, policy: HealthPolicy) -> Self {
        Upstream {
            address,
            size,
            policy,
            up: AtomicBool::new(false),
            streak: AtomicU32::new(0),
            fails: AtomicU32::new(0),
            timed_out: AtomicBool::new(false),
            suspect_until_ms: AtomicU64::new(0),
            suspicions: AtomicU32::new(0),
            suspicion_lock: Mutex::new(()),
            probe_lifts: AtomicBool::new(false),
            ejections: AtomicU32::new(0),
            last_good_probe_ms: AtomicU64::new(0),
            ejected_until_ms: AtomicU64::new(0),
            base: Instant::now(),
            max_connections: AtomicU64::new(u64::MAX),
        }
    }

    /// The same upstream taking at most `limit` proxied connections (`None` = no limit).
    #[must_use]
    pub fn with_max_connections(self, limit: Option<u32>) -> Self {
        self.set_max_connections(limit);
        self
    }

    /// Changes the limit (a reload): connections above a lowered limit stay; new ones wait
    /// until the upstream is below it.
    pub fn set_max_connections(&self, limit: Option<u32>) {
        let limit = limit.map_or(u64::MAX, u64::from);
        self.max_connections.store(limit, Ordering::Relaxed);
    }

    /// Proxied connections it takes at most (`u64::MAX` = no limit).
    pub fn max_connections(&self) -> u64 {
        self.max_connections.load(Ordering::Relaxed)
    }

    /// Whether it may take new connections: up by the active checks and not ejected.
    pub fn is_healthy(&self) -> bool {
        self.up.load(Ordering::Acquire) && !self.is_ejected()
    }

    /// Whether it left a client unanswered for `server_timeout` less than `eject_for` ago
    /// (doubled for each suspicion since it last answered a client): a frozen process does
    /// that and still passes probes. Admission sends it a client only when no other
    /// machine can take one, not even a new one (Envoy's *degraded* hosts), so it needs no
    /// `max_fails` timeouts in a row to be left alone. Once the time is up it takes its
    /// share again (a trial, as after an ejection); one answered client clears it all.
    pub fn is_suspect(&self) -> bool {
        let until = self.suspect_until_ms.load(Ordering::Acquire);
        until != 0 && self.now_ms() < until
    }

    fn is_ejected(&self) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Acquire);
        until != 0 && self.now_ms() < until
    }

    /// Whether a probe connected after `since` (and the upstream is healthy now): a client
    /// that failed to connect to it before then may be sent there again.
    pub fn back_since(&self, since: Instant) -> bool {
        let probed = self.last_good_probe_ms.load(Ordering::Acquire);
        let since_ms = since.saturating_duration_since(self.base).as_millis() as u64 + 1;
        probed > since_ms && self.is_healthy()
    }

    fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64 + 1
    }

    /// The first probe at start: its result is the verdict (no rise or fall to wait for).
    pub fn set_initial(&self, ok: bool) {
        self.up.store(ok, Ordering::Release);
        if ok {
            info!(upstream = %self.address, "upstream up");
        } else {
            warn!(upstream = %self.address, "upstream down (first probe failed)");
        }
    }

    /// Records one active probe; the verdict flips after `rise` / `fall` results in a row.
    /// A good probe also ends an ejection for connect failures: connects work again.
    pub fn record_probe(&self, ok: bool) {
        if ok {
            self.last_good_probe_ms
                .store(self.now_ms(), Ordering::Release);
        }
        if ok && self.is_ejected() && self.probe_lifts.swap(false, Ordering::AcqRel) {
            self.ejected_until_ms.store(0, Ordering::Release);
            info!(upstream = %self.address, "upstream ejection lifted: a probe connected");
        }
        let up = self.up.load(Ordering::Acquire);
        if ok == up {
            self.streak.store(0, Ordering::Release);
            return;
        }
        let streak = self.streak.fetch_add(1, Ordering::AcqRel) + 1;
        let needed = if up {
            self.policy.fall
        } else {
            self.policy.rise
        };
        if streak >= needed {
            self.streak.store(0, Ordering::Release);
            self.up.store(ok, Ordering::Release);
            if ok {
                info!(upstream = %self.address, rise = needed, "upstream up");
            } else {
                warn!(upstream = %self.address, fall = needed, "upstream down");
            }
        }
    }

    /// A connect failed or the upstream timed out on a real connection; `max_fails` of them
    /// in a row eject it. While it is ejected nothing new is sent there, so a failure then
    /// comes from a connection placed before: the same outage, not counted again.
    pub fn record_failure(&self, what: Failure) {
        if what == Failure::ServerTimeout {
            let started = {
                let _one_at_a_time = self.suspicion_lock.lock();
                // Timeouts of clients placed before it became suspect are the same freeze.
                (!self.is_suspect())
                    .then(|| self.penalize(&self.suspicions, &self.suspect_until_ms))
            };
            if let Some(length) = started {
                warn!(
                    upstream = %self.address,
                    suspect_for_ms = length.as_millis() as u64,
                    "upstream left a client unanswered: suspect, new clients go elsewhere while another machine can take them"
                );
            }
        }
        if self.is_ejected() {
            return;
        }
        if what == Failure::ServerTimeout {
            self.timed_out.store(true, Ordering::Release);
        }
        let fails = self.fails.fetch_add(1, Ordering::AcqRel) + 1;
        if fails < self.policy.max_fails {
            return;
        }
        self.fails.store(0, Ordering::Release);
        let timed_out = self.timed_out.swap(false, Ordering::AcqRel);
        self.probe_lifts.store(!timed_out, Ordering::Release);
        let length = self.penalize(&self.ejections, &self.ejected_until_ms);
        warn!(
            upstream = %self.address,
            failure = what.as_str(),
            fails,
            ejected_for_ms = length.as_millis() as u64,
            "upstream ejected"
        );
    }

    /// Starts the next of a series of penalties counted in `count` (an ejection, a
    /// suspicion): `eject_for`, twice that for the next, … at most 64 ×, ending at `until`.
    /// Returns its length.
    fn penalize(&self, count: &AtomicU32, until: &AtomicU64) -> Duration {
        let before = count.fetch_add(1, Ordering::AcqRel);
        let factor = 1u32 << before.min(MAX_EJECTION_DOUBLINGS);
        let length = self.policy.eject_for.saturating_mul(factor);
        let end = self.now_ms().saturating_add(length.as_millis() as u64);
        until.store(end, Ordering::Release);
        length
    }

    /// A connection got bytes back from the upstream: failures and the ejection count
    /// start over.
    pub fn record_success(&self) {
        // Every proxied connection ends here: write (and so take the cache line from the
        // other event loops) only when there is something to clear.
        if self.fails.load(Ordering::Acquire) != 0 {
            self.fails.store(0, Ordering::Release);
        }
        if self.timed_out.load(Ordering::Acquire) {
            self.timed_out.store(false, Ordering::Release);
        }
        if self.ejections.load(Ordering::Acquire) != 0 {
            self.ejections.store(0, Ordering::Release);
        }
        // Non-zero from a suspicion's start until an answer, also once its time is up.
        if self.suspect_until_ms.load(Ordering::Acquire) != 0 {
            let _one_at_a_time = self.suspicion_lock.lock();
            self.suspect_until_ms.store(0, Ordering::Release);
            if self.suspicions.swap(0, Ordering::AcqRel) != 0 {
                info!(upstream = %self.address, "upstream answered a client again: not suspect");
            }
        }
    }
}

/// A TCP health probe: can we connect within `limit`?
pub async fn probe(address: SocketAddr, limit: Duration, send_proxy: SendProxy) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(address).await?;
        if send_proxy != SendProxy::Off {
            stream.write_all(&proxy_header::local(send_proxy)).await?;
        }
        std::io::Result::Ok(())
    };
    matches!(tokio::time::timeout(limit, attempt).await, Ok(Ok(())))
}

/// Probes every upstream once, concurrently; `record` takes each result.
async fn probe_all(upstreams: &[Arc<Upstream>], limit: Duration, first: bool) {
    let probes = upstreams.iter().map(|u| {
        let u = u.clone();
        tokio::spawn(async move {
            let ok = probe(u.address, limit, u.policy.send_proxy).await;
            if first {
                u.set_initial(ok);
            } else {
                u.record_probe(ok);
            }
        })
    });
    for p in probes.collect::<Vec<_>>() {
        let _ = p.await;
    }
}

/// The probe at start: every upstream once, its result taken as the verdict.
pub async fn probe_initial(upstreams: &[Arc<Upstream>], limit: Duration) {
    probe_all(upstreams, limit, true).await;
}

/// Probes every upstream `upstreams()` lists each `interval` (each probe limited by
/// `limit`) until `shutdown` fires. The list is read at each round, so upstreams added or
/// removed at run time are followed.
pub fn spawn_health_checker(
    upstreams: impl Fn() -> Vec<Arc<Upstream>> + Send + 'static,
    interval: Duration,
    limit: Duration,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        // The first round runs one interval from now: the initial probe ran just before.
        let period = interval.max(Duration::from_millis(10));
        let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => probe_all(&upstreams(), limit, false).await,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(rise: u32, fall: u32, max_fails: u32) -> Upstream {
        let policy = HealthPolicy {
            rise,
            fall,
            max_fails,
            eject_for: Duration::from_secs(10),
            send_proxy: SendProxy::Off,
        };
        Upstream::new(SocketAddr::from(([127, 0, 0, 1], 1)), Size::Medium, policy)
    }

    #[test]
    fn rise_and_fall_need_results_in_a_row() {
        let u = upstream(2, 3, 3);
        u.set_initial(true);
        u.record_probe(false);
        u.record_probe(false);
        u.record_probe(true); // breaks the streak
        u.record_probe(false);
        u.record_probe(false);
        assert!(u.is_healthy(), "two failures in a row are not three");
        u.record_probe(false);
        assert!(!u.is_healthy());
        u.record_probe(true);
        assert!(!u.is_healthy(), "one success is not two");
        u.record_probe(true);
        assert!(u.is_healthy());
    }

    #[tokio::test(start_paused = true)]
    async fn passive_failures_eject_for_a_doubling_time() {
        let u = upstream(2, 3, 3);
        u.set_initial(true);
        u.record_failure(Failure::Connect);
        u.record_failure(Failure::Connect);
        assert!(u.is_healthy());
        u.record_failure(Failure::ServerTimeout);
        assert!(!u.is_healthy(), "three in a row eject it");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(u.is_healthy(), "back after eject_for");
        for _ in 0..3 {
            u.record_failure(Failure::Connect);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!u.is_healthy(), "the second ejection lasts twice as long");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(u.is_healthy());
        // A good exchange resets the count and the doubling.
        u.record_success();
        u.record_failure(Failure::Connect);
        u.record_failure(Failure::Connect);
        assert!(u.is_healthy());
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_timeout_makes_it_suspect_for_eject_for_doubling_until_it_answers() {
        let u = upstream(2, 3, 3);
        u.set_initial(true);
        u.record_failure(Failure::Connect);
        assert!(!u.is_suspect(), "a refused connect is the probes' business");
        u.record_failure(Failure::ServerTimeout);
        assert!(u.is_suspect() && u.is_healthy(), "suspect, not ejected");
        u.record_probe(true);
        assert!(u.is_suspect(), "a probe proves nothing about answers");
        // A client placed before times out too: the third failure in a row ejects it, and
        // the suspicion is not made longer (the same freeze).
        u.record_failure(Failure::ServerTimeout);
        assert!(!u.is_healthy());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(
            u.is_healthy() && !u.is_suspect(),
            "both end after eject_for"
        );
        // The trial client times out as well: suspect twice as long.
        u.record_failure(Failure::ServerTimeout);
        tokio::time::advance(Duration::from_secs(15)).await;
        assert!(u.is_suspect(), "the second suspicion lasts 20 s");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!u.is_suspect());
        u.record_failure(Failure::ServerTimeout);
        assert!(u.is_suspect());
        u.record_success();
        assert!(!u.is_suspect(), "an answered client clears it");
        u.record_failure(Failure::ServerTimeout);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!u.is_suspect(), "and the doubling starts over");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_while_ejected_do_not_count_again() {
        let u = upstream(2, 3, 3);
        u.set_initial(true);
        for _ in 0..3 {
            u.record_failure(Failure::ServerTimeout);
        }
        assert!(!u.is_healthy());
        // Connections placed before the ejection time out meanwhile: the same outage.
        for _ in 0..3 {
            u.record_failure(Failure::ServerTimeout);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(u.is_healthy(), "not ejected again for twice as long");
    }

    #[tokio::test(start_paused = true)]
    async fn a_good_probe_ends_an_ejection_for_connect_failures_only() {
        let u = upstream(2, 3, 3);
        u.set_initial(true);
        for _ in 0..3 {
            u.record_failure(Failure::Connect);
        }
        assert!(!u.is_healthy());
        u.record_probe(false);
        assert!(!u.is_healthy(), "a failed probe lifts nothing");
        u.record_probe(true);
        assert!(u.is_healthy(), "connects work again");
        // A frozen process passes probes: an ejection with a server timeout stays.
        u.record_failure(Failure::Connect);
        u.record_failure(Failure::ServerTimeout);
        u.record_failure(Failure::Connect);
        assert!(!u.is_healthy());
        u.record_probe(true);
        assert!(!u.is_healthy(), "probes prove nothing about answers");
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(u.is_healthy(), "the second ejection lasted twice as long");
    }
}
