//! NATS authentication and TLS against private `nats-server`s on free ports: a server with a
//! certificate from a private CA and a user, trusted with `ca_file` and refused without it; a
//! wrong password or token stops start-up with an error that names the keys, never the secret;
//! an NKey user admitted by its seed, and a `.creds` file (user JWT and seed) admitted by a
//! server in operator mode, while an unknown NKey or a user of an untrusted account is refused.

mod common;

use common::certs::certificates;
use common::nats::nats;
use common::nats_keys::{Operator, nkey_user_config};
use outboxd::config::{Config, DbUrl, Secret};
use outboxd::error::ErrorKind;
use outboxd::event::{Event, Operation, Origin, Position};
use outboxd::sink::{NatsSink, Outcome, Sink, SinkContext};
use serde_json::value::RawValue;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `nats-server -js` of the test's own; killed on drop.
struct PrivateNats {
    /// The process.
    child: Child,
    /// Its port.
    port: u16,
}

impl PrivateNats {
    /// Starts it with JetStream stored under `dir` and extra `args`, and waits for its port.
    fn start(dir: &Path, args: &[&str]) -> PrivateNats {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("free port")
            .port();
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.join("js"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        PrivateNats { child, port }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A sink config for `url` that creates its stream.
fn config_for(url: &str) -> Config {
    let mut config = Config::default();
    config.sink.nats.url = DbUrl::new(url);
    config.sink.nats.subject = "auth.{aggregatetype}".into();
    config.sink.nats.stream = Some("AUTH".into());
    config.sink.nats.create_stream = true;
    config
}

/// One small event.
fn event() -> Event {
    Event {
        id: uuid::Uuid::new_v4().to_string(),
        subject: "order".into(),
        key: "1".into(),
        event_type: "Placed".into(),
        op: Operation::Insert,
        origin: Origin::Outbox,
        payload: RawValue::from_string(r#"{"seq":1}"#.into()).unwrap(),
        headers: None,
        created_at: chrono::Utc::now(),
        position: Position(1),
    }
}

/// Opens the sink of `config`.
async fn open(config: &Config) -> outboxd::error::Result<NatsSink> {
    NatsSink::open(&config.sink.nats, &SinkContext::default()).await
}

#[tokio::test]
async fn a_private_ca_is_trusted_with_ca_file_and_a_wrong_password_is_named_not_printed() {
    // Given a TLS server with a certificate from a private CA, and a user
    if nats().await.is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let cert = dir.path().join("server.crt");
    let key = dir.path().join("server.key");
    let server = PrivateNats::start(
        dir.path(),
        &[
            "--tls",
            "--tlscert",
            cert.to_str().unwrap(),
            "--tlskey",
            key.to_str().unwrap(),
            "--user",
            "app",
            "--pass",
            "Hunter2Secret",
        ],
    );
    let mut config = config_for(&format!("tls://localhost:{}", server.port));
    config.sink.nats.user = Some("app".into());
    config.sink.nats.password = Secret::new("Hunter2Secret");

    // When the CA file is not given, the certificate is not trusted
    let err = open(&config).await.err().expect("untrusted certificate");
    assert_eq!(err.kind(), ErrorKind::Config);

    // When it is, with the right password, events are delivered
    config.sink.nats.ca_file = Some(dir.path().join("ca.crt"));
    config.validate().unwrap();
    let mut sink = open(&config).await.unwrap();
    assert_eq!(
        sink.publish(&[event()]).await.unwrap(),
        [Outcome::Delivered]
    );

    // When the password is wrong, the error names the keys and hides the secret
    config.sink.nats.password = Secret::new("WrongSecret");
    let text = open(&config).await.err().expect("wrong password").chain();
    assert!(text.contains("sink.nats.user/password"), "{text}");
    assert!(
        !text.contains("WrongSecret") && !text.contains("Hunter2Secret"),
        "{text}"
    );
}

#[tokio::test]
async fn a_token_authenticates_and_a_wrong_one_is_refused_at_start_up() {
    // Given a server that wants a token
    if nats().await.is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = PrivateNats::start(dir.path(), &["--auth", "T0kenSecret"]);
    let mut config = config_for(&format!("nats://127.0.0.1:{}", server.port));

    // When the token is right, events are delivered
    config.sink.nats.token = Secret::new("T0kenSecret");
    let mut sink = open(&config).await.unwrap();
    assert_eq!(
        sink.publish(&[event()]).await.unwrap(),
        [Outcome::Delivered]
    );

    // When it is wrong, start-up fails without printing it
    config.sink.nats.token = Secret::new("BadT0ken");
    let err = open(&config).await.err().expect("wrong token");
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(!err.chain().contains("BadT0ken"), "{}", err.chain());
}

#[tokio::test]
async fn an_nkey_seed_authenticates_and_an_unknown_one_is_refused_unprinted() {
    // Given a server that admits one NKey user only
    if nats().await.is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let user = nkeys::KeyPair::new_user();
    let conf = nkey_user_config(dir.path(), &user);
    let server = PrivateNats::start(dir.path(), &["-c", conf.to_str().unwrap()]);
    let mut config = config_for(&format!("nats://127.0.0.1:{}", server.port));

    // When the sink has no credentials, start-up is refused
    let err = open(&config).await.err().expect("no credentials");
    assert_eq!(err.kind(), ErrorKind::Config);

    // When it has the user's seed, events are delivered
    config.sink.nats.nkey = Secret::new(user.seed().unwrap());
    config.validate().unwrap();
    let mut sink = open(&config).await.unwrap();
    assert_eq!(
        sink.publish(&[event()]).await.unwrap(),
        [Outcome::Delivered]
    );

    // When it has another user's seed, start-up fails naming the key, not the seed
    let stranger = nkeys::KeyPair::new_user().seed().unwrap();
    config.sink.nats.nkey = Secret::new(&stranger);
    let text = open(&config).await.err().expect("unknown nkey").chain();
    assert!(text.contains("nkey"), "{text}");
    assert!(!text.contains(&stranger), "{text}");
}

#[tokio::test]
async fn a_creds_file_authenticates_in_operator_mode_and_an_untrusted_account_is_refused() {
    // Given a server in operator mode trusting one account with JetStream
    if nats().await.is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let operator = Operator::new(dir.path());
    let server = PrivateNats::start(dir.path(), &["-c", operator.config.to_str().unwrap()]);
    let mut config = config_for(&format!("nats://127.0.0.1:{}", server.port));

    // When the sink reads a .creds file of a user of that account, events are delivered
    let creds = operator.creds(dir.path(), "relay", &operator.account);
    config.sink.nats.credentials_file = Some(creds);
    config.validate().unwrap();
    let mut sink = open(&config).await.unwrap();
    assert_eq!(
        sink.publish(&[event()]).await.unwrap(),
        [Outcome::Delivered]
    );

    // When the user's JWT is signed by an account the operator never signed, start-up fails
    // naming the key and printing neither the JWT nor the seed
    let stranger = operator.creds(dir.path(), "stranger", &nkeys::KeyPair::new_account());
    let contents = std::fs::read_to_string(&stranger).unwrap();
    config.sink.nats.credentials_file = Some(stranger);
    let err = open(&config).await.err().expect("untrusted account");
    assert_eq!(err.kind(), ErrorKind::Config);
    let text = err.chain();
    assert!(text.contains("credentials_file"), "{text}");
    for secret in contents.lines().filter(|line| line.len() > 40) {
        assert!(!text.contains(secret), "{text}");
    }
}
