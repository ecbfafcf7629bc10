//! Insert-only capture (`source.cdc.insert_only`) of tables without a usable replica identity,
//! on the throwaway cluster: refused by default with the fix, captured when listed, and the
//! application's UPDATE and DELETE on such a table keep working.

mod common;

use common::pg::{TestDb, connect, test_db};
use common::relay::*;
use outboxd::config::{Config, SourceMode};
use outboxd::log::Record;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// A cdc configuration capturing `tables` fully and `insert_only` by their inserts.
fn config(db: &TestDb, log: &Path, tables: &[&str], insert_only: &[&str]) -> Config {
    let mut config = config_in(SourceMode::Cdc, db, log);
    config.source.cdc.tables = tables.iter().map(|t| t.to_string()).collect();
    config.source.cdc.insert_only = insert_only.iter().map(|t| t.to_string()).collect();
    config
}

/// The error `outboxd migrate` (publications and slot) gives for `config`.
async fn migrate_error(config: &Config) -> String {
    let session = outboxd::pg::connect(&config.source).await.unwrap();
    let result = outboxd::source::logical::slot::prepare(&session.client, &config.source).await;
    result.expect_err("migrate should refuse").to_string()
}

/// What the publication `name` publishes: (insert, update, delete, truncate).
async fn publishes(db: &TestDb, name: &str) -> (bool, bool, bool, bool) {
    let row = connect(&db.url)
        .await
        .query_one(
            "SELECT pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication \
             WHERE pubname = $1",
            &[&name],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

/// Waits until the log holds `count` records; returns them.
async fn wait_for_count(log: &Path, count: usize) -> Vec<Record> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let records = read_log(log);
        if records.len() >= count {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "have {} of {count} records",
            records.len()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyless_table_is_refused_unless_insert_only_and_then_its_updates_and_deletes_still_work()
{
    // Given a table with a primary key and an append-only table without one
    let db = test_db().await;
    let client = connect(&db.url).await;
    client
        .batch_execute(
            "CREATE TABLE orders (id int PRIMARY KEY, note text); \
             CREATE TABLE audit (msg text, n int);",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");

    // When the keyless table is listed in tables, migrate refuses it with the fix
    let err = migrate_error(&config(&db, &log, &["public.*"], &[])).await;
    assert!(
        err.contains("table public.audit has no usable replica identity"),
        "{err}"
    );
    assert!(
        err.contains("ALTER TABLE public.audit REPLICA IDENTITY FULL"),
        "{err}"
    );
    assert!(err.contains("source.cdc.insert_only"), "{err}");

    // When it is listed insert-only (tables' schema.* matches it too), the relay starts
    let config = config(&db, &log, &["public.*"], &["public.audit"]);
    let relay = InProcessRelay::start(&config).await;
    let inserts = format!("{}_inserts", db.name);
    assert_eq!(publishes(&db, &db.name).await, (true, true, true, true));
    assert_eq!(publishes(&db, &inserts).await, (true, false, false, false));

    // Then the application's UPDATE and DELETE on it still succeed
    client
        .batch_execute(
            "INSERT INTO audit VALUES ('first', 1), ('second', 2); \
             UPDATE audit SET n = n + 10; \
             DELETE FROM audit WHERE n = 11; \
             INSERT INTO orders VALUES (7, 'a'); \
             UPDATE orders SET note = 'b' WHERE id = 7; \
             INSERT INTO audit VALUES ('third', 3);",
        )
        .await
        .expect("UPDATE and DELETE of an insert-only table must keep working");

    // And only its inserts arrive, in commit order, beside every change of the other table
    let records = wait_for_count(&log, 5).await;
    let seen: Vec<(String, String, String)> = records
        .iter()
        .map(|r| {
            let payload: Value = serde_json::from_str(r.event.payload.get()).unwrap();
            let msg = payload["after"]["msg"].as_str().unwrap_or("").to_owned();
            (
                r.topic.clone(),
                payload["op"].as_str().unwrap().to_owned(),
                msg,
            )
        })
        .collect();
    let expected = [
        ("public.audit", "c", "first"),
        ("public.audit", "c", "second"),
        ("public.orders", "c", ""),
        ("public.orders", "u", ""),
        ("public.audit", "c", "third"),
    ];
    let expected: Vec<(String, String, String)> = expected
        .iter()
        .map(|(t, o, m)| (t.to_string(), o.to_string(), m.to_string()))
        .collect();
    assert_eq!(seen, expected);
    assert_eq!(
        records[0].event.key, "",
        "a keyless table's events have an empty key"
    );
    relay.stop().await;

    // And a publication widened behind outboxd's back is narrowed again by migrate
    client
        .batch_execute(&format!(
            "ALTER PUBLICATION {inserts} SET (publish = 'insert, update')"
        ))
        .await
        .unwrap();
    migrate(&config).await;
    assert_eq!(publishes(&db, &inserts).await, (true, false, false, false));

    // And with the slot in place, a missing insert-only publication is not created behind it
    client
        .batch_execute(&format!("DROP PUBLICATION {inserts}"))
        .await
        .unwrap();
    let err = migrate_error(&config).await;
    assert!(err.contains("does not exist but replication slot"), "{err}");
    drop_slot(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_only_table_in_the_main_publication_is_refused_with_the_move() {
    // Given a keyed table published for every change by an earlier configuration
    let db = test_db().await;
    let client = connect(&db.url).await;
    client
        .batch_execute("CREATE TABLE events (id int PRIMARY KEY, body text)")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    migrate(&config(&db, &log, &["public.events"], &[])).await;

    // When the configuration now lists it insert-only
    let err = migrate_error(&config(&db, &log, &[], &["public.events"])).await;

    // Then migrate says how to move it
    assert!(err.contains("is in source.cdc.insert_only"), "{err}");
    let fix = format!("ALTER PUBLICATION \"{}\" DROP TABLE public.events", db.name);
    assert!(err.contains(&fix), "{err}");
    drop_slot(&db).await;
}
