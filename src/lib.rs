//! elastic-lb: an asynchronous, elastic TCP load balancer.
//!
//! Layers, dependencies pointing down only (`docs/architecture.md` shows the graph):
//!
//! | layer | modules | owns |
//! | --- | --- | --- |
//! | vocabulary | [`core`] | ids, sizes, classes, strategy names, load units |
//! | foundations | [`config`], [`protocol`], [`strategy`], [`telemetry`] | the TOML schema; the line codec; placement algorithms; counters and snapshots |
//! | backends | [`backend`] | the seam: simulated workers and real upstreams behind one factory trait |
//! | balancing | [`balancer`] | the dispatcher actor: admission, autoscaling, drains |
//! | serving | [`server`] | the accept loop and client sessions |
//! | interfaces | [`admin`], [`cli`] | the HTTP admin endpoint; the `stats` and `load` commands and their admin HTTP client |
//! | daemon | [`daemon`], [`error`] | [`Server`]: wires every layer into one running balancer; [`Error`]: what can end the process |
//!
//! ```text
//!  client ─TCP─► listener ──admit──► dispatcher ──(strategy, factory, policy)
//!                   │                    │ Placement
//!                   ▼                    ▼
//!                session ──jobs──► machine m1 / m2 / …  (bounded queues)
//!                   ▲                    │
//!                   └────── replies ─────┘
//! ```
//!
//! [`Server::start`] takes already-bound listeners, so tests bind `127.0.0.1:0`.
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

pub mod admin;
pub mod backend;
pub mod balancer;
pub mod cli;
pub mod config;
pub mod core;
pub mod daemon;
pub mod error;
pub mod protocol;
pub mod server;
pub mod strategy;
pub mod telemetry;

pub use daemon::Server;
pub use error::{Error, Result};
