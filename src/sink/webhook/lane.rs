//! A lane's way to the receiver: its own HTTP/1.1 connection, driven in the lane's own task.
//!
//! A lane sends one request at a time, so it needs one connection, and nothing gains from a
//! pool: hyper's pooled client checks a connection out per request and runs each connection in
//! a task of its own, so every request and every answer crossed tasks (wakeups between threads
//! were most of the relay's CPU per request). Here the lane's handle holds the connection
//! (`hyper::client::conn::http1`) and polls it together with the request it waits for.
//!
//! The connection belongs to one origin (scheme, host and port): a request to another one, while
//! it is open, goes through the shared pool, as does everything with `http_version = "http2"`
//! and an origin whose TLS handshake chose HTTP/2 (ALPN). A connection that failed, timed out,
//! was closed by the receiver, left an answer unread or idled for [`IDLE`] is dropped; the next
//! request opens another. A request on a kept-alive connection that fails before any answer
//! came (the receiver closed it while it idled, and the close crossed the request) is sent once
//! more on a new connection: without that second try the call would fail and the relay send the
//! event again after its backoff anyway (a repeat keeps its `webhook-id`).

use super::client::{Answer, Transport, error_text, read_answer, send_pooled};
use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Uri};
use http_body_util::Full;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::MaybeHttpsStream;
use hyper_util::client::legacy::connect::Connection as _;
use hyper_util::rt::TokioIo;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tower_service::Service;

/// How long an idle connection is kept (the pool's idle timeout).
const IDLE: Duration = Duration::from_secs(60);

/// The connection hyper drives: the stream, TLS or not.
type Driver = http1::Connection<MaybeHttpsStream<TokioIo<TcpStream>>, Full<Bytes>>;

/// A lane's client: its own connection, and the shared transport.
pub struct LaneClient {
    /// The connector and the pool.
    transport: Transport,
    /// The lane's connection, while open.
    own: Option<Box<Own>>,
    /// An origin whose TLS handshake chose HTTP/2: its requests go through the pool.
    h2: Option<(Scheme, Authority)>,
}

/// One HTTP/1.1 connection of a lane.
struct Own {
    /// Where it goes.
    scheme: Scheme,
    /// Host and port.
    authority: Authority,
    /// The `Host` header of its requests.
    host: HeaderValue,
    /// Hands requests to the connection.
    sender: SendRequest<Full<Bytes>>,
    /// The connection itself, polled only by the lane's task.
    driver: Driver,
    /// Why the connection ended, once it did.
    ended: Option<String>,
    /// When its last answer was read.
    used: Instant,
}

/// What opening a connection gave.
enum Opened {
    /// An HTTP/1.1 connection.
    Http1(Box<Own>),
    /// TLS chose HTTP/2: the pool speaks it.
    Http2,
}

impl LaneClient {
    /// A client without a connection yet.
    pub fn new(transport: Transport) -> Self {
        LaneClient {
            transport,
            own: None,
            h2: None,
        }
    }

    /// A client for another lane: the same transport, a connection of its own.
    pub fn fork(&self) -> Self {
        LaneClient {
            transport: self.transport.clone(),
            own: None,
            h2: self.h2.clone(),
        }
    }

    /// Sends `request` and reads the answer within `timeout`. An error (no connection, a reset,
    /// a timeout) says why no answer came. `again` makes the request anew for a second try, when
    /// a kept-alive connection turned out closed (see the module's doc).
    pub async fn send(
        &mut self,
        request: Request<Full<Bytes>>,
        again: impl FnOnce() -> Option<Request<Full<Bytes>>>,
        timeout: Duration,
    ) -> Result<Answer, String> {
        match tokio::time::timeout(timeout, self.exchange(request, again)).await {
            Ok(answer) => answer,
            // The connection, taken out for the exchange, was dropped with it.
            Err(_) => Err(format!(
                "no answer within sink.webhook.timeout_ms ({} ms)",
                timeout.as_millis()
            )),
        }
    }

    /// Sends `request` on the lane's connection (opening one if needed) or through the pool.
    async fn exchange(
        &mut self,
        mut request: Request<Full<Bytes>>,
        again: impl FnOnce() -> Option<Request<Full<Bytes>>>,
    ) -> Result<Answer, String> {
        if request.uri().scheme().is_none() || request.uri().authority().is_none() {
            return Err(format!("{} is not an absolute URL", request.uri()));
        }
        let origin = (scheme_of(request.uri()), authority_of(request.uri()));
        if !self.transport.lane_connections || self.h2.as_ref() == Some(&origin) {
            return send_pooled(&self.transport.pool, request).await;
        }
        let mut own = self.own.take();
        if let Some(open) = &mut own
            && !open.usable().await
        {
            own = None;
        }
        if let Some(open) =
            own.take_if(|open| (&open.scheme, &open.authority) != (&origin.0, &origin.1))
        {
            // Another origin's connection stays for its own requests.
            self.own = Some(open);
            return send_pooled(&self.transport.pool, request).await;
        }
        let target = request.uri().clone();
        let mut again = Some(again);
        loop {
            let kept = own.is_some();
            let mut conn = match own.take() {
                Some(conn) => conn,
                None => match open(&self.transport, &target).await? {
                    Opened::Http1(conn) => conn,
                    Opened::Http2 => {
                        self.h2 = Some(origin);
                        return send_pooled(&self.transport.pool, request).await;
                    }
                },
            };
            match conn.send(request).await {
                Ok((answer, reusable)) => {
                    if reusable {
                        conn.used = Instant::now();
                        self.own = Some(conn);
                    }
                    return Ok(answer);
                }
                // A kept-alive connection the receiver had closed: once more on a new one.
                Err(Failure::Unsent(unsent, _)) if kept => request = *unsent,
                Err(Failure::Lost(reason)) if kept => {
                    match again.take().and_then(|again| again()) {
                        Some(anew) => request = anew,
                        None => return Err(reason),
                    }
                }
                Err(Failure::Unsent(_, reason) | Failure::Lost(reason) | Failure::Cut(reason)) => {
                    return Err(reason);
                }
            }
        }
    }
}

/// Why a request on a lane's connection got no answer.
enum Failure {
    /// The connection closed before it took the request, given back.
    Unsent(Box<Request<Full<Bytes>>>, String),
    /// The request went out (or may have), and the connection failed before an answer came.
    Lost(String),
    /// The connection failed while the answer came in.
    Cut(String),
}

impl Own {
    /// Whether the connection can take a request: open, not idle too long.
    async fn usable(&mut self) -> bool {
        if self.used.elapsed() >= IDLE || self.sender.is_closed() {
            return false;
        }
        // One poll reads a close (or anything unexpected) the receiver sent while it was idle.
        poll_fn(|cx| {
            self.poll_driver(cx);
            Poll::Ready(())
        })
        .await;
        self.ended.is_none()
    }

    /// Sends `request` (as origin-form, with `Host`) and reads the answer, driving the
    /// connection meanwhile; with the answer, whether the connection can carry another request.
    async fn send(&mut self, mut request: Request<Full<Bytes>>) -> Result<(Answer, bool), Failure> {
        if request.uri().scheme().is_some() {
            let path = request
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            *request.uri_mut() = Uri::from(path);
        }
        request
            .headers_mut()
            .insert(http::header::HOST, self.host.clone());
        let ready = drive(&mut self.driver, &mut self.ended, self.sender.ready()).await;
        if !matches!(ready, Some(Ok(()))) {
            let reason = self.why(ready.and_then(Result::err));
            return Err(Failure::Unsent(Box::new(request), reason));
        }
        let sent = self.sender.try_send_request(request);
        let response = match drive(&mut self.driver, &mut self.ended, sent).await {
            Some(Ok(response)) => response,
            Some(Err(mut err)) => {
                let reason = error_text(err.error());
                return Err(match err.take_message() {
                    Some(unsent) => Failure::Unsent(Box::new(unsent), reason),
                    None => Failure::Lost(reason),
                });
            }
            None => return Err(Failure::Lost(self.why(None))),
        };
        match drive(&mut self.driver, &mut self.ended, read_answer(response)).await {
            Some((answer, complete)) => Ok((answer, complete && self.ended.is_none())),
            // The status came, the rest did not: no answer to go by, and no second try either.
            None => Err(Failure::Cut(self.why(None))),
        }
    }

    /// Why the connection failed: `err`, or why it ended.
    fn why(&self, err: Option<hyper::Error>) -> String {
        match (err, &self.ended) {
            (Some(err), _) => error_text(&err),
            (None, Some(ended)) => ended.clone(),
            (None, None) => "the connection closed".to_string(),
        }
    }

    /// Polls the connection once, noting why it ended if it did.
    fn poll_driver(&mut self, cx: &mut std::task::Context<'_>) {
        poll_once(&mut self.driver, &mut self.ended, cx);
    }
}

/// Polls `driver` (unless it ended), noting in `ended` why it did.
fn poll_once(driver: &mut Driver, ended: &mut Option<String>, cx: &mut std::task::Context<'_>) {
    if ended.is_some() {
        return;
    }
    if let Poll::Ready(result) = Pin::new(driver).poll(cx) {
        *ended = Some(match result {
            Ok(()) => "the receiver closed the connection".to_string(),
            Err(err) => error_text(&err),
        });
    }
}

/// Runs `work` while driving the connection in this task; `None` if the connection ended
/// before `work` finished.
async fn drive<F: Future>(
    driver: &mut Driver,
    ended: &mut Option<String>,
    work: F,
) -> Option<F::Output> {
    let mut work = pin!(work);
    poll_fn(|cx| {
        // The connection first: it writes the request and reads the answer `work` waits for.
        poll_once(driver, ended, cx);
        match work.as_mut().poll(cx) {
            Poll::Ready(output) => Poll::Ready(Some(output)),
            Poll::Pending if ended.is_some() => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// Opens a connection to `target`'s origin and, unless TLS chose HTTP/2, starts HTTP/1.1 on it.
async fn open(transport: &Transport, target: &Uri) -> Result<Opened, String> {
    let mut connector = transport.connector.clone();
    poll_fn(|cx| connector.poll_ready(cx))
        .await
        .map_err(|err| error_text(&*err))?;
    let stream = connector
        .call(target.clone())
        .await
        .map_err(|err| error_text(&*err))?;
    if stream.connected().is_negotiated_h2() {
        return Ok(Opened::Http2);
    }
    let (sender, driver) = http1::handshake(stream)
        .await
        .map_err(|err| error_text(&err))?;
    Ok(Opened::Http1(Box::new(Own {
        scheme: scheme_of(target),
        authority: authority_of(target),
        host: host_header(target)?,
        sender,
        driver,
        ended: None,
        used: Instant::now(),
    })))
}

/// `uri`'s scheme (`http` if it has none).
fn scheme_of(uri: &Uri) -> Scheme {
    uri.scheme().cloned().unwrap_or(Scheme::HTTP)
}

/// `uri`'s authority (checked present by the caller).
fn authority_of(uri: &Uri) -> Authority {
    uri.authority()
        .cloned()
        .unwrap_or_else(|| Authority::from_static("localhost"))
}

/// The `Host` header for `uri`: its host, with the port unless it is the scheme's default (as
/// hyper's pooled client writes it).
fn host_header(uri: &Uri) -> Result<HeaderValue, String> {
    let host = uri.host().unwrap_or_default();
    let default = match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    let text = match uri.port_u16() {
        Some(port) if port != default => format!("{host}:{port}"),
        _ => host.to_string(),
    };
    HeaderValue::from_str(&text).map_err(|_| format!("{host:?} cannot be a Host header"))
}
