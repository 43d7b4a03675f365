//! Configuration: the TOML file of SPEC §3, its defaults and its validation.
//!
//! # Who reads it
//!
//! `main` loads the file ([`Config::load`], or [`Config::default`] when there is none)
//! and validates it before it binds any socket; `elastic-lb check` prints the result with
//! [`Config::to_toml`]. From then on the dispatcher, the machines and the connections read
//! the live configuration through a `watch` channel, so that a reload (SIGHUP, which calls
//! [`Config::load`] again) takes effect without a restart.
//!
//! # What is where
//!
//! - `schema` — [`Config`] and one struct per table, with their defaults (serde,
//!   `deny_unknown_fields`);
//! - `validate` — [`Config::validate`]: ranges, upper bounds ([`MAX_DURATION`], …) and
//!   cross-field rules, reported as a [`ValidationError`];
//! - `diagnostics` — [`ConfigError`], one line `file:line: key: message` per problem, and
//!   the line scanner ([`locate`]) that finds where a key is set;
//! - [`duration`] (also [`duration_str`]) — durations written as `"250ms"`, `"10s"`;
//! - `addr` — [`resolve_addr`], for host names on the command line;
//! - `source` — [`ConfigSource`]: which file `main` reads (`--config`, then [`SEARCH_PATH`]),
//!   or the built-in defaults;
//! - `restart` — [`keep_restart_keys`]: the keys a reload cannot change (sockets, `[backend]`);
//! - `token` — [`AdminToken`], the admin API's bearer token, compared in constant time.
//!
//! Everything public is re-exported here: other modules use `crate::config::X`.

use std::path::Path;

mod addr;
mod diagnostics;
pub mod duration;
mod restart;
mod schema;
mod source;
mod token;
mod validate;
mod variant;

pub use addr::{listeners_collide, resolve_addr, ResolveAddrError};
pub use diagnostics::{locate, ConfigError};
use diagnostics::{parse_error, validation_error};
pub use restart::{keep_restart_keys, RestartChange};
pub use schema::{
    AdminAddress, AdminAddressError, AdminConfig, AutoscalerConfig, BackendConfig, BackendMode,
    Config, DispatcherConfig, IoEngine, ListenerConfig, LoadConfig, LogConfig, MachinesConfig,
    PoolConfig, ProviderConfig, RequestsConfig, Routing, ScalingPolicy, SendProxy, ShutdownConfig,
    UpstreamConfig,
};
pub use source::{ConfigSource, DEFAULT_PATH, SEARCH_PATH, SYSTEM_PATH};
pub use token::{AdminToken, MAX_TOKEN_BYTES};
pub use validate::{
    ValidationError, MAX_ADMIN_CONNECTIONS, MAX_BACKLOG, MAX_CONNECTIONS, MAX_DURATION,
    MAX_LINE_BYTES, MAX_MACHINES, MAX_QUEUE_DEPTH, MAX_SERVICE_MS_PER_UNIT, MAX_STEP, MAX_UNITS,
};

/// The duration helpers under their original name (`#[serde(with = "duration_str")]`,
/// `crate::config::duration_str::format`).
pub use duration as duration_str;

impl Config {
    /// Reads and validates `path`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the file, and the key and line where known.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml(&text, &path.display().to_string())
    }

    /// Parses and validates TOML text; `origin` names it in error messages.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Parse`] for bad syntax, types, names or unknown keys,
    /// [`ConfigError::Validation`] for a broken rule of SPEC §3; both carry the line of the
    /// offending key when it can be found in `text`.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| parse_error(&e, text, origin))?;
        config
            .validate()
            .map_err(|error| validation_error(error, text, origin))?;
        Ok(config)
    }

    /// The effective configuration as TOML (what `elastic-lb check` prints); it parses
    /// back to an equal [`Config`].
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }
}

#[cfg(test)]
mod tests;
