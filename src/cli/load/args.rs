//! The command line of `elastic-lb load` (SPEC §7) and its value parsers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::mix::{Mix, MixError};
use super::profile::ProfileSpec;

/// Arguments of `elastic-lb load` (SPEC §7).
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Balancer address (only what you pass is ever contacted).
    #[arg(long, value_name = "ADDR", value_parser = crate::config::resolve_addr)]
    pub target: SocketAddr,
    /// Connections to open and keep (one worker each).
    #[arg(long, value_name = "N", default_value = "50", value_parser = parse_connections)]
    pub connections: usize,
    /// How long to send load; the run stops by itself afterwards.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_positive_duration)]
    pub duration: Duration,
    /// Open loop at this many requests per second in total, spread over the connections
    /// (e.g. `2000/s`). Without it: closed loop, one outstanding request per connection.
    /// With a built-in --profile: the profile's peak rate.
    #[arg(long, value_name = "N/s", value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Open loop whose rate follows a profile over --duration: step, ramp, spike or sine
    /// (peak --rate), or a CSV file of `seconds,requests_per_second` rows (linear in
    /// between). Samples the admin API and reports the elasticity metrics (θU, θO, τU,
    /// τO, instability; docs/elasticity.md).
    #[arg(long, value_name = "step|ramp|spike|sine|PATH.csv", value_parser = parse_profile)]
    pub profile: Option<ProfileSpec>,
    /// Request classes and their relative weights.
    #[arg(long, value_name = "CLASS=W,...", default_value = "small=70,medium=20,large=10", value_parser = parse_mix)]
    pub mix: Mix,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Sample the admin API while running and draw supply (and, in open loop, demand),
    /// average load and machines over time as an SVG.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Admin address to sample for --plot and --profile (default: the target's host,
    /// port + 1).
    #[arg(long, value_name = "ADDR", value_parser = crate::config::resolve_addr)]
    pub admin: Option<SocketAddr>,
    /// With --plot: keep sampling this long after the load stops (to see scale-down).
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub cooldown: Duration,
    /// Start the connections one by one, evenly spread over this long (0s: all at once).
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub ramp: Duration,
    /// Connect, send one request, close; repeat (reports connections/s).
    #[arg(long, conflicts_with_all = ["rate", "idle", "profile"])]
    pub connect_per_request: bool,
    /// Open the connections, PING each once, and hold them silently for --duration.
    #[arg(long, conflicts_with_all = ["rate", "profile"])]
    pub idle: bool,
}

fn parse_connections(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("\"{s}\" is not a whole number")),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::config::duration_str::parse(s).map_err(|e| e.to_string())
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("must be longer than 0s".to_string());
    }
    Ok(d)
}

/// `2000/s` or `2000` → 2000.0 requests per second (must be positive and finite).
fn parse_rate(s: &str) -> Result<f64, String> {
    let number = s.trim().strip_suffix("/s").unwrap_or(s.trim());
    match number.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "\"{s}\" is not a positive rate (expected e.g. 2000/s)"
        )),
    }
}

fn parse_mix(s: &str) -> Result<Mix, MixError> {
    s.parse()
}

fn parse_profile(s: &str) -> Result<ProfileSpec, String> {
    s.parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_connections() {
        assert_eq!(parse_rate("2000/s"), Ok(2000.0));
        assert_eq!(parse_rate("5"), Ok(5.0));
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_connections("0").is_err());
        assert_eq!(parse_connections("4"), Ok(4));
    }
}
