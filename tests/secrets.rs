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

/// Marks the secret in every bypass below; none of its halves may appear in any output.
const BYPASS_SECRET: [&str; 2] = ["Zq9Hunter", "Wx7Secret"];

#[test]
fn the_known_ways_around_the_password_mask_stay_masked() {
    // Given connection strings that hide a password where a text-editing masker did not look
    let pg = [
        // a '/' in the password (the driver reads credentials up to '@')
        "postgres://app:Zq9Hunter/Wx7Secret@127.0.0.1:1/db",
        // a percent-encoded parameter key
        "postgres://127.0.0.1:1/db?user=app&pass%77ord=Zq9HunterWx7Secret",
        // tab-separated key=value
        "host=127.0.0.1\tport=1\tuser=app\tpassword=Zq9HunterWx7Secret\tdbname=db",
        // an escaped quote inside a quoted value
        "host=127.0.0.1 port=1 user=app password='Zq9Hunter\\'Wx7Secret' dbname=db",
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!(
            "[sink.log]\ndir = {:?}\n[http]\nenabled = false\n\
             [sink.kafka.librdkafka_options]\n\"ssl.key.pem\" = \"Zq9Hunter-private-key\"\n\
             \"sasl.oauthbearer.config\" = \"clientSecret=Wx7Secret\"\n",
            dir.path().join("log")
        ),
    )
    .unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let output = Command::new(env!("CARGO_BIN_EXE_outboxd"))
            .arg("--config")
            .arg(&path)
            .args(args)
            .envs(env.iter().copied())
            .env("OUTBOXD_SOURCE__CONNECT_TIMEOUT_MS", "1000")
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.code(), text)
    };
    let assert_masked = |what: &str, text: &str| {
        for half in BYPASS_SECRET {
            assert!(!text.contains(half), "{what} leaks {half}:\n{text}");
        }
    };
    for url in pg {
        // When check-config prints the configuration, and a relay fails to connect
        let (code, checked) = run(&["check-config"], &[("OUTBOXD_SOURCE__URL", url)]);
        let (_, failed) = run(&["run"], &[("OUTBOXD_SOURCE__URL", url)]);

        // Then neither shows the password, though both show the target
        assert_eq!(code, Some(0), "{checked}");
        assert!(checked.contains("app:********@127.0.0.1:1/db"), "{checked}");
        assert!(
            failed.contains("error: connecting to PostgreSQL at postgres://app:********@"),
            "{failed}"
        );
        assert_masked(&format!("check-config of {url:?}"), &checked);
        assert_masked(&format!("run with {url:?}"), &failed);
    }
    // And a broker URL with a '/' in its password (the URL parser cannot read it) is refused
    // without being shown, and Kafka pass-through secrets print masked
    let amqp = [
        ("OUTBOXD_SINK__TYPE", "amqp"),
        (
            "OUTBOXD_SINK__AMQP__URL",
            "amqp://app:Zq9Hunter/Wx7Secret@127.0.0.1:1/%2f",
        ),
    ];
    let (code, refused) = run(&["check-config"], &amqp);
    assert_eq!(code, Some(1), "{refused}");
    assert!(refused.contains("sink.amqp.url"), "{refused}");
    assert_masked("check-config of the AMQP URL", &refused);
    let (_, checked) = run(&["check-config"], &[]);
    assert!(
        checked.contains("\"ssl.key.pem\" = \"********\""),
        "{checked}"
    );
    assert_masked("check-config of Kafka options", &checked);
}
