//! Faults at the sink that concern one key, and a stop while the sink hangs (issue #15): a key
//! the sink keeps refusing as busy (a RabbitMQ nack) holds up only itself while other keys
//! flow, in both source modes; and shutdown abandons an unconfirmed publish after its grace.

mod common;

use common::faults::{FaultSink, Faults};
use common::pg::{connect, test_db};
use common::relay::*;
use outboxd::config::{Config, SourceMode};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(90);

/// A relay in this process whose sink injects `faults`.
async fn start_faulty(config: &Config, faults: Arc<Mutex<Faults>>) -> InProcessRelay {
    InProcessRelay::start_with(config, |inner| FaultSink { inner, faults }).await
}

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
