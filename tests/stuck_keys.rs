//! Faults at the sink that concern one key, and a stop while the sink hangs (issue #15): a key
//! the sink keeps refusing as busy (a RabbitMQ nack) holds up only itself while other keys
//! flow, in both source modes, with a fault-injecting sink and with the real RabbitMQ keeping
//! one key's queue full for a minute; and shutdown abandons an unconfirmed publish after its
//! grace.

mod common;

use common::amqp::{Topology, assert_queue_order, header, message_seq, rabbit};
use common::faults::{Faults, start_faulty};
use common::pg::{connect, test_db};
use common::relay::*;
use lapin::types::{AMQPValue, FieldTable};
use outboxd::config::SourceMode;
use outboxd::relay::lane_of;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(90);

/// Writes `per_key` events for each of `keys` (named `k0`…), interleaved, in transactions of
/// 100 rows.
async fn write(client: &tokio_postgres::Client, keys: usize, per_key: usize) {
    let total = (keys * per_key) as i32;
    for start in (0..total).step_by(100) {
        client
            .execute(
                "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
                 SELECT 't', 'k' || (g % $1), 'Step', jsonb_build_object('seq', g) \
                 FROM generate_series($2, least($2 + 99, $3 - 1)) g",
                &[&(keys as i32), &start, &total],
            )
            .await
            .unwrap();
    }
}

/// A key nacked every time holds up only itself: the events of every other key arrive while
/// it is stuck, then its own arrive in order once the broker takes them again.
async fn one_nacked_key_holds_up_only_itself(mode: SourceMode) {
    // Given small batches (the relay's in-flight bound is soon reached) and a sink that nacks
    // every event of key "stuck"
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut config = config_in(mode, &db, &log);
    config.source.batch_size = 50;
    config.relay.retry_max_ms = 200;
    let faults = Arc::new(Mutex::new(Faults::default()));
    faults
        .lock()
        .unwrap()
        .busy_aggregates
        .insert("stuck".into());
    migrate(&config).await;
    let relay = start_faulty(&config, faults.clone()).await;
    let client = connect(&db.url).await;

    // When the stuck key writes 20 events, then 40 other keys write 2,000
    client
        .execute(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
             SELECT 't', 'stuck', 'Step', jsonb_build_object('seq', g) \
             FROM generate_series(0, 19) g",
            &[],
        )
        .await
        .unwrap();
    write(&client, 40, 50).await;

    // Then all 2,000 arrive while the key is still refused: in polling mode every other key;
    // in logical mode, where the stream is read once and the key is retried in its lane, the
    // keys of the other lanes (those of its own lane wait behind it)
    let stuck_lane = outboxd::relay::lane_of("stuck", config.relay.lanes);
    let flowing = (0..40)
        .filter(|k| {
            mode == SourceMode::Poll
                || outboxd::relay::lane_of(&format!("k{k}"), config.relay.lanes) != stuck_lane
        })
        .count();
    let records = wait_for_events(&[&log], flowing * 50, WAIT).await;
    assert!(
        records[0].iter().all(|r| r.event.key != "stuck"),
        "a refused event was stored"
    );

    // And once the broker takes the key again, its 20 events arrive, every key in order
    faults.lock().unwrap().busy_aggregates.clear();
    let records = wait_for_events(&[&log], 2020, WAIT).await;
    relay.stop().await;
    if mode == SourceMode::Logical {
        drop_slot(&db).await;
    }
    assert_eq!(assert_in_order_by_seq(&records[0]), 0);
}

/// Out-of-order pairs per key, by the payload's `seq`.
fn assert_in_order_by_seq(records: &[outboxd::log::Record]) -> usize {
    let mut last: std::collections::HashMap<&str, i64> = Default::default();
    let mut out_of_order = 0;
    for record in records {
        let seq: serde_json::Value = serde_json::from_str(record.event.payload.get()).unwrap();
        let seq = seq["seq"].as_i64().unwrap();
        let previous = last.insert(record.event.key.as_str(), seq);
        if previous.is_some_and(|p| p >= seq) {
            out_of_order += 1;
        }
    }
    out_of_order
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_mode_one_nacked_key_holds_up_only_itself() {
    one_nacked_key_holds_up_only_itself(SourceMode::Poll).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_mode_one_nacked_key_holds_up_only_itself() {
    one_nacked_key_holds_up_only_itself(SourceMode::Logical).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_abandons_an_unconfirmed_publish_after_its_grace_period() {
    // Given a relay with a one-second shutdown grace whose publish never completes
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&db, &dir.path().join("log"));
    config.relay.shutdown_grace_ms = 1000;
    migrate(&config).await;
    let faults = Arc::new(Mutex::new(Faults::default()));
    let (started_tx, started) = oneshot::channel();
    let (_never, release_rx) = oneshot::channel::<()>();
    faults.lock().unwrap().hold_once = Some((started_tx, release_rx));
    let relay = start_faulty(&config, faults).await;
    let client = connect(&db.url).await;
    write(&client, 1, 1).await;
    assert_eq!(started.await.unwrap(), 1);

    // When it is asked to stop, then it stops within the grace (and a margin), leaving the
    // event pending for the next run
    let asked = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), relay.stop())
        .await
        .expect("the relay waited past its shutdown grace");
    assert!(asked.elapsed() >= Duration::from_millis(900));
    let pending: i64 = client
        .query_one("SELECT count(*) FROM outbox WHERE sent_at IS NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pending, 1);
}

/// How long RabbitMQ keeps refusing the stuck key in the real-broker scenario.
const STUCK_FOR: Duration = Duration::from_secs(60);

/// Events each flowing key writes (40 keys: 10,000 events).
const PER_FLOWING_KEY: i32 = 250;

/// Writes events `1..=per_key` (the payload's `seq`) for each of `keys`, ten rounds per
/// transaction, the keys interleaved.
async fn write_keys(client: &tokio_postgres::Client, keys: &[String], per_key: i32) {
    for from in (1..=per_key).step_by(10) {
        client
            .execute(
                "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
                 SELECT 't', a, 'Step', jsonb_build_object('seq', s) \
                 FROM generate_series($2::int, least($2 + 9, $3)) s, unnest($1::text[]) a \
                 ORDER BY s",
                &[&keys, &from, &per_key],
            )
            .await
            .unwrap();
    }
}

/// RabbitMQ nacks every event of one key for a minute (the only queue bound for it is full,
/// with `reject-publish`), while 40 other keys write 10,000 events: those all arrive in order
/// during that minute (in logical mode those of the other lanes; keys sharing the stuck key's
/// lane wait behind it there), and once the queue has room the stuck key's events arrive in
/// order, none of them a dead letter.
async fn a_key_rabbitmq_nacks_for_a_minute_holds_up_only_itself(mode: SourceMode) {
    let Some(url) = rabbit().await else {
        return;
    };
    // Given routing keys naming the aggregate: t.stuck goes only to a queue kept full (one
    // message, max length 1, reject-publish), every other key to a normal queue
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_in(mode, &db, &dir.path().join("log"));
    let lanes = config.relay.lanes;
    let stuck_lane = lane_of("stuck", lanes);
    let flows = |key: &String| mode == SourceMode::Poll || lane_of(key, lanes) != stuck_lane;
    let keys = (0..).map(|k| format!("k{k}"));
    let flowing: Vec<String> = keys.clone().filter(flows).take(40).collect();
    let waiting: Vec<String> = match mode {
        SourceMode::Poll => Vec::new(),
        _ => keys.filter(|key| !flows(key)).take(4).collect(),
    };
    let normal = Topology::declare(&url, &format!("t.{}", flowing[0])).await;
    for key in flowing.iter().skip(1).chain(&waiting) {
        normal.bind(&format!("t.{key}")).await;
    }
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    let full = normal.another_queue("t.stuck", args).await;
    full.publish("t.stuck", br#"{"filler": true}"#).await;
    normal.configure(&mut config);
    config.sink.amqp.routing_key = "{aggregatetype}.{aggregateid}".into();
    config.relay.retry_max_ms = 1000;
    // (batches of 100: the relay's normal in-flight bound is then 500 events)
    config.source.batch_size = 100;
    migrate(&config).await;
    let relay = InProcessRelay::start(&config).await;
    let client = connect(&db.url).await;

    // When the stuck key writes 20 events, then the 40 flowing keys 10,000 (in logical mode
    // interleaved with 1,000 of 4 keys of the stuck key's lane, more than the relay's normal
    // in-flight bound of (lanes + 1) batches, which used to freeze every lane)
    let stuck = ["stuck".to_string()];
    write_keys(&client, &stuck, 20).await;
    let started = Instant::now();
    let writers: Vec<String> = flowing.iter().chain(&waiting).cloned().collect();
    write_keys(&client, &writers, PER_FLOWING_KEY).await;

    // Then every flowing event reaches its queue within the minute the key stays refused
    // (counted in the queue: logical mode does not mark rows sent)
    let expected = flowing.len() * PER_FLOWING_KEY as usize;
    loop {
        let depth = normal.depth().await;
        if depth >= expected {
            break;
        }
        assert!(
            started.elapsed() < STUCK_FOR,
            "only {depth} of {expected} events of other keys delivered while one key was nacked"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "{mode:?}: {expected} events of other keys delivered in {:?}",
        started.elapsed()
    );

    // And the key stays refused for the whole minute (a fixed wait: the scenario is a key
    // nacked for that long): its queue holds only the filler, and none of its events is a
    // dead letter
    tokio::time::sleep(STUCK_FOR.saturating_sub(started.elapsed())).await;
    assert_eq!(full.depth().await, 1);
    assert_eq!(failed_rows(&db).await, 0);

    // When the full queue is drained (each message read makes room for the next)
    let drained = full.consume(21, Duration::from_secs(60)).await;

    // Then the stuck key's 20 events arrive after the filler, in order, once each, and every
    // other key's events are in the normal queue in order, once each apart from repeats of a
    // batch sent again
    let seqs: Vec<i64> = drained[1..].iter().map(message_seq).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<i64>>());
    assert!(
        drained[1..]
            .iter()
            .all(|m| header(m, "aggregateid").as_deref() == Some("stuck"))
    );
    let others = writers.len() * PER_FLOWING_KEY as usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    while normal.depth().await < others {
        assert!(
            Instant::now() < deadline,
            "the waiting keys' events never arrived"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    relay.stop().await;
    if mode == SourceMode::Logical {
        drop_slot(&db).await;
    }
    assert_eq!(failed_rows(&db).await, 0);
    let messages = normal.consume_all(Duration::from_secs(60)).await;
    let (distinct, repeats) = assert_queue_order(&messages);
    eprintln!("{mode:?}: {distinct} distinct messages in the normal queue, {repeats} repeats");
    assert_eq!(distinct, others);
    full.delete().await;
    normal.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_mode_a_key_rabbitmq_nacks_for_a_minute_holds_up_only_itself() {
    a_key_rabbitmq_nacks_for_a_minute_holds_up_only_itself(SourceMode::Poll).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_mode_a_key_rabbitmq_nacks_for_a_minute_holds_up_only_itself() {
    a_key_rabbitmq_nacks_for_a_minute_holds_up_only_itself(SourceMode::Logical).await;
}
