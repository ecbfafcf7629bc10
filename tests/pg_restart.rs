//! The relay across PostgreSQL restarts: it reconnects with backoff and resumes without loss.
//! (Its own test binary, so restarting the cluster disturbs no other test.)

mod common;

use common::pg::{cluster, connect, test_db};
use common::relay::*;
use outboxd::config::SourceMode;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(90);

/// Both modes in one test, one after the other: two tests restarting the one cluster at once
/// would trip over each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_resumes_after_fast_and_immediate_restarts_of_postgres_in_both_modes() {
    relay_resumes_after_fast_and_immediate_restarts(SourceMode::Poll).await;
    relay_resumes_after_fast_and_immediate_restarts(SourceMode::Logical).await;
}

async fn relay_resumes_after_fast_and_immediate_restarts(mode: SourceMode) {
    // Given a relay that has started delivering a backlog
    let db = test_db().await;
    let Some(cluster) = cluster() else {
        eprintln!("OUTBOXD_TEST_DATABASE_URL is set: not restarting a server we do not own");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut config = config_in(mode, &db, &log);
    config.source.batch_size = 50;
    migrate(&config).await;
    create_aggregates(&db, 20).await;
    write_events(&db, 2, 1000, 20).await;
    let relay = InProcessRelay::start(&config).await;

    let mut expected = 2000;
    for how in ["fast", "immediate"] {
        // When PostgreSQL restarts mid-stream
        while read_log(&log).len() < expected / 4 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let restarting = tokio::task::spawn_blocking(move || cluster.restart(how));
        restarting.await.unwrap();

        // and more events are written after it is back
        let client = connect(&db.url).await;
        client.execute("SELECT 1", &[]).await.unwrap();
        write_events(&db, 2, 500, 20).await;
        expected += 1000;
    }

    // Then everything arrives, each aggregate in order; in polling mode duplicates come only
    // from batches in flight, and in logical mode none come at all: the re-opened stream
    // replays from the slot's confirmed position (which an immediate restart sets back to the
    // last checkpoint), and the source recognises what it already handed out
    let logs = wait_for_events(&[&log], expected, WAIT).await;
    relay.stop().await;
    let repeats = assert_in_order(&logs[0]);
    assert_eq!(
        assert_complete(&logs[0].iter().collect::<Vec<_>>(), expected),
        repeats
    );
    eprintln!("{mode:?}: {expected} events, {repeats} duplicates over two restarts");
    if mode == SourceMode::Poll {
        assert!(
            repeats <= 2 * 50,
            "{repeats} duplicates: more than two batches in flight"
        );
    } else {
        drop_slot(&db).await;
        assert_eq!(repeats, 0, "events handed out again after a reconnect");
    }
}
