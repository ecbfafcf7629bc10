//! The relay SIGKILLed 20 times during one 20,000-event stream: nothing lost, every aggregate in
//! order, duplicates bounded by the batches in flight at each kill.

mod common;

use common::pg::test_db;
use common::relay::*;
use outboxd::config::SourceMode;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_mode_twenty_sigkills_during_a_stream_lose_nothing() {
    twenty_sigkills_during_a_stream_lose_nothing(SourceMode::Poll).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_mode_twenty_sigkills_during_a_stream_lose_nothing() {
    twenty_sigkills_during_a_stream_lose_nothing(SourceMode::Logical).await;
}

async fn twenty_sigkills_during_a_stream_lose_nothing(mode: SourceMode) {
    // Given writers producing 20,000 events and a relay process
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut config = config_in(mode, &db, &log);
    config.source.batch_size = 250;
    migrate(&config).await;
    create_aggregates(&db, 100).await;
    let writers = tokio::spawn({
        let db = db.clone();
        async move { write_events(&db, 8, 2500, 100).await }
    });

    // When the relay is SIGKILLed 20 times, each time after it delivered a little more
    let mut kills = 0;
    let mut seen = 0;
    while kills < 20 {
        let relay = RelayProcess::spawn(&config, dir.path(), &format!("run-{kills}"), &["run"]);
        let deadline = Instant::now() + Duration::from_secs(60);
        let target = seen + 1 + fastrand::usize(0..400);
        loop {
            let now = read_log(&log).len();
            if now >= target || Instant::now() > deadline {
                seen = now;
                break;
            }
            tokio::time::sleep(Duration::from_millis(2 + fastrand::u64(0..10))).await;
        }
        relay.kill();
        kills += 1;
    }
    writers.await.unwrap();
    let last = RelayProcess::spawn(&config, dir.path(), "final", &["run"]);

    // Then all 20,000 arrive, in order per aggregate, duplicates at most a batch per kill
    let logs = wait_for_events(&[&log], 20_000, Duration::from_secs(120)).await;
    let repeats = assert_in_order(&logs[0]);
    assert_eq!(
        assert_complete(&logs[0].iter().collect::<Vec<_>>(), 20_000),
        repeats
    );
    // The log reports what it holds at start-up, so a kill between append and ack repeats nothing.
    eprintln!(
        "{mode:?}, 20 kills: {} records, {repeats} duplicates",
        logs[0].len()
    );
    assert_eq!(repeats, 0, "{repeats} duplicates after 20 kills");
    last.kill();
    if mode == SourceMode::Logical {
        drop_slot(&db).await;
    }
}
