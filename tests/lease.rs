//! A paused leader (SIGSTOP: a long stall, a frozen VM) keeps its PostgreSQL session and so its
//! lock. With the leader's lease (issue #15), a standby deposes it once the lease expires, and
//! the old leader, resumed, publishes nothing the new one delivered.

mod common;

use common::pg::{connect, test_db};
use common::relay::*;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

/// Inserts `count` events of aggregate `aggregate`.
async fn insert(client: &tokio_postgres::Client, aggregate: &str, count: i32) {
    client
        .execute(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
             SELECT 't', $1, 'Step', jsonb_build_object('seq', g) FROM generate_series(1, $2) g",
            &[&aggregate, &count],
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_deposes_a_paused_leader_which_publishes_nothing_stale_when_it_resumes() {
    // Given an active relay A and a standby B (each with its own log), a 2-second lease
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&db, &dir.path().join("unused"));
    config.source.leader_lease_ms = 2000;
    migrate(&config).await;
    let (log_a, log_b) = (dir.path().join("log-a"), dir.path().join("log-b"));
    let spawn = |log: &std::path::Path, name: &str| {
        let mut own = config.clone();
        own.sink.log.dir = log.to_path_buf();
        RelayProcess::spawn(&own, dir.path(), name, &["run"])
    };
    let mut a = spawn(&log_a, "a");
    let client = connect(&db.url).await;
    insert(&client, "before", 1).await;
    wait_for_events(&[&log_a], 1, WAIT).await;
    let mut b = spawn(&log_b, "b");
    b.wait_for_log_line(&["standing by"], WAIT).await;

    // When A is paused and 100 events are written
    a.signal(libc::SIGSTOP);
    let paused = Instant::now();
    insert(&client, "during", 100).await;

    // Then B deposes A once its lease expired and delivers them
    wait_for_events(&[&log_b], 100, WAIT).await;
    let takeover = paused.elapsed();
    eprintln!("takeover from a paused leader: {} ms", takeover.as_millis());

    // And when A resumes and more events are written, B delivers those too, and A, deposed,
    // publishes nothing: its log still holds only what it delivered before the pause
    a.signal(libc::SIGCONT);
    insert(&client, "after", 50).await;
    wait_for_events(&[&log_b], 150, WAIT).await;
    a.wait_for_log_line(&["standing by"], WAIT).await;
    let stale: Vec<String> = read_log(&log_a)
        .iter()
        .filter(|r| r.event.key != "before")
        .map(|r| r.event.key.clone())
        .collect();
    assert!(stale.is_empty(), "the deposed leader published {stale:?}");
    assert!(takeover < Duration::from_secs(30), "{takeover:?}");
    drop(b);
    drop(a);
}
