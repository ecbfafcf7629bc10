//! Change data capture end to end on the throwaway cluster: the Debezium envelope in the
//! embedded log, outbox and tables through one slot, unchanged TOAST values, schema changes
//! while streaming, and the bad inputs that must stop start-up with the fix.
//!
//! Each test has its own database, slot and publication, and drops its slot at the end.

mod common;

use common::pg::{TestDb, connect, test_db};
use common::relay::*;
use outboxd::config::{Config, SourceMode};
use outboxd::log::Record;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

/// A relay configuration in `mode` capturing `tables`.
fn cdc_config(mode: SourceMode, db: &TestDb, log: &Path, tables: &[&str]) -> Config {
    let mut config = config_in(mode, db, log);
    config.source.cdc.tables = tables.iter().map(|t| t.to_string()).collect();
    config
}

/// The payload of a record as JSON.
fn payload(record: &Record) -> Value {
    serde_json::from_str(record.event.payload.get()).unwrap()
}

/// Waits until the log holds a record `matches` accepts; returns every record so far.
async fn wait_for(log: &Path, what: &str, matches: impl Fn(&Record) -> bool) -> Vec<Record> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let records = read_log(log);
        if records.iter().any(&matches) {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "never saw {what}; have {} records",
            records.len()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_updates_deletes_and_truncates_arrive_as_debezium_envelopes_under_schema_table() {
    // Given a table of mixed types captured in cdc mode
    let db = test_db().await;
    let client = connect(&db.url).await;
    client
        .batch_execute(
            "CREATE TABLE orders (id int PRIMARY KEY, total numeric, paid bool, \
             tags text[], doc jsonb, at timestamptz, span interval, raw bytea)",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let config = cdc_config(SourceMode::Cdc, &db, &log, &["public.orders"]);
    let relay = InProcessRelay::start(&config).await;

    // When a row is inserted, updated, deleted, and the table truncated
    client
        .batch_execute(
            "INSERT INTO orders VALUES (42, 19.90, false, '{a,NULL}', '{\"k\": [1]}', \
               '2020-01-02 03:04:05+00', '1 day 02:00:00', '\\x6869'); \
             UPDATE orders SET paid = true WHERE id = 42; \
             DELETE FROM orders WHERE id = 42; \
             TRUNCATE orders;",
        )
        .await
        .unwrap();
    let records = wait_for(&log, "the truncate", |r| r.event.op.name() == "truncate").await;

    // Then each is one event under the topic public.orders, keyed by the primary key
    let ops: Vec<String> = records
        .iter()
        .map(|r| payload(r)["op"].to_string())
        .collect();
    assert_eq!(ops, [r#""c""#, r#""u""#, r#""d""#, r#""t""#]);
    assert!(records.iter().all(|r| r.topic == "public.orders"));
    assert!(records[..3].iter().all(|r| r.event.key == r#"{"id":42}"#));
    let created = payload(&records[0]);
    assert_eq!(
        created["after"],
        json!({"id": 42, "total": "19.90", "paid": false, "tags": ["a", null],
               "doc": {"k": [1]}, "at": "2020-01-02T03:04:05+00:00", "span": "P1DT2H",
               "raw": "aGk="})
    );
    assert_eq!(created["before"], Value::Null);
    assert_eq!(created["source"]["connector"], "outboxd");
    assert_eq!(created["source"]["db"], db.name.as_str());
    assert_eq!(created["source"]["table"], "orders");
    assert_eq!(payload(&records[1])["after"]["paid"], true);
    assert_eq!(payload(&records[2])["before"], json!({"id": 42}));
    let headers = records[1].event.headers.as_ref().unwrap().get();
    assert!(headers.starts_with(r#"{"lsn":""#), "{headers}");

    // And each change is counted under its table and operation
    for op in ["insert", "update", "delete", "truncate"] {
        let labels = outboxd::metrics::TableLabels {
            schema: "public".into(),
            table: "orders".into(),
            op,
        };
        let counted = outboxd::metrics::get()
            .table_changes
            .get_or_create(&labels)
            .get();
        assert_eq!(counted, 1, "{op}");
    }

    // And `outboxd log read` prints the update with its envelope (the README's example)
    let path = write_config(&config, dir.path(), "cdc");
    let (code, stdout, stderr) = run_cli(&path, &["log", "read", "--from", "1", "--limit", "1"]);
    assert_eq!(code, 0, "{stderr}");
    eprintln!("{stdout}");
    let line: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(line["topic"], "public.orders");
    assert_eq!(line["event"]["op"], "update");
    assert_eq!(
        line["event"]["origin"],
        json!({"kind": "table", "schema": "public", "table": "orders"})
    );
    assert_eq!(line["event"]["payload"]["op"], "u");

    // And `outboxd status` names the captured table and the slot's lag (no outbox table)
    let (code, stdout, stderr) = run_cli(&path, &["status", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let status: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status["mode"], "cdc");
    assert_eq!(status["tables"], json!(["public.orders"]));
    assert!(status["slot_lag_bytes"].is_i64(), "{status}");
    relay.stop().await;
    drop_slot(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_events_and_table_changes_share_one_slot_in_logical_mode_each_in_order() {
    // Given logical mode with a captured table beside the outbox
    let db = test_db().await;
    let client = connect(&db.url).await;
    client
        .batch_execute("CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL)")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let config = cdc_config(SourceMode::Logical, &db, &log, &["public.counters"]);
    let relay = InProcessRelay::start(&config).await;
    let slots: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&db.name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 1);

    // When each transaction bumps the counter and writes an outbox event with the same number
    client
        .batch_execute("INSERT INTO counters VALUES (1, 0)")
        .await
        .unwrap();
    for n in 1..=50 {
        client
            .batch_execute(&format!(
                "BEGIN; UPDATE counters SET n = {n} WHERE id = 1; \
                 INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
                 VALUES ('counter', '1', 'Bumped', '{{\"n\": {n}}}'); COMMIT;"
            ))
            .await
            .unwrap();
    }
    let records = wait_for(&log, "the 50th outbox event", |r| {
        r.event.subject == "counter" && payload(r)["n"] == 50
    })
    .await;

    // Then both kinds arrive, each in order, the table change before the event of its
    // transaction
    let outbox: Vec<i64> = records
        .iter()
        .filter(|r| r.event.subject == "counter")
        .map(|r| payload(r)["n"].as_i64().unwrap())
        .collect();
    assert_eq!(outbox, (1..=50).collect::<Vec<_>>());
    let changes: Vec<i64> = records
        .iter()
        .filter(|r| r.topic == "public.counters")
        .map(|r| payload(r)["after"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(changes, (0..=50).collect::<Vec<_>>());
    relay.stop().await;
    drop_slot(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_of_another_column_never_turns_a_one_megabyte_toast_value_into_null() {
    // Given a 1 MB incompressible text in a table with FULL identity and one with DEFAULT
    let db = test_db().await;
    let client = connect(&db.url).await;
    client
        .batch_execute(
            "CREATE TABLE docs_full (id int PRIMARY KEY, n int, body text); \
             ALTER TABLE docs_full REPLICA IDENTITY FULL; \
             CREATE TABLE docs_default (id int PRIMARY KEY, n int, body text);",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let config = cdc_config(SourceMode::Cdc, &db, &log, &["public.*"]);
    let relay = InProcessRelay::start(&config).await;
    let big = "(SELECT string_agg(md5(i::text), '') FROM generate_series(1, 32768) i)";
    for table in ["docs_full", "docs_default"] {
        client
            .batch_execute(&format!(
                "INSERT INTO {table} VALUES (1, 0, {big}); UPDATE {table} SET n = 1 WHERE id = 1;"
            ))
            .await
            .unwrap();
    }

    // When the updates arrive
    let updated = |table: &'static str| {
        move |r: &Record| r.topic == format!("public.{table}") && r.event.op.name() == "update"
    };
    wait_for(&log, "the update under FULL", updated("docs_full")).await;
    let records = wait_for(&log, "the update under DEFAULT", updated("docs_default")).await;
    let update = |table| payload(records.iter().find(|r| updated(table)(r)).unwrap());

    // Then under FULL the value comes from the old row; under DEFAULT it is left out and named
    let full = update("docs_full");
    assert_eq!(full["after"]["body"].as_str().unwrap().len(), 1 << 20);
    assert_eq!(full["after"]["n"], 1);
    let default = update("docs_default");
    assert!(
        default["after"].get("body").is_none(),
        "never null: {}",
        default["after"]
    );
    assert_eq!(default["after"]["n"], 1);
    assert_eq!(default["unchanged_toast"], json!(["body"]));
    relay.stop().await;
    drop_slot(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_written_around_add_rename_drop_and_retype_of_columns_carry_the_shape_of_their_time() {
    // Given a streaming relay and a table it captures
    let db = test_db().await;
    let client = connect(&db.url).await;
    client
        .batch_execute("CREATE TABLE shapes (id int PRIMARY KEY, a int)")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let config = cdc_config(SourceMode::Cdc, &db, &log, &["public.shapes"]);
    let relay = InProcessRelay::start(&config).await;

    // When rows are written between schema changes, without a pause or a restart
    let steps = [
        ("", "(id, a) VALUES ($1, 1)"),
        (
            "ALTER TABLE shapes ADD COLUMN b text",
            "(id, a, b) VALUES ($1, 1, 'x')",
        ),
        (
            "ALTER TABLE shapes RENAME COLUMN a TO a2",
            "(id, a2, b) VALUES ($1, 1, 'x')",
        ),
        (
            "ALTER TABLE shapes ALTER COLUMN b TYPE int USING 0",
            "(id, a2, b) VALUES ($1, 1, 5)",
        ),
        (
            "ALTER TABLE shapes DROP COLUMN a2",
            "(id, b) VALUES ($1, 5)",
        ),
    ];
    let mut id = 0;
    for (change, insert) in steps {
        client.batch_execute(change).await.unwrap();
        for _ in 0..100 {
            id += 1;
            let sql = format!("INSERT INTO shapes {insert}");
            client.execute(&sql, &[&id]).await.unwrap();
        }
    }
    let last = format!("{{\"id\":{id}}}");
    let records = wait_for(&log, "the last row", |r| r.event.key == last).await;

    // Then every row arrived, each with the columns and types of its time
    assert_eq!(records.len(), 500);
    let expected = [
        json!({"a": 1}),
        json!({"a": 1, "b": "x"}),
        json!({"a2": 1, "b": "x"}),
        json!({"a2": 1, "b": 5}),
        json!({"b": 5}),
    ];
    for (i, record) in records.iter().enumerate() {
        let mut after = payload(record)["after"].clone();
        assert_eq!(after["id"], i as i64 + 1, "in order");
        after.as_object_mut().unwrap().remove("id");
        assert_eq!(after, expected[i / 100], "row {}", i + 1);
    }
    relay.stop().await;
    drop_slot(&db).await;
}

/// The error `outboxd migrate` (publication and slot) gives for `tables`.
async fn migrate_error(db: &TestDb, tables: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let config = cdc_config(SourceMode::Cdc, db, &dir.path().join("log"), tables);
    let session = outboxd::pg::connect(&config.source).await.unwrap();
    let result = outboxd::source::logical::slot::prepare(&session.client, &config.source).await;
    result.expect_err("migrate should refuse").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_tables_empty_patterns_and_tables_without_identity_stop_migrate_with_the_fix() {
    let db = test_db().await;
    let client = connect(&db.url).await;
    client
        .batch_execute(
            "CREATE SCHEMA empty; CREATE TABLE ok (id int PRIMARY KEY); \
             CREATE TABLE nokey (n int); CREATE TABLE other (id int PRIMARY KEY);",
        )
        .await
        .unwrap();

    let err = migrate_error(&db, &["public.ok", "public.nope"]).await;
    assert!(err.contains("table public.nope does not exist"), "{err}");
    let err = migrate_error(&db, &["empty.*"]).await;
    assert!(err.contains("\"empty.*\" matches no table"), "{err}");
    let err = migrate_error(&db, &["public.*"]).await;
    assert!(
        err.contains("table public.nokey has no usable replica identity"),
        "{err}"
    );
    assert!(
        err.contains("ALTER TABLE public.nokey REPLICA IDENTITY FULL"),
        "{err}"
    );

    // Nothing was published, so the application's writes to the table still work
    let published: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_publication WHERE pubname = $1",
            &[&db.name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(published, 0);
    client
        .batch_execute("UPDATE nokey SET n = 1")
        .await
        .unwrap();

    // A publication of that name that carries another table is refused too
    client
        .batch_execute(&format!("CREATE PUBLICATION {} FOR TABLE other", db.name))
        .await
        .unwrap();
    let err = migrate_error(&db, &["public.ok"]).await;
    assert!(err.contains("also publishes public.other"), "{err}");

    // And with the fix applied, the table is published for every operation
    client
        .batch_execute(&format!(
            "ALTER TABLE nokey REPLICA IDENTITY FULL; DROP PUBLICATION {}",
            db.name
        ))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = cdc_config(SourceMode::Cdc, &db, &dir.path().join("log"), &["public.*"]);
    migrate(&config).await;
    let publish: (bool, bool, bool, bool, i64) = {
        let row = client
            .query_one(
                "SELECT pubinsert, pubupdate, pubdelete, pubtruncate, \
                 (SELECT count(*) FROM pg_publication_tables WHERE pubname = $1) \
                 FROM pg_publication WHERE pubname = $1",
                &[&db.name],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4))
    };
    assert_eq!(publish, (true, true, true, true, 3));
    drop_slot(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_created_later_in_a_captured_schema_is_added_on_a_heartbeat() {
    // Given a relay capturing inventory.*
    let db = test_db().await;
    let client = connect(&db.url).await;
    client
        .batch_execute("CREATE SCHEMA inventory; CREATE TABLE inventory.items (id int PRIMARY KEY)")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let config = cdc_config(SourceMode::Cdc, &db, &log, &["inventory.*"]);
    let relay = InProcessRelay::start(&config).await;

    // When a table is created in the schema, and written once it is in the publication
    client
        .batch_execute("CREATE TABLE inventory.bins (id int PRIMARY KEY)")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let published: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = $1 \
                 AND schemaname = 'inventory' AND tablename = 'bins')",
                &[&db.name],
            )
            .await
            .unwrap()
            .get(0);
        if published {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new table was never published"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client
        .batch_execute("INSERT INTO inventory.bins VALUES (7)")
        .await
        .unwrap();

    // Then its change arrives under its own topic
    let records = wait_for(&log, "the new table's insert", |r| {
        r.topic == "inventory.bins"
    })
    .await;
    assert_eq!(records.last().unwrap().event.key, r#"{"id":7}"#);
    relay.stop().await;
    drop_slot(&db).await;
}
