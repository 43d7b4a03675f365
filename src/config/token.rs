//! `admin.token`: the bearer token that guards the admin API's mutating requests.
//!
//! The admin endpoint (`admin::auth`) asks [`AdminToken::matches`] for every `PUT`, `POST`
//! or `DELETE`; the comparison takes the same time wherever the first wrong byte is, so the
//! token cannot be guessed byte by byte from response times. `Debug` never shows the
//! token, so it cannot leak into a log line; `elastic-lb check` does print it, like the rest
//! of the file it read.

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// Longest token accepted.
pub const MAX_TOKEN_BYTES: usize = 1024;

/// The value of `admin.token`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AdminToken(String);

impl AdminToken {
    /// A token (validation checks its length and characters).
    pub fn new(token: impl Into<String>) -> AdminToken {
        AdminToken(token.into())
    }

    /// Whether `presented` is this token, compared in constant time (only a difference in
    /// length returns early, and the length is no secret worth keeping).
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(presented).into()
    }

    /// Why the token cannot be used in an `Authorization` header, if it cannot: empty,
    /// longer than [`MAX_TOKEN_BYTES`], or with a character that is not visible ASCII.
    pub fn problem(&self) -> Option<String> {
        if self.0.is_empty() {
            return Some("must not be empty (leave the key out to disable the check)".into());
        }
        if self.0.len() > MAX_TOKEN_BYTES {
            return Some(format!("must be at most {MAX_TOKEN_BYTES} bytes"));
        }
        if !self.0.bytes().all(|b| b.is_ascii_graphic()) {
            return Some("must be visible ASCII characters only (no spaces)".into());
        }
        None
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<hidden>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_only_the_exact_token() {
        let token = AdminToken::new("s3cret-T0ken");
        assert!(token.matches(b"s3cret-T0ken"));
        assert!(!token.matches(b"s3cret-T0keN"));
        assert!(!token.matches(b"s3cret-T0ke"));
        assert!(!token.matches(b"s3cret-T0ken "));
        assert!(!token.matches(b""));
    }

    #[test]
    fn debug_hides_the_token() {
        let shown = format!("{:?}", Some(AdminToken::new("hunter2")));
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn problems_name_what_is_wrong() {
        assert_eq!(AdminToken::new("a-b.c_d~e+f/g=").problem(), None);
        assert!(AdminToken::new("").problem().unwrap().contains("empty"));
        assert!(AdminToken::new("two words")
            .problem()
            .unwrap()
            .contains("visible ASCII"));
        assert!(AdminToken::new("tab\t").problem().is_some());
        assert!(AdminToken::new("é").problem().is_some());
        let long = AdminToken::new("x".repeat(MAX_TOKEN_BYTES + 1));
        assert!(long.problem().unwrap().contains("at most"));
    }
}
