//! Several relays on one outbox: the active one SIGKILLed 5 times during a 50,000-event stream.
//! Nothing is lost, every aggregate stays in order, and the takeover time is printed.

mod common;

use chrono::{DateTime, Utc};
use common::pg::test_db;
use common::relay::*;
use outboxd::log::Record;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The newest append time in the log at `dir`.
fn last_append(dir: &std::path::Path) -> Option<DateTime<Utc>> {
    read_log(dir).last().map(|r| r.appended_at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_relays_survive_five_sigkills_of_the_active_one() {
    // Given three relay processes on one outbox, each with its own log, and 50,000 events
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&db, &dir.path().join("unused"));
    config.source.batch_size = 500;
    migrate(&config).await;
    create_aggregates(&db, 200).await;
    let logs: Vec<PathBuf> = (0..3)
        .map(|i| dir.path().join(format!("log-{i}")))
        .collect();
    let spawn = |i: usize, generation: usize| {
        let mut own = config.clone();
        own.sink.log.dir = logs[i].clone();
        RelayProcess::spawn(
            &own,
            dir.path(),
            &format!("relay-{i}-{generation}"),
            &["run"],
        )
    };
    let mut relays: Vec<Option<RelayProcess>> = (0..3).map(|i| Some(spawn(i, 0))).collect();
    let writers = tokio::spawn({
        let db = db.clone();
        async move { write_events(&db, 8, 6250, 200).await }
    });

    // When the active relay is SIGKILLed five times, each time restarted as a standby
    let mut takeovers = Vec::new();
    for round in 1..=5 {
        // Pacing, not an assertion: the active relay delivers for a while between kills
        tokio::time::sleep(Duration::from_millis(700)).await;
        // (the first relay to deliver may take longer than the pacing on a loaded machine:
        // wait for one, rather than fail)
        let deadline = Instant::now() + Duration::from_secs(30);
        let active = loop {
            let newest = (0..3)
                .filter_map(|i| last_append(&logs[i]).map(|at| (at, i)))
                .max();
            if let Some((_, i)) = newest {
                break i;
            }
            assert!(
                Instant::now() < deadline,
                "no relay delivered anything in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let killed_at = Utc::now();
        relays[active].take().unwrap().kill();
        relays[active] = Some(spawn(active, round));
        let deadline = Instant::now() + Duration::from_secs(30);
        let resumed = loop {
            let next = (0..3)
                .filter_map(|i| {
                    read_log(&logs[i])
                        .into_iter()
                        .find(|r| r.appended_at > killed_at)
                })
                .map(|r| r.appended_at)
                .min();
            if let Some(at) = next {
                break at;
            }
            assert!(
                Instant::now() < deadline,
                "no relay took over after kill {round}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        takeovers.push((resumed - killed_at).num_milliseconds());
    }
    writers.await.unwrap();

    // Then all 50,000 arrive; read in append order across the logs, each aggregate is in order
    let all = wait_for_events(
        &logs.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
        50_000,
        Duration::from_secs(180),
    )
    .await;
    let mut merged: Vec<Record> = all.into_iter().flatten().collect();
    merged.sort_by_key(|r| r.appended_at);
    let repeats = assert_in_order(&merged);
    assert_eq!(
        assert_complete(&merged.iter().collect::<Vec<_>>(), 50_000),
        repeats
    );
    assert!(
        repeats <= 5 * 500,
        "{repeats} duplicates: more than a batch per kill"
    );
    eprintln!(
        "takeover after SIGKILL (ms, kill to the next append by another relay): {takeovers:?}; \
         {repeats} duplicates"
    );
    assert!(takeovers.iter().all(|ms| *ms < 10_000), "{takeovers:?}");
}

/// Acknowledgements run on sessions other than the leader's; the fence in their statement lets
/// them mark rows only while the leader session they name holds the lock.
#[tokio::test]
async fn an_acknowledgement_lands_only_while_its_leader_session_holds_the_lock() {
    // Given one pending row, and a leader session holding the table's lock
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(&db, &dir.path().join("unused"));
    migrate(&config).await;
    create_aggregates(&db, 1).await;
    write_events(&db, 1, 1, 1).await;
    let table = outboxd::outbox::OutboxTable::new(&config.source);
    let key = table.leader_lock_key();
    let leader = common::pg::connect(&db.url).await;
    let pid: i32 = leader
        .query_one("SELECT pg_backend_pid() FROM pg_advisory_lock($1)", &[&key])
        .await
        .unwrap()
        .get(0);
    let acker = common::pg::connect(&db.url).await;
    let statement = format!("{}{}", table.mark_sent, outboxd::source::FENCE);
    let positions: Vec<i64> = acker
        .query("SELECT position FROM outbox", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();

    let mark = |pid: i32| {
        let (acker, statement, positions) = (&acker, &statement, &positions);
        async move {
            acker
                .execute(statement.as_str(), &[positions, &pid, &key])
                .await
                .unwrap()
        }
    };
    let lock = |sql: &'static str| {
        let leader = &leader;
        async move { leader.execute(sql, &[&key]).await.unwrap() }
    };

    // When an acknowledgement names another session, or the leader after it let the lock go,
    // then nothing is marked
    assert_eq!(mark(pid + 1).await, 0);
    lock("SELECT pg_advisory_unlock($1)").await;
    assert_eq!(mark(pid).await, 0);

    // and once the leader holds the lock again, its acknowledgement lands
    lock("SELECT pg_advisory_lock($1)").await;
    assert_eq!(mark(pid).await, 1);
}

/// Polls `/metrics` of the relay at `addr` until `outboxd_relay_active` is `value`.
async fn wait_active(addr: std::net::SocketAddr, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, metrics) = common::http::get(addr, "/metrics").await;
        let active = common::http::sample(&metrics, "outboxd_relay_active");
        if active == value {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "outboxd_relay_active stayed {active}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_relay_on_the_same_log_stands_by_and_takes_over_when_the_first_dies() {
    // Given an active relay writing the embedded log
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut config = config_for(&db, &log);
    config.source.batch_size = 50;
    migrate(&config).await;
    create_aggregates(&db, 20).await;
    let mut first = RelayProcess::spawn(&config, dir.path(), "first", &["run"]);
    let first_addr = first.http_addr().await;
    wait_active(first_addr, 1.0).await;

    // When a second relay starts on the same log directory
    let mut second = RelayProcess::spawn(&config, dir.path(), "second", &["run"]);
    let second_addr = second.http_addr().await;

    // Then it stands by, says so once, and /readyz and the metric tell the two apart
    second
        .wait_for_log_line(&["standing by until it stops"], Duration::from_secs(60))
        .await;
    let (status, body) = common::http::get(second_addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("role: standby\n"), "{body}");
    assert!(body.contains("sink: waiting for the log lock"), "{body}");
    wait_active(second_addr, 0.0).await;
    let (status, body) = common::http::get(first_addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("role: active\n"), "{body}");

    // And when the first is SIGKILLed while 2,000 events are being written
    let writers = tokio::spawn({
        let db = db.clone();
        async move { write_events(&db, 2, 1_000, 20).await }
    });
    wait_for_records(&log, 200).await;
    first.kill();

    // Then the second takes over and every event is in the one log once, in order
    second
        .wait_for_log_line(&["took over the embedded log"], Duration::from_secs(60))
        .await;
    writers.await.unwrap();
    let logs = wait_for_events(&[&log], 2_000, Duration::from_secs(120)).await;
    assert_eq!(assert_in_order(&logs[0]), 0, "duplicates in the log");
    assert_eq!(
        assert_complete(&logs[0].iter().collect::<Vec<_>>(), 2_000),
        0
    );
    wait_active(second_addr, 1.0).await;
    let (status, body) = common::http::get(second_addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("role: active\n"), "{body}");
    assert_eq!(
        second
            .log_text()
            .matches("standing by until it stops")
            .count(),
        1
    );
    second.kill();
}
