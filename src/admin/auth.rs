//! `admin.token`: bearer-token authentication of the admin API's mutating requests
//! (SPEC §9), and the start-up check for an endpoint open beyond loopback.
//!
//! [`require_token`] is a middleware over every route: `GET` and `HEAD` pass; any other
//! method needs `Authorization: Bearer <admin.token>` when a token is set, else it gets
//! 401 with `{"error": …}` and a `WWW-Authenticate` header (RFC 6750). The token is read
//! from the live configuration on every request, so a reload can set, rotate or remove it.
//! Refusals are logged at most once a second ([`RefusalLog`]) so that a client hammering
//! the endpoint with bad tokens cannot flood the log.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::warn;

use crate::config::{AdminConfig, Config};
use crate::telemetry::RefusalLog;

/// What [`require_token`] needs.
#[derive(Debug, Clone)]
pub struct AuthState {
    /// The live configuration (`admin.token`).
    pub config: watch::Receiver<Arc<Config>>,
    /// Rate limit of the "unauthorized" warning, shared by all connections.
    pub refusals: Arc<Mutex<RefusalLog>>,
}

impl AuthState {
    /// Reads the token from `config` on every request.
    pub fn new(config: watch::Receiver<Arc<Config>>) -> AuthState {
        AuthState {
            config,
            refusals: Arc::default(),
        }
    }
}

/// Whether `method` is let through without a token.
pub fn is_read_only(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD)
}

/// The middleware: passes read-only requests, and others only with the right bearer token
/// when `admin.token` is set.
pub async fn require_token(
    State(auth): State<AuthState>,
    request: Request,
    next: Next,
) -> Response {
    if is_read_only(request.method()) {
        return next.run(request).await;
    }
    let token = auth.config.borrow().admin.token.clone();
    let Some(token) = token else {
        return next.run(request).await;
    };
    let presented = bearer(request.headers());
    if presented.is_some_and(|p| token.matches(p)) {
        return next.run(request).await;
    }
    let refused = auth
        .refusals
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .refused(Instant::now());
    if let Some(refused) = refused {
        warn!(
            refused,
            method = %request.method(),
            path = %request.uri().path(),
            "admin requests refused (unauthorized) since the last report"
        );
    }
    unauthorized(presented.is_some())
}

/// The credentials of an `Authorization: Bearer <token>` header (scheme case-insensitive).
pub fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let start = rest.iter().position(|&b| b != b' ')?;
    Some(&rest[start..])
}

/// 401 with the JSON error shape of the admin API.
fn unauthorized(presented: bool) -> Response {
    let (challenge, message) = if presented {
        (
            r#"Bearer realm="elastic-lb admin", error="invalid_token""#,
            "the bearer token does not match admin.token",
        )
    } else {
        (
            r#"Bearer realm="elastic-lb admin""#,
            "this request needs the header \"Authorization: Bearer <admin.token>\"",
        )
    };
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        )],
        Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

/// Whether an admin endpoint on `addr` lets anyone who can reach it change the daemon:
/// bound beyond loopback (a wildcard address included) with no `admin.token`.
pub fn exposed(addr: SocketAddr, admin: &AdminConfig) -> bool {
    !addr.ip().to_canonical().is_loopback() && admin.token.is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AdminToken;

    #[test]
    fn only_get_and_head_are_read_only() {
        assert!(is_read_only(&Method::GET));
        assert!(is_read_only(&Method::HEAD));
        for m in [
            Method::PUT,
            Method::POST,
            Method::DELETE,
            Method::PATCH,
            Method::OPTIONS,
        ] {
            assert!(!is_read_only(&m), "{m}");
        }
    }

    #[test]
    fn bearer_reads_the_credentials() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(v).expect("header"),
            );
            h
        };
        assert_eq!(bearer(&with("Bearer abc")), Some(&b"abc"[..]));
        assert_eq!(bearer(&with("bearer  abc")), Some(&b"abc"[..]));
        assert_eq!(bearer(&with("Basic abc")), None);
        assert_eq!(bearer(&with("Bearer")), None);
        assert_eq!(bearer(&with("Bearer ")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn exposed_means_beyond_loopback_without_a_token() {
        let mut admin = AdminConfig::default();
        let at = |s: &str| s.parse::<SocketAddr>().expect("addr");
        assert!(!exposed(at("127.0.0.1:7071"), &admin));
        assert!(!exposed(at("[::1]:7071"), &admin));
        assert!(!exposed(at("[::ffff:127.0.0.1]:7071"), &admin));
        assert!(exposed(at("0.0.0.0:7071"), &admin));
        assert!(exposed(at("[::]:7071"), &admin));
        assert!(exposed(at("192.0.2.1:7071"), &admin));
        admin.token = Some(AdminToken::new("t"));
        assert!(!exposed(at("0.0.0.0:7071"), &admin));
    }
}
