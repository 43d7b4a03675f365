//! The data-plane front: the accept loop ([`listener`]) and the client sessions
//! ([`session`]), and what the process needs before it accepts anything: listening sockets
//! with the configured backlog ([`bind`]) and enough file descriptors ([`descriptors`]).
//!
//! The listener takes a connection slot, then runs the session kind the backend chose at
//! start-up on its own task. Depends on `config`, `protocol`, `telemetry`, `backend` and
//! `balancer`; the daemon ([`crate::Server`]) starts it; `main` binds and checks the limits.

pub mod affinity;
pub mod balance;
pub mod bind;
pub mod descriptors;
pub mod listener;
pub mod ring_loop;
pub mod session;
pub mod slot;
