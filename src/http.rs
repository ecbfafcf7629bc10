//! The HTTP endpoint: `/metrics` (OpenMetrics text), `/healthz` (alive) and `/readyz` (source
//! connected and sink accepting).

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

/// `/readyz`: 200 when ready, 503 naming what is down otherwise.
async fn readyz() -> impl IntoResponse {
    let (source, sink) = crate::metrics::get().ready();
    let status = if source && sink {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = format!(
        "source: {}\nsink: {}\n",
        if source { "up" } else { "down" },
        if sink { "up" } else { "down" }
    );
    (status, body)
}
