//! Configured names never become SQL: a column or channel name that contains another
//! placeholder, a quote and a statement is refused by the configuration check, and even when
//! handed to the statement templates directly it ends up as one quoted identifier.

mod common;

use common::pg::{TestDb, connect, test_db};
use common::relay::*;
use outboxd::config::Config;
use std::process::Command;

/// The two reproductions from the security report: a name holding a placeholder whose value
/// closes the quoting and drops a table.
fn exploits() -> [[(&'static str, &'static str); 2]; 2] {
    [
        [
            ("OUTBOXD_SOURCE__COLUMNS__TXID", "a{sent_at}"),
            (
                "OUTBOXD_SOURCE__COLUMNS__SENT_AT",
                " xid8; DROP TABLE victim; --",
            ),
        ],
        [
            ("OUTBOXD_SOURCE__COLUMNS__TXID", "t{channel}"),
            ("OUTBOXD_SOURCE__CHANNEL", "\"; DROP TABLE victim; --"),
        ],
    ]
}

/// Creates the table the exploits aim at.
async fn victim(db: &TestDb) -> tokio_postgres::Client {
    let client = connect(&db.url).await;
    client
        .batch_execute("CREATE TABLE victim (n int)")
        .await
        .unwrap();
    client
}

/// Whether `victim` still exists.
async fn victim_survives(client: &tokio_postgres::Client) -> bool {
    client
        .query_one("SELECT to_regclass('victim') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_are_refused_by_check_config_and_migrate_naming_the_key() {
    for exploit in exploits() {
        // Given a database with a victim table and a configuration naming it
        let db = test_db().await;
        let client = victim(&db).await;
        let dir = tempfile::tempdir().unwrap();
        let path = write_config(&config_for(&db, &dir.path().join("log")), dir.path(), "c");

        for command in ["check-config", "migrate"] {
            // When the command runs with the hostile names from the environment
            let output = Command::new(env!("CARGO_BIN_EXE_outboxd"))
                .arg("--config")
                .arg(&path)
                .arg(command)
                .envs(exploit)
                .env_remove("RUST_LOG")
                .output()
                .unwrap();

            // Then it refuses, naming the key, and the victim table is still there
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(1), "{command}: {stderr}");
            assert!(
                stderr.contains("source.columns.txid: must not contain '{'"),
                "{command}: {stderr}"
            );
            assert!(victim_survives(&client).await, "{command} dropped victim");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_holding_a_placeholder_stays_one_quoted_identifier_in_the_migrations() {
    for (i, exploit) in exploits().into_iter().enumerate() {
        // Given names that skip the configuration check (the library is handed them directly)
        let db = test_db().await;
        let client = victim(&db).await;
        let dir = tempfile::tempdir().unwrap();
        let mut config: Config = config_for(&db, &dir.path().join("log"));
        config.source.columns.txid = exploit[0].1.into();
        if i == 0 {
            config.source.columns.sent_at = exploit[1].1.into();
        } else {
            config.source.channel = Some(exploit[1].1.into());
        }

        // When the migrations run
        migrate(&config).await;

        // Then the victim survives and the outbox has a column named exactly as configured
        assert!(victim_survives(&client).await, "exploit {i} dropped victim");
        let columns: Vec<String> = client
            .query(
                "SELECT attname::text FROM pg_attribute \
                 WHERE attrelid = 'outbox'::regclass AND attnum > 0",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert!(columns.contains(&exploit[0].1.to_string()), "{columns:?}");
    }
}
