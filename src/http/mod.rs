//! The HTTP endpoint: `/metrics` (OpenMetrics text), `/healthz` (alive) and `/readyz` (source
//! connected and sink accepting; active or standing by), always open; with `[http.consume]`
//! the consumer API of the embedded log under `/v1/` (see `consume/`); with `[http.tls]` over
//! HTTPS.

pub mod consume;
mod tls;

use crate::config::HttpConfig;
use crate::error::{Error, ErrorKind, Result};
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Most connections served at once. Well below any file-descriptor limit, so scrapers (or
/// anyone who can reach the port) can never take the descriptors the relay's own connections to
/// PostgreSQL and the broker need; a connection beyond it is closed at once.
pub const MAX_CONNECTIONS: usize = 32;

/// Time a client has to send a request's headers, also while a kept-alive connection waits for
/// its next request: a half-sent or idle connection is closed after it.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest a connection may live, however it behaves (a slow reader of `/metrics`, a trickle of
/// requests); scrapers simply reconnect.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Most connections at once while the consumer API is served: consumers hold theirs open
/// (long polls, streams).
pub const CONSUME_MAX_CONNECTIONS: usize = 256;

/// Longest a connection may live while the consumer API is served; a stream's client
/// reconnects after it with `Last-Event-ID` and misses nothing.
pub const CONSUME_CONNECTION_LIFETIME: Duration = Duration::from_secs(3600);

/// How many connections, and for how long each.
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// Most connections served at once.
    connections: usize,
    /// Longest a connection lives.
    lifetime: Duration,
}

/// Binds `listen` and serves `/metrics`, `/healthz` and `/readyz` over plain HTTP until
/// `shutdown`; returns the bound address (useful with port 0).
pub async fn serve(
    listen: &str,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, JoinHandle<()>)> {
    let config = HttpConfig {
        listen: listen.to_owned(),
        ..HttpConfig::default()
    };
    serve_with(&config, Path::new(""), shutdown).await
}

/// Binds `config.listen` and serves until `shutdown`, with the consumer API of the log at
/// `log_dir` if `[http.consume]` enables it and over HTTPS if `[http.tls]` is set; returns the
/// bound address (useful with port 0).
///
/// At most [`MAX_CONNECTIONS`] connections at once ([`CONSUME_MAX_CONNECTIONS`] with the
/// consumer API), each given [`HEADER_READ_TIMEOUT`] per request's headers and
/// [`CONNECTION_LIFETIME`] in all ([`CONSUME_CONNECTION_LIFETIME`]).
pub async fn serve_with(
    config: &HttpConfig,
    log_dir: &Path,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, JoinHandle<()>)> {
    config.validate()?;
    let tls = config.tls.as_ref().map(tls::acceptor).transpose()?;
    let listen = &config.listen;
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
    let consume = config
        .consume
        .enabled
        .then(|| consume::Api::new(&config.consume, log_dir));
    let metrics_consume = consume.clone();
    let mut app = Router::new()
        .route("/metrics", get(move || metrics(metrics_consume.clone())))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz));
    let limits = match &consume {
        Some(api) => {
            app = app.merge(api.router());
            Limits {
                connections: CONSUME_MAX_CONNECTIONS,
                lifetime: CONSUME_CONNECTION_LIFETIME,
            }
        }
        None => Limits {
            connections: MAX_CONNECTIONS,
            lifetime: CONNECTION_LIFETIME,
        },
    };
    raise_open_files_limit();
    let https = tls.is_some();
    let task = tokio::spawn(accept_loop(listener, app, tls, limits, shutdown));
    let consume = consume.is_some();
    tracing::info!(%addr, https, consume, "serving /metrics, /healthz and /readyz");
    Ok((addr, task))
}

/// Raises the soft limit on open files to the hard limit, as servers commonly do: the default
/// soft limit (often 1024, sometimes far less in containers) is the only one a process may
/// raise itself, and the headroom keeps the relay's own connections clear of the HTTP side's.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed by reference.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            let from = limit.rlim_cur;
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                tracing::debug!(from, to = limit.rlim_max, "raised the open files limit");
            }
        }
    }
}

/// Accepts connections until `shutdown`, each served on a task of its own while a slot is free.
async fn accept_loop(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.connections));
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            biased;
            // 1. Shutdown: stop accepting; open connections are dropped with the set.
            () = shutdown.cancelled() => return,
            // 2. Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            // 3. New connections.
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of descriptors or similar: back off briefly instead of spinning.
                tracing::warn!(error = %err, "http accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Each event of a stream and each long-poll answer is a small write of its own: with
        // Nagle's algorithm one waits for the client's (delayed, up to 40 ms) ACK of the one
        // before, which was the tail of the consumer API's latency.
        let _ = stream.set_nodelay(true);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Full: closing at once frees the descriptor; a scraper retries at its next interval.
            drop(stream);
            continue;
        };
        let app = app.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            match tls {
                Some(tls) => {
                    let handshake = tokio::time::timeout(HEADER_READ_TIMEOUT, tls.accept(stream));
                    // A failed handshake is the client's problem (wrong CA, plain HTTP).
                    if let Ok(Ok(stream)) = handshake.await {
                        serve_connection(stream, app, limits.lifetime).await;
                    }
                }
                None => serve_connection(stream, app, limits.lifetime).await,
            }
            drop(slot);
        });
    }
}

/// Serves HTTP/1.1 on one connection for at most `lifetime`.
async fn serve_connection<S>(stream: S, app: Router, lifetime: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let connection = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    // Errors here are the client's (reset, timeout, garbage): nothing to report.
    let _ = tokio::time::timeout(lifetime, connection).await;
}

/// `/metrics`, with the consumer groups' metrics refreshed first when the API is served.
async fn metrics(consume: Option<consume::Api>) -> impl IntoResponse {
    if let Some(api) = consume {
        api.refresh_metrics().await;
    }
    crate::metrics::get().groups.observe_retention(
        crate::log::held_segments(),
        crate::log::unacked_deleted_records(),
    );
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
