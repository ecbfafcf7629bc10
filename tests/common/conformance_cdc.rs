//! The change-data-capture scenario of the sink conformance suite: 4 writers make 2,000 random
//! inserts, updates (each bumps a `version` column) and deletes of one table while the relay
//! process is SIGKILLed twice; the change events the sink delivered, applied per key in order
//! (repeats of an event id skipped), give exactly the table's rows and versions, and no key's
//! version goes backwards.
//!
//! An adapter takes part by implementing [`SinkUnderTest::prepare_changes`] and
//! [`SinkUnderTest::delivered_changes`]; the events are the table's (subject `public.items`).

use super::conformance::{SinkUnderTest, WAIT};
use super::pg::{TestDb, connect, test_db};
use super::relay::*;
use outboxd::config::SourceMode;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::time::Instant;

/// The captured table, as `schema.table` (the events' subject and `aggregatetype`).
pub const TABLE: &str = "public.items";

/// Writers, and changes each makes.
const WRITERS: i64 = 4;
const CHANGES_PER_WRITER: usize = 500;

/// How often the relay process is SIGKILLed while the writers write.
const KILLS: usize = 2;

/// One change event as the sink delivered it, read back from the sink itself.
#[derive(Debug, Clone)]
pub struct DeliveredChange {
    /// The event id (the same on every delivery of one change).
    pub id: String,
    /// The ordering key: the row's primary key as JSON text (`{"id":42}`).
    pub key: String,
    /// The payload, Debezium's envelope (`op`, `before`, `after`, `source`).
    pub payload: Value,
    /// The ordered stream it landed in (a Kafka partition; 0 for sinks with one order).
    pub stream: i32,
}

/// One writer's random inserts, updates (each bumps `version`) and deletes of its own rows.
async fn writer(url: String, w: i64, changes: usize) {
    let client = connect(&url).await;
    let mut rng = fastrand::Rng::with_seed(w as u64);
    let mut owned: Vec<i64> = Vec::new();
    let mut next = 0;
    for _ in 0..changes {
        let roll = rng.u8(0..10);
        if owned.is_empty() || roll < 3 {
            next += 1;
            let id = w * 1_000_000 + next;
            client
                .execute(
                    "INSERT INTO items VALUES ($1::int8, 0, md5($1::int8::text))",
                    &[&id],
                )
                .await
                .expect("insert");
            owned.push(id);
            continue;
        }
        let index = rng.usize(0..owned.len());
        let id = owned[index];
        if roll < 9 {
            client
                .execute(
                    "UPDATE items SET version = version + 1, body = md5(random()::text) \
                     WHERE id = $1",
                    &[&id],
                )
                .await
                .expect("update");
        } else {
            client
                .execute("DELETE FROM items WHERE id = $1", &[&id])
                .await
                .expect("delete");
            owned.swap_remove(index);
        }
    }
}

/// The slot's confirmed position, as an LSN text compared by the server.
async fn confirmed_past(db: &TestDb, lsn: &str) -> bool {
    connect(&db.url)
        .await
        .query_one(
            "SELECT coalesce(confirmed_flush_lsn >= $2::text::pg_lsn, false) \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&db.name, &lsn],
        )
        .await
        .is_ok_and(|row| row.get(0))
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

/// Waits until the slot is confirmed past `lsn`: the relay confirms only what the sink holds.
async fn wait_confirmed(db: &TestDb, lsn: &str) {
    let deadline = Instant::now() + WAIT;
    while !confirmed_past(db, lsn).await {
        assert!(Instant::now() < deadline, "the slot never passed {lsn}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Applies the delivered events per key in order, skipping repeats of an id; panics if a key
/// changes stream or its version goes backwards. Returns the rows (key -> version) and the
/// number of repeats.
pub fn apply_changes(changes: &[DeliveredChange]) -> (HashMap<String, i64>, usize) {
    let mut rows = HashMap::new();
    let mut last_version: HashMap<String, i64> = HashMap::new();
    let mut stream_of: HashMap<String, i32> = HashMap::new();
    let mut seen = HashSet::new();
    let mut repeats = 0;
    for change in changes {
        if !seen.insert(change.id.as_str()) {
            repeats += 1;
            continue;
        }
        let key: Value = serde_json::from_str(&change.key).expect("key is JSON");
        let key = key.to_string();
        let stream = *stream_of.entry(key.clone()).or_insert(change.stream);
        assert_eq!(stream, change.stream, "key {key} in two streams");
        match change.payload["op"].as_str().expect("op") {
            "c" | "u" => {
                let version = change.payload["after"]["version"]
                    .as_i64()
                    .expect("version");
                if let Some(previous) = last_version.insert(key.clone(), version) {
                    assert!(
                        version > previous,
                        "{key} went from version {previous} to {version}"
                    );
                }
                rows.insert(key, version);
            }
            "d" => {
                rows.remove(&key);
            }
            other => panic!("unexpected op {other} for {key}"),
        }
    }
    (rows, repeats)
}

/// The table's rows as key JSON -> version.
async fn table_rows(db: &TestDb) -> HashMap<String, i64> {
    let client = connect(&db.url).await;
    let rows = client
        .query(
            "SELECT json_build_object('id', id)::text, version FROM items",
            &[],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|row| {
            let key: Value = serde_json::from_str(row.get(0)).unwrap();
            (key.to_string(), row.get::<_, i32>(1) as i64)
        })
        .collect()
}

/// The scenario (see the module docs).
pub async fn changes_replay_to_the_table<S: SinkUnderTest>() {
    // Given a captured table, a sink ready for its events, and a relay process in cdc mode
    let Some(mut sink) = S::setup().await else {
        return;
    };
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_in(SourceMode::Cdc, &db, &dir.path().join("log"));
    sink.configure(&mut config);
    if !sink.prepare_changes(&mut config, TABLE).await {
        return;
    }
    config.source.cdc.tables = vec![TABLE.into()];
    config.source.batch_size = 100;
    // Changes only: snapshots have their own crash test (tests/cdc_snapshot.rs).
    config.source.cdc.snapshot = outboxd::config::SnapshotMode::Never;
    connect(&db.url)
        .await
        .batch_execute(
            "CREATE TABLE items (id bigint PRIMARY KEY, version int NOT NULL, body text)",
        )
        .await
        .unwrap();
    migrate(&config).await;
    let env = sink.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let spawn =
        |name: &str| RelayProcess::spawn_with_env(&config, dir.path(), name, &["run"], &env);

    // When 4 writers make 2,000 changes while the relay is SIGKILLed twice, each time after
    // the slot was confirmed a little further (the sink held more)
    let per_writer = CHANGES_PER_WRITER / S::SHRINK;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(writer(db.url.clone(), w, per_writer)))
        .collect();
    for kill in 0..KILLS {
        let relay = spawn(&format!("run-{kill}"));
        let lsn = current_lsn(&db).await;
        wait_confirmed(&db, &lsn).await;
        relay.kill();
    }
    let relay = spawn("last");
    for writer in writers {
        writer.await.expect("writer");
    }
    let end = current_lsn(&db).await;
    wait_confirmed(&db, &end).await;
    relay.kill();

    // Then the delivered events, applied per key in order, are exactly the table
    let changes = sink.delivered_changes(TABLE).await;
    let (replayed, repeats) = apply_changes(&changes);
    let expected = table_rows(&db).await;
    println!(
        "{}, {KILLS} kills: {} events ({repeats} repeats), {} rows",
        std::any::type_name::<S>(),
        changes.len(),
        expected.len()
    );
    assert!(changes.len() >= (WRITERS as usize) * per_writer);
    assert_eq!(replayed, expected);
    if S::EXACTLY_ONCE {
        assert_eq!(repeats, 0, "duplicates after {KILLS} kills");
    }
    drop_slot(&db).await;
    sink.teardown().await;
}
