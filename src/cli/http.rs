//! The admin HTTP client shared by `elastic-lb stats` and `elastic-lb load --plot`.
//!
//! It is hyper's low-level `http1` connection, one request per connection: no pooling, TLS
//! or redirects are needed to talk to our own admin endpoint.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{ACCEPT, HOST};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::admin::StatsBody;

/// Bound on connecting to the daemon and reading one answer in [`fetch_stats`].
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The answer to one `GET`.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status.
    pub status: StatusCode,
    /// The whole body.
    pub body: Bytes,
}

/// Why a `GET` got no answer.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    /// The TCP connection could not be made, e.g. "Connection refused (os error 111)".
    #[error(transparent)]
    Connect(std::io::Error),
    /// The request could not be built (a path that is not a valid URI).
    #[error(transparent)]
    Request(hyper::http::Error),
    /// The HTTP exchange failed: not HTTP, closed early, …
    #[error("{}{}", .0, not_http_hint(.0))]
    Http(hyper::Error),
    /// No complete answer within the time limit.
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
}

/// What to check when nothing answered HTTP; an answer that is not HTTP has its own hint.
fn reach_hint(e: &GetError) -> &'static str {
    match e {
        GetError::Http(e) if e.is_parse() => "",
        _ => " (is elastic-lb running? is the admin endpoint enabled?)",
    }
}

/// For an answer that is not HTTP at all: the likeliest cause, said.
fn not_http_hint(e: &hyper::Error) -> &'static str {
    if e.is_parse() {
        " (the answer is not HTTP: is this the admin address, admin.address, rather than the \
         balancer's listener?)"
    } else {
        ""
    }
}

/// What was wrong with an answer to `GET /api/stats`.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    /// A status other than 200.
    #[error("GET /api/stats answered {0}")]
    Status(StatusCode),
    /// A body that is not a stats document.
    #[error("GET /api/stats: {0}")]
    Json(#[source] serde_json::Error),
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Nothing answered HTTP at the address (refused, timed out, closed, not HTTP).
    #[error(
        "cannot reach the admin endpoint at {addr}: {source}{}",
        reach_hint(source)
    )]
    Unreachable {
        /// The admin address.
        addr: SocketAddr,
        /// What went wrong.
        source: GetError,
    },
    /// Something answered, but not with a stats document.
    #[error("unexpected answer from the admin endpoint at {addr}: {source}")]
    BadAnswer {
        /// The admin address.
        addr: SocketAddr,
        /// The status or parse error.
        source: AnswerError,
    },
}

impl FetchError {
    /// What went wrong, without the address and the hints of the full message.
    pub fn reason(&self) -> &(dyn std::error::Error + 'static) {
        match self {
            FetchError::Unreachable { source, .. } => source,
            FetchError::BadAnswer { source, .. } => source,
        }
    }
}

/// `GET /api/stats` from the admin endpoint at `addr`.
///
/// # Errors
///
/// [`FetchError::Unreachable`] when no HTTP answer arrives within [`REQUEST_TIMEOUT`],
/// [`FetchError::BadAnswer`] for a non-200 status or a body that is not a stats document.
pub async fn fetch_stats(addr: SocketAddr) -> Result<StatsBody, FetchError> {
    let answer = get(addr, "/api/stats", REQUEST_TIMEOUT)
        .await
        .map_err(|source| FetchError::Unreachable { addr, source })?;
    let bad = |source: AnswerError| FetchError::BadAnswer { addr, source };
    if answer.status != StatusCode::OK {
        return Err(bad(AnswerError::Status(answer.status)));
    }
    serde_json::from_slice(&answer.body).map_err(|e| bad(AnswerError::Json(e)))
}

/// One `GET path` over a fresh HTTP/1.1 connection to `addr`, connecting and reading the
/// whole answer within `limit`.
///
/// # Errors
///
/// [`GetError`] when no complete answer arrives; any status is an answer.
pub async fn get(addr: SocketAddr, path: &str, limit: Duration) -> Result<Answer, GetError> {
    match tokio::time::timeout(limit, exchange(addr, path)).await {
        Ok(answer) => answer,
        Err(_) => Err(GetError::TimedOut(limit)),
    }
}

/// The exchange of [`get`], without the time limit.
async fn exchange(addr: SocketAddr, path: &str) -> Result<Answer, GetError> {
    let stream = TcpStream::connect(addr).await.map_err(GetError::Connect)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(GetError::Http)?;
    // The connection future drives the socket; it ends when the answer is read.
    let driver = tokio::spawn(connection);
    let request = Request::get(path)
        .header(HOST, addr.to_string())
        .header(ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(GetError::Request)?;
    let response = sender.send_request(request).await.map_err(GetError::Http)?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(GetError::Http)?
        .to_bytes();
    driver.abort();
    Ok(Answer { status, body })
}
