//! Which configuration `main` reads: the file named by `--config`, else the first file of
//! [`SEARCH_PATH`] that exists, else the built-in defaults (SPEC §2).
//!
//! [`ConfigSource::find`] takes the candidate list as an argument, so tests can look in a
//! scratch directory instead of `/etc`.

use std::fmt;
use std::path::{Path, PathBuf};

use super::addr::upstream_is_listener;
use super::diagnostics::ConfigError;
use super::schema::{BackendMode, Config};

/// The first path tried when `--config` is not given (relative to the working directory).
pub const DEFAULT_PATH: &str = "config/elastic-lb.toml";

/// The system-wide configuration file, tried after [`DEFAULT_PATH`].
pub const SYSTEM_PATH: &str = "/etc/elastic-lb/elastic-lb.toml";

/// Where the configuration is looked for without `--config`, in order: relative to the
/// working directory first, then system-wide.
pub const SEARCH_PATH: [&str; 2] = [DEFAULT_PATH, SYSTEM_PATH];

/// Where the configuration in force came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A file; SIGHUP reads it again.
    File(PathBuf),
    /// No file: [`Config::default`] (identical to the shipped `config/elastic-lb.toml`).
    Defaults,
}

impl ConfigSource {
    /// `explicit` when given (even if it does not exist: loading it then fails, naming it),
    /// else the first of `candidates` that exists, else the built-in defaults.
    pub fn find<P: AsRef<Path>>(
        explicit: Option<&Path>,
        candidates: impl IntoIterator<Item = P>,
    ) -> ConfigSource {
        if let Some(path) = explicit {
            return ConfigSource::File(path.to_path_buf());
        }
        candidates
            .into_iter()
            .map(|p| p.as_ref().to_path_buf())
            .find(|p| p.exists())
            .map_or(ConfigSource::Defaults, ConfigSource::File)
    }

    /// The file, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            ConfigSource::File(path) => Some(path),
            ConfigSource::Defaults => None,
        }
    }

    /// Reads and validates the file, or returns the defaults.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the file, and the key and line where known.
    pub fn load(&self) -> Result<Config, ConfigError> {
        match self {
            ConfigSource::File(path) => Config::load(path),
            ConfigSource::Defaults => Ok(Config::default()),
        }
    }
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::File(path) => path.display().fmt(f),
            ConfigSource::Defaults => f.write_str("built-in defaults"),
        }
    }
}

impl Config {
    /// In proxy mode, refuses an upstream at the balancer's own `listener.address` (it
    /// would forward to itself until its connection limit). Checked on the configuration in
    /// force — after `--listen` — at start, by `check` and on every reload.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming the upstream and the listener.
    pub fn check_upstream_loop(&self) -> Result<(), ConfigError> {
        if self.backend.mode != BackendMode::Proxy {
            return Ok(());
        }
        let listener = self.listener.address;
        match self
            .backend
            .upstreams
            .iter()
            .find(|u| upstream_is_listener(u.address, listener))
        {
            Some(u) => Err(ConfigError::Invalid(format!(
                "backend.upstreams: {} is the balancer's own listener address ({listener}): \
                 it would forward to itself",
                u.address
            ))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory with `local/` and `etc/` candidate locations.
    fn scratch(name: &str) -> (PathBuf, PathBuf, PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("elastic-lb-source-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        (dir.clone(), dir.join("local.toml"), dir.join("etc.toml"))
    }

    #[test]
    fn the_search_path_is_local_then_system_wide() {
        assert_eq!(
            SEARCH_PATH,
            ["config/elastic-lb.toml", "/etc/elastic-lb/elastic-lb.toml"]
        );
    }

    #[test]
    fn explicit_path_wins_even_when_missing() {
        let (dir, local, etc) = scratch("explicit");
        std::fs::write(&local, "").expect("write");
        let missing = dir.join("missing.toml");
        let source = ConfigSource::find(Some(&missing), [&local, &etc]);
        assert_eq!(source, ConfigSource::File(missing.clone()));
        assert!(
            source.load().is_err(),
            "a missing --config file is an error"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn first_existing_candidate_then_defaults() {
        let (dir, local, etc) = scratch("order");
        assert_eq!(
            ConfigSource::find(None, [&local, &etc]),
            ConfigSource::Defaults
        );
        std::fs::write(&etc, "[dispatcher]\nstrategy = \"random\"\n").expect("write");
        let source = ConfigSource::find(None, [&local, &etc]);
        assert_eq!(source, ConfigSource::File(etc.clone()));
        let config = source.load().expect("valid file");
        assert_eq!(config.dispatcher.strategy.to_string(), "random");
        std::fs::write(&local, "").expect("write");
        assert_eq!(
            ConfigSource::find(None, [&local, &etc]),
            ConfigSource::File(local.clone())
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn display_names_the_file_or_the_defaults() {
        assert_eq!(ConfigSource::Defaults.to_string(), "built-in defaults");
        assert_eq!(
            ConfigSource::Defaults.load().expect("defaults"),
            Config::default()
        );
        let file = ConfigSource::File(PathBuf::from("/etc/elastic-lb/elastic-lb.toml"));
        assert_eq!(file.to_string(), "/etc/elastic-lb/elastic-lb.toml");
        assert_eq!(
            file.path(),
            Some(Path::new("/etc/elastic-lb/elastic-lb.toml"))
        );
    }

    #[test]
    fn an_upstream_at_the_balancers_own_address_is_refused() {
        // The default listener.address is 127.0.0.1:7070.
        let text =
            "[backend]\nmode = \"proxy\"\n[[backend.upstreams]]\naddress = \"127.0.0.1:7070\"\n";
        let mut config = Config::from_toml(text, "x.toml").expect("valid on its own");
        let e = config.check_upstream_loop().expect_err("a loop");
        assert_eq!(
            e.to_string(),
            "backend.upstreams: 127.0.0.1:7070 is the balancer's own listener address \
             (127.0.0.1:7070): it would forward to itself"
        );
        // --listen elsewhere: no loop.
        config.listener.address = "0.0.0.0:8080".parse().expect("addr");
        assert!(config.check_upstream_loop().is_ok());
        let elsewhere = text.replace("127.0.0.1:7070", "10.0.0.5:7070");
        let config = Config::from_toml(&elsewhere, "x.toml").expect("valid");
        assert!(config.check_upstream_loop().is_ok(), "another host");
    }
}
