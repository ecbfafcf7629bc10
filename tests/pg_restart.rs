//! The relay across PostgreSQL restarts: it reconnects with backoff and resumes without loss.
//! (Its own test binary, so restarting the cluster disturbs no other test.)

mod common;

use common::pg::{Cluster, TestDb, cluster, connect, test_db};
use common::relay::*;
use outboxd::config::{Config, SourceMode};
use std::path::PathBuf;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(90);

/// Held by each test while it restarts the cluster: two tests restarting the one cluster at
/// once would trip over each other.
static RESTARTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A test database on the cluster the tests own, a log directory and a relay configuration in
/// `mode`; `None` when the tests run against a server they must not restart.
async fn restartable(
    mode: SourceMode,
) -> Option<(TestDb, &'static Cluster, tempfile::TempDir, PathBuf, Config)> {
    let db = test_db().await;
    let Some(cluster) = cluster() else {
        eprintln!("OUTBOXD_TEST_DATABASE_URL is set: not restarting a server we do not own");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let config = config_in(mode, &db, &log);
    Some((db, cluster, dir, log, config))
}

/// Both modes in one test, one after the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_resumes_after_fast_and_immediate_restarts_of_postgres_in_both_modes() {
    let _alone = RESTARTS.lock().await;
    relay_resumes_after_fast_and_immediate_restarts(SourceMode::Poll).await;
    relay_resumes_after_fast_and_immediate_restarts(SourceMode::Logical).await;
}

async fn relay_resumes_after_fast_and_immediate_restarts(mode: SourceMode) {
    // Given a relay that has started delivering a backlog
    let Some((db, cluster, _dir, log, mut config)) = restartable(mode).await else {
        return;
    };
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

/// A fast shutdown lets the walsender go only once the client confirmed everything it read,
/// and the server reads past the last commit it sends: unpublished writes, the heartbeat's own
/// record. An idle logical relay must confirm that too (the server's keepalives say how far it
/// read), or PostgreSQL never stops while the relay runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_logical_relay_does_not_hold_up_a_fast_shutdown() {
    let _alone = RESTARTS.lock().await;
    // Given a logical relay that delivered everything and is idle
    let Some((db, cluster, _dir, log, mut config)) = restartable(SourceMode::Logical).await else {
        return;
    };
    // No heartbeat during the test: only the server's keepalives can move the slot.
    config.source.logical.heartbeat_interval_ms = 600_000;
    migrate(&config).await;
    create_aggregates(&db, 4).await;
    write_events(&db, 1, 20, 4).await;
    let relay = InProcessRelay::start(&config).await;
    wait_for_events(&[&log], 20, WAIT).await;

    // and the last WAL the server read is a commit the stream does not carry
    let client = connect(&db.url).await;
    client
        .batch_execute("CREATE TABLE unpublished (x int); INSERT INTO unpublished VALUES (1)")
        .await
        .unwrap();
    drop(client);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // When PostgreSQL is stopped fast, it stops (within 20 s, not when pg_ctl gives up)
    let restarting = tokio::task::spawn_blocking(move || {
        cluster.restart_within("fast", Duration::from_secs(20))
    });
    restarting
        .await
        .expect("the fast shutdown finished while the relay ran");

    // and the relay carries on after the restart
    write_events(&db, 1, 20, 4).await;
    let logs = wait_for_events(&[&log], 40, WAIT).await;
    relay.stop().await;
    drop_slot(&db).await;
    assert_eq!(assert_complete(&logs[0].iter().collect::<Vec<_>>(), 40), 0);
}
