//! The consumer API of the embedded log (`[http.consume]`), under `/v1/`:
//!
//! - `GET /v1/records?from&topic&limit&wait_ms`: records from an offset, with a long poll;
//! - `GET /v1/stream?from&topic`: Server-Sent Events, `id:` = offset, resumed after
//!   `Last-Event-ID`;
//! - `/v1/groups…`: consumer groups with queue semantics (receive, ack, nack; see
//!   `log::queue`), the same groups as `outboxd log read --group`.
//!
//! Every route needs a bearer token (see `auth.rs`); bodies are JSON objects of at most
//! `http.consume.max_body_bytes`; errors are `{"error": "…"}`. The shapes are documented in
//! `docs/openapi.yaml`.

mod auth;
mod groups;
mod records;
pub mod request;

use crate::config::ConsumeConfig;
use crate::log::queue::Groups;
use crate::metrics::GroupSample;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The consumer API's shared state; cheap to clone.
#[derive(Clone)]
pub struct Api(Arc<Inner>);

/// What every request of the consumer API shares.
struct Inner {
    /// The log directory.
    dir: PathBuf,
    /// Accepted bearer tokens, as digests.
    tokens: auth::Tokens,
    /// The queue-semantics groups.
    groups: Groups,
    /// Largest body accepted.
    max_body_bytes: usize,
}

impl Api {
    /// The API over the log at `dir`.
    pub fn new(config: &ConsumeConfig, dir: &Path) -> Api {
        Api(Arc::new(Inner {
            dir: dir.to_owned(),
            tokens: auth::Tokens::new(&config.tokens),
            groups: Groups::new(dir, config.max_in_flight),
            max_body_bytes: config.max_body_bytes,
        }))
    }

    /// The routes, behind the token check and the body limit.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/records", get(records::records))
            .route("/v1/stream", get(records::stream))
            .route("/v1/groups", get(groups::list))
            .route(
                "/v1/groups/{group}",
                get(groups::status).delete(groups::delete),
            )
            .route("/v1/groups/{group}/receive", post(groups::receive))
            .route("/v1/groups/{group}/ack", post(groups::ack))
            .route("/v1/groups/{group}/nack", post(groups::nack))
            .layer(DefaultBodyLimit::max(self.0.max_body_bytes))
            .route_layer(axum::middleware::from_fn_with_state(
                self.clone(),
                auth::require,
            ))
            .with_state(self.clone())
    }

    /// Updates the metrics of the groups loaded in this process.
    pub async fn refresh_metrics(&self) {
        let metrics = &crate::metrics::get().groups;
        for status in self.0.groups.loaded().await {
            metrics.observe(
                &status.name,
                GroupSample {
                    lag_records: status.lag_records,
                    lag_seconds: status.lag_seconds,
                    in_flight: status.in_flight,
                    redeliveries: status.redeliveries,
                    acks: status.acks,
                },
            );
        }
    }

    /// The accepted tokens.
    fn tokens(&self) -> &auth::Tokens {
        &self.0.tokens
    }

    /// The log directory.
    fn dir(&self) -> &Path {
        &self.0.dir
    }

    /// The groups.
    fn groups(&self) -> &Groups {
        &self.0.groups
    }
}
