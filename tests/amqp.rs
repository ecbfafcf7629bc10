//! The RabbitMQ sink end to end, against the real broker at 127.0.0.1:5672 and real PostgreSQL.
//! Each test uses its own exchange and queue (and vhost when it closes connections) and deletes
//! them at the end. Without a broker the tests are skipped, except under `CI=true`.

mod common;

use common::amqp::*;
use common::pg::{connect, test_db};
use common::relay::*;
use lapin::types::{AMQPValue, FieldTable};
use outboxd::config::{DbUrl, SinkKind};
use outboxd::error::ErrorKind;
use outboxd::sink::{AnySink, Sink};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_closed_connections_mid_stream_lose_nothing() {
    let Some(_) = rabbit().await else { return };
    // Given a relay publishing into a private vhost, and writers streaming events
    let vhost = Vhost::create().await;
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let topology = Topology::declare(&vhost.url, "#").await;
    let mut config = config_for(&db, &dir.path().join("log"));
    topology.configure(&mut config);
    config.source.batch_size = 200;
    let relay = InProcessRelay::start(&config).await;
    create_aggregates(&db, 20).await;
    let writers = tokio::spawn({
        let db = db.clone();
        async move { write_events(&db, 4, 1000, 20).await }
    });

    // When every connection to the vhost is force-closed twice while events flow
    for sent in [300, 1500] {
        wait_sent_at_least(&db, sent).await;
        vhost.close_all_connections().await;
    }
    writers.await.unwrap();

    // Then every event still reaches the queue; repeats come only from republished batches and
    // never break an aggregate's order
    wait_settled(&db, 4000, WAIT).await;
    relay.stop().await;
    let messages = topology.consume_all(WAIT).await;
    let (distinct, repeats) = assert_queue_order(&messages);
    eprintln!("force-closed twice: {distinct} distinct, {repeats} repeats");
    assert_eq!(distinct, 4000);
    assert!(
        repeats <= 2 * 200,
        "{repeats} repeats: more than two batches"
    );
    assert_eq!(failed_rows(&db).await, 0);
    topology.delete().await;
    vhost.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_event_is_marked_failed_with_the_reason_and_later_events_flow() {
    let Some(url) = rabbit().await else { return };
    // Given a queue bound only to order events
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let topology = Topology::declare(&url, "order.#").await;
    let mut config = config_for(&db, &dir.path().join("log"));
    topology.configure(&mut config);
    let relay = InProcessRelay::start(&config).await;

    // When an event no queue is bound for is written between two order events
    let client = connect(&db.url).await;
    // (the ghost is its own aggregate: behind a dead letter its aggregate would wait)
    for (aggregate_type, aggregate_id, event_type) in [
        ("order", "1", "A"),
        ("ghost", "2", "Lost"),
        ("order", "1", "B"),
    ] {
        client
            .execute(
                "INSERT INTO outbox (aggregatetype, aggregateid, type, payload, headers) \
                 VALUES ($1, $3, $2, '{\"n\": 1}', '{\"trace\": \"t1\", \"try\": 2}')",
                &[&aggregate_type, &event_type, &aggregate_id],
            )
            .await
            .unwrap();
    }

    // Then it is marked failed with the broker's reason, and both order events arrive
    wait_settled(&db, 3, WAIT).await;
    relay.stop().await;
    let failed = client
        .query_one(
            "SELECT type, last_error FROM outbox WHERE failed_at IS NOT NULL",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(failed.get::<_, String>(0), "Lost");
    assert_eq!(
        failed.get::<_, String>(1),
        format!(
            "unroutable: exchange {} routing key ghost.Lost: NO_ROUTE",
            topology.exchange
        )
    );
    let messages = topology.consume_all(WAIT).await;
    let kinds: Vec<String> = messages
        .iter()
        .map(|m| m.properties.kind().as_ref().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["A", "B"]);
    // And the message carries the event's metadata and headers, the payload byte for byte
    let first = &messages[0];
    assert_eq!(first.routing_key.as_str(), "order.A");
    assert_eq!(first.data, br#"{"n": 1}"#);
    assert_eq!(first.properties.delivery_mode(), &Some(2));
    assert_eq!(header(first, "trace").as_deref(), Some("t1"));
    assert_eq!(header(first, "try").as_deref(), Some("LongLongInt(2)"));
    assert_eq!(header(first, "aggregatetype").as_deref(), Some("order"));
    topology.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_event_is_logged_with_its_reason_but_without_its_payload() {
    let Some(url) = rabbit().await else { return };
    // Given a relay process logging at debug, publishing to an exchange bound only to orders
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let topology = Topology::declare(&url, "order.#").await;
    let mut config = config_for(&db, &dir.path().join("log"));
    topology.configure(&mut config);
    config.logging.level = "debug".into();
    migrate(&config).await;
    // (the URL goes through the environment: the written config masks its password)
    let env = [("OUTBOXD_SINK__AMQP__URL", url.as_str())];
    let mut relay = RelayProcess::spawn_with_env(&config, dir.path(), "relay", &["run"], &env);

    // When an event no queue is bound for carries a distinctive payload
    let payload = r#"{"card": "4111-9999-2222-7777"}"#;
    let client = connect(&db.url).await;
    let id: uuid::Uuid = client
        .query_one(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
             VALUES ('ghost', '1', 'Lost', $1::text::jsonb) RETURNING id",
            &[&payload],
        )
        .await
        .unwrap()
        .get(0);

    // Then the log names the event, exchange, routing key and reason
    let line = relay
        .wait_for_log_line(&[&id.to_string(), "unroutable"], WAIT)
        .await;
    assert!(
        line.contains("ghost.Lost") && line.contains("NO_ROUTE"),
        "{line}"
    );
    wait_settled(&db, 1, WAIT).await;
    relay.kill();
    // And no byte of the payload, neither as text nor as lapin's decimal byte list
    let text = std::fs::read_to_string(dir.path().join("relay.log")).unwrap();
    let stored: String = client
        .query_one("SELECT payload::text FROM outbox", &[])
        .await
        .unwrap()
        .get(0);
    let decimal = |s: &str| {
        s.bytes()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for needle in ["4111-9999", &decimal(&stored), &decimal("4111-9999")] {
        assert!(!text.contains(needle), "the log holds {needle:?}:\n{text}");
    }
    topology.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacked_events_stay_pending_and_are_republished_in_order() {
    let Some(url) = rabbit().await else { return };
    // Given a queue that holds two messages and makes the broker nack any more
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(2));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    let topology = Topology::declare_with(&url, "#", args).await;
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&db, &dir.path().join("log"));
    topology.configure(&mut config);
    let relay = InProcessRelay::start(&config).await;
    create_aggregates(&db, 1).await;

    // When five events of one aggregate are written
    write_events(&db, 1, 5, 1).await;

    // Then, while the queue is full, the nacked events stay pending (never failed), and only a
    // prefix of the aggregate is marked sent: checked once the broker has nacked the third
    // event three times (one unconfirmed message per aggregate: the nacks are all its)
    wait_nacked(3).await;
    let client = connect(&db.url).await;
    let sent: Vec<i32> = client
        .query(
            "SELECT (payload->>'seq')::int FROM outbox WHERE sent_at IS NOT NULL ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(sent.len() < 5, "sent {sent:?} into a queue that holds two");
    assert_eq!(sent, (1..=sent.len() as i32).collect::<Vec<_>>());
    assert_eq!(failed_rows(&db).await, 0);

    // And as a consumer drains the queue, the retries deliver everything, in order
    let mut messages = Vec::new();
    while pending_rows(&db).await > 0 {
        messages.extend(topology.consume_all(WAIT).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    relay.stop().await;
    messages.extend(topology.consume_all(WAIT).await);
    let (distinct, _) = assert_queue_order(&messages);
    assert_eq!(distinct, 5);
    topology.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_or_vhost_at_start_up_is_one_clear_error() {
    let Some(_) = rabbit().await else { return };
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&db, &dir.path().join("log"));
    config.sink.kind = SinkKind::Amqp;
    config.sink.amqp.exchange = "amq.topic".into();

    // Given a wrong password, when the sink opens, then a configuration error, password masked
    config.sink.amqp.url = DbUrl::new("amqp://guest:hunter2@127.0.0.1:5672/%2f");
    let Err(err) = AnySink::open(&config.sink, &outboxd::cli::run::sink_context(&config)).await
    else {
        panic!("a wrong password was accepted")
    };
    let line = err.chain();
    assert_eq!(err.kind(), ErrorKind::Config, "{line}");
    assert!(
        line.starts_with("connecting to RabbitMQ at amqp://guest:********@127.0.0.1:5672/%2f: "),
        "{line}"
    );
    assert!(
        line.contains("authentication failed for user \"guest\""),
        "{line}"
    );
    eprintln!("wrong password: {line}");
    assert!(!line.contains("hunter2"), "{line}");

    // And the binary exits non-zero with that one error line (the file gets the real URL:
    // serializing a config masks it)
    let path = write_config(&config, dir.path(), "wrong-password");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replace("guest:********@", "guest:hunter2@");
    std::fs::write(&path, text).unwrap();
    let (code, _, stderr) = run_cli(&path, &["run"]);
    assert_ne!(code, 0);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("authentication failed"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");

    // Given a vhost that does not exist, the same: a configuration error that names it
    config.sink.amqp.url = DbUrl::new("amqp://guest:guest@127.0.0.1:5672/no-such-vhost");
    let Err(err) = AnySink::open(&config.sink, &outboxd::cli::run::sink_context(&config)).await
    else {
        panic!("an unknown vhost was accepted")
    };
    assert_eq!(err.kind(), ErrorKind::Config, "{}", err.chain());
    assert!(err.chain().contains("no-such-vhost"), "{}", err.chain());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_exchange_stops_start_up_unless_declare_is_on() {
    let Some(url) = rabbit().await else { return };
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&db, &dir.path().join("log"));
    config.sink.kind = SinkKind::Amqp;
    config.sink.amqp.url = DbUrl::new(url.clone());
    config.sink.amqp.exchange = format!("outboxd-test-missing-{}", uuid::Uuid::new_v4().simple());

    // Given the default passive check, a missing exchange is a configuration error
    let Err(err) = AnySink::open(&config.sink, &outboxd::cli::run::sink_context(&config)).await
    else {
        panic!("a missing exchange was accepted")
    };
    assert_eq!(err.kind(), ErrorKind::Config, "{}", err.chain());
    assert!(
        err.chain()
            .contains("create it or set sink.amqp.declare = true"),
        "{}",
        err.chain()
    );

    // With declare = true the sink creates it, and is healthy
    config.sink.amqp.declare = true;
    let sink = AnySink::open(&config.sink, &outboxd::cli::run::sink_context(&config))
        .await
        .expect("declare exchange");
    assert!(sink.is_healthy());
    drop(sink);
    Topology {
        url,
        exchange: config.sink.amqp.exchange.clone(),
        queue: "outboxd-test-none".into(),
    }
    .delete()
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_masks_the_amqp_password() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[sink]\ntype = \"amqp\"\n[sink.amqp]\nurl = \"amqps://app:hunter2@mq:5671/prod\"\n",
    )
    .unwrap();
    let (code, stdout, stderr) = run_cli(&path, &["check-config"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("amqps://app:********@mq:5671/prod"),
        "{stdout}"
    );
    assert!(!stdout.contains("hunter2"), "{stdout}");
    assert!(
        stdout.contains("routing_key = \"{aggregatetype}.{type}\""),
        "{stdout}"
    );
}

/// Rows neither sent nor failed.
async fn pending_rows(db: &common::pg::TestDb) -> i64 {
    connect(&db.url)
        .await
        .query_one(
            "SELECT count(*) FROM outbox WHERE sent_at IS NULL AND failed_at IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Waits until the RabbitMQ sink has counted `count` nacks in this process (only the test
/// that fills a reject-publish queue makes any).
async fn wait_nacked(count: u64) {
    let labels = outboxd::metrics::SinkLabels { sink: "amqp" };
    let deadline = std::time::Instant::now() + WAIT;
    while outboxd::metrics::get().busy.get_or_create(&labels).get() < count {
        assert!(
            std::time::Instant::now() < deadline,
            "never nacked {count} times"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_goes_to_the_dead_letter_routing_key_on_the_same_exchange() {
    let Some(url) = rabbit().await else { return };
    // Given a queue bound to the main routing keys and one bound to the dead-letter ones, and
    // a relay whose sink refuses Poison with relay.dead_letter_topic = "dead.{aggregatetype}.{type}"
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let main = Topology::declare(&url, "main.#").await;
    let dead = main.another_queue("dead.#", FieldTable::default()).await;
    let mut config = config_for(&db, &dir.path().join("log"));
    main.configure(&mut config);
    config.sink.amqp.routing_key = "main.{aggregatetype}".into();
    config.relay.dead_letter_topic = Some("dead.{aggregatetype}.{type}".into());
    let faults = std::sync::Arc::new(std::sync::Mutex::new(common::faults::Faults::default()));
    faults.lock().unwrap().refuse_types.insert("Poison".into());
    let relay = InProcessRelay::start_with(&config, |inner| common::faults::FaultSink {
        inner,
        faults: faults.clone(),
    })
    .await;

    // When p writes Step then Poison, and o writes Step
    let client = connect(&db.url).await;
    for (key, kind) in [("p", "Step"), ("p", "Poison"), ("o", "Step")] {
        client
            .execute(
                "INSERT INTO outbox (aggregatetype, aggregateid, type, payload, headers) \
                 VALUES ('order', $1, $2, '{\"seq\": 1}', '{\"trace\": \"t\"}')",
                &[&key, &kind],
            )
            .await
            .unwrap();
    }

    // Then the broker routes Poison, with its reason, to the dead-letter queue only
    let letters = dead.consume(1, WAIT).await;
    let delivered = main.consume(2, WAIT).await;
    while failed_rows(&db).await < 1 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.stop().await;
    assert_eq!(letters[0].routing_key.as_str(), "dead.order.Poison");
    assert_eq!(
        header(&letters[0], "outboxd-dead-letter-reason").as_deref(),
        Some("injected: refused for good")
    );
    assert_eq!(header(&letters[0], "trace").as_deref(), Some("t"));
    assert_eq!(header(&letters[0], "type").as_deref(), Some("Poison"));
    assert!(
        delivered
            .iter()
            .all(|m| m.routing_key.as_str() == "main.order")
    );
    assert!(
        delivered
            .iter()
            .all(|m| header(m, "type").as_deref() == Some("Step"))
    );
    assert_eq!((dead.depth().await, main.depth().await), (0, 0));
    dead.delete().await;
    main.delete().await;
}
