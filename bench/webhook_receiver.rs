//! A minimal webhook receiver for bench/run.sh: HTTP/1.1 on a free port of 127.0.0.1, reads each
//! POST's body, counts requests and events (one per `"origin":` member of outboxd's JSON, so a
//! batch counts its elements) and answers 204. `GET /count` answers `<requests> <events>`.
//! Prints `listening=<addr>` once ready, then serves until killed. It verifies nothing: the
//! bench measures the relay's side, and `wrk` measures this receiver's ceiling.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::net::TcpListener;

/// Requests and events received so far.
#[derive(Default)]
struct Counts {
    /// POSTs answered.
    requests: AtomicU64,
    /// Events in them.
    events: AtomicU64,
}

#[tokio::main]
async fn main() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    println!("listening={}", listener.local_addr().expect("address"));
    let counts = Arc::new(Counts::default());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let counts = counts.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(request, counts.clone()));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Counts a POST and answers 204; answers the counts to `GET /count`.
async fn answer(
    request: Request<Incoming>,
    counts: Arc<Counts>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    if request.method() == Method::GET {
        let text = format!(
            "{} {}\n",
            counts.requests.load(Ordering::Relaxed),
            counts.events.load(Ordering::Relaxed)
        );
        return Ok(Response::new(Full::new(Bytes::from(text))));
    }
    let body = request.into_body().collect().await?.to_bytes();
    let events = body
        .windows(9)
        .filter(|window| *window == b"\"origin\":")
        .count()
        .max(1);
    counts.requests.fetch_add(1, Ordering::Relaxed);
    counts.events.fetch_add(events as u64, Ordering::Relaxed);
    Ok(Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(Full::new(Bytes::new()))
        .expect("response"))
}
