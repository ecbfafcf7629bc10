//! `sink.amqp.ca_file`: an `amqps://` broker whose certificate comes from a private CA is
//! trusted with the CA file and refused without it. The "broker" is `openssl s_server` with a
//! throwaway CA: the TLS handshake is what is under test, not AMQP.

mod common;

use common::certs::certificates;
use outboxd::config::{Config, DbUrl, SinkKind};
use outboxd::sink::AnySink;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// `openssl s_server` on a free port; killed on drop.
struct TlsServer(Child, u16);

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the server with `dir`'s certificate and waits until it listens.
fn tls_server(dir: &Path) -> TlsServer {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("openssl")
        .args([
            "s_server",
            "-quiet",
            "-cert",
            "server.crt",
            "-key",
            "server.key",
        ])
        .args(["-accept", &port.to_string()])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server");
    // Owned by the guard at once, so every path below kills and reaps it.
    let server = TlsServer(child, port);
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return server;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("s_server did not listen");
}

/// The error of opening the AMQP sink against `port`, with or without `ca`.
async fn open_error(port: u16, ca: Option<&Path>) -> String {
    let mut config = Config::default();
    config.sink.kind = SinkKind::Amqp;
    config.sink.amqp.url = DbUrl::new(format!("amqps://guest:guest@localhost:{port}/%2f"));
    config.sink.amqp.ca_file = ca.map(Path::to_path_buf);
    config.validate().expect("valid configuration");
    match AnySink::open(&config.sink, &outboxd::cli::run::sink_context(&config)).await {
        Ok(_) => panic!("s_server is no AMQP broker"),
        Err(err) => err.chain(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_is_trusted_with_ca_file_and_refused_without() {
    // Given a TLS endpoint whose certificate a throwaway CA signed
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let server = tls_server(dir.path());

    // Without ca_file the handshake fails on the certificate
    let err = open_error(server.1, None).await;
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // With it the handshake succeeds, and what fails is the AMQP conversation after it
    let err = open_error(server.1, Some(&dir.path().join("ca.crt"))).await;
    assert!(!err.to_lowercase().contains("certificate"), "{err}");
    assert!(
        err.contains("connecting to RabbitMQ at amqps://guest:********@localhost"),
        "{err}"
    );

    // And a ca_file for a plain amqp:// URL is refused, naming the key
    let mut config = Config::default();
    config.sink.amqp.ca_file = Some(dir.path().join("ca.crt"));
    let err = config.validate().unwrap_err().to_string();
    assert!(err.starts_with("sink.amqp.ca_file: is set but"), "{err}");
}
