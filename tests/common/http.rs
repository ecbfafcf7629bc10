//! The relay's HTTP endpoint from a test: a bare HTTP/1.1 GET, metric samples, `/readyz`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GETs `path` with a bare HTTP/1.1 request; returns status code and body.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of the sample line starting with `series` (name plus labels); 0 if absent.
pub fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .map(|value| value.parse().unwrap())
        .unwrap_or(0.0)
}

/// Polls `/readyz` until it answers `status`; returns the body. Panics with the last answer if
/// `timeout` passes first.
pub async fn wait_ready(addr: SocketAddr, status: u16, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let (code, body) = get(addr, "/readyz").await;
        if code == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed {code} for {timeout:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
