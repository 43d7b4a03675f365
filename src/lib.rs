//! elastic-lb: an asynchronous, elastic TCP load balancer.
//!
//! Module map (one module per concept):
//!
//! - [`config`] — the TOML configuration, defaults and validation (SPEC §3)
//! - [`protocol`] — line framing, request parsing, reply lines (SPEC §4)
//! - [`machine`] — a backend machine: bounded FIFO queue served by a task (SPEC §1)
//! - [`strategy`] — placement algorithms behind one trait (SPEC §5)
//! - [`stats`] — lock-free counters and the `Snapshot` the admin API serves (SPEC §6)
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

pub mod config;
pub mod machine;
pub mod protocol;
pub mod stats;
pub mod strategy;
