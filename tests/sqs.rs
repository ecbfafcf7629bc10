//! The SQS sink beyond the conformance suite, against the `moto` emulator: a SIGKILL storm on
//! a FIFO queue neither loses nor repeats an event (the event id is the deduplication id), a
//! message over 256 KiB and a queue URL the template renders invalid become dead letters
//! naming why, headers past ten travel in one JSON attribute, and a relay without AWS
//! credentials stops at start-up naming the chain it searched.

mod common;

use common::amqp::wait_settled;
use common::aws::{Clients, configure_sqs, moto, queue_url, unique_prefix};
use common::conformance::{Delivered, WAIT, check_order};
use common::pg::{TestDb, connect, test_db};
use common::relay::*;
use outboxd::config::Config;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How many rows are marked sent.
async fn sent_count(db: &TestDb) -> i64 {
    let client = connect(&db.url).await;
    let row = client
        .query_one("SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL", &[])
        .await
        .unwrap();
    row.get(0)
}

/// Inserts one event of key `key`, type `kind`, `pad` bytes of padding and `headers`.
async fn insert(db: &TestDb, key: &str, seq: i32, kind: &str, pad: i32, headers: Option<&str>) {
    let client = connect(&db.url).await;
    client
        .execute(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload, headers) \
             VALUES ('order', $1, $2, jsonb_build_object('seq', $3::int, 'pad', repeat('x', $4)), \
             $5::text::jsonb)",
            &[&key, &kind, &seq, &pad, &headers],
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_storm_on_a_fifo_queue_loses_nothing_and_repeats_nothing_within_the_window() {
    // Given a FIFO queue, 300 events being written, and a relay process (moto reckons a FIFO
    // queue's attributes, a pass over every message held, for each message sent: a thousand
    // would take minutes; and it deduplicates only against messages not yet deleted, so the
    // queue is read once, at the end)
    let Some(moto) = moto() else { return };
    let clients = Clients::new(&moto);
    let name = format!("{}.fifo", unique_prefix());
    let queue = clients.create_queue(&name).await;
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&db, &dir.path().join("log"));
    configure_sqs(
        &mut config,
        &moto.endpoint(),
        &queue_url(&moto.endpoint(), &name),
    );
    config.source.batch_size = 20;
    migrate(&config).await;
    create_aggregates(&db, 10).await;
    let writers = tokio::spawn({
        let db = db.clone();
        async move { write_events(&db, 3, 100, 10).await }
    });

    // When it is SIGKILLed five times, each time after it marked a little more sent
    for kill in 0..5 {
        let mut relay = RelayProcess::spawn(&config, dir.path(), &format!("run-{kill}"), &["run"]);
        relay.http_addr().await;
        let target = (sent_count(&db).await + 1 + fastrand::i64(0..60)).min(300);
        wait_sent_at_least(&db, target).await;
        relay.kill();
    }
    writers.await.unwrap();
    let mut last = RelayProcess::spawn(&config, dir.path(), "last", &["run"]);
    last.http_addr().await;

    // Then every event arrives once (all within SQS's 5-minute deduplication window), each
    // key in order
    wait_settled(&db, 300, WAIT).await;
    last.kill();
    let delivered: Vec<Delivered> = clients
        .drain(&queue)
        .await
        .iter()
        .map(|m| Delivered {
            id: m.attribute("id").to_string(),
            key: m.attribute("aggregateid").to_string(),
            seq: m.seq(),
            stream: 0,
        })
        .collect();
    let (distinct, repeats) = check_order(&delivered);
    assert_eq!((distinct, repeats), (300, 0));
    assert_eq!(failed_rows(&db).await, 0);
}

/// A relay delivering to standard queues `<prefix>-{type}` on `moto`, in process.
async fn given_queues(endpoint: &str, prefix: &str) -> (TestDb, tempfile::TempDir, Config) {
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&db, &dir.path().join("log"));
    let template = queue_url(endpoint, &format!("{prefix}-{{type}}"));
    configure_sqs(&mut config, endpoint, &template);
    migrate(&config).await;
    (db, dir, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_and_an_invalid_queue_url_become_dead_letters_naming_why() {
    // Given key 1 with a small event, one of 300 KB and a small one; key 2 with an event
    // whose type makes the template render no queue URL; key 3 with a small event
    let Some(moto) = moto() else { return };
    let clients = Clients::new(&moto);
    let prefix = unique_prefix();
    let queue = clients.create_queue(&format!("{prefix}-Step")).await;
    let (db, _dir, config) = given_queues(&moto.endpoint(), &prefix).await;
    insert(&db, "1", 1, "Step", 0, None).await;
    insert(&db, "1", 2, "Step", 300_000, None).await;
    insert(&db, "1", 3, "Step", 0, None).await;
    insert(&db, "2", 1, "a/b", 0, None).await;
    insert(&db, "3", 1, "Step", 0, None).await;

    // When the relay runs
    let relay = InProcessRelay::start(&config).await;
    wait_sent_at_least(&db, 2).await;
    let deadline = Instant::now() + WAIT;
    while failed_rows(&db).await < 2 {
        assert!(Instant::now() < deadline, "no dead letters");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    relay.stop().await;

    // Then both are dead letters whose reasons name the limit and the rendered URL
    let client = connect(&db.url).await;
    let failed: Vec<(String, i32, String)> = client
        .query(
            "SELECT aggregateid, (payload->>'seq')::int, last_error FROM outbox \
             WHERE failed_at IS NOT NULL ORDER BY aggregateid",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert_eq!((failed[0].0.as_str(), failed[0].1), ("1", 2));
    assert!(
        failed[0].2.contains("limit of 262144 bytes (256 KiB)"),
        "{}",
        failed[0].2
    );
    assert_eq!((failed[1].0.as_str(), failed[1].1), ("2", 1));
    let url = format!("{prefix}-a/b");
    assert!(
        failed[1].2.contains(&url) && failed[1].2.contains("not an SQS queue URL"),
        "{}",
        failed[1].2
    );
    // And the small events before them, and of other keys, arrived; key 1's third waits
    let mut arrived: Vec<(String, i64)> = clients
        .drain(&queue)
        .await
        .iter()
        .map(|m| (m.attribute("aggregateid").to_string(), m.seq()))
        .collect();
    arrived.sort();
    assert_eq!(arrived, [("1".to_string(), 1), ("3".to_string(), 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_past_ten_attributes_travel_in_one_json_attribute() {
    // Given an event with seven headers of its own (twelve with outboxd's five)
    let Some(moto) = moto() else { return };
    let clients = Clients::new(&moto);
    let prefix = unique_prefix();
    let queue = clients.create_queue(&format!("{prefix}-Step")).await;
    let (db, _dir, config) = given_queues(&moto.endpoint(), &prefix).await;
    let headers = r#"{"h1":"1","h2":"2","h3":"3","h4":"4","h5":"5","h6":{"n":6},"h7":"7"}"#;
    insert(&db, "1", 1, "Step", 0, Some(headers)).await;

    // When the relay delivers it
    let relay = InProcessRelay::start(&config).await;
    wait_settled(&db, 1, WAIT).await;
    relay.stop().await;

    // Then it has ten attributes: outboxd's five, the first four of its own, and `headers`
    // with the other three as one JSON object
    let received = clients.drain(&queue).await;
    assert_eq!(received.len(), 1);
    let mut names: Vec<&str> = received[0].attributes.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "aggregateid",
            "aggregatetype",
            "h1",
            "h2",
            "h3",
            "h4",
            "headers",
            "id",
            "position",
            "type"
        ]
    );
    let rest: serde_json::Value = serde_json::from_str(received[0].attribute("headers")).unwrap();
    assert_eq!(
        rest,
        serde_json::json!({"h5": "5", "h6": {"n": 6}, "h7": "7"})
    );
    assert_eq!(received[0].attribute("h1"), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credentials_the_relay_stops_at_start_up_naming_the_chain() {
    // Given a relay configured for SQS, in an environment with no AWS credentials anywhere
    let Some(moto) = moto() else { return };
    let prefix = unique_prefix();
    let (_db, dir, config) = given_queues(&moto.endpoint(), &prefix).await;
    let path = write_config(&config, dir.path(), "relay");
    let home = tempfile::tempdir().unwrap();
    let missing = home.path().join("missing");

    // When it starts
    let log = dir.path().join("relay.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .arg("--config")
        .arg(&path)
        .arg("run")
        .env_remove("RUST_LOG")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
        .env_remove("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        .env_remove("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        .env("HOME", home.path())
        .env("AWS_SHARED_CREDENTIALS_FILE", &missing)
        .env("AWS_CONFIG_FILE", &missing)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn outboxd");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // Then it fails, and says where it looked
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(
        status.is_some_and(|s| !s.success()),
        "still running or succeeded: {stderr}"
    );
    assert!(
        stderr.contains("no AWS credentials found by the standard chain")
            && stderr.contains("AWS_ACCESS_KEY_ID")
            && stderr.contains("instance metadata"),
        "{stderr}"
    );
}
