//! What a run does: [`LoadPlan`] and its [`Mode`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::mix::Mix;
use super::profile::RateCurve;
use crate::core::RequestClass;

/// How the workers send.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// One outstanding request per connection.
    ClosedLoop,
    /// `rate` requests per second in total, on a fixed schedule.
    OpenLoop {
        /// Requests per second over all connections.
        rate: f64,
    },
    /// Open loop whose total rate follows `curve` over time (`--profile`).
    Profiled {
        /// The profile's name (`step`, …, or the CSV path).
        name: String,
        /// Requests per second over time.
        curve: Arc<RateCurve>,
    },
    /// Connect, one request, close, repeat.
    ConnectPerRequest,
    /// Connect, `PING`, hold silently.
    Idle,
}

impl Mode {
    /// The name `--json` and the text summary print.
    pub(super) fn name(&self) -> &'static str {
        match self {
            Mode::ClosedLoop => "closed-loop",
            Mode::OpenLoop { .. } => "open-loop",
            Mode::Profiled { .. } => "profiled-open-loop",
            Mode::ConnectPerRequest => "connect-per-request",
            Mode::Idle => "idle",
        }
    }
}

impl Mode {
    /// The offered rate over time, where the mode fixes it (open loops; idle offers none).
    pub fn offered(&self) -> Option<RateCurve> {
        match self {
            Mode::OpenLoop { rate } => Some(RateCurve::constant(*rate)),
            Mode::Profiled { curve, .. } => Some(RateCurve::clone(curve)),
            Mode::Idle => Some(RateCurve::constant(0.0)),
            Mode::ClosedLoop | Mode::ConnectPerRequest => None,
        }
    }
}

/// What to run (the library form of [`LoadArgs`](super::LoadArgs)).
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// Balancer address.
    pub target: SocketAddr,
    /// Workers (connections).
    pub connections: usize,
    /// When to stop sending.
    pub duration: Duration,
    /// How to send.
    pub mode: Mode,
    /// Request classes by weight.
    pub mix: Mix,
    /// Worker `i` of `n` starts `i × ramp / n` after the start (not in idle mode).
    pub ramp: Duration,
}

impl LoadPlan {
    /// A closed-loop plan of small requests.
    pub fn closed_loop(target: SocketAddr, connections: usize, duration: Duration) -> LoadPlan {
        LoadPlan {
            target,
            connections,
            duration,
            mode: Mode::ClosedLoop,
            mix: Mix::only(RequestClass::Small),
            ramp: Duration::ZERO,
        }
    }
}
