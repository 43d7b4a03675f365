//! The backend seam: where machines come from and what a connection does with one.
//!
//! Two implementations sit behind one interface, and this module is the only place that
//! asks which one is configured (`backend.mode`, in [`start`]):
//!
//! | mode | factory | machine endpoint | client session |
//! | --- | --- | --- | --- |
//! | `simulated` | [`simulated::LocalFactory`]: in-process workers from `[pool]` | a bounded job queue served by a task | [`SessionKind::Lines`]: the line protocol of SPEC §4 |
//! | `proxy` | [`upstream::UpstreamFactory`]: the `[[backend.upstreams]]` list | a real upstream server | [`SessionKind::Stream`]: bytes copied both ways (SPEC §8) |
//!
//! The balancer owns a `Box<dyn` [`MachineFactory]`>` and hands out [`Machine`]s; the
//! server picks the session kind once from [`Backend::session`], and how many event loops
//! serve connections from [`event_loops`]. Neither looks at the mode.
//!
//! Event loops: a proxied stream touches only its two sockets and shared atomics, so it can
//! live on an event-loop thread of its own (`listener.threads`, one per core by default,
//! like HAProxy's threads). A line session meets its machine's task on every request — a
//! task of the shared runtime — so in simulated mode connections stay on that runtime,
//! where a wake-up between them costs no thread hand-off.
//!
//! Depends on `core`, `config`, `protocol` (reply lines) and `telemetry`.

pub mod factory;
pub mod machine;
pub mod simulated;
pub mod upstream;

use tokio_util::sync::CancellationToken;

use crate::config::{BackendMode, Config};

pub use factory::{BackendContext, FactoryError, MachineFactory};
pub use machine::{Job, JobRef, Machine, SubmitError, Submitted};

/// Event-loop threads that should accept and serve connections for `config`: 0 = serve
/// them on the shared runtime (simulated mode, see the module docs); in proxy mode
/// `listener.threads`, where 0 means one per core.
pub fn event_loops(config: &Config) -> usize {
    match config.backend.mode {
        BackendMode::Simulated => 0,
        BackendMode::Proxy => match config.listener.threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        },
    }
}

/// How the server talks to a client of this backend; chosen once at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    /// The line protocol (SPEC §4): requests are jobs on machines' queues.
    Lines,
    /// A byte stream to the machine's upstream (SPEC §8): no protocol, no bytes added.
    Stream,
}

/// A started backend: its factory (for the balancer) and its session kind (for the server).
#[derive(Debug)]
pub struct Backend {
    /// Hands out machines; owned by the dispatcher from now on.
    pub factory: Box<dyn MachineFactory>,
    /// How connections are served.
    pub session: SessionKind,
    /// Proxy mode: the run-time upstream list (for the admin API and shutdown).
    pub upstreams: Option<upstream::UpstreamPool>,
}

/// Starts the configured backend: in proxy mode the upstreams are probed once and then
/// every `backend.health_check_interval` until `shutdown` fires.
pub async fn start(config: &Config, ctx: BackendContext, shutdown: CancellationToken) -> Backend {
    match config.backend.mode {
        BackendMode::Simulated => Backend {
            factory: Box::new(simulated::LocalFactory::new(config, ctx)),
            session: SessionKind::Lines,
            upstreams: None,
        },
        BackendMode::Proxy => {
            let factory = upstream::UpstreamFactory::start(config, shutdown).await;
            Backend {
                upstreams: Some(factory.pool()),
                factory: Box::new(factory),
                session: SessionKind::Stream,
            }
        }
    }
}
