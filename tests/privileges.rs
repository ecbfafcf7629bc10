//! The least privileges the polling relay needs, and the exact error when one is missing.

mod common;

use common::pg::{connect, test_db};
use common::relay::*;
use outboxd::config::{DbUrl, OnSent};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_with_only_select_and_update_relays_and_a_missing_grant_is_named() {
    // Given an outbox migrated by its owner, and a login role granted only what README lists
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut config = config_for(&db, &log);
    migrate(&config).await;
    let role = format!("relay_{}", &db.name[db.name.len() - 8..]);
    let owner = connect(&db.url).await;
    owner
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN;
             GRANT USAGE ON SCHEMA public TO {role};
             GRANT SELECT, UPDATE ON outbox TO {role};
             GRANT SELECT ON outboxd_migrations TO {role};"
        ))
        .await
        .unwrap();
    config.source.url = DbUrl::new(db.url.replacen("postgres@", &format!("{role}@"), 1));

    // When the relay runs as that role, then events flow
    let relay = RelayProcess::spawn(&config, dir.path(), "limited", &["run"]);
    owner
        .execute(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('t','a','E','{}')",
            &[],
        )
        .await
        .unwrap();
    wait_for_events(&[&log], 1, Duration::from_secs(60)).await;
    relay.kill();

    // When UPDATE is revoked, then start-up fails naming the privilege and the fix
    owner
        .batch_execute(&format!("REVOKE UPDATE ON outbox FROM {role}"))
        .await
        .unwrap();
    let path = write_config(&config, dir.path(), "no-update");
    let (code, _, stderr) = run_cli(&path, &["run"]);
    assert_eq!(code, 1, "{stderr}");
    let expected = format!(
        "role \"{role}\" lacks UPDATE on \"public\".\"outbox\" (to mark events sent or failed); \
         grant with: GRANT SELECT, UPDATE ON \"public\".\"outbox\" TO \"{role}\""
    );
    assert!(stderr.contains(&expected), "{stderr}");

    // And in delete mode a missing DELETE is named the same way
    owner
        .batch_execute(&format!("GRANT UPDATE ON outbox TO {role}"))
        .await
        .unwrap();
    config.source.on_sent = OnSent::Delete;
    let path = write_config(&config, dir.path(), "no-delete");
    let (code, _, stderr) = run_cli(&path, &["run"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("role \"{role}\" lacks DELETE")),
        "{stderr}"
    );
}
