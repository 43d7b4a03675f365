//! The shared vocabulary: the words every layer uses and none owns.
//!
//! Identities ([`MachineId`]), sizes and per-size counts ([`Size`], [`SizeCounts`]), machine
//! lifecycle ([`MachineState`]), request classes ([`RequestClass`]), strategy names
//! ([`StrategyKind`]) and load amounts ([`Units`]); and one `std`-only future combinator
//! both the backend and the server use ([`gate::Gated`]).
//!
//! This module imports nothing from the rest of the crate, so every other module may use
//! it without creating a cycle (see `docs/architecture.md`).

pub mod gate;
mod machine;
mod request;
mod strategy_kind;
mod units;

pub use machine::{MachineId, MachineState, Size, SizeCounts, UnknownSize};
pub use request::{RequestClass, UnknownClass};
pub use strategy_kind::{StrategyKind, UnknownStrategy};
pub use units::Units;
