//! A lane's queue can hold more than one publish, so one fetch's events of an aggregate can be
//! split over two publishes (issue #14). Once the first settles the aggregate as not delivered,
//! the second must not go out. Alone in its test binary: it reads the process-wide in-flight
//! gauge to know what the relay has queued.

mod common;

use common::faults::{FaultSink, Faults};
use common::pg::{connect, test_db};
use common::relay::*;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(60);

/// Waits until the relay holds `count` events in flight.
async fn wait_in_flight(count: i64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = outboxd::metrics::get().in_flight.get();
        if now == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{now} events in flight, not {count}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Inserts events `(aggregate, type)` in one transaction.
async fn insert(client: &tokio_postgres::Client, events: &[(&str, &str)]) {
    let values: Vec<String> = events
        .iter()
        .map(|(aggregate, kind)| format!("('t', '{aggregate}', '{kind}', '{{}}')"))
        .collect();
    client
        .batch_execute(&format!(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES {}",
            values.join(", ")
        ))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_queued_behind_a_refused_event_of_their_aggregate_do_not_go_out() {
    // Given batches of two, a sink that refuses Poison, and a first publish the test holds
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut config = config_for(&db, &log);
    config.source.batch_size = 2;
    config.relay.lanes = 1;
    migrate(&config).await;
    let faults = Arc::new(Mutex::new(Faults::default()));
    let (started_tx, started) = oneshot::channel();
    let (release, release_rx) = oneshot::channel();
    {
        let mut faults = faults.lock().unwrap();
        faults.refuse_types.insert("Poison".into());
        faults.hold_once = Some((started_tx, release_rx));
    }
    let relay = InProcessRelay::start_with(&config, |inner| FaultSink {
        inner,
        faults: faults.clone(),
    })
    .await;
    let client = connect(&db.url).await;

    // When A1 is held in its publish, X1 is fetched alone, and then D1 (refused) and D2 in one
    // fetch: the lane's queue is X1 D1 | D2, two publishes that split d's run
    insert(&client, &[("a", "One")]).await;
    assert_eq!(started.await.unwrap(), 1);
    insert(&client, &[("x", "One")]).await;
    wait_in_flight(2).await;
    insert(&client, &[("d", "Poison"), ("d", "Two")]).await;
    wait_in_flight(4).await;
    release.send(()).unwrap();

    // Then D1 becomes a dead letter and D2 waits behind it: a later event of x, fetched
    // after that, arrives without it
    wait_for_events(&[&log], 2, WAIT).await;
    wait_sent_at_least(&db, 2).await;
    let deadline = Instant::now() + WAIT;
    while failed_rows(&db).await < 1 {
        assert!(Instant::now() < deadline, "D1 never became a dead letter");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    insert(&client, &[("x", "Two")]).await;
    wait_sent_at_least(&db, 3).await;
    let logged: Vec<String> = read_log(&log)
        .iter()
        .map(|r| format!("{}:{}", r.event.key, r.event.event_type))
        .collect();
    relay.stop().await;
    assert_eq!(logged, vec!["a:One", "x:One", "x:Two"]);
    let pending: i64 = client
        .query_one(
            "SELECT count(*) FROM outbox WHERE sent_at IS NULL AND failed_at IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(pending, 1, "D2 stays pending behind its dead letter");
}
