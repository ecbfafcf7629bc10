//! The HTTP transport every lane's handle shares: one connector (TCP with `TCP_NODELAY`, rustls
//! with ring trusting `ca_file` or the Mozilla roots, the ALPN the configured versions allow)
//! and hyper's pooled client over it (HTTP/2, and HTTP/1.1 to an origin other than the lane's
//! own connection's, see [`lane`](super::lane)); and reading an answer.

use super::config::{HttpVersion, WebhookSinkConfig, read_ca_file};
use crate::error::{Error, ErrorKind, Result};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::{ClientConfig, RootCertStore};
use std::sync::Arc;
use std::time::Duration;

/// Opens TCP (and TLS) connections to receivers.
pub type Connector = HttpsConnector<HttpConnector>;

/// hyper's pooled client over [`Connector`].
pub type HttpClient = Client<Connector, Full<Bytes>>;

/// How many bytes of an answer's body are kept for a dead letter's reason.
pub const HEAD_BYTES: usize = 256;

/// The most of a 2xx answer's body read (to keep its connection reusable); a longer one is
/// dropped with its connection.
const DRAIN_BYTES: usize = 64 * 1024;

/// What the receiver answered.
#[derive(Debug)]
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// The `Retry-After` header, as text.
    pub retry_after: Option<String>,
    /// The first [`HEAD_BYTES`] of the body.
    pub head: Vec<u8>,
}

/// What every lane's handle shares: the connector and the pool.
#[derive(Clone)]
pub struct Transport {
    /// Opens a lane's own connections.
    pub connector: Connector,
    /// The pooled client.
    pub pool: HttpClient,
    /// Whether lanes open their own HTTP/1.1 connections (every setting but `http2`).
    pub lane_connections: bool,
}

/// Builds the transport for `config`: TLS with rustls (ring), the HTTP versions asked for, a
/// connect timeout of the request timeout.
pub fn build(config: &WebhookSinkConfig) -> Result<Transport> {
    let mut roots = RootCertStore::empty();
    match &config.ca_file {
        Some(path) => {
            for cert in read_ca_file(path)? {
                roots.add(cert).map_err(|err| {
                    Error::config(
                        "sink.webhook.ca_file",
                        format!("{} holds an unusable certificate: {err}", path.display()),
                    )
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| Error::with_source(ErrorKind::Internal, "configuring TLS", err))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_millis(config.timeout_ms)));
    let builder = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let connector = match config.http_version {
        HttpVersion::Auto => builder.enable_all_versions().wrap_connector(http),
        HttpVersion::Http1 => builder.enable_http1().wrap_connector(http),
        HttpVersion::Http2 => builder.enable_http2().wrap_connector(http),
    };
    let mut client = Client::builder(TokioExecutor::new());
    client.pool_idle_timeout(Duration::from_secs(60));
    if config.http_version == HttpVersion::Http2 {
        // Cleartext HTTP/2 with prior knowledge (h2c); over TLS ALPN offers h2 alone.
        client.http2_only(true);
    }
    Ok(Transport {
        pool: client.build(connector.clone()),
        connector,
        lane_connections: config.http_version != HttpVersion::Http2,
    })
}

/// Sends `request` through the pool and reads the answer. An error (no connection, a reset)
/// says why no answer came.
pub async fn send_pooled(
    client: &HttpClient,
    request: Request<Full<Bytes>>,
) -> std::result::Result<Answer, String> {
    let response = client
        .request(request)
        .await
        .map_err(|err| error_text(&err))?;
    Ok(read_answer(response).await.0)
}

/// The status, `Retry-After` and first bytes of `response`, and whether its body was read to
/// its end (its connection can carry another request).
pub async fn read_answer(response: Response<Incoming>) -> (Answer, bool) {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    let limit = if status.is_success() {
        DRAIN_BYTES
    } else {
        HEAD_BYTES
    };
    let mut body = response.into_body();
    let mut head = Vec::new();
    let mut complete = false;
    while head.len() < limit {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    head.extend_from_slice(&data);
                }
            }
            None => {
                complete = true;
                break;
            }
            // The status is the answer; a body cut short does not change it.
            Some(Err(_)) => break,
        }
    }
    head.truncate(HEAD_BYTES);
    let answer = Answer {
        status,
        retry_after,
        head,
    };
    (answer, complete)
}

/// An error and its causes on one line.
pub fn error_text(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(inner) = cause {
        let more = inner.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = inner.source();
    }
    text
}
