//! A lane's own HTTP/1.1 connection (src/sink/webhook/lane.rs), against a bare HTTP/1.1 server
//! written here so that the test decides when a connection closes: kept alive it carries every
//! request of the lane, each request in origin-form with a `Host` header, and a connection the
//! receiver closes, saying so or not, is replaced without failing a call.

mod common;

use common::events::outbox_event;
use outboxd::secret::DbUrl;
use outboxd::sink::{Outcome, Sink, SinkContext, WebhookSink, WebhookSinkConfig};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the server ends each answer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Close {
    /// Keeps the connection open.
    No,
    /// Closes it after the answer, with `Connection: close`.
    Saying,
    /// Closes it after the answer without a word.
    Silently,
}

/// One request as the server read it.
#[derive(Clone, Debug)]
struct Seen {
    /// Which connection (0, 1, ... in accept order).
    connection: usize,
    /// The request line.
    line: String,
    /// The `Host` header.
    host: Option<String>,
}

/// What the server does and saw.
struct Server {
    /// Where it listens.
    addr: SocketAddr,
    /// How it ends each answer, from now on.
    close: Arc<Mutex<Close>>,
    /// Every request, in order.
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    /// Starts serving on a free port.
    async fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let close = Arc::new(Mutex::new(Close::No));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (c, s) = (close.clone(), seen.clone());
        tokio::spawn(async move {
            for connection in 0.. {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(serve(stream, connection, c.clone(), s.clone()));
            }
        });
        Server { addr, close, seen }
    }

    /// Every request so far.
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Answers 200 to each request of one connection until it is to close.
async fn serve(
    mut stream: TcpStream,
    connection: usize,
    close: Arc<Mutex<Close>>,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    let mut buffer = Vec::new();
    loop {
        let head_end = loop {
            if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
        let header = |name: &str| {
            head.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.eq_ignore_ascii_case(name)
                    .then(|| value.trim().to_string())
            })
        };
        let length: usize = header("content-length").map_or(0, |n| n.parse().unwrap());
        while buffer.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        buffer.drain(..head_end + length);
        seen.lock().unwrap().push(Seen {
            connection,
            line: head.lines().next().unwrap_or_default().to_string(),
            host: header("host"),
        });
        let close = *close.lock().unwrap();
        let saying = if close == Close::Saying {
            "connection: close\r\n"
        } else {
            ""
        };
        let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n{saying}\r\n");
        if stream.write_all(answer.as_bytes()).await.is_err() || close != Close::No {
            return;
        }
    }
}

#[tokio::test]
async fn a_lane_keeps_one_connection_and_replaces_one_the_receiver_closes() {
    // Given a sink (and a second lane's handle) POSTing to a server that keeps connections
    let server = Server::start().await;
    let config = WebhookSinkConfig {
        url: DbUrl::new(format!("http://127.0.0.1:{}/in?x=1", server.addr.port())),
        timeout_ms: 5000,
        ..WebhookSinkConfig::default()
    };
    let mut sink = WebhookSink::open(&config, &SinkContext::default())
        .await
        .expect("open");
    let mut other = sink.fork().await.unwrap();

    // When the lane publishes three calls, the other lane one
    for seq in 1..=3 {
        let outcomes = sink.publish(&[outbox_event("a", seq)]).await.unwrap();
        assert_eq!(outcomes, [Outcome::Delivered]);
    }
    assert_eq!(
        other.publish(&[outbox_event("b", 1)]).await.unwrap(),
        [Outcome::Delivered]
    );

    // Then the lane's three requests took one connection, the other lane's its own, each
    // request in origin-form with the Host header
    let seen = server.seen();
    // (Connection 0 is the start-up check's, which sends nothing.)
    let connections: Vec<usize> = seen.iter().map(|s| s.connection).collect();
    assert_eq!(connections, [1, 1, 1, 2], "{seen:?}");
    let host = format!("127.0.0.1:{}", server.addr.port());
    for request in &seen {
        assert_eq!(request.line, "POST /in?x=1 HTTP/1.1");
        assert_eq!(request.host.as_deref(), Some(host.as_str()));
    }

    // And when the server closes each connection after its answer, saying so, then silently,
    // every call is still delivered, each request on a new connection
    for (close, seq) in [(Close::Saying, 4), (Close::Saying, 5), (Close::Silently, 6)] {
        *server.close.lock().unwrap() = close;
        let outcomes = sink
            .publish(&[outbox_event("a", seq), outbox_event("c", seq)])
            .await;
        assert_eq!(
            outcomes.unwrap(),
            [Outcome::Delivered, Outcome::Delivered],
            "{close:?}"
        );
    }
    let later: Vec<usize> = server.seen()[4..].iter().map(|s| s.connection).collect();
    assert_eq!(later.len(), 6);
    // The first closing answer ends the kept connection (1); then one connection per request.
    assert_eq!(later[0], 1);
    assert!(later.windows(2).all(|w| w[0] < w[1]), "{later:?}");
}
