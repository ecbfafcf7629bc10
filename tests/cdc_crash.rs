//! Change data capture across crashes: 8 writers insert, update and delete rows of three tables
//! of mixed types while the relay binary is SIGKILLed 10 times; applying the log's events per
//! key in order must give exactly the tables' final contents, with no key's `version` ever
//! going backwards and no event stored twice.

mod common;

use common::pg::{TestDb, connect, test_db};
use common::relay::*;
use outboxd::config::SourceMode;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

/// Writers, and changes each makes.
const WRITERS: usize = 8;
const CHANGES_PER_WRITER: usize = 2500;
const KILLS: usize = 10;

/// Creates the three tables: a bigint key, a uuid key with FULL identity, a composite key.
async fn create_tables(db: &TestDb) {
    connect(&db.url)
        .await
        .batch_execute(
            "CREATE TABLE t_int (id bigint PRIMARY KEY, version int NOT NULL, name text, \
                amount numeric, tags text[]); \
             CREATE TABLE t_uuid (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), \
                version int NOT NULL, doc jsonb, at timestamptz DEFAULT now()); \
             ALTER TABLE t_uuid REPLICA IDENTITY FULL; \
             CREATE TABLE t_comp (a int, b text, version int NOT NULL, data bytea, \
                ratio float8, PRIMARY KEY (a, b));",
        )
        .await
        .expect("create tables");
}

/// One writer's random inserts, updates (each bumps `version`) and deletes of its own rows.
async fn writer(url: String, w: i64) {
    let mut client = connect(&url).await;
    let mut rng = fastrand::Rng::with_seed(w as u64);
    let mut keys: [Vec<String>; 3] = Default::default();
    let mut next = 0i64;
    for _ in 0..CHANGES_PER_WRITER {
        let table = rng.usize(0..3);
        let roll = rng.u8(0..10);
        let owned = &mut keys[table];
        if owned.is_empty() || roll < 3 {
            next += 1;
            let key = match table {
                0 => {
                    let id = w * 1_000_000 + next;
                    client
                        .execute(
                            "INSERT INTO t_int VALUES ($1::int8, 0, md5($1::int8::text), \
                             $1::int8::numeric / 7, ARRAY['x', NULL, $1::int8::text])",
                            &[&id],
                        )
                        .await
                        .expect("insert t_int");
                    id.to_string()
                }
                1 => client
                    .query_one(
                        "INSERT INTO t_uuid (version, doc) VALUES (0, jsonb_build_object('w', \
                         $1::int8, 'n', $2::int8)) RETURNING id::text",
                        &[&w, &next],
                    )
                    .await
                    .expect("insert t_uuid")
                    .get(0),
                _ => {
                    let b = format!("k{next}");
                    client
                        .execute(
                            "INSERT INTO t_comp VALUES ($1, $2, 0, decode(md5($2), 'hex'), 0.5)",
                            &[&(w as i32), &b],
                        )
                        .await
                        .expect("insert t_comp");
                    b
                }
            };
            owned.push(key);
            continue;
        }
        let index = rng.usize(0..owned.len());
        let (sql_update, sql_delete) = match table {
            0 => (
                "UPDATE t_int SET version = version + 1, name = md5(random()::text) \
                 WHERE id = $1::text::bigint",
                "DELETE FROM t_int WHERE id = $1::text::bigint",
            ),
            1 => (
                "UPDATE t_uuid SET version = version + 1, doc = doc || \
                 jsonb_build_object('v', version + 1) WHERE id = $1::text::uuid",
                "DELETE FROM t_uuid WHERE id = $1::text::uuid",
            ),
            _ => (
                "UPDATE t_comp SET version = version + 1, ratio = random() \
                 WHERE a = $2 AND b = $1",
                "DELETE FROM t_comp WHERE a = $2 AND b = $1",
            ),
        };
        let key = owned[index].clone();
        let a = w as i32;
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = match table {
            2 => vec![&key, &a],
            _ => vec![&key],
        };
        if roll < 8 {
            // Now and then two updates of a key in one transaction.
            let twice = roll == 7;
            let tx = client.transaction().await.expect("begin");
            tx.execute(sql_update, &params).await.expect("update");
            if twice {
                tx.execute(sql_update, &params).await.expect("update");
            }
            tx.commit().await.expect("commit");
        } else {
            client.execute(sql_delete, &params).await.expect("delete");
            owned.swap_remove(index);
        }
    }
}

/// Each table's rows as (topic, key JSON) -> version, read from the database.
async fn table_contents(db: &TestDb) -> HashMap<(String, String), i64> {
    let client = connect(&db.url).await;
    let mut rows = HashMap::new();
    let queries = [
        (
            "public.t_int",
            "SELECT json_build_object('id', id)::text, version FROM t_int",
        ),
        (
            "public.t_uuid",
            "SELECT json_build_object('id', id)::text, version FROM t_uuid",
        ),
        (
            "public.t_comp",
            "SELECT json_build_object('a', a, 'b', b)::text, version FROM t_comp",
        ),
    ];
    for (topic, sql) in queries {
        for row in client.query(sql, &[]).await.unwrap() {
            let key: String = row.get(0);
            let key: Value = serde_json::from_str(&key).unwrap();
            let version: i32 = row.get(1);
            rows.insert((topic.to_string(), key.to_string()), version as i64);
        }
    }
    rows
}

/// Applies the log's events per key in order; panics if a key's version goes backwards or an
/// event is stored twice. Returns the rows the events leave, as (topic, key) -> version.
fn apply_log(log: &Path) -> HashMap<(String, String), i64> {
    let mut rows: HashMap<(String, String), i64> = HashMap::new();
    let mut last_version: HashMap<(String, String), i64> = HashMap::new();
    let mut ids = HashSet::new();
    for record in read_log(log) {
        assert!(
            ids.insert(record.event.id.clone()),
            "stored twice: {}",
            record.event.id
        );
        let payload: Value = serde_json::from_str(record.event.payload.get()).unwrap();
        let key: Value = serde_json::from_str(&record.event.key).unwrap();
        let at = (record.topic.clone(), key.to_string());
        match payload["op"].as_str().unwrap() {
            "c" | "u" => {
                let version = payload["after"]["version"].as_i64().unwrap();
                if let Some(previous) = last_version.insert(at.clone(), version) {
                    assert!(
                        version > previous,
                        "{at:?} went from version {previous} to {version}"
                    );
                }
                rows.insert(at, version);
            }
            "d" => {
                rows.remove(&at);
            }
            other => panic!("unexpected op {other}"),
        }
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_writers_and_ten_sigkills_leave_a_log_that_replays_to_the_final_tables() {
    // Given three captured tables and a relay process
    let db = test_db().await;
    create_tables(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut config = config_in(SourceMode::Cdc, &db, &log);
    config.source.cdc.tables = vec!["public.*".into()];
    config.source.batch_size = 200;
    // Changes only: snapshots have their own crash test (tests/cdc_snapshot.rs).
    config.source.cdc.snapshot = outboxd::config::SnapshotMode::Never;
    migrate(&config).await;
    let mut relay = RelayProcess::spawn(&config, dir.path(), "run-0", &["run"]);

    // When 8 writers make 20,000 changes while the relay is SIGKILLed 10 times
    let writers: Vec<_> = (0..WRITERS as i64)
        .map(|w| tokio::spawn(writer(db.url.clone(), w)))
        .collect();
    // Each run delivers a little (proving it started and streamed), then dies mid-stream.
    let per_run = 300;
    let mut kills_while_writing = 0;
    for kill in 1..=KILLS {
        let start = read_log(&log).len();
        let deadline = Instant::now() + Duration::from_secs(60);
        let writing = || writers.iter().any(|w| !w.is_finished());
        while read_log(&log).len() < start + per_run && Instant::now() < deadline && writing() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if writing() {
            kills_while_writing += 1;
        }
        eprintln!("kill {kill}: {} records in the log", read_log(&log).len());
        relay.kill();
        relay = RelayProcess::spawn(&config, dir.path(), &format!("run-{kill}"), &["run"]);
    }
    assert!(
        kills_while_writing >= KILLS / 2,
        "only {kills_while_writing} kills under load"
    );
    for writer in writers {
        writer.await.expect("writer");
    }
    connect(&db.url)
        .await
        .batch_execute("INSERT INTO t_int VALUES (-1, 0, 'the end')")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    while !read_log(&log).iter().any(|r| r.event.key == r#"{"id":-1}"#) {
        assert!(Instant::now() < deadline, "the last change never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    relay.kill();

    // Then the log, applied per key in order, is exactly the tables' contents
    let replayed = apply_log(&log);
    eprintln!(
        "{} records, {} rows at the end",
        read_log(&log).len(),
        replayed.len()
    );
    let expected = table_contents(&db).await;
    assert_eq!(replayed.len(), expected.len(), "rows");
    for (at, version) in &expected {
        assert_eq!(replayed.get(at), Some(version), "{at:?}");
    }
    drop_slot(&db).await;
}
