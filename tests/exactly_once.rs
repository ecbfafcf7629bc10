//! Exactly-once into the embedded log: a batch stored but never acknowledged (a crash between
//! append and mark-sent) is acknowledged at the next start instead of being appended again.

mod common;

use common::pg::{connect, test_db};
use common::relay::*;
use outboxd::sink::{AnySink, Sink};
use outboxd::source::{PollSource, Source};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

/// Inserts `count` events for aggregate `agg`.
async fn insert_events(client: &tokio_postgres::Client, agg: &str, count: i32) {
    client
        .execute(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
             SELECT 'order', $1, 'Step', jsonb_build_object('seq', g) FROM generate_series(1, $2) g",
            &[&agg, &count],
        )
        .await
        .unwrap();
}

/// Waits until no row of the outbox is pending.
async fn wait_all_sent(client: &tokio_postgres::Client) {
    let deadline = Instant::now() + WAIT;
    loop {
        let pending: i64 = client
            .query_one("SELECT count(*) FROM outbox WHERE sent_at IS NULL", &[])
            .await
            .unwrap()
            .get(0);
        if pending == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{pending} rows still pending");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many times each event id occurs in the log.
fn id_counts(records: &[outboxd::log::Record]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for record in records {
        *counts.entry(record.event.id.clone()).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_appended_but_never_acknowledged_is_not_appended_again() {
    // Given a batch fetched from the outbox and appended to the log, and then a "crash": the
    // rows are never acknowledged
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut config = config_for(&db, &log);
    config.source.batch_size = 40;
    migrate(&config).await;
    let client = connect(&db.url).await;
    insert_events(&client, "agg-1", 100).await;
    {
        let shutdown = CancellationToken::new();
        let mut source = PollSource::start(&config.source, &config.relay)
            .await
            .unwrap();
        let mut sink = AnySink::open(&config.sink, &outboxd::cli::run::sink_context(&config))
            .await
            .unwrap();
        let wake = tokio::sync::Notify::new();
        let batch = source.next_batch(&shutdown, &wake).await.unwrap().unwrap();
        assert_eq!(batch.events.len(), 40);
        sink.publish(&batch.events).await.unwrap();
    }
    assert_eq!(read_log(&log).len(), 40);

    // When the relay starts on that log and outbox
    let relay = InProcessRelay::start(&config).await;
    wait_all_sent(&client).await;
    relay.stop().await;

    // Then the log holds each of the 100 events exactly once, in order
    let records = read_log(&log);
    let counts = id_counts(&records);
    assert_eq!(counts.len(), 100);
    let duplicated = counts.values().filter(|&&n| n > 1).count();
    assert_eq!(duplicated, 0, "{duplicated} events appended twice");
    let seqs: Vec<i64> = records.iter().map(seq_of).collect();
    assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_records_of_a_recreated_outbox_never_mark_rows_with_reused_positions() {
    // Given a log holding events of an outbox table that was then dropped and recreated, so
    // its new rows reuse the old positions under new ids
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let config = config_for(&db, &log);
    let client = connect(&db.url).await;
    let relay = InProcessRelay::start(&config).await;
    insert_events(&client, "old", 20).await;
    wait_all_sent(&client).await;
    relay.stop().await;
    client
        .batch_execute("DROP TABLE outbox; DROP TABLE outboxd_migrations")
        .await
        .unwrap();
    migrate(&config).await;
    insert_events(&client, "new", 20).await;

    // When the relay starts again on the same log
    let relay = InProcessRelay::start(&config).await;
    wait_all_sent(&client).await;
    relay.stop().await;

    // Then every new event was appended (none marked sent by a stale record), once each
    let records = read_log(&log);
    let new: Vec<_> = records.iter().filter(|r| r.event.key == "new").collect();
    assert_eq!(new.len(), 20);
    assert_eq!(records.len(), 40);
    assert_eq!(id_counts(&records).len(), 40);
}
