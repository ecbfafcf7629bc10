//! The HTTP endpoint over HTTPS (`[http.tls]`), with the consumer API behind it, against the
//! real relay binary.

mod common;

use common::certs::certificates;
use common::consume::{TOKEN, consume_config, start_relay};
use common::pg::test_db;
use common::relay::{create_aggregates, wait_for_records, write_events};
use outboxd::config::HttpTlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// GETs `path` over HTTPS trusting only `ca`; returns the whole response as text.
async fn https_get(addr: SocketAddr, ca: &Path, path: &str) -> String {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    // The server may close without close_notify; what arrived is the answer.
    let _ = tls.read_to_end(&mut response).await;
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_serves_https_with_the_configured_certificate_and_refuses_plain_http() {
    // Given a relay whose endpoint has a certificate for localhost signed by a test CA.
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let log = dir.path().join("log");
    let mut config = consume_config(&db, &log);
    config.http.tls = Some(HttpTlsConfig {
        cert: dir.path().join("server.crt"),
        key: dir.path().join("server.key"),
    });
    create_aggregates(&db, 2).await;
    let (_relay, addr) = start_relay(&config, dir.path(), "relay").await;
    write_events(&db, 1, 2, 2).await;
    wait_for_records(&log, 2).await;

    // When a client that trusts the CA asks over HTTPS, then it gets the records.
    // (The log's files may hold a record a moment before the relay's fsync makes it served.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let response = loop {
        let response =
            https_get(addr, &dir.path().join("ca.crt"), "/v1/records?wait_ms=1000").await;
        assert!(response.starts_with("HTTP/1.0 200"), "{response}");
        if response.contains("\"next\":2") || std::time::Instant::now() > deadline {
            break response;
        }
    };
    assert!(response.contains("\"next\":2"), "{response}");
    let health = https_get(addr, &dir.path().join("ca.crt"), "/healthz").await;
    assert!(health.starts_with("HTTP/1.0 200"), "{health}");

    // And a plain HTTP request gets no HTTP answer.
    let plain = common::consume::try_call(addr, "GET", "/healthz", None, None).await;
    assert!(plain.is_err(), "{plain:?}");
}
