//! The relay binary under SIGTERM, and with a second relay on the same table. (SIGKILL and
//! restart runs for both capture modes in tests/logical.rs.)

mod common;

use common::pg::test_db;
use common::relay::*;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_batch_in_flight_and_exits_zero() {
    // Given a relay process relaying a stream
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut config = config_for(&db, &log);
    config.source.batch_size = 100;
    migrate(&config).await;
    create_aggregates(&db, 20).await;
    let mut relay = RelayProcess::spawn(&config, dir.path(), "first", &["run"]);
    let writers = tokio::spawn({
        let db = db.clone();
        async move { write_events(&db, 2, 1500, 20).await }
    });

    // When it gets SIGTERM mid-stream
    wait_for_records(&log, 300).await;
    relay.signal(libc::SIGTERM);

    // Then it exits 0, and after a restart everything arrives exactly once
    assert_eq!(relay.wait_exit(Duration::from_secs(30)), Some(0));
    writers.await.unwrap();
    let _restarted = RelayProcess::spawn(&config, dir.path(), "second", &["run"]);
    let logs = wait_for_events(&[&log], 3000, WAIT).await;
    assert_eq!(
        assert_in_order(&logs[0]),
        0,
        "a graceful stop must not cause duplicates"
    );
    assert_eq!(
        assert_complete(&logs[0].iter().collect::<Vec<_>>(), 3000),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_on_one_table_lose_nothing_and_keep_order_through_a_takeover() {
    // Given two relay processes on the same outbox, each with its own log
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let (log_a, log_b) = (dir.path().join("log-a"), dir.path().join("log-b"));
    let mut config_a = config_for(&db, &log_a);
    config_a.source.batch_size = 100;
    let mut config_b = config_a.clone();
    config_b.sink.log.dir = log_b.clone();
    create_aggregates(&db, 30).await;
    let a = RelayProcess::spawn(&config_a, dir.path(), "a", &["run"]);
    let b = RelayProcess::spawn(&config_b, dir.path(), "b", &["run"]);
    let writers = tokio::spawn({
        let db = db.clone();
        async move {
            // Both relays migrate at start; wait for the table before writing.
            let client = common::pg::connect(&db.url).await;
            while client
                .query_opt("SELECT to_regclass('outbox')::text", &[])
                .await
                .unwrap()
                .and_then(|row| row.get::<_, Option<String>>(0))
                .is_none()
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            write_events(&db, 4, 1000, 30).await
        }
    });

    // When the active one is SIGKILLed mid-stream
    let deadline = Instant::now() + WAIT;
    let (active, standby_log, active_log) = loop {
        if read_log(&log_a).len() >= 300 {
            break (a, log_b.clone(), log_a.clone());
        }
        if read_log(&log_b).len() >= 300 {
            break (b, log_a.clone(), log_b.clone());
        }
        assert!(Instant::now() < deadline, "neither relay delivered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let standby_had = read_log(&standby_log).len();
    active.kill();
    writers.await.unwrap();

    // Then the standby delivered nothing while the other was active, takes over, and the two
    // logs read in takeover order hold every event once, each aggregate in order
    assert_eq!(standby_had, 0, "both relays published at once");
    let logs = wait_for_events(&[&active_log, &standby_log], 4000, WAIT).await;
    let combined: Vec<_> = logs.concat();
    let repeats = assert_in_order(&combined);
    assert!(
        repeats <= 100,
        "{repeats} duplicates: more than the batch in flight"
    );
    assert_eq!(
        assert_complete(&combined.iter().collect::<Vec<_>>(), 4000),
        repeats
    );
}
