//! Memory per batch is bounded by bytes as well as rows (issue #14): rows over
//! `source.max_event_bytes` become dead letters without their bodies being loaded, and a batch
//! ends before the row that would take it past `source.max_batch_bytes`.

mod common;

use common::pg::{connect, test_db};
use common::relay::*;
use outboxd::config::SourceMode;
use outboxd::source::{PollSource, Source};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

/// Inserts `count` rows of aggregate `aggregate` whose payload is a JSON string of about
/// `bytes` incompressible characters.
async fn insert_large(client: &tokio_postgres::Client, aggregate: &str, count: i32, bytes: i32) {
    client
        .execute(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
             SELECT 'big', $1, 'Large', to_jsonb((SELECT string_agg(md5(random()::text || g || i), '') \
             FROM generate_series(1, $3 / 32) i)) FROM generate_series(1, $2) g",
            &[&aggregate, &count, &bytes],
        )
        .await
        .unwrap();
}

/// Rows whose dead-letter reason says they were too large to load.
async fn too_large(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM outbox WHERE failed_at IS NOT NULL \
             AND last_error LIKE '%exceed source.max_event_bytes; not loaded'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_over_max_event_bytes_are_dead_letters_without_being_loaded() {
    // Given four 16 MB rows and a small one behind them, and a relay that takes events up to
    // 1 MiB
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut config = config_for(&db, &log);
    config.source.max_event_bytes = 1 << 20;
    migrate(&config).await;
    let client = connect(&db.url).await;
    for i in 0..4 {
        insert_large(&client, &format!("big-{i}"), 1, 16 << 20).await;
    }
    client
        .execute(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
             VALUES ('small', 's', 'Small', '{}')",
            &[],
        )
        .await
        .unwrap();

    // When the relay runs
    let mut relay = RelayProcess::spawn(&config, dir.path(), "relay", &["run"]);

    // Then the small event arrives, the four are dead letters naming the limit, and the
    // relay's memory never held them (each alone would take 16 MB, all together 64 MB,
    // twice over once decoded)
    let records = wait_for_events(&[&log], 1, WAIT).await;
    assert_eq!(records[0][0].event.event_type, "Small");
    let deadline = Instant::now() + WAIT;
    while too_large(&client).await < 4 {
        assert!(Instant::now() < deadline, "{}", relay.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let peak = peak_rss_kb(relay.child.id());
    relay.signal(libc::SIGTERM);
    assert_eq!(relay.wait_exit(WAIT), Some(0));
    eprintln!("peak RSS of the relay: {peak} kB");
    assert!(
        peak < 80_000,
        "peak RSS {peak} kB: large bodies were loaded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_ends_before_the_row_that_would_take_it_past_max_batch_bytes() {
    // Given ten rows of about 20 KB and batches of at most 64 KiB
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&db, &dir.path().join("log"));
    config.source.max_batch_bytes = 64 << 10;
    migrate(&config).await;
    let client = connect(&db.url).await;
    insert_large(&client, "a", 10, 20_000).await;

    // When the source fetches, then each batch holds three rows (a fourth would pass 64 KiB),
    // and all ten come in order
    let mut source = PollSource::start(&config.source, &config.relay)
        .await
        .unwrap();
    let (shutdown, wake) = (CancellationToken::new(), Notify::new());
    let mut sizes = Vec::new();
    let mut positions = Vec::new();
    while positions.len() < 10 {
        let batch = source.next_batch(&shutdown, &wake).await.unwrap().unwrap();
        let bytes: usize = batch.events.iter().map(|e| e.content_len()).sum();
        assert!(bytes <= 64 << 10, "a batch of {bytes} bytes");
        sizes.push(batch.events.len());
        positions.extend(batch.events.iter().map(|e| e.position.0));
        let all: Vec<_> = batch.events.iter().map(|e| e.position).collect();
        source.ack(&all, &shutdown).await.unwrap();
    }
    source.finish().await;
    assert_eq!(sizes[0], 3, "{sizes:?}");
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_logical_mode_a_row_over_max_event_bytes_is_refused_and_the_stream_goes_on() {
    // Given a logical-mode relay taking events up to 1 MiB
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut config = config_in(SourceMode::Logical, &db, &log);
    config.source.max_event_bytes = 1 << 20;
    migrate(&config).await;
    let relay = InProcessRelay::start(&config).await;

    // When a 4 MB row is written between two small ones
    let client = connect(&db.url).await;
    let small = "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
                 VALUES ('small', 's', 'Small', '{}')";
    client.execute(small, &[]).await.unwrap();
    insert_large(&client, "big", 1, 4 << 20).await;
    client.execute(small, &[]).await.unwrap();

    // Then both small ones arrive and the large one does not
    let records = wait_for_events(&[&log], 2, WAIT).await;
    relay.stop().await;
    drop_slot(&db).await;
    assert!(
        records[0].iter().all(|r| r.event.event_type == "Small"),
        "{:?}",
        records[0].len()
    );
}
