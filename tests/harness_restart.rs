//! Restarting the throwaway cluster. A file of its own: a restart breaks every open connection, and
//! each test file runs in its own process with its own cluster.

mod common;

use common::pg;

/// Crash tests restart the server under the relay; the harness must bring it back intact.
#[tokio::test(flavor = "multi_thread")]
async fn committed_data_survives_fast_and_immediate_restarts() {
    // Given a committed row (test_db first: it starts the cluster off the runtime's workers)
    let db = pg::test_db().await;
    let Some(cluster) = pg::cluster() else {
        // Not a skip of a failure: an external server is not ours to restart.
        eprintln!("{} is set: no cluster to restart", pg::DATABASE_URL_ENV);
        return;
    };
    let mut client = pg::connect(&db.url).await;
    client
        .batch_execute("CREATE TABLE outbox (id bigint); INSERT INTO outbox VALUES (1)")
        .await
        .unwrap();

    for mode in ["fast", "immediate"] {
        // When the server restarts
        let port = cluster.port();
        tokio::task::spawn_blocking(move || cluster.restart(mode))
            .await
            .unwrap();

        // Then it is back on the same port, old connections are gone, and a new one sees the row
        assert_eq!(cluster.port(), port);
        assert!(
            client.simple_query("SELECT 1").await.is_err(),
            "connection survived {mode} restart"
        );
        let fresh = pg::connect(&db.url).await;
        let rows: i64 = fresh
            .query_one("SELECT count(*) FROM outbox", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(rows, 1, "after a {mode} restart");
        client = fresh;
    }
}
