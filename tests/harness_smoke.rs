//! The test harness itself: every test gets its own empty database on a logical-replication server.

mod common;

use common::pg;

/// Counts the relations a test could have created, i.e. those outside the system schemas.
const USER_RELATIONS: &str = "SELECT count(*) FROM pg_class c \
     JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
     AND n.nspname NOT LIKE 'pg_toast%'";

/// Tests must not see each other's tables, nor anything left over from earlier runs.
#[tokio::test(flavor = "multi_thread")]
async fn each_test_db_is_a_distinct_empty_database() {
    // Given two test databases
    let (first, second) = (pg::test_db().await, pg::test_db().await);
    assert_ne!(first.name, second.name);
    assert!(first.name.starts_with("outboxd_test_"), "{}", first.name);
    let (a, b) = (
        pg::connect(&first.url).await,
        pg::connect(&second.url).await,
    );

    // Then each URL leads to its own database, with nothing in it
    for (client, db) in [(&a, &first), (&b, &second)] {
        let current: String = client
            .query_one("SELECT current_database()", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(current, db.name);
        let relations: i64 = client.query_one(USER_RELATIONS, &[]).await.unwrap().get(0);
        assert_eq!(relations, 0, "{} is not empty", db.name);
    }

    // When a table is created in one
    a.batch_execute("CREATE TABLE outbox (id bigint)")
        .await
        .unwrap();

    // Then the other does not see it
    let relations: i64 = b.query_one(USER_RELATIONS, &[]).await.unwrap().get(0);
    assert_eq!(relations, 0);
}

/// The logical source needs replication slots and pgoutput, hence `wal_level=logical`.
#[tokio::test(flavor = "multi_thread")]
async fn the_server_supports_logical_replication() {
    // Given a test database
    let db = pg::test_db().await;
    let client = pg::connect(&db.url).await;

    // When we ask for the WAL level
    let wal_level: String = client
        .query_one("SHOW wal_level", &[])
        .await
        .unwrap()
        .get(0);

    // Then a cluster we started ourselves decodes logically; an external one is the operator's
    // business and is only reported
    if pg::cluster().is_some() {
        assert_eq!(wal_level, "logical");
    } else if wal_level != "logical" {
        eprintln!("{} has wal_level={wal_level}", pg::DATABASE_URL_ENV);
    }
}
