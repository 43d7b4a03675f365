//! The client-side commands: `elastic-lb stats` and `elastic-lb load`.
//!
//! These run against a daemon from the outside, over its public interfaces only: the
//! balancer's TCP line protocol (SPEC §4) and the admin HTTP endpoint (SPEC §6).
//!
//! | module | owns |
//! | --- | --- |
//! | [`http`] | the one admin HTTP client: `GET` with a time limit, [`http::fetch_stats`] |
//! | [`stats`] | `elastic-lb stats`: the machines-and-totals table (SPEC §2) |
//! | [`load`] | `elastic-lb load`: the load generator and its `--plot` (SPEC §7) |
//!
//! `cli` is the top layer of the crate: it may import the daemon's wire types (such as
//! [`crate::admin::StatsBody`]), but nothing in the daemon imports `cli`.

pub mod http;
pub mod load;
pub mod stats;
