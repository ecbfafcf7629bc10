//! What an operator reads from the RabbitMQ sink, against the real broker: a refusal they can
//! fix is one line saying how, and a reconnection is logged only after a real disconnect.
//! Without a broker the tests are skipped, except under `CI=true`.

mod common;

use common::amqp::*;
use common::pg::test_db;
use common::relay::*;
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(90);

/// Runs `outboxd run` with `config` and extra environment; returns (code, stderr).
fn run_once(
    config: &outboxd::config::Config,
    dir: &std::path::Path,
    env: &[(&str, &str)],
) -> (i32, String) {
    let path = write_config(config, dir, "outboxd");
    let output = Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .arg("--config")
        .arg(&path)
        .arg("run")
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Asserts one `error:` line containing `expected`, and nothing from lapin's internals.
fn assert_one_actionable_line(stderr: &str, expected: &str) {
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ERROR") || l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].starts_with("error: "), "{stderr}");
    assert!(
        errors[0].contains(expected),
        "expected {expected:?} in {stderr}"
    );
    for internal in ["lapin", "AMQPError", "ShortString", "io_loop", "class_id"] {
        assert!(!stderr.contains(internal), "{internal} in {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_exchange_or_a_wrong_password_is_one_line_saying_what_to_do() {
    let Some(url) = rabbit().await else { return };
    // Given a relay configured for an exchange that does not exist
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&db, &dir.path().join("log"));
    config.sink.kind = outboxd::config::SinkKind::Amqp;
    config.sink.amqp.url = outboxd::config::DbUrl::new(url.clone());
    config.sink.amqp.exchange = format!("missing-{}", uuid::Uuid::new_v4().simple());

    // When it starts, it stops with one line naming the exchange and the fix
    // (The URL goes in the environment: a written config masks its password.)
    let (code, stderr) = run_once(&config, dir.path(), &[("OUTBOXD_SINK__AMQP__URL", &url)]);
    assert_eq!(code, 1, "{stderr}");
    assert_one_actionable_line(&stderr, "create it or set sink.amqp.declare = true");
    assert!(stderr.contains(&config.sink.amqp.exchange), "{stderr}");

    // And with a wrong password, with one line naming the user
    let wrong = url.replacen("guest:guest@", "guest:not-the-password@", 1);
    let (code, stderr) = run_once(&config, dir.path(), &[("OUTBOXD_SINK__AMQP__URL", &wrong)]);
    assert_eq!(code, 1, "{stderr}");
    assert_one_actionable_line(&stderr, "authentication failed for user \"guest\"");
    assert!(!stderr.contains("not-the-password"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnected_is_logged_only_after_a_real_disconnect() {
    let Some(_) = rabbit().await else { return };
    // Given a relay with four lanes publishing into a private vhost
    let vhost = Vhost::create().await;
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let topology = Topology::declare(&vhost.url, "#").await;
    let mut config = config_for(&db, &dir.path().join("log"));
    topology.configure(&mut config);
    config.relay.lanes = 4;
    let env = [("OUTBOXD_SINK__AMQP__URL", vhost.url.as_str())];
    let mut relay = RelayProcess::spawn_with_env(&config, dir.path(), "relay", &["run"], &env);
    relay.http_addr().await;

    // When events of many aggregates flow through every lane
    create_aggregates(&db, 20).await;
    write_events(&db, 2, 50, 20).await;
    wait_settled(&db, 100, WAIT).await;

    // Then no reconnection is logged: the lanes' first connections are not reconnections
    assert!(
        !relay.log_text().contains("reconnected"),
        "{}",
        relay.log_text()
    );

    // When the broker closes every connection and more events come
    vhost.close_all_connections().await;
    write_events(&db, 1, 20, 20).await;

    // Then the reconnection is logged
    relay
        .wait_for_log_line(&["reconnected to RabbitMQ"], WAIT)
        .await;
    wait_settled(&db, 120, WAIT).await;
    relay.kill();
    topology.delete().await;
    vhost.delete().await;
}
