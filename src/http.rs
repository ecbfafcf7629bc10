//! The HTTP endpoint: `/metrics` (OpenMetrics text), `/healthz` (alive) and `/readyz` (source
//! connected and sink accepting; active or standing by).

use crate::error::{Error, ErrorKind, Result};
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::net::SocketAddr;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Binds `listen` and serves until `shutdown`; returns the bound address (useful with port 0).
pub async fn serve(
    listen: &str,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|err| {
        Error::with_source(
            ErrorKind::Config,
            format!("http.listen: cannot bind {listen}"),
            err,
        )
    })?;
    let addr = listener
        .local_addr()
        .map_err(|err| Error::io("reading the HTTP listener address", err))?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz));
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(err) = served {
            tracing::error!(error = %err, "http server failed");
        }
    });
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    Ok((addr, task))
}

/// `/metrics`.
async fn metrics() -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::get().encode(),
    )
}

/// `/readyz`: 200 when ready, 503 naming what is down otherwise. The first line says whether
/// this relay is `active` or on `standby`. A standby is ready when its source is up and, once
/// its sink is open, the sink too: a relay waiting for the embedded log's lock has no sink
/// open yet, and must not hold up a rolling deploy whose old relay holds that lock.
async fn readyz() -> impl IntoResponse {
    let metrics = crate::metrics::get();
    let (source, sink) = metrics.ready();
    let waiting_for_log = metrics.waiting_for_log();
    let status = if source && (sink || waiting_for_log) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let up = |up: bool| if up { "up" } else { "down" };
    let body = format!(
        "role: {}\nsource: {}\nsink: {}\n",
        if metrics.active() {
            "active"
        } else {
            "standby"
        },
        up(source),
        if waiting_for_log {
            "waiting for the log lock"
        } else {
            up(sink)
        }
    );
    (status, body)
}
