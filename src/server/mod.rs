//! The data-plane front: the accept loop ([`listener`]) and the client sessions
//! ([`session`]).
//!
//! The listener takes a connection slot, then runs the session kind the backend chose at
//! start-up on its own task. Depends on `config`, `protocol`, `telemetry`, `backend` and
//! `balancer`; the daemon ([`crate::Server`]) starts it.

pub mod listener;
pub mod session;
