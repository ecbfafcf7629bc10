//! The NOTIFY trigger and two-phase commit: a transaction that ran NOTIFY cannot `PREPARE
//! TRANSACTION`, so the trigger is never installed in logical mode and is optional in polling
//! mode (`source.notify`). Runs on the throwaway cluster (`max_prepared_transactions > 0`).

mod common;

use common::pg::{TestDb, connect, test_db};
use common::relay::*;
use outboxd::config::SourceMode;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// Triggers on the outbox table (other than constraint triggers).
async fn triggers(db: &TestDb) -> i64 {
    connect(&db.url)
        .await
        .query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'outbox'::regclass \
             AND NOT tgisinternal",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Writes one event of `aggregate` in a transaction prepared as `gid`, and returns the
/// PREPARE's result; commits it if the PREPARE succeeded.
async fn write_prepared(db: &TestDb, aggregate: &str) -> Result<(), String> {
    let client = connect(&db.url).await;
    // Transaction identifiers are cluster-wide, and tests run side by side.
    let gid = format!("{}-{aggregate}", db.name);
    let prepared = client
        .batch_execute(&format!(
            "BEGIN; INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
             VALUES ('order', '{aggregate}', 'E', '{{}}'); PREPARE TRANSACTION '{gid}'"
        ))
        .await;
    if let Err(err) = prepared {
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(err
            .as_db_error()
            .map_or(err.to_string(), |e| e.message().to_string()));
    }
    client
        .batch_execute(&format!("COMMIT PREPARED '{gid}'"))
        .await
        .unwrap();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logical_mode_removes_the_trigger_and_a_prepared_transaction_is_delivered() {
    // Given an outbox migrated for polling (trigger installed), then for logical mode
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    migrate(&config_in(SourceMode::Poll, &db, &log)).await;
    assert_eq!(triggers(&db).await, 1);
    let config = config_in(SourceMode::Logical, &db, &log);
    migrate(&config).await;

    // Then the trigger is gone
    assert_eq!(triggers(&db).await, 0);

    // When an event is written by a two-phase transaction, then it is prepared, committed and
    // delivered
    let relay = InProcessRelay::start(&config).await;
    write_prepared(&db, "xa")
        .await
        .expect("PREPARE TRANSACTION");
    let logs = wait_for_events(&[&log], 1, WAIT).await;
    assert_eq!(logs[0][0].event.key, "xa");
    relay.stop().await;
    drop_slot(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_without_notify_removes_the_trigger_and_delivers_prepared_transactions() {
    // Given a polling outbox with the trigger (the default), where PREPARE fails
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut config = config_in(SourceMode::Poll, &db, &log);
    migrate(&config).await;
    assert_eq!(triggers(&db).await, 1);
    let refused = write_prepared(&db, "refused").await.unwrap_err();
    assert!(refused.contains("NOTIFY"), "{refused}");

    // When source.notify = false
    config.source.notify = false;
    let relay = InProcessRelay::start(&config).await;

    // Then the trigger is removed and a prepared transaction's event arrives by polling
    assert_eq!(triggers(&db).await, 0);
    write_prepared(&db, "xa")
        .await
        .expect("PREPARE TRANSACTION");
    let logs = wait_for_events(&[&log], 1, WAIT).await;
    assert_eq!(logs[0][0].event.key, "xa");
    relay.stop().await;

    // And turning it back on installs the trigger again
    config.source.notify = true;
    migrate(&config).await;
    assert_eq!(triggers(&db).await, 1);
}
