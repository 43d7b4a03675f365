//! What the pool says of its upstreams: where each came from, and how `GET
//! /api/upstreams` shows it.

use serde::{Deserialize, Serialize};

/// Where an upstream came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// `[[backend.upstreams]]` (a reload that drops it removes it).
    Config,
    /// `POST /api/upstreams`.
    Admin,
    /// `backend.provider`'s `acquire` (released through the provider when it leaves).
    Provider,
}

impl Origin {
    /// As in the API and the logs: `config`, `admin` or `provider`.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Config => "config",
            Origin::Admin => "admin",
            Origin::Provider => "provider",
        }
    }
}

/// How `GET /api/upstreams` shows one upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamView {
    /// `host:port`.
    pub address: String,
    /// The size it counts as.
    pub size: String,
    /// Up by the active checks and not ejected.
    pub healthy: bool,
    /// It left a client unanswered for `server_timeout` a short while ago (`eject_for`,
    /// doubling): new clients go there only when no other machine can take them.
    #[serde(default)]
    pub suspect: bool,
    /// `idle` (in the pool, no machine), `active` or `draining`.
    pub state: String,
    /// The machine it backs (`m3`), if any.
    pub machine: Option<String>,
    /// Open connections of that machine.
    pub connections: u64,
    /// Its `max_connections` (none: no limit).
    #[serde(default)]
    pub max_connections: Option<u64>,
    /// `config`, `admin` or `provider`.
    pub origin: Origin,
}
