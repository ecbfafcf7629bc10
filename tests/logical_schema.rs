//! Logical mode against changes to the schema, the publication and the slot, on the throwaway
//! cluster (`wal_level = logical`): none of them may make an event vanish in silence. Each test
//! runs the real binary, changes something under it, and checks that it stops with a message
//! that names the problem and the fix, that nothing moved past the event meanwhile, and that
//! the event arrives once the operator did what the message says.

mod common;

use common::pg::{TestDb, connect, test_db};
use common::relay::*;
use outboxd::config::{Config, SourceMode};
use std::path::Path;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

/// Inserts one event of aggregate `aggregate` in its own transaction.
async fn insert(db: &TestDb, aggregate: &str) {
    connect(&db.url)
        .await
        .execute(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
             VALUES ('order', $1, 'E', '{}')",
            &[&aggregate],
        )
        .await
        .unwrap();
}

/// The aggregate ids in the log, in log order.
fn aggregates(log: &Path) -> Vec<String> {
    read_log(log).into_iter().map(|r| r.event.key).collect()
}

/// The server's current WAL position.
async fn current_lsn(db: &TestDb) -> String {
    connect(&db.url)
        .await
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0)
}

/// The slot's confirmed position minus `lsn`, in bytes; `None` without a slot.
async fn slot_past(db: &TestDb, lsn: &str) -> Option<i64> {
    connect(&db.url)
        .await
        .query_opt(
            "SELECT pg_wal_lsn_diff(confirmed_flush_lsn, $2::text::pg_lsn)::int8 \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&db.name, &lsn],
        )
        .await
        .unwrap()
        .map(|row| row.get(0))
}

/// Runs the relay binary until it exits on its own; returns its log. Panics if it keeps
/// running (the old behaviour of every test here) or exits cleanly.
fn run_until_it_stops(config: &Config, dir: &Path, name: &str) -> String {
    let mut relay = RelayProcess::spawn(config, dir, name, &["run"]);
    let code = relay.wait_exit(WAIT);
    let log = relay.log_text();
    assert_eq!(code, Some(1), "expected a failure exit:\n{log}");
    log
}

/// Stops a relay with SIGTERM and waits for it.
fn stop(mut relay: RelayProcess) {
    relay.signal(libc::SIGTERM);
    relay.wait_exit(WAIT);
}

/// A migrated logical-mode outbox with its log dir.
async fn logical_outbox() -> (TestDb, tempfile::TempDir, Config) {
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(SourceMode::Logical, &db, &dir.path().join("log"));
    migrate(&config).await;
    (db, dir, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_renamed_column_stops_before_the_row_which_arrives_after_the_fix() {
    // Given a relay streaming in logical mode
    let (db, dir, config) = logical_outbox().await;
    let log = config.sink.log.dir.clone();
    let relay = RelayProcess::spawn(&config, dir.path(), "first", &["run"]);
    insert(&db, "before").await;
    wait_for_events(&[&log], 1, WAIT).await;

    // When the aggregate id column is renamed and a row is written
    let client = connect(&db.url).await;
    client
        .batch_execute(
            "ALTER TABLE outbox RENAME COLUMN aggregateid TO agg_id; \
             INSERT INTO outbox (aggregatetype, agg_id, type, payload) \
             VALUES ('order', 'renamed', 'E', '{}')",
        )
        .await
        .unwrap();
    let after_row = current_lsn(&db).await;

    // Then the relay stops with the column, its key and the fix, the slot is not past the row,
    // and nothing was dead-lettered in its place
    let mut relay = relay;
    assert_eq!(relay.wait_exit(WAIT), Some(1), "{}", relay.log_text());
    let text = relay.log_text();
    assert!(
        text.contains("has no column \"aggregateid\" (source.columns.aggregate_id)"),
        "{text}"
    );
    assert!(text.contains("stopping before that row"), "{text}");
    assert!(text.contains("set source.columns.aggregate_id"), "{text}");
    assert!(slot_past(&db, &after_row).await.unwrap() < 0);
    assert_eq!(aggregates(&log), ["before"]);

    // When the operator points the config at the new name, then the row arrives
    let mut renamed = config.clone();
    renamed.source.columns.aggregate_id = "agg_id".into();
    let relay = RelayProcess::spawn(&renamed, dir.path(), "renamed", &["run"]);
    wait_for_events_or_explain(&[&log], 2, WAIT, || relay.log_text()).await;
    assert_eq!(aggregates(&log), ["before", "renamed"]);

    // And when the column is renamed back and another row written, the same happens the
    // other way round
    client
        .batch_execute(
            "ALTER TABLE outbox RENAME COLUMN agg_id TO aggregateid; \
             INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
             VALUES ('order', 'back', 'E', '{}')",
        )
        .await
        .unwrap();
    let mut relay = relay;
    assert_eq!(relay.wait_exit(WAIT), Some(1), "{}", relay.log_text());
    assert!(
        relay
            .log_text()
            .contains("has no column \"agg_id\" (source.columns.aggregate_id)"),
        "{}",
        relay.log_text()
    );
    let relay = RelayProcess::spawn(&config, dir.path(), "back", &["run"]);
    wait_for_events_or_explain(&[&log], 3, WAIT, || relay.log_text()).await;
    assert_eq!(aggregates(&log), ["before", "renamed", "back"]);
    stop(relay);
    drop_slot(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_outbox_dropped_from_the_publication_stops_the_relay_and_its_restarts() {
    // Given a relay streaming in logical mode
    let (db, dir, config) = logical_outbox().await;
    let log = config.sink.log.dir.clone();
    let mut relay = RelayProcess::spawn(&config, dir.path(), "first", &["run"]);
    insert(&db, "before").await;
    wait_for_events(&[&log], 1, WAIT).await;

    // When the outbox is dropped from the publication and a row written
    let publication = &config.source.logical.publication;
    connect(&db.url)
        .await
        .batch_execute(&format!(
            "ALTER PUBLICATION {publication} DROP TABLE outbox"
        ))
        .await
        .unwrap();
    insert(&db, "unpublished").await;

    // Then the relay says so loudly and stops, with the fix
    assert_eq!(relay.wait_exit(WAIT), Some(1), "{}", relay.log_text());
    let text = relay.log_text();
    assert!(text.contains("events are NOT being captured"), "{text}");
    let fix = format!("ALTER PUBLICATION \"{publication}\" ADD TABLE \"public\".\"outbox\"");
    assert!(text.contains(&fix), "{text}");
    // And a restart (auto_migrate on) neither re-adds the table nor goes on without it
    let text = run_until_it_stops(&config, dir.path(), "restart");
    assert!(text.contains("does not include"), "{text}");
    assert_eq!(aggregates(&log), ["before"]);

    // When the operator adds it back, then later events flow again
    connect(&db.url)
        .await
        .batch_execute(&format!("ALTER PUBLICATION {publication} ADD TABLE outbox"))
        .await
        .unwrap();
    let relay = RelayProcess::spawn(&config, dir.path(), "fixed", &["run"]);
    insert(&db, "after").await;
    wait_for_events(&[&log], 2, WAIT).await;
    assert_eq!(aggregates(&log), ["before", "after"]);
    stop(relay);
    drop_slot(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_dropped_slot_is_created_again_only_with_the_opt_in() {
    // Given a relay that streamed from its slot and stopped
    let (db, dir, config) = logical_outbox().await;
    let log = config.sink.log.dir.clone();
    let relay = RelayProcess::spawn(&config, dir.path(), "first", &["run"]);
    insert(&db, "before").await;
    wait_for_events(&[&log], 1, WAIT).await;
    stop(relay);

    // When the slot is dropped, an event written, and the relay started (auto_migrate on)
    drop_slot(&db).await;
    insert(&db, "lost").await;
    let text = run_until_it_stops(&config, dir.path(), "second");

    // Then it refuses, names the opt-in, and creates no slot
    assert!(text.contains("existed before"), "{text}");
    assert!(
        text.contains("set source.logical.recreate_lost_slot = true once"),
        "{text}"
    );
    assert!(slot_past(&db, "0/0").await.is_none(), "a slot was created");

    // When the operator opts in, then the slot is created with a loud warning, and new events
    // flow
    let mut opted = config.clone();
    opted.source.logical.recreate_lost_slot = true;
    let mut relay = RelayProcess::spawn(&opted, dir.path(), "opted", &["run"]);
    relay
        .wait_for_log_line(&["ERROR", "may have been LOST"], WAIT)
        .await;
    relay
        .wait_for_log_line(&["replication stream open"], WAIT)
        .await;
    insert(&db, "after").await;
    wait_for_events(&[&log], 2, WAIT).await;
    assert_eq!(aggregates(&log), ["before", "after"]);
    stop(relay);
    drop_slot(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_publication_dropped_and_recreated_is_explained_not_recreated() {
    // Given a relay that streamed from its slot and stopped
    let (db, dir, config) = logical_outbox().await;
    let log = config.sink.log.dir.clone();
    let publication = config.source.logical.publication.clone();
    let relay = RelayProcess::spawn(&config, dir.path(), "first", &["run"]);
    insert(&db, "before").await;
    wait_for_events(&[&log], 1, WAIT).await;
    stop(relay);
    let client = connect(&db.url).await;

    // When the publication is dropped and the relay started (auto_migrate on)
    client
        .batch_execute(&format!("DROP PUBLICATION {publication}"))
        .await
        .unwrap();
    insert(&db, "gap").await;
    let text = run_until_it_stops(&config, dir.path(), "dropped");

    // Then it does not re-create the publication behind the user's back
    assert!(
        text.contains("does not exist but replication slot"),
        "{text}"
    );
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
            &[&publication],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!exists, "outboxd re-created the publication");

    // When the user re-creates it and starts the relay again
    client
        .batch_execute(&format!(
            "CREATE PUBLICATION {publication} FOR TABLE outbox WITH (publish = 'insert')"
        ))
        .await
        .unwrap();
    insert(&db, "gap2").await;
    let text = run_until_it_stops(&config, dir.path(), "recreated");

    // Then it says exactly what happened and what each way out loses
    assert!(
        text.contains("dropped and re-created after the slot's position"),
        "{text}"
    );
    assert!(text.contains("pg_replication_slot_advance"), "{text}");
    assert!(
        text.contains("source.logical.recreate_lost_slot = true"),
        "{text}"
    );
    assert!(text.contains("are NOT delivered"), "{text}");

    // When the operator advances the slot as told, then new events flow
    client
        .execute(
            "SELECT pg_replication_slot_advance($1, pg_current_wal_lsn())",
            &[&config.source.logical.slot],
        )
        .await
        .unwrap();
    let relay = RelayProcess::spawn(&config, dir.path(), "advanced", &["run"]);
    insert(&db, "after").await;
    wait_for_events(&[&log], 2, WAIT).await;
    assert_eq!(aggregates(&log), ["before", "after"]);
    stop(relay);
    drop_slot(&db).await;
}

/// A range-partitioned outbox, created by the application with outboxd's columns (an identity
/// column cannot be added to a table that has partitions, and a unique index must include the
/// partition key, so it is partitioned by position).
const PARTITIONED: &str = "
    CREATE TABLE outbox (
        id uuid NOT NULL DEFAULT gen_random_uuid(),
        aggregatetype text NOT NULL, aggregateid text NOT NULL, type text NOT NULL,
        payload jsonb, headers jsonb, created_at timestamptz NOT NULL DEFAULT now(),
        position bigint GENERATED BY DEFAULT AS IDENTITY,
        PRIMARY KEY (id, position)
    ) PARTITION BY RANGE (position);
    CREATE TABLE outbox_low PARTITION OF outbox FOR VALUES FROM (MINVALUE) TO (3);
    CREATE TABLE outbox_high PARTITION OF outbox FOR VALUES FROM (3) TO (MAXVALUE);";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_range_partitioned_outbox_is_published_via_its_root() {
    // Given a range-partitioned outbox, migrated for logical mode
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let config = config_in(SourceMode::Logical, &db, &log);
    connect(&db.url)
        .await
        .batch_execute(PARTITIONED)
        .await
        .unwrap();
    migrate(&config).await;
    let relay = InProcessRelay::start(&config).await;

    // When rows land in both partitions
    for aggregate in ["a", "b", "c", "d"] {
        insert(&db, aggregate).await;
    }

    // Then every one arrives
    wait_for_events(&[&log], 4, WAIT).await;
    assert_eq!(aggregates(&log), ["a", "b", "c", "d"]);
    relay.stop().await;
    drop_slot(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_partitioned_outbox_under_a_publication_by_partition_names_the_fix() {
    // Given a range-partitioned outbox and a publication made without
    // publish_via_partition_root
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(SourceMode::Logical, &db, &dir.path().join("log"));
    let publication = &config.source.logical.publication;
    connect(&db.url)
        .await
        .batch_execute(&format!(
            "{PARTITIONED} CREATE PUBLICATION {publication} FOR TABLE outbox"
        ))
        .await
        .unwrap();

    // When outboxd prepares logical mode, then it names the fix that works
    let session = outboxd::pg::connect(&config.source).await.unwrap();
    let err = outboxd::source::logical::slot::prepare(&session.client, &config.source)
        .await
        .unwrap_err()
        .to_string();
    let fix =
        format!("ALTER PUBLICATION \"{publication}\" SET (publish_via_partition_root = true)");
    assert!(err.contains(&fix), "{err}");
    drop_slot(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_standby_says_the_slot_is_busy_once_at_info_then_stays_quiet() {
    // Given a relay streaming from the slot
    let (db, dir, config) = logical_outbox().await;
    let log = config.sink.log.dir.clone();
    let first = RelayProcess::spawn(&config, dir.path(), "first", &["run"]);
    insert(&db, "one").await;
    wait_for_events(&[&log], 1, WAIT).await;

    // When a second relay starts on the same slot (its own log dir) and retries for a while
    let mut second_config = config.clone();
    second_config.sink.log.dir = dir.path().join("log2");
    let mut second = RelayProcess::spawn(&second_config, dir.path(), "second", &["run"]);
    second
        .wait_for_log_line(&["INFO", "replication slot is active for PID"], WAIT)
        .await;
    // Its retries are only visible over time: with retry_max_ms = 500 this spans several.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Then it said so once, at INFO, and logged no error
    let text = second.log_text();
    assert_eq!(
        text.matches("replication slot is active for PID").count(),
        1,
        "{text}"
    );
    assert!(!text.contains("ERROR"), "{text}");
    first.kill();
    second.kill();
    drop_slot(&db).await;
}
