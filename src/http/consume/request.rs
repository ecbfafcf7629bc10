//! Reading the consumer API's requests: query strings and JSON bodies, field by field, so a
//! malformed request gets a 400 that names the field; errors as `{"error": "…"}`.

use crate::error::{Error, ErrorKind};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use std::collections::HashMap;

/// An error answer: a status and `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    /// The status.
    pub status: StatusCode,
    /// What went wrong, naming the field where one is at fault.
    pub message: String,
}

impl ApiError {
    /// A 400 for `field`.
    pub fn bad(field: &str, problem: impl std::fmt::Display) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: format!("{field}: {problem}"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

impl From<Error> for ApiError {
    /// A request's fault is 400 (invalid) or 404 (unknown group); anything else is the
    /// server's, logged here and answered with 500 (503 while the log cannot be written).
    fn from(err: Error) -> ApiError {
        let status = match err.kind() {
            ErrorKind::Invalid | ErrorKind::Config => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::SinkPoisoned | ErrorKind::SinkUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::error!(error = %err.chain(), "consumer API request failed");
        }
        ApiError {
            status,
            message: err.to_string(),
        }
    }
}

/// The query string's parameters.
pub struct Query(pub HashMap<String, String>);

impl Query {
    /// Parses the query string of `uri`.
    pub fn of(uri: &axum::http::Uri) -> Query {
        let pairs = url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes());
        Query(pairs.into_owned().collect())
    }

    /// The number `name`, if given, within `max`.
    pub fn number(&self, name: &str, max: u64) -> Result<Option<u64>, ApiError> {
        self.0
            .get(name)
            .map(|value| number(name, value.parse().ok(), max))
            .transpose()
    }

    /// The string `name`, if given.
    pub fn string(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

/// `value` if it is a number up to `max`, else a 400 naming `field`.
fn number(field: &str, value: Option<u64>, max: u64) -> Result<u64, ApiError> {
    value
        .filter(|&value| value <= max)
        .ok_or_else(|| ApiError::bad(field, format!("must be a whole number from 0 to {max}")))
}

/// A JSON object body (at most the configured size: larger gets 413).
pub struct Body(pub Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Body, ApiError> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| ApiError {
                status: rejection.status(),
                message: format!("body: {}", rejection.body_text()),
            })?;
        if bytes.is_empty() {
            return Ok(Body(Map::new()));
        }
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(object)) => Ok(Body(object)),
            Ok(_) => Err(ApiError::bad("body", "must be a JSON object")),
            Err(err) => Err(ApiError::bad("body", format!("is not JSON: {err}"))),
        }
    }
}

impl Body {
    /// The number `name`, if given, within `max`.
    pub fn number(&self, name: &str, max: u64) -> Result<Option<u64>, ApiError> {
        self.0
            .get(name)
            .filter(|value| !value.is_null())
            .map(|value| number(name, value.as_u64(), max))
            .transpose()
    }

    /// The string `name`, if given.
    pub fn string(&self, name: &str) -> Result<Option<String>, ApiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(value)) => Ok(Some(value.clone())),
            Some(_) => Err(ApiError::bad(name, "must be a string")),
        }
    }

    /// The list of strings `name`, required.
    pub fn strings(&self, name: &str) -> Result<Vec<String>, ApiError> {
        let list = match self.0.get(name) {
            Some(Value::Array(list)) => list,
            None => return Err(ApiError::bad(name, "is required")),
            Some(_) => return Err(ApiError::bad(name, "must be a list of strings")),
        };
        list.iter()
            .map(|value| {
                value
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| ApiError::bad(name, "must be a list of strings"))
            })
            .collect()
    }

    /// Fails on a field not in `known`, naming it (a typo must not be silently ignored).
    pub fn only(&self, known: &[&str]) -> Result<(), ApiError> {
        match self.0.keys().find(|key| !known.contains(&key.as_str())) {
            Some(key) => Err(ApiError::bad(
                key,
                format!("unknown field; expected one of {}", known.join(", ")),
            )),
            None => Ok(()),
        }
    }
}
