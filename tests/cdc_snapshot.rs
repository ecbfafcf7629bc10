//! Snapshots and backfills of captured tables (issue #22): the initial snapshot of a table that
//! writers keep changing while the relay is SIGKILLed, backfills asked for with `outboxd
//! backfill` (a `--where` subset, `--cancel`), composite, text and hostile keys, and a table
//! without a primary key.
//!
//! Applying the log's events per key in order must give exactly the table: snapshot rows
//! (`"op": "r"`) set a key's row like a create, and no key may move backwards (its `version`
//! never decreases, and nothing follows its delete: writers never insert a deleted key again).

mod common;

use common::pg::{TestDb, connect, test_db};
use common::relay::*;
use outboxd::config::{Config, SnapshotMode, SourceMode};
use outboxd::log::Record;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

/// Rows of the big table.
const ROWS: i64 = 200_000;
/// Rows per snapshot chunk in the crash test.
const CHUNK: usize = 10_000;

/// A cdc configuration capturing `tables`, with the snapshot records created.
async fn snapshot_config(db: &TestDb, log: &Path, tables: &[&str]) -> Config {
    let mut config = config_in(SourceMode::Cdc, db, log);
    config.source.cdc.tables = tables.iter().map(|t| t.to_string()).collect();
    migrate(&config).await;
    let client = connect(&db.url).await;
    outboxd::source::logical::snapshot::store::create_table(&client, "public")
        .await
        .expect("snapshot records");
    config
}

/// The payload of a record as JSON.
fn payload(record: &Record) -> Value {
    serde_json::from_str(record.event.payload.get()).unwrap()
}

/// Applies the events per key in order: (topic, key) -> the row's `version` (or the whole row
/// when it has none). Panics when a key's version goes backwards or an event follows its delete.
fn apply(records: &[Record]) -> HashMap<(String, String), Value> {
    let mut rows: HashMap<(String, String), Value> = HashMap::new();
    let mut deleted = HashSet::new();
    for record in records {
        let payload = payload(record);
        let key: Value = serde_json::from_str(&record.event.key).unwrap();
        let at = (record.topic.clone(), key.to_string());
        assert!(
            !deleted.contains(&at),
            "{at:?} changed after its delete: {payload}"
        );
        match payload["op"].as_str().unwrap() {
            "c" | "u" | "r" => {
                let after = &payload["after"];
                let row = after
                    .get("version")
                    .cloned()
                    .unwrap_or_else(|| after.clone());
                if let (Some(old), Some(new)) =
                    (rows.get(&at).and_then(Value::as_i64), row.as_i64())
                {
                    assert!(new >= old, "{at:?} went from version {old} to {new}");
                }
                rows.insert(at, row);
            }
            "d" => {
                rows.remove(&at);
                deleted.insert(at);
            }
            other => panic!("unexpected op {other}"),
        }
    }
    rows
}

/// The state and detail of `table`'s snapshot record.
async fn job_state(db: &TestDb, table: &str) -> Option<(String, Option<String>)> {
    connect(&db.url)
        .await
        .query_opt(
            "SELECT state, detail FROM outboxd_snapshots WHERE table_name = $1",
            &[&table],
        )
        .await
        .unwrap()
        .map(|row| (row.get(0), row.get(1)))
}

/// Rows `table`'s snapshot record says were delivered (0 before it starts).
async fn rows_done(db: &TestDb, table: &str) -> i64 {
    connect(&db.url)
        .await
        .query_opt(
            "SELECT rows_done FROM outboxd_snapshots WHERE table_name = $1",
            &[&table],
        )
        .await
        .unwrap()
        .map_or(0, |row| row.get(0))
}

/// Waits until `table`'s snapshot record is in `state`.
async fn wait_state(db: &TestDb, table: &str, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let now = job_state(db, table).await;
        if now.as_ref().is_some_and(|(s, _)| s == state) {
            return;
        }
        assert!(Instant::now() < deadline, "{table} never {state}: {now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Snapshot rows (`"op": "r"`) in the log.
fn snapshot_rows(records: &[Record]) -> usize {
    records
        .iter()
        .filter(|r| r.event.op == outboxd::event::Operation::Read)
        .count()
}

/// One writer: updates (bumping `version`) and deletes random rows among the big table's first
/// `keys` until `stop`, never inserting a key again, pausing `pace` after each change.
async fn writer(
    url: String,
    w: u64,
    stop: tokio_util::sync::CancellationToken,
    keys: i64,
    pace: Duration,
) -> usize {
    let client = connect(&url).await;
    let mut rng = fastrand::Rng::with_seed(w);
    let mut changes = 0;
    while !stop.is_cancelled() {
        let id = rng.i64(1..=keys);
        let sql = match rng.u8(0..10) {
            0..=6 => {
                "UPDATE big SET version = version + 1, name = md5(random()::text) WHERE id = $1"
            }
            _ => "DELETE FROM big WHERE id = $1",
        };
        client.execute(sql, &[&id]).await.expect("write");
        changes += 1;
        tokio::time::sleep(pace).await;
    }
    changes
}

/// Creates the big table with `rows` rows.
async fn create_big(db: &TestDb, rows: i64) {
    connect(&db.url)
        .await
        .batch_execute(&format!(
            "CREATE TABLE big (id bigint PRIMARY KEY, version int NOT NULL, name text); \
             INSERT INTO big SELECT i, 0, md5(i::text) FROM generate_series(1, {rows}) i; \
             ANALYZE big"
        ))
        .await
        .unwrap();
}

/// Asserts that the log's events applied per key in order give the big table's contents.
async fn assert_the_log_is_the_table(records: &[Record], db: &TestDb) {
    let replayed = apply(records);
    let expected = big_contents(db).await;
    assert_eq!(replayed.len(), expected.len(), "rows");
    for (at, version) in &expected {
        assert_eq!(replayed.get(at), Some(version), "{at:?}");
    }
}

/// The big table's rows as (topic, key) -> version.
async fn big_contents(db: &TestDb) -> HashMap<(String, String), Value> {
    let rows = connect(&db.url)
        .await
        .query("SELECT id, version FROM big", &[])
        .await
        .unwrap();
    rows.iter()
        .map(|row| {
            let (id, version): (i64, i32) = (row.get(0), row.get(1));
            let key = serde_json::json!({ "id": id }).to_string();
            (("public.big".to_string(), key), Value::from(version))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_initial_snapshot_under_four_writers_and_three_sigkills_reproduces_the_table() {
    // Given a 200,000-row table and a relay process that snapshots it in 10,000-row chunks
    let db = test_db().await;
    create_big(&db, ROWS).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut config = snapshot_config(&db, &log, &["public.big"]).await;
    config.source.cdc.snapshot_chunk_rows = outboxd::config::ChunkRows(CHUNK);
    config.source.batch_size = 1000;
    let mut relay = RelayProcess::spawn(&config, dir.path(), "run-0", &["run"]);

    // When 4 writers update and delete random rows the whole time, and the relay is SIGKILLed
    // three times during the snapshot
    let started = Instant::now();
    let stop = tokio_util::sync::CancellationToken::new();
    let writers: Vec<_> = (0..4)
        // Paced (about 100 changes a second each), so a debug build's relay has room for the
        // snapshot beside the stream.
        .map(|w| {
            let pace = Duration::from_millis(10);
            tokio::spawn(writer(db.url.clone(), w, stop.clone(), ROWS, pace))
        })
        .collect();
    for (kill, at) in [30_000, 80_000, 130_000].into_iter().enumerate() {
        // The relay's own record of delivered rows says when (reading the log is slower).
        let deadline = Instant::now() + Duration::from_secs(300);
        let done = loop {
            let done = rows_done(&db, "big").await;
            if done >= at {
                break done;
            }
            assert!(
                Instant::now() < deadline,
                "kill {kill}: only {done} snapshot rows"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        relay.kill();
        let state = job_state(&db, "big").await;
        assert_eq!(
            state.map(|(s, _)| s).as_deref(),
            Some("running"),
            "killed mid-snapshot"
        );
        eprintln!(
            "kill {kill} at {done} recorded snapshot rows, {:?}",
            started.elapsed()
        );
        relay = RelayProcess::spawn(&config, dir.path(), &format!("run-{}", kill + 1), &["run"]);
    }
    wait_state(&db, "big", "done").await;
    eprintln!("snapshot done after {:?}", started.elapsed());
    stop.cancel();
    let mut changes = 0;
    for writer in writers {
        changes += writer.await.expect("writer");
    }
    connect(&db.url)
        .await
        .batch_execute("INSERT INTO big VALUES (-1, 0, 'the end')")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !read_log(&log).iter().any(|r| r.event.key == r#"{"id":-1}"#) {
        if Instant::now() > deadline {
            let text = relay.log_text();
            panic!(
                "the last change never arrived; relay log:\n{}",
                &text[text.len().saturating_sub(5000)..]
            );
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    relay.kill();
    eprintln!("stream caught up after {:?}", started.elapsed());

    // Then the log applied per key is the table, and the snapshot delivered each row about once
    let records = read_log(&log);
    let delivered = snapshot_rows(&records);
    eprintln!(
        "{changes} changes; {} records, {delivered} snapshot rows",
        records.len()
    );
    assert!(
        delivered <= ROWS as usize + 3 * CHUNK,
        "{delivered} snapshot rows for {ROWS}"
    );
    let last = records
        .iter()
        .filter(|r| payload(r)["source"]["snapshot"] == "last")
        .count();
    assert!(last > 0, "no row of the final chunk says \"last\"");
    assert_the_log_is_the_table(&records, &db).await;
    drop_slot(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunks_answered_after_the_stream_passed_both_watermarks_still_reproduce_the_table() {
    // Given a relay whose chunk reader answers only 300 ms after it wrote each chunk's high
    // watermark (the test lever), so the stream decodes the low and the high watermark before
    // the chunk is in and must wait for it there
    let repeats = small_snapshot_under_writers(300, false).await;
    assert_eq!(
        repeats, 0,
        "nothing was lost, so no chunk is delivered twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_whose_database_sessions_are_terminated_again_and_again_reproduces_the_table() {
    // Given a relay whose chunk reader answers 100 ms after each high watermark, and whose
    // database sessions (the stream's, the reader's, the ordinary one) are all terminated every
    // 400 ms: mid-read, while the stream waits for a chunk, while chunks wait for the sink
    let repeats = small_snapshot_under_writers(100, true).await;
    eprintln!("{repeats} snapshot rows delivered again");
}

/// The relay's sessions on the test database other than its replication stream.
async fn ordinary_sessions(admin: &tokio_postgres::Client) -> i64 {
    let sessions = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                    AND application_name = 'outboxd' AND backend_type = 'client backend'";
    admin.query_one(sessions, &[]).await.unwrap().get(0)
}

/// Snapshots a 20,000-row table in 1,000-row chunks while 4 writers update and delete rows,
/// the reader answering `delay_ms` after each high watermark, and with `terminate` the relay's
/// database sessions terminated every 400 ms until the snapshot is done. Asserts that the log
/// applied per key is the table and that a lost stream repeated at most a chunk per
/// termination; returns the snapshot rows delivered beyond 20,000.
async fn small_snapshot_under_writers(delay_ms: u64, terminate: bool) -> usize {
    let db = test_db().await;
    create_big(&db, 20_000).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut config = snapshot_config(&db, &log, &["public.big"]).await;
    config.source.cdc.snapshot_chunk_rows = outboxd::config::ChunkRows(1_000);
    config.relay.retry_max_ms = 200;
    let delay = delay_ms.to_string();
    let delay = [("OUTBOXD_TEST_SNAPSHOT_ANSWER_DELAY_MS", delay.as_str())];
    let relay = RelayProcess::spawn_with_env(&config, dir.path(), "run", &["run"], &delay);

    // When 4 writers update and delete rows of the table the whole time
    let stop = tokio_util::sync::CancellationToken::new();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let pace = Duration::from_millis(1);
            tokio::spawn(writer(db.url.clone(), w, stop.clone(), 20_000, pace))
        })
        .collect();
    let mut terminations = 0;
    let admin = connect(&db.url).await;
    // Start-up is left alone: a relay that cannot start exits (a supervisor restarts it).
    wait_state(&db, "big", "running").await;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut during = 0;
    while job_state(&db, "big")
        .await
        .is_none_or(|(state, _)| state != "done")
    {
        during = during.max(ordinary_sessions(&admin).await);
        assert!(Instant::now() < deadline, "the snapshot never ended");
        if terminate {
            let killed: i64 = admin
                .query_one(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                     WHERE datname = current_database() AND application_name = 'outboxd'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            terminations += usize::from(killed > 0);
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    eprintln!("{terminations} terminations during the snapshot");
    if !terminate {
        // The chunk reader's session, open while the snapshot ran, closes once none is left
        let deadline = Instant::now() + Duration::from_secs(10);
        while ordinary_sessions(&admin).await >= during {
            assert!(
                Instant::now() < deadline,
                "the chunk reader's session stays open"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    stop.cancel();
    for writer in writers {
        writer.await.expect("writer");
    }
    admin
        .batch_execute("INSERT INTO big VALUES (-1, 0, 'the end')")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !read_log(&log).iter().any(|r| r.event.key == r#"{"id":-1}"#) {
        assert!(Instant::now() < deadline, "the last change never arrived");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    relay.kill();

    // Then the log applied per key is the table, and each lost stream repeated at most the
    // chunks it had in flight
    let records = read_log(&log);
    let delivered = snapshot_rows(&records);
    assert!(
        delivered <= 20_000 + terminations * 1_000,
        "{delivered} snapshot rows after {terminations} terminations"
    );
    assert_the_log_is_the_table(&records, &db).await;
    drop_slot(&db).await;
    delivered.saturating_sub(20_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_delivers_exactly_the_rows_its_condition_selects_and_cancel_stops_one() {
    // Given a captured table, no initial snapshot, and a running relay
    let db = test_db().await;
    connect(&db.url)
        .await
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, version int NOT NULL DEFAULT 0); \
             INSERT INTO items SELECT i FROM generate_series(1, 20000) i",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut config = snapshot_config(&db, &log, &["public.items"]).await;
    config.source.cdc.snapshot = SnapshotMode::Never;
    config.source.cdc.snapshot_chunk_rows = outboxd::config::ChunkRows(100);
    let path = write_config(&config, dir.path(), "relay");
    let relay = InProcessRelay::start(&config).await;

    // When a backfill of the rows whose id is a multiple of 7 is asked for (and followed)
    let (code, stdout, stderr) = run_cli(
        &path,
        &["backfill", "public.items", "--where", "id % 7 = 0"],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("items backfill where id % 7 = 0: done"),
        "{stdout}"
    );

    // Then exactly those rows arrived, once each
    let records = read_log(&log);
    let mut keys: Vec<i64> = records
        .iter()
        .map(|r| {
            serde_json::from_str::<Value>(&r.event.key).unwrap()["id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    keys.sort();
    let expected: Vec<i64> = (1..=20000).filter(|i| i % 7 == 0).collect();
    assert_eq!(keys, expected);

    // When an unsafe condition is given, then it is refused before anything is recorded
    let (code, _, stderr) = run_cli(&path, &["backfill", "public.items", "--where", "true; --"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("may not contain ';'"), "{stderr}");

    // When a whole-table backfill is asked for and cancelled while it runs
    let before = read_log(&log).len();
    let (code, stdout, stderr) = run_cli(&path, &["backfill", "public.items", "--detach"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    wait_state(&db, "items", "running").await;
    let (code, stdout, stderr) = run_cli(&path, &["backfill", "--cancel", "public.items"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let (code, status, _) = run_cli(&path, &["backfill", "--status"]);
    assert_eq!(code, 0);
    assert!(
        status.contains("public.items backfill: cancelled"),
        "{status}"
    );

    // Then it stops short of the table, and the stream goes on
    connect(&db.url)
        .await
        .batch_execute("INSERT INTO items VALUES (-1)")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !read_log(&log).iter().any(|r| r.event.key == r#"{"id":-1}"#) {
        assert!(Instant::now() < deadline, "the stream stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let backfilled = snapshot_rows(&read_log(&log)) - snapshot_rows(&records);
    assert!(
        backfilled < 20000,
        "the cancelled backfill delivered all {backfilled} rows"
    );
    assert!(read_log(&log).len() > before);
    relay.stop().await;
    drop_slot(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composite_text_and_hostile_keys_are_snapshotted_and_a_table_without_a_key_is_refused() {
    // Given a composite key, a text key under a hostile table name, and a table without a key
    let db = test_db().await;
    connect(&db.url)
        .await
        .batch_execute(
            "CREATE TABLE comp (a int, b text, version int NOT NULL DEFAULT 0, PRIMARY KEY (a, b)); \
             INSERT INTO comp SELECT i % 5, 'k' || i, 0 FROM generate_series(1, 203) i; \
             CREATE TABLE \"we\"\"ird {table} $1\" (k text COLLATE \"C\" PRIMARY KEY, \
                version int NOT NULL DEFAULT 0, u uuid DEFAULT gen_random_uuid()); \
             INSERT INTO \"we\"\"ird {table} $1\" (k) SELECT 'it''s ' || i || ' \"q\"' \
                FROM generate_series(1, 57) i; \
             CREATE TABLE nokey (v int); ALTER TABLE nokey REPLICA IDENTITY FULL; \
             INSERT INTO nokey VALUES (1), (2)",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut config = snapshot_config(&db, &log, &["public.*"]).await;
    config.source.cdc.snapshot_chunk_rows = outboxd::config::ChunkRows(7);

    // When the relay starts with initial snapshots
    let relay = InProcessRelay::start(&config).await;
    wait_state(&db, "comp", "done").await;
    wait_state(&db, "we\"ird {table} $1", "done").await;
    wait_state(&db, "nokey", "failed").await;
    relay.stop().await;

    // Then every row of the keyed tables arrived once, keyed as the stream keys them
    let records = read_log(&log);
    let rows = apply(&records);
    let comp = rows
        .keys()
        .filter(|(topic, _)| topic == "public.comp")
        .count();
    assert_eq!(comp, 203);
    assert_eq!(
        records.iter().filter(|r| r.topic == "public.comp").count(),
        203,
        "a composite-key row twice"
    );
    let weird = rows
        .keys()
        .filter(|(t, _)| t == "public.we\"ird {table} $1")
        .count();
    assert_eq!(weird, 57, "{:?}", rows.keys().take(3).collect::<Vec<_>>());
    assert!(rows.contains_key(&(
        "public.comp".to_string(),
        serde_json::json!({"a": 3, "b": "k203"}).to_string()
    )));
    // And the table without a key is refused, with the reason
    let (_, detail) = job_state(&db, "nokey").await.unwrap();
    assert!(detail.unwrap_or_default().contains("no primary key"));
    assert!(!records.iter().any(|r| r.topic == "public.nokey"));
    drop_slot(&db).await;
}
