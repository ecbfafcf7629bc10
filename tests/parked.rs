//! Rows waiting behind a dead letter (`on_dead_letter = "block_aggregate"`): the fetch marks
//! them blocked once and then costs what it returns, never hands them out while the dead letter
//! is in force, and gives them back, in order, once it is not (issue #18, item 8).

mod common;

use common::pg::{TestDb, connect, test_db};
use common::relay::*;
use outboxd::outbox::{OutboxTable, blocked};
use tokio_postgres::Client;

/// Pending rows of the blocked aggregate in the tests: far more than one batch.
const BLOCKED: i64 = 20_000;

/// Fills the outbox: a dead letter of aggregate `a`, then `BLOCKED` pending rows of `a`, then
/// 100 pending rows of aggregates `b0`..`b99`.
async fn fill(db: &TestDb) -> (Client, OutboxTable) {
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(db, dir.path());
    migrate(&config).await;
    let client = connect(&db.url).await;
    client
        .batch_execute(&format!(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload, failed_at) \
             VALUES ('t', 'a', 'Dead', '{{}}', now());
             INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
             SELECT 't', 'a', 'Later', '{{}}' FROM generate_series(1, {BLOCKED});
             INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
             SELECT 't', 'b' || i, 'Free', '{{}}' FROM generate_series(0, 99) i;
             ANALYZE outbox;"
        ))
        .await
        .unwrap();
    (client, OutboxTable::new(&config.source))
}

/// What the polling relay does for one batch: release rows behind dead letters no longer in
/// force, fetch, mark the rows found blocked, and fetch again at once while a fetch returns
/// only such rows.
/// Returns the deliverable rows' (position, aggregate) in order.
async fn fetch(client: &Client, table: &OutboxTable) -> Vec<(i64, String)> {
    let (limit, excluded) = (1000i64, Vec::<String>::new());
    let (max_event, max_batch) = (64i64 << 20, 64i64 << 20);
    loop {
        blocked::release(client, table).await.unwrap();
        let rows = client
            .query(
                &table.fetch_pending_blocking,
                &[&limit, &excluded, &max_event, &max_batch],
            )
            .await
            .unwrap();
        let found: Vec<(i64, i64)> = rows
            .iter()
            .filter_map(|row| Some((row.get(0), row.get::<_, Option<i64>>(11)?)))
            .collect();
        blocked::mark(client, table, &found).await.unwrap();
        let free: Vec<(i64, String)> = rows
            .iter()
            .filter(|row| row.get::<_, Option<i64>>(11).is_none())
            .map(|row| (row.get(0), row.get(4)))
            .collect();
        if !free.is_empty() || rows.is_empty() {
            return free;
        }
    }
}

/// Index entries and heap tuples PostgreSQL read from the outbox so far, as its statistics
/// say; `fetcher` is the session whose reads are to be counted (its statistics are flushed).
async fn tuples_read(fetcher: &Client, reader: &Client) -> i64 {
    // A backend sends its counts when it goes idle, at most once a second unless told to.
    fetcher
        .execute("SELECT pg_stat_force_next_flush()", &[])
        .await
        .unwrap();
    reader
        .execute("SELECT pg_stat_clear_snapshot()", &[])
        .await
        .unwrap();
    reader
        .query_one(
            "SELECT (SELECT coalesce(sum(idx_tup_read), 0)::int8 FROM pg_stat_user_indexes \
             WHERE relname = 'outbox') + (SELECT coalesce(seq_tup_read, 0) \
             FROM pg_stat_user_tables WHERE relname = 'outbox')",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_reads_what_it_returns_not_the_rows_parked_behind_a_dead_letter() {
    // Given 20,000 pending rows behind a dead letter, ahead of 100 deliverable ones
    let db = test_db().await;
    let (client, table) = fill(&db).await;
    let reader = connect(&db.url).await;

    // When the relay fetches: it hands out only the other aggregates' rows
    let first = fetch(&client, &table).await;
    assert_eq!(first.len(), 100, "{first:?}");
    assert!(first.iter().all(|(_, aggregate)| aggregate != "a"));
    let marked: i64 = client
        .query_one(
            "SELECT count(*) FROM outbox WHERE blocked_by IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(marked, BLOCKED);

    // Then a later fetch reads about what it returns, not the 20,000 rows behind the dead
    // letter (the statement before migration 8 walked all of them every time). VACUUM removes
    // the marked rows' old versions from the fetch's index, as autovacuum (or the first scan's
    // hints) would; it is here so the count does not depend on other sessions' snapshots.
    client.batch_execute("VACUUM outbox").await.unwrap();
    let before = tuples_read(&client, &reader).await;
    let again = fetch(&client, &table).await;
    let read = tuples_read(&client, &reader).await - before;
    assert_eq!(
        again, first,
        "the free rows are still pending, so they come again"
    );
    assert!(
        read < 2_000,
        "one fetch read {read} index entries and rows for 100 deliverable ones"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marked_rows_and_later_ones_wait_until_the_dead_letter_is_released_then_flow_in_order() {
    // Given rows marked blocked behind a dead letter of `a`
    let db = test_db().await;
    let (client, table) = fill(&db).await;
    let free = fetch(&client, &table).await;
    client
        .execute(
            "UPDATE outbox SET sent_at = now() WHERE position = ANY($1)",
            &[&free
                .iter()
                .map(|(position, _)| *position)
                .collect::<Vec<_>>()],
        )
        .await
        .unwrap();

    // When a row of `a` is written later, it is not handed out either, and is marked too
    client
        .batch_execute(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
             VALUES ('t', 'a', 'Latest', '{}')",
        )
        .await
        .unwrap();
    assert_eq!(fetch(&client, &table).await, vec![]);
    let marked: i64 = client
        .query_one(
            "SELECT count(*) FROM outbox WHERE blocked_by IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(marked, BLOCKED + 1);

    // When the dead letter is skipped by hand (not through `dlq skip`, which releases the rows
    // itself), then the next fetches hand out every row of `a`, in position order
    client
        .batch_execute("UPDATE outbox SET skipped_at = now() WHERE type = 'Dead'")
        .await
        .unwrap();
    let mut delivered = Vec::new();
    loop {
        let batch = fetch(&client, &table).await;
        if batch.is_empty() {
            break;
        }
        assert!(batch.iter().all(|(_, aggregate)| aggregate == "a"));
        let positions: Vec<i64> = batch.iter().map(|(position, _)| *position).collect();
        client
            .execute(
                "UPDATE outbox SET sent_at = now() WHERE position = ANY($1)",
                &[&positions],
            )
            .await
            .unwrap();
        delivered.extend(positions);
    }
    assert_eq!(delivered.len() as i64, BLOCKED + 1);
    assert!(delivered.windows(2).all(|pair| pair[0] < pair[1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_may_not_apply_migration_8_is_told_who_can() {
    // Given an outbox migrated up to migration 7 by its owner (as before this version), and a
    // relay role granted only what README lists
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&db, &dir.path().join("log"));
    migrate(&config).await;
    let owner = connect(&db.url).await;
    let role = format!("relay_{}", &db.name[db.name.len() - 8..]);
    owner
        .batch_execute(&format!(
            "DELETE FROM outboxd_migrations WHERE version = 8;
             DROP INDEX outboxd_outbox_ready_idx, outboxd_outbox_blocked_idx;
             ALTER TABLE outbox DROP COLUMN blocked_by;
             CREATE ROLE {role} LOGIN;
             GRANT USAGE ON SCHEMA public TO {role};
             GRANT SELECT, UPDATE ON outbox TO {role};
             GRANT SELECT ON outboxd_migrations TO {role};"
        ))
        .await
        .unwrap();
    config.source.url =
        outboxd::config::DbUrl::new(db.url.replacen("postgres@", &format!("{role}@"), 1));

    // When the relay starts as that role, then it stops saying that the owner must migrate
    let path = write_config(&config, dir.path(), "limited");
    let (code, _, stderr) = run_cli(&path, &["run"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("this role may not change the outbox table: run `outboxd migrate` once as the table's owner"),
        "{stderr}"
    );

    // And once the owner migrated, the table has the column and both indexes
    migrate(&config_for(&db, dir.path())).await;
    let indexes: i64 = owner
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE indexname IN \
             ('outboxd_outbox_ready_idx', 'outboxd_outbox_blocked_idx')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(indexes, 2);
}
