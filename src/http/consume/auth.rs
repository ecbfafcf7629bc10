//! Bearer tokens for the consumer API: `Authorization: Bearer <token>` must carry one of
//! `http.consume.tokens`. Tokens are never logged: neither the header nor the token appears in
//! any message.
//!
//! The comparison reveals neither a token nor its length: the configured tokens are kept only
//! as SHA-256 digests, the offered token is hashed, and the fixed-size digests are compared in
//! constant time against every configured one, without stopping at a match.

use super::Api;
use super::request::ApiError;
use crate::secret::Secret;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ring::digest::{SHA256, SHA256_OUTPUT_LEN, digest};
use subtle::{Choice, ConstantTimeEq};

/// A token's SHA-256 digest.
type Digest = [u8; SHA256_OUTPUT_LEN];

/// The accepted tokens, as digests.
#[derive(Clone)]
pub struct Tokens {
    /// One digest per configured token.
    digests: Vec<Digest>,
}

impl Tokens {
    /// Keeps the digests of `tokens`.
    pub fn new(tokens: &[Secret]) -> Tokens {
        Tokens {
            digests: tokens.iter().map(|token| hash(token.expose())).collect(),
        }
    }

    /// Whether no token is configured (the API is open: only allowed on a loopback listener).
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `offered` is one of the tokens. Hashing takes time in the offered token's
    /// length only (the caller knows it), and the comparison the same time whichever token
    /// matches, if any.
    pub fn accepts(&self, offered: &str) -> bool {
        let offered = hash(offered);
        let found = self
            .digests
            .iter()
            .fold(Choice::from(0), |found, token| found | offered.ct_eq(token));
        found.into()
    }
}

/// The SHA-256 digest of `token`.
fn hash(token: &str) -> Digest {
    let mut out = [0; SHA256_OUTPUT_LEN];
    out.copy_from_slice(digest(&SHA256, token.as_bytes()).as_ref());
    out
}

/// Lets a request through if it carries an accepted token, or if no token is configured (only
/// allowed on a loopback listener, see `HttpConfig::validate`); 401 otherwise.
pub async fn require(State(api): State<Api>, request: Request, next: Next) -> Response {
    let tokens = api.tokens();
    if tokens.is_empty() {
        return next.run(request).await;
    }
    let offered = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    if offered.is_some_and(|offered| tokens.accepts(offered)) {
        return next.run(request).await;
    }
    let message = match offered {
        None => "a bearer token is required (Authorization: Bearer <token>)",
        Some(_) => "the bearer token is not accepted",
    };
    let mut response = ApiError {
        status: StatusCode::UNAUTHORIZED,
        message: message.to_owned(),
    }
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tokens `values`.
    fn tokens(values: &[&str]) -> Tokens {
        Tokens::new(&values.iter().map(|v| Secret::new(*v)).collect::<Vec<_>>())
    }

    #[test]
    fn every_configured_token_is_accepted_and_nothing_else() {
        let tokens = tokens(&["first-token", "second", "s3cr3t-with-a-much-longer-tail"]);
        for accepted in ["first-token", "second", "s3cr3t-with-a-much-longer-tail"] {
            assert!(tokens.accepts(accepted), "{accepted}");
        }
        for refused in [
            "",
            "first",
            "first-token-",
            "secon",
            "seconD",
            "x".repeat(4096).as_str(),
        ] {
            assert!(!tokens.accepts(refused), "{refused}");
        }
    }

    #[test]
    fn only_fixed_size_digests_are_kept_and_compared_whatever_the_tokens_lengths() {
        // Given tokens of very different lengths, what is kept and compared is one 32-byte
        // digest each: a comparison cannot stop early on a length difference.
        let tokens = tokens(&["a", &"b".repeat(10_000)]);
        assert_eq!(tokens.digests.len(), 2);
        assert!(tokens.digests.iter().all(|d| d.len() == 32));
        assert_eq!(hash("a"), hash("a"));
        assert_ne!(hash("a"), hash("a "));
        assert_eq!(hash(&"c".repeat(3)).len(), hash(&"c".repeat(30_000)).len());
    }
}
