//! Bearer tokens for the consumer API: `Authorization: Bearer <token>` must carry one of
//! `http.consume.tokens`. Tokens are compared in constant time (every configured token is
//! compared, whatever matched) and never logged: neither the header nor the token appears in
//! any message.

use super::Api;
use super::request::ApiError;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

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
    let accepted = offered.is_some_and(|offered| {
        tokens.iter().fold(0u8, |found, token| {
            found
                | offered
                    .as_bytes()
                    .ct_eq(token.expose().as_bytes())
                    .unwrap_u8()
        }) == 1
    });
    if accepted {
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
