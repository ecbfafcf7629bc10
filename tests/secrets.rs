//! No secret reaches logs, `check-config`, `/metrics` or error output: a relay runs with a
//! database password, an AMQP URL password and a Kafka SASL password set, and every output is
//! searched for them.

mod common;

use common::pg::{connect, test_db};
use common::relay::*;
use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

const SECRETS: [&str; 3] = ["pg-Secret-4711", "amqp-Secret-4712", "sasl-Secret-4713"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_appear_in_no_output() {
    // Given a configuration carrying three secrets (the test server ignores the password)
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let config = config_for(&db, &log);
    migrate(&config).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let path = write_config(&config, dir.path(), "c");
    let env = [
        ("OUTBOXD_SOURCE__PASSWORD", SECRETS[0].to_string()),
        (
            "OUTBOXD_SINK__AMQP__URL",
            format!("amqp://app:{}@127.0.0.1:5672/%2f", SECRETS[1]),
        ),
        ("OUTBOXD_SINK__KAFKA__SASL_PASSWORD", SECRETS[2].to_string()),
        ("OUTBOXD_SINK__KAFKA__SASL_USERNAME", "app".to_string()),
        (
            "OUTBOXD_SINK__KAFKA__SECURITY_PROTOCOL",
            "sasl_plaintext".to_string(),
        ),
        ("OUTBOXD_HTTP__LISTEN", format!("127.0.0.1:{port}")),
        ("RUST_LOG", "debug".to_string()),
    ];
    // Output goes to files: a full pipe nobody reads would stall a chatty process.
    let run = |args: &[&str], name: &str| {
        let stdout = std::fs::File::create(dir.path().join(format!("{name}.out"))).unwrap();
        let stderr = std::fs::File::create(dir.path().join(format!("{name}.err"))).unwrap();
        Command::new(env!("CARGO_BIN_EXE_outboxd"))
            .arg("--config")
            .arg(&path)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap()
    };
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();

    // When check-config runs, the relay relays an event at debug level and /metrics is scraped
    let checked = run(&["check-config"], "check").wait().unwrap();
    let mut relay = run(&["run"], "relay");
    let client = connect(&db.url).await;
    client
        .execute("INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('t','a','E','{}')", &[])
        .await
        .unwrap();
    wait_for_events(&[&log], 1, Duration::from_secs(30)).await;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut metrics = String::new();
    stream.read_to_string(&mut metrics).unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(relay.id() as i32, libc::SIGTERM) };
    let status = relay.wait().unwrap();
    // And a failing start-up reports its error
    let failing = Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .args(["--config", path.to_str().unwrap(), "run"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env(
            "OUTBOXD_SOURCE__URL",
            "postgres://app:pg-Secret-4711@127.0.0.1:1/x",
        )
        .output()
        .unwrap();

    // Then no output holds any secret, yet every output was produced
    assert!(checked.success() && status.success());
    let outputs = [
        ("check-config", read("check.out")),
        ("logs", read("relay.err")),
        ("/metrics", metrics),
        (
            "error",
            String::from_utf8_lossy(&failing.stderr).into_owned(),
        ),
    ];
    for (name, text) in &outputs {
        assert!(!text.is_empty(), "{name} printed nothing");
        for secret in SECRETS {
            assert!(!text.contains(secret), "{name} leaks {secret}:\n{text}");
        }
    }
    assert!(
        outputs[0].1.contains("amqp://app:********@"),
        "{}",
        outputs[0].1
    );
    assert!(outputs[3].1.contains("error: "), "{}", outputs[3].1);
}
