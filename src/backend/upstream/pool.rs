//! The run-time list of upstreams, shared by the factory (which hands them out as machines),
//! the health checker (which probes them), the admin API (`/api/upstreams`) and the
//! provider's background tasks (which add and release upstreams they created).
//!
//! One `std::sync::Mutex` guards the list; every holder locks it for a few list operations
//! and never across an `.await`. Changes that need the dispatcher (draining the machine of
//! a removed upstream) are queued here and picked up by
//! [`MachineFactory::retiring`](crate::backend::MachineFactory::retiring) on its tick.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::health::{self, HealthPolicy, Upstream};
use super::provider::Provider;
use crate::core::{MachineId, MachineState, Size, SizeCounts};
use crate::telemetry::MachineInfo;

mod view;
pub use view::{Origin, UpstreamView};

/// One upstream of the pool.
#[derive(Debug)]
struct Entry {
    upstream: Arc<Upstream>,
    origin: Origin,
    /// The machine it backs, if any.
    machine: Option<Arc<MachineInfo>>,
    /// Removed while backing a machine: leaves the pool when that machine retires.
    removing: bool,
    /// Joins again, fresh, once its machine has retired, with this size and
    /// `max_connections`: listed again by a reload while `removing`, or given another size
    /// by a reload while it backs a machine. A later removal cancels it.
    rejoin: Option<(Size, Option<u32>)>,
    added_at: Instant,
}

/// Why an upstream could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddError {
    /// The address is in the pool already.
    #[error("upstream {0} exists")]
    Exists(SocketAddr),
    /// The address was removed and its machine still drains.
    #[error(
        "upstream {0} is draining after its removal: it can be added again once its last \
         connection has closed and it has left the pool"
    )]
    Draining(SocketAddr),
}

/// Why an upstream could not be removed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoveError {
    /// No such address in the pool.
    #[error("no upstream {0}")]
    Unknown(SocketAddr),
}

/// What a removal did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    /// It was idle and left the pool at once.
    Gone,
    /// Its machine drains; it leaves the pool when the machine retires.
    Draining,
}

#[derive(Debug)]
struct PoolState {
    entries: Vec<Entry>,
    /// Machines whose upstream was removed, for the dispatcher to drain.
    retiring: Vec<MachineId>,
    /// Sizes with a provider `acquire` running.
    acquiring: Vec<Size>,
    /// Provider `acquire`s in a row that brought no usable upstream: none, or one that
    /// never passed a health check within `provider_timeout`. Reset when a provided
    /// upstream backs a machine.
    failed_acquires: u32,
    /// No `acquire` runs before this (the back-off after a failed one).
    backoff_until: Option<Instant>,
}

/// The shared upstream list. Cheap to clone.
#[derive(Debug, Clone)]
pub struct UpstreamPool {
    state: Arc<Mutex<PoolState>>,
    policy: HealthPolicy,
    probe_timeout: Duration,
    provider: Option<Provider>,
    /// The provider commands running in the background (`acquire`s and `release`s):
    /// shutdown waits for them, so none is killed half-way and none leaves an upstream
    /// behind.
    provider_runs: TaskTracker,
}

impl UpstreamPool {
    /// A pool over `upstreams` (none probed yet).
    pub fn new(
        upstreams: Vec<(Arc<Upstream>, Origin)>,
        policy: HealthPolicy,
        probe_timeout: Duration,
        provider: Option<Provider>,
    ) -> Self {
        let now = Instant::now();
        let entries = upstreams
            .into_iter()
            .map(|(upstream, origin)| Entry {
                upstream,
                origin,
                machine: None,
                removing: false,
                rejoin: None,
                added_at: now,
            })
            .collect();
        UpstreamPool {
            state: Arc::new(Mutex::new(PoolState {
                entries,
                retiring: Vec::new(),
                acquiring: Vec::new(),
                failed_acquires: 0,
                backoff_until: None,
            })),
            policy,
            probe_timeout,
            provider,
            provider_runs: TaskTracker::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // A panic while holding the lock leaves a consistent list (every change is one
        // push, remove or field store): keep using it.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The provider, if `backend.provider` is set.
    pub fn provider(&self) -> Option<&Provider> {
        self.provider.as_ref()
    }

    /// Every upstream (for the health checker).
    pub fn upstreams(&self) -> Vec<Arc<Upstream>> {
        self.lock()
            .entries
            .iter()
            .map(|e| e.upstream.clone())
            .collect()
    }

    /// The list as `GET /api/upstreams` shows it, in the order they joined.
    pub fn list(&self) -> Vec<UpstreamView> {
        self.lock()
            .entries
            .iter()
            .map(|e| {
                let state = match &e.machine {
                    None => "idle",
                    Some(m) if e.removing || m.state() != MachineState::Active => "draining",
                    Some(_) => "active",
                };
                UpstreamView {
                    address: e.upstream.address.to_string(),
                    size: e.upstream.size.to_string(),
                    healthy: e.upstream.is_healthy(),
                    suspect: e.upstream.is_suspect(),
                    state: state.to_string(),
                    machine: e.machine.as_ref().map(|m| m.name.clone()),
                    connections: e.machine.as_ref().map_or(0, |m| m.connections()),
                    max_connections: Some(e.upstream.max_connections()).filter(|n| *n != u64::MAX),
                    origin: e.origin,
                }
            })
            .collect()
    }

    /// Adds an upstream and probes it once in the background (it can back a machine once
    /// that probe succeeds).
    ///
    /// # Errors
    ///
    /// [`AddError::Exists`] when the address is in the pool already.
    pub fn add(
        &self,
        address: SocketAddr,
        size: Size,
        max_connections: Option<u32>,
        origin: Origin,
    ) -> Result<(), AddError> {
        let entry = self.new_entry(address, size, max_connections, origin);
        let upstream = entry.upstream.clone();
        {
            let mut state = self.lock();
            if let Some(e) = state.entries.iter().find(|e| e.upstream.address == address) {
                return Err(if e.removing {
                    AddError::Draining(address)
                } else {
                    AddError::Exists(address)
                });
            }
            state.entries.push(entry);
        }
        info!(upstream = %address, %size, origin = origin.as_str(), "upstream added");
        self.probe(upstream);
        Ok(())
    }

    /// A fresh, idle entry (not probed yet).
    fn new_entry(
        &self,
        address: SocketAddr,
        size: Size,
        max_connections: Option<u32>,
        origin: Origin,
    ) -> Entry {
        let upstream = Arc::new(Upstream::new(address, size, self.policy));
        upstream.set_max_connections(max_connections);
        Entry {
            upstream,
            origin,
            machine: None,
            removing: false,
            rejoin: None,
            added_at: Instant::now(),
        }
    }

    /// Probes a new entry's upstream once in the background; it can back a machine once
    /// that probe succeeds.
    fn probe(&self, upstream: Arc<Upstream>) {
        let (limit, send_proxy) = (self.probe_timeout, self.policy.send_proxy);
        tokio::spawn(async move {
            let ok = health::probe(upstream.address, limit, send_proxy).await;
            upstream.set_initial(ok);
        });
    }

    /// Removes an upstream: an idle one leaves the pool at once (a provider-created one is
    /// released through the provider); one that backs a machine is queued for the
    /// dispatcher to drain, and leaves when that machine retires.
    ///
    /// # Errors
    ///
    /// [`RemoveError::Unknown`] when the address is not in the pool.
    pub fn remove(&self, address: SocketAddr) -> Result<Removed, RemoveError> {
        let (removed, left, again) = {
            let mut state = self.lock();
            let index = state
                .entries
                .iter()
                .position(|e| e.upstream.address == address)
                .ok_or(RemoveError::Unknown(address))?;
            let again = state.entries[index].removing;
            let removed = match state.entries[index].machine.clone() {
                Some(machine) => {
                    state.entries[index].rejoin = None;
                    if !state.entries[index].removing {
                        state.entries[index].removing = true;
                        state.retiring.push(machine.id);
                    }
                    Err(machine.name.clone())
                }
                None => Ok(state.entries.remove(index)),
            };
            let left = state.entries.iter().filter(|e| !e.removing).count();
            (removed, left, again)
        };
        if left == 0 && !again && self.provider.is_none() {
            // HAProxy answers 503 with every server disabled; a TCP balancer can only make
            // clients wait (`backend.queue_timeout`) and close them: say so once.
            warn!(
                "no upstream left: new clients wait backend.queue_timeout and are closed until one is added"
            );
        }
        match removed {
            Ok(entry) => {
                info!(upstream = %address, "upstream removed");
                if entry.origin == Origin::Provider {
                    self.spawn_release(address);
                }
                Ok(Removed::Gone)
            }
            Err(machine) => {
                info!(upstream = %address, %machine, "upstream removed: its machine drains");
                Ok(Removed::Draining)
            }
        }
    }

    /// The addresses that came from `[[backend.upstreams]]` and are to stay in the pool
    /// (a removed one that is to join again included).
    pub fn configured(&self) -> Vec<SocketAddr> {
        self.lock()
            .entries
            .iter()
            .filter(|e| e.origin == Origin::Config && (!e.removing || e.rejoin.is_some()))
            .map(|e| e.upstream.address)
            .collect()
    }

    /// Sets the `max_connections` of the upstream at `address` (a reload).
    pub fn set_max_connections(&self, address: SocketAddr, limit: Option<u32>) {
        let state = self.lock();
        if let Some(e) = state.entries.iter().find(|e| e.upstream.address == address) {
            e.upstream.set_max_connections(limit);
        }
    }

    /// Marks an upstream as coming from the configuration (a reload listed an address
    /// that was added at run time) with the file's `size`. One that is draining because it
    /// was removed joins the pool again once its machine has retired, as a new entry of
    /// `size` and `limit`; so does one whose machine serves at another size. An idle one
    /// of another size is replaced at once.
    pub fn adopt(&self, address: SocketAddr, size: Size, limit: Option<u32>) {
        let replaced = {
            let mut state = self.lock();
            let Some(index) = state
                .entries
                .iter()
                .position(|e| e.upstream.address == address)
            else {
                return;
            };
            let e = &mut state.entries[index];
            e.origin = Origin::Config;
            let resized = e.upstream.size != size;
            e.rejoin = (e.removing || resized).then_some((size, limit));
            if resized && e.machine.is_none() {
                // Replaced in place, under this lock: no reload or `POST` sees it missing.
                let fresh = self.new_entry(address, size, limit, Origin::Config);
                let fresh_upstream = fresh.upstream.clone();
                Some((std::mem::replace(e, fresh), fresh_upstream))
            } else {
                if resized && !e.removing {
                    warn!(
                        upstream = %address,
                        from = %e.upstream.size,
                        to = %size,
                        "upstream size changes once its machine retires; it serves at its old size until then"
                    );
                }
                None
            }
        };
        if let Some((old, fresh)) = replaced {
            info!(upstream = %address, from = %old.upstream.size, to = %size, "upstream resized");
            self.probe(fresh);
        }
    }

    /// Takes the first idle, healthy upstream of `size` for the machine `info`.
    pub(super) fn take(&self, size: Size, info: &Arc<MachineInfo>) -> Option<Arc<Upstream>> {
        let mut state = self.lock();
        let entry = state.entries.iter_mut().find(|e| {
            e.machine.is_none() && !e.removing && e.upstream.size == size && e.upstream.is_healthy()
        })?;
        entry.machine = Some(info.clone());
        let upstream = entry.upstream.clone();
        if entry.origin == Origin::Provider {
            state.failed_acquires = 0;
            state.backoff_until = None;
        }
        Some(upstream)
    }

    /// The machine of `upstream` retired: the upstream is idle again, or leaves the pool if
    /// it was removed or came from the provider (which then releases it).
    pub(super) fn give_back(&self, upstream: &Arc<Upstream>) {
        let leaving = {
            let mut state = self.lock();
            let Some(index) = state
                .entries
                .iter()
                .position(|e| Arc::ptr_eq(&e.upstream, upstream))
            else {
                return;
            };
            let entry = &mut state.entries[index];
            entry.machine = None;
            if let Some((size, limit)) = entry.rejoin {
                // Removed and listed again, or resized, while its machine served: a fresh
                // entry in its place, under this lock (no reload sees it missing).
                let address = entry.upstream.address;
                let fresh = self.new_entry(address, size, limit, Origin::Config);
                let fresh_upstream = fresh.upstream.clone();
                state.entries[index] = fresh;
                Some((address, None, Some(fresh_upstream)))
            } else if entry.removing || entry.origin == Origin::Provider {
                let entry = state.entries.remove(index);
                Some((entry.upstream.address, Some(entry.origin), None))
            } else {
                None
            }
        };
        if let Some((address, origin, fresh)) = leaving {
            info!(upstream = %address, "upstream left the pool");
            if origin == Some(Origin::Provider) {
                self.spawn_release(address);
            }
            if let Some(fresh) = fresh {
                info!(upstream = %address, size = %fresh.size, "upstream joins again");
                self.probe(fresh);
            }
        }
    }

    /// Machines to drain because their upstream was removed (each reported once), after
    /// releasing provider-created upstreams that did not back a machine within
    /// `backend.provider_timeout` of joining: no longer needed, or never healthy — a
    /// failed acquisition, so the next `acquire` backs off as after a failed command.
    pub(super) fn take_retiring(&self) -> Vec<MachineId> {
        let (retiring, expired) = {
            let mut state = self.lock();
            let limit = self.provider.as_ref().map(Provider::timeout);
            let mut expired = Vec::new();
            if let Some(limit) = limit {
                state.entries.retain(|e| {
                    let stale = e.origin == Origin::Provider
                        && e.machine.is_none()
                        && e.added_at.elapsed() > limit;
                    if stale {
                        expired.push((e.upstream.address, e.upstream.is_healthy()));
                    }
                    !stale
                });
            }
            if expired.iter().any(|(_, healthy)| !healthy) {
                state.acquire_failed();
            }
            (std::mem::take(&mut state.retiring), expired)
        };
        for (address, healthy) in expired {
            if healthy {
                warn!(upstream = %address, "provided upstream unused within provider_timeout: released");
            } else {
                warn!(upstream = %address, "provided upstream never healthy within provider_timeout: released; the next acquire backs off");
            }
            self.spawn_release(address);
        }
        retiring
    }

    /// Idle healthy upstreams per size.
    pub(super) fn free(&self) -> SizeCounts {
        let mut free = SizeCounts::EMPTY;
        for e in &self.lock().entries {
            if e.machine.is_none() && !e.removing && e.upstream.is_healthy() {
                *free.get_mut(e.upstream.size) += 1;
            }
        }
        free
    }

    /// Upstreams per size (the pool, SPEC §8).
    pub(super) fn pool_size(&self) -> SizeCounts {
        let mut sizes = SizeCounts::EMPTY;
        for e in &self.lock().entries {
            *sizes.get_mut(e.upstream.size) += 1;
        }
        sizes
    }

    /// No idle healthy upstream of `size` was found: asks the provider for one in the
    /// background, unless an `acquire` of that size is running or a provided upstream of
    /// that size is still waiting for its first good probe.
    pub(super) fn provide(&self, size: Size) {
        let Some(provider) = self.provider.clone() else {
            return;
        };
        {
            let mut state = self.lock();
            let waiting = state.entries.iter().any(|e| {
                e.origin == Origin::Provider
                    && e.upstream.size == size
                    && e.machine.is_none()
                    && !e.upstream.is_healthy()
            });
            let backing_off = state.backoff_until.is_some_and(|t| Instant::now() < t);
            if waiting || backing_off || state.acquiring.contains(&size) {
                return;
            }
            state.acquiring.push(size);
        }
        let pool = self.clone();
        self.provider_runs.spawn(async move {
            let address = provider.acquire(size).await;
            {
                let mut state = pool.lock();
                state.acquiring.retain(|s| *s != size);
                if address.is_none() {
                    // A failing command (a quota, an API outage) is not run again on every
                    // tick: the next try waits 1 s, doubling up to 1 min.
                    state.acquire_failed();
                }
            }
            if let Some(address) = address {
                if let Err(e) = pool.add(address, size, None, Origin::Provider) {
                    // Not a new upstream: a failed acquisition, so it is not asked again
                    // on every tick.
                    warn!(error = %e, "provider acquire returned an upstream already in the pool");
                    pool.lock().acquire_failed();
                }
            }
        });
    }

    fn spawn_release(&self, address: SocketAddr) {
        if let Some(provider) = self.provider.clone() {
            self.provider_runs
                .spawn(async move { provider.release(address).await });
        }
    }

    /// At shutdown: waits for the provider commands still running (an `acquire`'s upstream
    /// joins the pool, a `release` completes), then releases every provider-created
    /// upstream still in the pool, waiting for those commands too (each one is bounded by
    /// `backend.provider_timeout`).
    pub async fn release_provided(&self) {
        let Some(provider) = self.provider.clone() else {
            return;
        };
        self.provider_runs.close();
        self.provider_runs.wait().await;
        let provided: Vec<SocketAddr> = {
            let mut state = self.lock();
            let mut provided = Vec::new();
            state.entries.retain(|e| {
                if e.origin == Origin::Provider {
                    provided.push(e.upstream.address);
                }
                e.origin != Origin::Provider
            });
            provided
        };
        let releases: Vec<_> = provided
            .into_iter()
            .map(|address| {
                let provider = provider.clone();
                tokio::spawn(async move { provider.release(address).await })
            })
            .collect();
        for r in releases {
            let _ = r.await;
        }
    }
}

impl PoolState {
    /// One more failed acquisition: no `acquire` before the back-off has passed.
    fn acquire_failed(&mut self) {
        self.failed_acquires = self.failed_acquires.saturating_add(1);
        self.backoff_until = Some(Instant::now() + acquire_backoff(self.failed_acquires));
    }
}

/// How long to wait after `failed` provider `acquire`s in a row: 1 s, doubling, at most 1 min.
fn acquire_backoff(failed: u32) -> Duration {
    let doublings = failed.saturating_sub(1).min(6);
    Duration::from_secs(1 << doublings).min(Duration::from_secs(60))
}

#[cfg(test)]
mod tests;
