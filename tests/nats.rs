//! The NATS JetStream sink against the real server at 127.0.0.1:4222 (each test with a stream
//! of its own): what start-up checks, deduplication by `Nats-Msg-Id`, the message shape, and
//! what each failure becomes. The shared delivery scenarios are in conformance_nats.rs.

mod common;

use common::conformance::{Delivered, WAIT, check_order};
use common::nats::{Stored, TestStream, nats};
use common::pg::test_db;
use common::relay::*;
use outboxd::config::Config;
use outboxd::error::ErrorKind;
use outboxd::event::{Event, Operation, Origin, Position};
use outboxd::sink::{NatsSink, Outcome, Sink, SinkContext};
use serde_json::value::RawValue;
use std::collections::HashSet;

/// An outbox event of key `key` with payload `{"seq": seq}` padded by `pad` bytes.
fn event(key: &str, seq: i64, pad: usize) -> Event {
    let payload = serde_json::json!({"seq": seq, "pad": "x".repeat(pad)}).to_string();
    Event {
        id: uuid::Uuid::new_v4().to_string(),
        subject: "order".into(),
        key: key.into(),
        event_type: "Placed".into(),
        op: Operation::Insert,
        origin: Origin::Outbox,
        payload: RawValue::from_string(payload).unwrap(),
        headers: None,
        created_at: chrono::Utc::now(),
        position: Position(seq as u64),
    }
}

/// The sink's config for `stream`, straight to the server.
fn config_of(stream: &TestStream) -> Config {
    let mut config = Config::default();
    stream.configure(&mut config, "nats://127.0.0.1:4222");
    config
}

/// Opens the sink of `config`.
async fn open(config: &Config) -> outboxd::error::Result<NatsSink> {
    NatsSink::open(&config.sink.nats, &SinkContext::default()).await
}

#[tokio::test]
async fn a_batch_published_twice_is_stored_once() {
    // Given a sink on a stream, and a batch it delivered
    let Some(js) = nats().await else { return };
    let stream = TestStream::create(&js).await;
    let mut sink = open(&config_of(&stream)).await.unwrap();
    let batch: Vec<Event> = (1..=20)
        .map(|seq| event(&format!("k{}", seq % 3), seq, 0))
        .collect();
    let first = sink.publish(&batch).await.unwrap();
    assert!(first.iter().all(|o| *o == Outcome::Delivered), "{first:?}");

    // When the same batch is published again (as after a crash before the rows were marked)
    let again = sink.publish(&batch).await.unwrap();

    // Then it counts as delivered, and the stream holds each event once
    assert!(again.iter().all(|o| *o == Outcome::Delivered), "{again:?}");
    assert_eq!(stream.count().await, 20);
    stream.delete().await;
}

#[tokio::test]
async fn messages_carry_the_id_the_shared_headers_and_cloudevents_per_the_nats_binding() {
    // Given a sink in CloudEvents mode
    let Some(js) = nats().await else { return };
    let stream = TestStream::create(&js).await;
    let mut config = config_of(&stream);
    config.sink.nats.cloudevents = true;
    config.sink.nats.cloudevents_source = "/shop orders".into();
    let mut sink = open(&config).await.unwrap();

    // When an event with row headers, one of them trying to purge the stream, is published
    let mut one = event("42", 1, 0);
    one.headers =
        Some(RawValue::from_string(r#"{"trace":"t-1","Nats-Rollup":"all"}"#.into()).unwrap());
    let earlier = event("43", 1, 0);
    sink.publish(std::slice::from_ref(&earlier)).await.unwrap();
    assert_eq!(
        sink.publish(std::slice::from_ref(&one)).await.unwrap(),
        [Outcome::Delivered]
    );

    // Then the message has the subject of the template, the body as stored, the id for
    // deduplication, the shared headers and the binding's attributes; nothing was purged
    let stored = stream.read_all(WAIT).await;
    assert_eq!(
        stored.len(),
        2,
        "the row's Nats-Rollup header purged the stream"
    );
    let message: &Stored = &stored[1];
    assert_eq!(message.subject, format!("{}.order.Placed", stream.prefix));
    assert_eq!(message.payload, one.payload.get().as_bytes());
    for (name, value) in [
        ("Nats-Msg-Id", one.id.as_str()),
        ("id", one.id.as_str()),
        ("type", "Placed"),
        ("aggregatetype", "order"),
        ("aggregateid", "42"),
        ("position", "1"),
        ("trace", "t-1"),
        ("ce-id", one.id.as_str()),
        ("ce-source", "/shop%20orders"),
        ("ce-specversion", "1.0"),
        ("ce-datacontenttype", "application/json"),
    ] {
        assert_eq!(
            message.header(name),
            Some(value),
            "{name}: {:?}",
            message.headers
        );
    }
    assert_eq!(message.header("Nats-Rollup"), None);
    stream.delete().await;
}

#[tokio::test]
async fn start_up_names_a_missing_stream_and_one_that_does_not_cover_the_subject() {
    let Some(js) = nats().await else { return };
    let stream = TestStream::create(&js).await;

    // A stream that does not exist
    let mut config = config_of(&stream);
    config.sink.nats.stream = Some(format!("{}_MISSING", stream.name));
    let err = open(&config).await.err().expect("missing stream");
    assert_eq!(err.kind(), ErrorKind::Config);
    let text = err.to_string();
    assert!(text.starts_with("sink.nats.stream: stream \""), "{text}");
    assert!(text.contains("_MISSING\" does not exist"), "{text}");

    // A stream whose subjects do not cover the template's
    let mut config = config_of(&stream);
    config.sink.nats.subject = "elsewhere.{aggregatetype}".into();
    let text = open(&config).await.err().expect("not covered").to_string();
    assert!(
        text.contains(&format!("stream \"{}\"", stream.name))
            && text.contains("does not cover subject \"elsewhere.*\""),
        "{text}"
    );

    // No stream named, and none covers the subject
    let mut config = config_of(&stream);
    config.sink.nats.stream = None;
    config.sink.nats.subject = format!("nowhere{}.{{type}}", stream.prefix);
    let text = open(&config).await.err().expect("no stream").to_string();
    assert!(
        text.contains("no JetStream stream covers subject \"nowhere"),
        "{text}"
    );

    // No stream named: the one covering the subject is found
    let mut config = config_of(&stream);
    config.sink.nats.stream = None;
    let mut sink = open(&config).await.unwrap();
    assert_eq!(
        sink.publish(&[event("1", 1, 0)]).await.unwrap(),
        [Outcome::Delivered]
    );
    stream.delete().await;
}

#[tokio::test]
async fn create_stream_makes_a_file_stream_on_the_templates_subjects() {
    // Given no stream, and create_stream on
    let Some(js) = nats().await else { return };
    let name = format!("C{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let prefix = name.to_lowercase();
    let mut config = Config::default();
    config.sink.nats.url = outboxd::config::DbUrl::new("nats://127.0.0.1:4222");
    config.sink.nats.subject = format!("{prefix}.{{aggregatetype}}.{{type}}");
    config.sink.nats.stream = Some(name.clone());
    config.sink.nats.create_stream = true;
    config.sink.nats.duplicate_window_s = 300;

    // When the sink opens and publishes
    let mut sink = open(&config).await.unwrap();
    assert_eq!(
        sink.publish(&[event("1", 1, 0)]).await.unwrap(),
        [Outcome::Delivered]
    );

    // Then the stream exists as configured
    let mut stream = js.get_stream(&name).await.unwrap();
    let info = stream.info().await.unwrap().clone();
    assert_eq!(info.config.subjects, [format!("{prefix}.>")]);
    assert_eq!(
        info.config.storage,
        async_nats::jetstream::stream::StorageType::File
    );
    assert_eq!(info.config.duplicate_window.as_secs(), 300);
    assert_eq!(info.state.messages, 1);
    js.delete_stream(&name).await.unwrap();
}

#[tokio::test]
async fn an_oversize_message_is_refused_naming_max_payload_and_its_key_waits() {
    // Given a sink, and a batch where key "a" has a message over the server's max_payload
    // between two small ones, and key "b" has small ones
    let Some(js) = nats().await else { return };
    let stream = TestStream::create(&js).await;
    let mut sink = open(&config_of(&stream)).await.unwrap();
    let batch = [
        event("a", 1, 0),
        event("a", 2, 1_100_000),
        event("b", 1, 0),
        event("a", 3, 0),
        event("b", 2, 0),
    ];

    // When it is published
    let outcomes = sink.publish(&batch).await.unwrap();

    // Then the large one is refused with the limit, a's later one is not sent, b's flow
    assert_eq!(outcomes[0], Outcome::Delivered);
    let Outcome::Refused(reason) = &outcomes[1] else {
        panic!("{outcomes:?}")
    };
    assert!(
        reason.contains("max_payload") && reason.contains("1048576"),
        "{reason}"
    );
    assert_eq!(
        outcomes[2..],
        [Outcome::Delivered, Outcome::Deferred, Outcome::Delivered]
    );
    assert_eq!(stream.count().await, 3);
    stream.delete().await;
}

#[tokio::test]
async fn a_stream_deleted_under_the_sink_is_a_retryable_error_naming_no_responders() {
    // Given a sink whose stream is deleted after start-up
    let Some(js) = nats().await else { return };
    let stream = TestStream::create(&js).await;
    let mut sink = open(&config_of(&stream)).await.unwrap();
    js.delete_stream(&stream.name).await.unwrap();

    // When it publishes
    let err = sink.publish(&[event("1", 1, 0)]).await.unwrap_err();

    // Then the batch fails, retryably, saying why, and readiness follows
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("no responders"), "{err}");
    assert!(!sink.is_healthy());
    assert!(!sink.probe().await);
}

#[tokio::test]
async fn a_full_stream_pushes_back_and_later_events_of_the_key_wait() {
    // Given a stream capped at 2 messages with discard: new
    let Some(js) = nats().await else { return };
    let stream = TestStream::create(&js).await;
    stream.limit(2).await;
    let mut sink = open(&config_of(&stream)).await.unwrap();

    // When four events of one key and one of another are published
    let batch = [
        event("a", 1, 0),
        event("a", 2, 0),
        event("a", 3, 0),
        event("b", 1, 0),
        event("a", 4, 0),
    ];
    let outcomes = sink.publish(&batch).await.unwrap();

    // Then two are stored, the third is busy and a's last waits behind it
    assert_eq!(outcomes[..2], [Outcome::Delivered, Outcome::Delivered]);
    assert!(
        matches!(&outcomes[2], Outcome::Busy(r) if r.contains("maximum messages")),
        "{outcomes:?}"
    );
    assert!(matches!(&outcomes[3], Outcome::Busy(_)), "{outcomes:?}");
    assert_eq!(outcomes[4], Outcome::Deferred);
    assert_eq!(stream.count().await, 2);
    stream.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_sigkills_during_20_000_events_lose_nothing_and_store_nothing_twice() {
    // Given writers producing 20,000 events, and a relay process publishing to a stream
    let Some(js) = nats().await else { return };
    let stream = TestStream::create(&js).await;
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&db, &dir.path().join("log"));
    stream.configure(&mut config, "nats://127.0.0.1:4222");
    config.source.batch_size = 200;
    migrate(&config).await;
    create_aggregates(&db, 50).await;
    const TOTAL: i64 = 20_000;
    let writers = tokio::spawn({
        let db = db.clone();
        async move { write_events(&db, 4, 5000, 50).await }
    });

    // When it is SIGKILLed ten times, each time after it marked a little more sent
    for kill in 0..10 {
        let mut relay = RelayProcess::spawn(&config, dir.path(), &format!("run-{kill}"), &["run"]);
        relay.http_addr().await;
        let sent = sent_rows(&db).await;
        wait_sent_at_least(&db, (sent + 1 + fastrand::i64(0..1500)).min(TOTAL)).await;
        relay.kill();
    }
    writers.await.unwrap();
    let mut last = RelayProcess::spawn(&config, dir.path(), "last", &["run"]);
    last.http_addr().await;

    // Then every event is in the stream exactly once, each key in order
    common::amqp::wait_settled(&db, TOTAL, WAIT * 3).await;
    last.kill();
    let stored = stream.read_all(WAIT).await;
    let delivered: Vec<Delivered> = stored
        .iter()
        .map(|m| Delivered {
            id: m.header("id").unwrap().to_string(),
            key: m.header("aggregateid").unwrap().to_string(),
            seq: m.seq(),
            stream: 0,
        })
        .collect();
    let (distinct, repeats) = check_order(&delivered);
    println!("10 kills, {TOTAL} events: {distinct} distinct, {repeats} duplicates in the stream");
    assert_eq!((distinct, repeats), (TOTAL as usize, 0));
    let ids: HashSet<&str> = stored
        .iter()
        .filter_map(|m| m.header("Nats-Msg-Id"))
        .collect();
    assert_eq!(ids.len(), TOTAL as usize);
    assert_eq!(failed_rows(&db).await, 0);
    stream.delete().await;
}

/// How many rows are marked sent.
async fn sent_rows(db: &common::pg::TestDb) -> i64 {
    common::pg::connect(&db.url)
        .await
        .query_one("SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirected_handle_publishes_dead_letters_to_its_subject_which_a_stream_must_cover() {
    let Some(js) = nats().await else { return };
    // Given a sink on a stream of subjects `<prefix>.>`
    let stream = TestStream::create(&js).await;
    let sink = open(&config_of(&stream)).await.expect("open");

    // When it is redirected outside the stream's subjects, start-up fails naming the key
    let Err(err) = sink.redirect("elsewhere.{type}").await else {
        panic!("a dead-letter subject no stream covers was accepted");
    };
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(
        err.chain().starts_with("relay.dead_letter_topic: "),
        "{}",
        err.chain()
    );

    // And redirected within them, a dead letter lands on that subject with its reason
    let prefix = &stream.prefix;
    let mut dead = sink
        .redirect(&format!("{prefix}.dead.{{aggregatetype}}.{{type}}"))
        .await
        .expect("redirect");
    let letter = outboxd::sink::headers::dead_letter(&event("k", 1, 0), "too big", None);
    assert_eq!(dead.publish(&[letter]).await.unwrap(), [Outcome::Delivered]);
    let stored = stream.read_all(WAIT).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].subject, format!("{prefix}.dead.order.Placed"));
    assert_eq!(
        stored[0].header("outboxd-dead-letter-reason"),
        Some("too big")
    );
    stream.delete().await;
}
