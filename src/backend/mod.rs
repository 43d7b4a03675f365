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
//! server picks the session kind once from [`Backend::session`]. Neither looks at the mode.
//!
//! Depends on `core`, `config`, `protocol` (reply lines) and `telemetry`.

pub mod factory;
pub mod machine;
pub mod simulated;
pub mod upstream;

use tokio_util::sync::CancellationToken;

use crate::config::{BackendMode, Config};

pub use factory::{BackendContext, FactoryError, MachineFactory};
pub use machine::{Job, Machine, SubmitError, Submitted};

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
