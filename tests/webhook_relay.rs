//! The webhook sink under the relay: a receiver answering 500 for 30 s loses nothing and keeps
//! every key's order; in batch mode a 400 for one event makes that one a dead letter while the
//! rest flows; no signing secret, header value or URL token reaches `check-config` or the
//! logs.

mod common;

use common::amqp::wait_settled;
use common::conformance::check_order;
use common::pg::{connect, test_db};
use common::relay::*;
use common::webhook::{NEW_SECRET, OLD_SECRET, Receiver};
use outboxd::config::{Config, DbUrl};
use outboxd::sink::SinkKind;
use outboxd::sink::webhook::SigningSecrets;
use std::process::Command;
use std::time::Duration;

/// How long the receiver answers 500: the 30 s, unless `WEBHOOK_FAILURE_S` says
/// otherwise (for a quick local run).
fn failure_span() -> Duration {
    let seconds = std::env::var("WEBHOOK_FAILURE_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    Duration::from_secs(seconds)
}

/// Longest wait for the relay to settle everything.
const WAIT: Duration = Duration::from_secs(180);

/// Points `config` at `receiver`, signed with both secrets.
fn configure(config: &mut Config, receiver: &Receiver) {
    config.sink.kind = SinkKind::Webhook;
    config.sink.webhook.url = DbUrl::new(receiver.url("http", "/events"));
    config.sink.webhook.secrets = SigningSecrets::parse(&format!("{OLD_SECRET} {NEW_SECRET}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_answering_500_for_30_s_loses_nothing_and_keeps_each_keys_order() {
    // Given a relay that makes a dead letter of an event after 2 failed attempts, delivering
    // to a receiver, while 8 writers produce 2,000 events over 20 keys
    let receiver = Receiver::start(&[NEW_SECRET]).await;
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&db, &dir.path().join("log"));
    configure(&mut config, &receiver);
    config.relay.max_attempts = 2;
    config.source.batch_size = 100;
    create_aggregates(&db, 20).await;
    let relay = InProcessRelay::start(&config).await;
    let writers = tokio::spawn({
        let db = db.clone();
        async move { write_events(&db, 8, 250, 20).await }
    });

    // When, once 200 are delivered, the receiver answers 500 to everything for 30 s
    wait_sent_at_least(&db, 200).await;
    receiver.fail_for(failure_span(), 500, None);
    writers.await.unwrap();

    // Then all 2,000 arrive once it answers 200 again, none a dead letter, each key in order
    wait_settled(&db, 2000, WAIT).await;
    relay.stop().await;
    let refused = receiver
        .received()
        .iter()
        .filter(|r| r.status == 500)
        .count();
    assert!(refused > 0, "the receiver never answered 500");
    assert_eq!(failed_rows(&db).await, 0, "a 500 made a dead letter");
    let (distinct, repeats) = check_order(&receiver.delivered());
    println!("500s answered: {refused}; {distinct} distinct, {repeats} repeats");
    assert_eq!(distinct, 2000);
    assert!(receiver.received().iter().all(|r| r.verified));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_batch_mode_a_400_for_one_event_makes_it_alone_a_dead_letter() {
    // Given a relay sending batches to a receiver that answers 400 to events of type Bad
    let receiver = Receiver::start(&[NEW_SECRET]).await;
    receiver.refuse_type("Bad");
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&db, &dir.path().join("log"));
    configure(&mut config, &receiver);
    config.sink.webhook.batch = true;
    config.sink.webhook.batch_max = 50;
    config.relay.lanes = 1;
    migrate(&config).await;

    // When 300 events over 10 keys are written, one of them Bad
    let client = connect(&db.url).await;
    client
        .execute(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
             SELECT 'order', 'k' || (i % 10), CASE WHEN i = 150 THEN 'Bad' ELSE 'Step' END, \
                    jsonb_build_object('seq', i / 10 + 1) \
             FROM generate_series(0, 299) AS i",
            &[],
        )
        .await
        .unwrap();
    let relay = InProcessRelay::start(&config).await;

    // Then that event is a dead letter quoting the answer, the 14 behind it in its key wait,
    // and the other 285 arrive in batches, each key in order
    wait_sent_at_least(&db, 285).await;
    relay.stop().await;
    let failed = client
        .query_one(
            "SELECT aggregateid, last_error FROM outbox WHERE failed_at IS NOT NULL",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(failed.get::<_, String>(0), "k0");
    let reason: String = failed.get(1);
    assert!(
        reason.contains("400 Bad Request: event type Bad"),
        "{reason}"
    );
    let (distinct, _) = check_order(&receiver.delivered());
    assert_eq!(distinct, 285);
    let batched = receiver
        .received()
        .iter()
        .filter(|r| r.events().len() > 1)
        .count();
    assert!(batched > 0, "no request carried more than one event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_secrets_header_values_and_url_tokens_appear_in_no_output() {
    // Given a relay configured (through its environment, as a deployment would) with two
    // signing secrets, an Authorization header and a token in the URL's query, and a receiver that
    // refuses the event so its reason is logged
    let receiver = Receiver::start(&[NEW_SECRET]).await;
    receiver.refuse_type("Bad");
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&db, &dir.path().join("log"));
    config.sink.kind = SinkKind::Webhook;
    migrate(&config).await;
    let path = write_config(&config, dir.path(), "c");
    let url = format!(
        "http://127.0.0.1:{}/events?token=url-Secret-1",
        receiver.addr.port()
    );
    let env = [
        ("OUTBOXD_SINK__WEBHOOK__URL", url),
        (
            "OUTBOXD_SINK__WEBHOOK__SECRETS",
            format!("{OLD_SECRET} {NEW_SECRET}"),
        ),
        (
            "OUTBOXD_SINK__WEBHOOK__HEADERS__AUTHORIZATION",
            "Bearer hdr-Secret-2".into(),
        ),
        ("RUST_LOG", "debug".into()),
    ];
    let secrets = [
        "url-Secret-1",
        "hdr-Secret-2",
        &OLD_SECRET[6..20],
        &NEW_SECRET[6..20],
    ];

    // When check-config runs, and the relay runs until the event is a dead letter
    let checked = Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .args(["--config", path.to_str().unwrap(), "check-config"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    let client = connect(&db.url).await;
    client
        .execute(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
             VALUES ('order', 'a', 'Bad', '{}')",
            &[],
        )
        .await
        .unwrap();
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let relay = RelayProcess::spawn_with_env(&config, dir.path(), "relay", &["run"], &pairs);
    while failed_rows(&db).await == 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = relay.log_text();
    relay.kill();

    // Then neither output holds any secret, yet the request carried them all
    let checked = String::from_utf8_lossy(&checked.stdout).into_owned();
    assert!(checked.contains("http://127.0.0.1"), "{checked}");
    assert!(logs.contains("400 Bad Request"), "{logs}");
    for (name, text) in [("check-config", &checked), ("logs", &logs)] {
        for secret in secrets {
            assert!(!text.contains(secret), "{name} leaks {secret}:\n{text}");
        }
    }
    let request = &receiver.received()[0];
    assert!(request.verified);
    assert_eq!(request.header("authorization"), Some("Bearer hdr-Secret-2"));
}
