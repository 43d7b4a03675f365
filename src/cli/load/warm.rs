//! Open loops start warm: every connection is opened and admitted (`PING` answered
//! `PONG`) before the first request is due, so that connection set-up is neither in the
//! schedule nor in the latencies, and the balancer places the connections before requests
//! start to load its machines.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{timeout_at, Instant};

use super::plan::{LoadPlan, Mode};
use super::tally::Tally;

/// How long opening the connections may take before the load starts without the rest.
pub(super) const WARM_UP_LIMIT: Duration = Duration::from_secs(5);
/// Connections being opened at once (keeps the listen backlog from overflowing).
const PARALLELISM: usize = 128;

/// Connections opened before the load, one slot per worker (`None`: the worker connects
/// by itself), and what opening them counted.
pub(super) struct Warm {
    pub(super) streams: Vec<Option<TcpStream>>,
    pub(super) tally: Tally,
}

impl Warm {
    /// Nothing opened in advance.
    pub(super) fn cold() -> Warm {
        Warm {
            streams: Vec::new(),
            tally: Tally::new(),
        }
    }
}

/// Opens and admits every connection of an open-loop plan without a `--ramp`; other plans
/// start [`Warm::cold`].
pub(super) async fn warm_up(plan: &LoadPlan) -> Warm {
    let open_loop = matches!(plan.mode, Mode::OpenLoop { .. } | Mode::Profiled { .. });
    if !open_loop || !plan.ramp.is_zero() {
        return Warm::cold();
    }
    let deadline = Instant::now() + WARM_UP_LIMIT;
    let gate = Arc::new(Semaphore::new(PARALLELISM));
    let mut setups = JoinSet::new();
    for id in 0..plan.connections {
        let gate = gate.clone();
        let target = plan.target;
        setups.spawn(async move {
            let _permit = gate.acquire_owned().await;
            (id, admit(target, deadline).await)
        });
    }
    let mut warm = Warm {
        streams: (0..plan.connections).map(|_| None).collect(),
        tally: Tally::new(),
    };
    while let Some(done) = setups.join_next().await {
        match done {
            Ok((id, Ok(stream))) => {
                warm.tally.opened += 1;
                warm.streams[id] = Some(stream);
            }
            Ok((_, Err(Refusal { code, opened }))) => {
                if opened {
                    warm.tally.opened += 1;
                }
                warm.tally.refuse(code);
            }
            Err(_) => {}
        }
    }
    warm
}

/// Why a connection was not admitted, and whether TCP got that far.
struct Refusal {
    code: &'static str,
    opened: bool,
}

/// Connects, sends `PING`, and returns the stream once `PONG` came back.
async fn admit(target: std::net::SocketAddr, deadline: Instant) -> Result<TcpStream, Refusal> {
    let refused = |code| Refusal { code, opened: true };
    let stream = match timeout_at(deadline, TcpStream::connect(target)).await {
        Ok(Ok(stream)) => stream,
        _ => {
            return Err(Refusal {
                code: "connect",
                opened: false,
            })
        }
    };
    let _ = stream.set_nodelay(true);
    let mut conn = BufReader::new(stream);
    if conn.get_mut().write_all(b"PING\n").await.is_err() {
        return Err(refused("io"));
    }
    let mut line = Vec::new();
    match timeout_at(deadline, conn.read_until(b'\n', &mut line)).await {
        // Nothing else was asked, so nothing else can be buffered behind the PONG.
        Ok(Ok(_)) if line.starts_with(b"PONG") && conn.buffer().is_empty() => Ok(conn.into_inner()),
        Ok(Ok(_)) if line.starts_with(b"ERR exhausted") => Err(refused("exhausted")),
        Ok(Ok(_)) if line.starts_with(b"ERR overloaded") => Err(refused("overloaded")),
        Ok(Ok(_)) => Err(refused("unexpected")),
        _ => Err(refused("no-reply")),
    }
}
