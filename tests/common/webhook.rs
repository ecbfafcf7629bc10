//! A webhook receiver for the tests: a small hyper server (HTTP/1.1 and HTTP/2, h2c or TLS
//! with ALPN) that records every request, verifies Standard Webhooks signatures with the
//! secrets it is given, and can be told to misbehave: answer 500 (or any status) for a while,
//! push back with 503 and `Retry-After`, refuse one event type or id with 400, or be slow.
//! Taking it away entirely is done with a [`super::proxy::Proxy`] in front of it.

use super::conformance::Delivered;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use ring::hmac;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The signing secrets the tests configure: an old one and a new one, as during a rotation.
pub const OLD_SECRET: &str = "whsec_b2xkLXNlY3JldC1vbGQtc2VjcmV0";
/// The new secret of the rotation.
pub const NEW_SECRET: &str = "whsec_bmV3LXNlY3JldC1uZXctc2VjcmV0";

/// One request as received.
#[derive(Clone, Debug)]
pub struct Received {
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
    /// The HTTP version it came in.
    pub version: Version,
    /// Whether one of its signatures verified with one of the receiver's secrets.
    pub verified: bool,
    /// The status it was answered.
    pub status: u16,
}

impl Received {
    /// The header `name` as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The events it carried: an array's elements, or the body itself; in CloudEvents binary
    /// mode the attributes come from the headers.
    pub fn events(&self) -> Vec<Delivered> {
        let body: Value = serde_json::from_slice(&self.body).expect("JSON body");
        if let Some(id) = self.header("ce-id") {
            return vec![Delivered {
                id: id.to_string(),
                key: self.header("ce-partitionkey").unwrap_or("").to_string(),
                seq: body["seq"].as_i64().unwrap_or(0),
                stream: 0,
            }];
        }
        let all = match body {
            Value::Array(all) => all,
            one => vec![one],
        };
        all.iter()
            .map(|event| {
                let key = event.get("key").or_else(|| event.get("partitionkey"));
                let payload = event.get("payload").or_else(|| event.get("data"));
                Delivered {
                    id: event["id"].as_str().expect("id").to_string(),
                    key: key.and_then(Value::as_str).unwrap_or("").to_string(),
                    seq: payload.and_then(|p| p["seq"].as_i64()).unwrap_or(0),
                    stream: 0,
                }
            })
            .collect()
    }

    /// The event types it carried (`type` of each element; `ce-type` in binary mode).
    fn types(&self) -> Vec<String> {
        if let Some(kind) = self.header("ce-type") {
            return vec![kind.to_string()];
        }
        let Ok(body) = serde_json::from_slice::<Value>(&self.body) else {
            return Vec::new();
        };
        let all = match body {
            Value::Array(all) => all,
            one => vec![one],
        };
        all.iter()
            .filter_map(|event| event["type"].as_str().map(str::to_string))
            .collect()
    }
}

/// What the receiver is told to do.
#[derive(Default)]
struct Behaviour {
    /// Answer `fail_status` until then.
    fail_until: Option<Instant>,
    /// The status answered while failing.
    fail_status: u16,
    /// The `Retry-After` sent while failing.
    retry_after: Option<String>,
    /// Answer 400 to a request holding an event of this type.
    refuse_type: Option<String>,
    /// How long to wait before answering.
    delay: Duration,
}

/// Everything shared between the server's connections and the test.
#[derive(Default)]
struct Shared {
    /// Every request, in arrival order.
    received: Vec<Received>,
    /// The misbehaviour asked for.
    behaviour: Behaviour,
    /// The secrets signatures are verified with.
    secrets: Vec<String>,
}

/// A running receiver; stops when dropped.
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it saw and what it does.
    shared: Arc<Mutex<Shared>>,
    /// The accept loop.
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Starts a cleartext receiver (HTTP/1.1 and h2c) verifying with `secrets`.
    pub async fn start(secrets: &[&str]) -> Receiver {
        Self::start_with(secrets, None).await
    }

    /// Starts an HTTPS receiver with `dir`'s `server.crt` and `server.key` (see
    /// [`super::certs::certificates`]), offering h2 and http/1.1 by ALPN.
    pub async fn start_tls(secrets: &[&str], dir: &Path) -> Receiver {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(dir.join("server.crt"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Self::start_with(secrets, Some(TlsAcceptor::from(Arc::new(config)))).await
    }

    /// Starts the accept loop.
    async fn start_with(secrets: &[&str], tls: Option<TlsAcceptor>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Mutex::new(Shared {
            secrets: secrets.iter().map(|s| s.to_string()).collect(),
            ..Shared::default()
        }));
        let task = tokio::spawn(accept(listener, tls, shared.clone()));
        Receiver { addr, shared, task }
    }

    /// The URL of path `path` on it (`http` or `https`).
    pub fn url(&self, scheme: &str, path: &str) -> String {
        let host = if scheme == "https" {
            "localhost"
        } else {
            "127.0.0.1"
        };
        format!("{scheme}://{host}:{}{path}", self.addr.port())
    }

    /// Answers `status` (with `Retry-After` if given) to every request for `span`.
    pub fn fail_for(&self, span: Duration, status: u16, retry_after: Option<&str>) {
        let mut shared = self.shared.lock().unwrap();
        shared.behaviour.fail_until = Some(Instant::now() + span);
        shared.behaviour.fail_status = status;
        shared.behaviour.retry_after = retry_after.map(str::to_string);
    }

    /// Stops failing at once.
    pub fn heal(&self) {
        self.shared.lock().unwrap().behaviour.fail_until = None;
    }

    /// Answers 400 to every request holding an event of type `event_type`.
    pub fn refuse_type(&self, event_type: &str) {
        self.shared.lock().unwrap().behaviour.refuse_type = Some(event_type.to_string());
    }

    /// Waits `delay` before answering each request.
    pub fn delay(&self, delay: Duration) {
        self.shared.lock().unwrap().behaviour.delay = delay;
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.lock().unwrap().received.clone()
    }

    /// The events of every request answered 2xx, in arrival order.
    pub fn delivered(&self) -> Vec<Delivered> {
        self.received()
            .iter()
            .filter(|r| (200..300).contains(&r.status))
            .flat_map(Received::events)
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts connections until aborted, each served on its own task.
async fn accept(listener: TcpListener, tls: Option<TlsAcceptor>, shared: Arc<Mutex<Shared>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(request, shared.clone()));
            let builder = Builder::new(TokioExecutor::new());
            match tls {
                Some(tls) => {
                    if let Ok(stream) = tls.accept(stream).await {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
                None => {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
            }
        });
    }
}

/// Records one request and answers it as the behaviour says.
async fn handle(
    request: Request<Incoming>,
    shared: Arc<Mutex<Shared>>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let version = request.version();
    let (parts, body) = request.into_parts();
    let body = body.collect().await?.to_bytes();
    let delay = shared.lock().unwrap().behaviour.delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut shared = shared.lock().unwrap();
    let verified = verify(&parts.headers, &body, &shared.secrets);
    let mut received = Received {
        headers: parts.headers,
        body,
        version,
        verified,
        status: 200,
    };
    let behaviour = &shared.behaviour;
    let mut answer = Response::builder();
    let (status, text) = match behaviour.fail_until {
        Some(until) if Instant::now() < until => {
            if let Some(wait) = &behaviour.retry_after {
                answer = answer.header("retry-after", wait.as_str());
            }
            (
                behaviour.fail_status,
                "receiver failing on purpose".to_string(),
            )
        }
        _ => match &behaviour.refuse_type {
            Some(refused) if received.types().contains(refused) => {
                (400, format!("event type {refused} is not accepted here"))
            }
            _ => (200, String::new()),
        },
    };
    received.status = status;
    shared.received.push(received);
    Ok(answer
        .status(StatusCode::from_u16(status).unwrap())
        .body(Full::new(Bytes::from(text)))
        .unwrap())
}

/// Whether a `v1,` signature in `webhook-signature` is the HMAC-SHA256 of
/// `{webhook-id}.{webhook-timestamp}.{body}` under one of `secrets`, as a Standard Webhooks
/// receiver checks it (the timestamp within five minutes of now).
pub fn verify(headers: &HeaderMap, body: &[u8], secrets: &[String]) -> bool {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(id), Some(timestamp), Some(signatures)) = (
        text("webhook-id"),
        text("webhook-timestamp"),
        text("webhook-signature"),
    ) else {
        return false;
    };
    let Ok(sent) = timestamp.parse::<i64>() else {
        return false;
    };
    let now = chrono::Utc::now().timestamp();
    if (now - sent).abs() > 300 {
        return false;
    }
    let signed = [id.as_bytes(), b".", timestamp.as_bytes(), b".", body].concat();
    secrets.iter().any(|secret| {
        let key = STANDARD
            .decode(secret.trim_start_matches("whsec_"))
            .expect("base64 secret");
        let key = hmac::Key::new(hmac::HMAC_SHA256, &key);
        signatures.split(' ').any(|signature| {
            signature
                .strip_prefix("v1,")
                .and_then(|b64| STANDARD.decode(b64).ok())
                .is_some_and(|tag| hmac::verify(&key, &signed, &tag).is_ok())
        })
    })
}
