//! The HTTP consumer API of the embedded log, against the real relay binary and PostgreSQL:
//! pages with long polls, the event stream and its resumption, authentication, and how
//! malformed requests are answered.

mod common;

use common::consume::{Sse, TOKEN, call, consume_config, ok, start_relay, wait_served};
use common::pg::test_db;
use common::relay::{create_aggregates, run_cli, write_config, write_events};
use outboxd::log::Durability;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_served_in_pages_and_a_long_poll_returns_as_soon_as_one_is_durable() {
    // Given a relay serving the consumer API over a log of 30 events.
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let config = consume_config(&db, &log);
    create_aggregates(&db, 5).await;
    let (_relay, addr) = start_relay(&config, dir.path(), "relay").await;
    write_events(&db, 1, 30, 5).await;
    wait_served(addr, 30).await;

    // When a consumer pages through them, it gets them in order, as `log read` prints them.
    let page = ok(addr, "GET", "/v1/records?from=0&limit=20", None).await;
    let records = page["records"].as_array().unwrap();
    assert_eq!(records.len(), 20);
    assert_eq!(page["next"], 20);
    let first = &records[0];
    for field in ["offset", "topic", "key", "appended_at", "event"] {
        assert!(first.get(field).is_some(), "record has {field}: {first}");
    }
    assert_eq!(first["key"], first["event"]["aggregateid"]);
    let (code, stdout, _) = run_cli(
        &write_config(&config, dir.path(), "cli"),
        &["log", "read", "--limit", "1"],
    );
    assert_eq!(code, 0);
    let printed: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(&printed, first, "the API serves what `log read` prints");
    let rest = ok(
        addr,
        "GET",
        "/v1/records?from=20&limit=100&wait_ms=5000",
        None,
    )
    .await;
    assert_eq!(
        rest["records"].as_array().unwrap().len(),
        10,
        "no wait when there are records"
    );
    assert_eq!(rest["next"], 30);
    let other_topic = ok(addr, "GET", "/v1/records?from=0&topic=nope", None).await;
    assert!(other_topic["records"].as_array().unwrap().is_empty());
    assert_eq!(other_topic["next"], 30, "skipped records move `next`");

    // When a consumer waits at the end of the log, it gets the next event once it is relayed.
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let page = ok(addr, "GET", "/v1/records?from=30&wait_ms=30000", None).await;
        (page, started.elapsed())
    });
    write_events(&db, 1, 1, 5).await;
    let (page, waited) = waiting.await.unwrap();
    assert_eq!(page["records"][0]["offset"], 30);
    assert!(
        waited < Duration::from_secs(25),
        "returned at the record: {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_resumed_with_last_event_id_misses_nothing_and_repeats_nothing() {
    // Given a relay with 100 events and writers adding 400 more while the client streams.
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let config = consume_config(&db, &log);
    create_aggregates(&db, 10).await;
    let (_relay, addr) = start_relay(&config, dir.path(), "relay").await;
    write_events(&db, 2, 50, 10).await;
    wait_served(addr, 100).await;
    let writers = {
        let db = db.clone();
        tokio::spawn(async move { write_events(&db, 4, 100, 10).await })
    };

    // When the client reads 150 events, disconnects, and reconnects to the same URL (from=0)
    // with the last id it saw, several times.
    let mut seen = Vec::new();
    let mut last: Option<String> = None;
    while seen.len() < 500 {
        let mut stream = Sse::open(addr, "/v1/stream?from=0", last.as_deref()).await;
        for _ in 0..150.min(500 - seen.len()) {
            let event = stream.next(Duration::from_secs(60)).await;
            assert_eq!(event.event, None, "a record event: {}", event.data);
            let id = event.id.expect("every event has an id");
            let record: serde_json::Value = serde_json::from_str(&event.data).unwrap();
            assert_eq!(record["offset"].to_string(), id, "id is the offset");
            seen.push(record["offset"].as_u64().unwrap());
            last = Some(id);
        }
        drop(stream);
    }
    writers.await.unwrap();

    // Then it saw every offset exactly once, in order.
    assert_eq!(seen, (0..500).collect::<Vec<u64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_api_needs_a_configured_token_and_never_logs_it() {
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let config = consume_config(&db, &log);
    create_aggregates(&db, 2).await;
    let (mut relay, addr) = start_relay(&config, dir.path(), "relay").await;
    write_events(&db, 1, 3, 2).await;
    wait_served(addr, 3).await;

    // No token, a wrong token, a token of another scheme: 401 with a JSON error.
    for token in [None, Some("wrong"), Some(&TOKEN[..TOKEN.len() - 1])] {
        let answer = call(addr, "GET", "/v1/records", token, None).await;
        assert_eq!(answer.status, 401, "{token:?}: {}", answer.text);
        assert!(answer.json["error"].is_string(), "{}", answer.text);
        let answer = call(
            addr,
            "POST",
            "/v1/groups/g/receive",
            token,
            Some(&json!({})),
        )
        .await;
        assert_eq!(answer.status, 401);
    }
    // The right token: 200. Health and metrics stay open.
    assert_eq!(
        call(addr, "GET", "/v1/records", Some(TOKEN), None)
            .await
            .status,
        200
    );
    for open in ["/healthz", "/metrics", "/readyz"] {
        assert_ne!(
            call(addr, "GET", open, None, None).await.status,
            401,
            "{open}"
        );
    }

    // The token appears neither in the relay's log nor in check-config's output.
    relay.signal(libc::SIGTERM);
    relay.wait_exit(Duration::from_secs(30));
    assert!(!relay.log_text().contains(TOKEN), "{}", relay.log_text());
    let path = write_config(&config, dir.path(), "check");
    std::fs::write(
        &path,
        std::fs::read_to_string(&path)
            .unwrap()
            .replace("\"********\"", &format!("\"{TOKEN}\"")),
    )
    .unwrap();
    let (code, stdout, stderr) = run_cli(&path, &["check-config"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("tokens") && !stdout.contains(TOKEN),
        "{stdout}"
    );
}

#[tokio::test]
async fn the_relay_refuses_to_serve_the_consumer_api_on_a_network_address_without_a_token() {
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = consume_config(&db, &dir.path().join("log"));
    config.http.consume.tokens.clear();
    config.http.listen = "0.0.0.0:0".into();
    let (code, _, stderr) = run_cli(&write_config(&config, dir.path(), "open"), &["run"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("http.consume.tokens"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_a_400_naming_the_field_unknown_groups_404_big_bodies_413() {
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut config = consume_config(&db, &log);
    config.http.consume.max_body_bytes = 2048;
    create_aggregates(&db, 2).await;
    let (_relay, addr) = start_relay(&config, dir.path(), "relay").await;
    write_events(&db, 1, 1, 2).await;
    wait_served(addr, 1).await;

    let bad = |path: &'static str, body: Option<serde_json::Value>, field: &'static str| async move {
        let method = if body.is_some() { "POST" } else { "GET" };
        let answer = call(addr, method, path, Some(TOKEN), body.as_ref()).await;
        assert_eq!(answer.status, 400, "{path}: {}", answer.text);
        let error = answer.json["error"].as_str().unwrap_or_default().to_owned();
        assert!(error.starts_with(&format!("{field}:")), "{path}: {error}");
    };
    ok(
        addr,
        "POST",
        "/v1/groups/g/receive",
        Some(&json!({"max": 1})),
    )
    .await;
    bad("/v1/records?limit=many", None, "limit").await;
    bad("/v1/records?from=-1", None, "from").await;
    bad("/v1/records?wait_ms=99999999", None, "wait_ms").await;
    bad("/v1/groups/g/receive", Some(json!({"max": "ten"})), "max").await;
    bad(
        "/v1/groups/g/receive",
        Some(json!({"visibility": 5})),
        "visibility",
    )
    .await;
    bad("/v1/groups/g/receive", Some(json!([1])), "body").await;
    bad("/v1/groups/g/ack", Some(json!({"ack_ids": "x"})), "ack_ids").await;
    bad(
        "/v1/groups/g/ack",
        Some(json!({"ack_ids": ["x"]})),
        "ack_ids",
    )
    .await;
    bad("/v1/groups/.bad/receive", Some(json!({})), "group").await;

    for (method, path) in [
        ("GET", "/v1/groups/never-made"),
        ("DELETE", "/v1/groups/never-made"),
    ] {
        let answer = call(addr, method, path, Some(TOKEN), None).await;
        assert_eq!(answer.status, 404, "{method} {path}: {}", answer.text);
        assert!(answer.json["error"].is_string());
    }
    let answer = call(
        addr,
        "POST",
        "/v1/groups/never-made/ack",
        Some(TOKEN),
        Some(&json!({"ack_ids": []})),
    )
    .await;
    assert_eq!(answer.status, 404, "{}", answer.text);

    let big = json!({ "ack_ids": vec!["0-1"; 1000] });
    let answer = call(addr, "POST", "/v1/groups/g/ack", Some(TOKEN), Some(&big)).await;
    assert_eq!(answer.status, 413, "{}", answer.text);
    assert!(answer.json["error"].is_string(), "{}", answer.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_api_is_off_unless_enabled() {
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = consume_config(&db, &dir.path().join("log"));
    config.http.consume.enabled = false;
    let (_relay, addr) = start_relay(&config, dir.path(), "relay").await;
    let answer = call(addr, "GET", "/v1/records", Some(TOKEN), None).await;
    assert_eq!(answer.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_wakes_for_a_new_record_in_the_interval_and_none_durability_modes_too() {
    for durability in [Durability::Interval, Durability::None] {
        // Given a relay writing its log in this mode, and a consumer waiting at its end.
        let db = test_db().await;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let mut config = consume_config(&db, &log);
        config.sink.log.durability = durability;
        create_aggregates(&db, 1).await;
        let (_relay, addr) = start_relay(&config, dir.path(), "relay").await;
        let waiting =
            tokio::spawn(
                async move { ok(addr, "GET", "/v1/records?from=0&wait_ms=60000", None).await },
            );

        // When an event is written, then the waiting consumer gets it well before its wait ends.
        let started = Instant::now();
        write_events(&db, 1, 1, 1).await;
        let page = waiting.await.unwrap();
        assert_eq!(page["records"][0]["offset"], 0, "{durability:?}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{durability:?}"
        );
    }
}
