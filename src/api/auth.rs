//! Who may change things through the API: a request carrying the bearer token, compared in
//! constant time.

use super::{Resp, error};
use crate::daemon::Shared;
use hyper::StatusCode;
use subtle::ConstantTimeEq;

/// Whether `given` is the token. The time taken depends on the lengths only, never on where
/// the bytes first differ, so the token cannot be guessed byte by byte from answer times
/// (`subtle` keeps the compiler from turning the loop back into an early exit). An empty token
/// matches nothing, even an empty one.
pub fn token_matches(given: &[u8], token: &[u8]) -> bool {
    !token.is_empty() && bool::from(given.ct_eq(token))
}

/// The refusal, if the request may not change anything.
pub fn refusal(s: &Shared, headers: &hyper::HeaderMap) -> Option<Resp> {
    let Some(token) = &s.api_token else {
        return Some(error(
            StatusCode::FORBIDDEN,
            "changes through the API are off: set api_token_file in the config",
        ));
    };
    let given = headers
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        None => Some(error(StatusCode::UNAUTHORIZED, "missing bearer token")),
        Some(t) if !token_matches(t.trim().as_bytes(), token.as_bytes()) => {
            Some(error(StatusCode::UNAUTHORIZED, "wrong bearer token"))
        }
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::token_matches;

    #[test]
    fn only_the_whole_token_matches() {
        let token = b"s3cret-token";
        assert!(token_matches(b"s3cret-token", token), "right");
        assert!(!token_matches(b"s3cret-tokex", token), "wrong last byte");
        assert!(!token_matches(b"x3cret-token", token), "wrong first byte");
        assert!(!token_matches(b"", token), "empty");
        assert!(!token_matches(b"s3cret", token), "prefix");
        assert!(!token_matches(b"s3cret-token2", token), "longer");
        assert!(
            !token_matches(b"", b""),
            "no token configured matches nothing"
        );
        assert!(!token_matches(b"anything", b""), "nor does anything else");
    }
}
