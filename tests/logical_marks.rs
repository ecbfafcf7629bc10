//! Delivery marks in logical mode (issue #21, few repeats after a crash): while one key is held
//! in its lane (the broker keeps refusing it as busy), the slot cannot be confirmed past it, but
//! the other lanes deliver on. A relay SIGKILLed then must not deliver those again on restart:
//! the marks say, per key, what the broker already took.

mod common;

use common::amqp::{Topology, assert_queue_order, header, id_of, rabbit};
use common::pg::{TestDb, connect, test_db};
use common::relay::*;
use lapin::types::{AMQPValue, FieldTable};
use outboxd::config::SourceMode;
use outboxd::relay::lane_of;
use std::collections::HashSet;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

/// Inserts one event of `aggregatetype`, key `key`, with `seq` in its payload.
async fn write(db: &TestDb, aggregatetype: &str, key: &str, seq: i32) -> String {
    let client = connect(&db.url).await;
    client
        .execute(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
             VALUES ($1, $2, 'Step', jsonb_build_object('seq', $3::int))",
            &[&aggregatetype, &key, &seq],
        )
        .await
        .unwrap();
    client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0)
}

/// Whether the slot's confirmed position is past `lsn`.
async fn slot_past(db: &TestDb, lsn: &str) -> bool {
    connect(&db.url)
        .await
        .query_one(
            "SELECT confirmed_flush_lsn >= $2::text::pg_lsn FROM pg_replication_slots \
             WHERE slot_name = $1",
            &[&db.name, &lsn],
        )
        .await
        .unwrap()
        .get(0)
}

/// Waits until the queue's depth stops changing for a second; returns it.
async fn settled_depth(queue: &Topology) -> usize {
    let deadline = Instant::now() + WAIT;
    let mut last = usize::MAX;
    loop {
        let depth = queue.depth().await;
        if depth == last && depth > 0 {
            return depth;
        }
        assert!(Instant::now() < deadline, "the queue never settled");
        last = depth;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_delivered_past_a_held_slot_are_not_delivered_again_after_a_sigkill() {
    let Some(url) = rabbit().await else {
        return;
    };
    // Given a logical relay into RabbitMQ whose queue for `stuck.*` refuses every message
    // (full, reject-publish: a busy broker, retried in its lane without end)
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let main = Topology::declare(&url, "order.#").await;
    let mut full = FieldTable::default();
    full.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
    full.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    let stuck_queue = main.another_queue("stuck.#", full).await;
    let mut config = config_in(SourceMode::Logical, &db, &dir.path().join("log"));
    main.configure(&mut config);
    config.relay.retry_initial_ms = 20;
    config.relay.retry_max_ms = 100;
    migrate(&config).await;
    let env = [("OUTBOXD_SINK__AMQP__URL", url.as_str())];
    let relay = RelayProcess::spawn_with_env(&config, dir.path(), "first", &["run"], &env);

    // When one event is held that way, and 20 other keys write 10 events each after it
    let stuck_at = write(&db, "stuck", "s", 1).await;
    for seq in 1..=10 {
        for key in 0..20 {
            write(&db, "order", &format!("k{key}"), seq).await;
        }
    }

    // Then the lanes without the held key deliver theirs, and the slot stays before it
    let delivered = settled_depth(&main).await;
    assert!(
        delivered >= 50,
        "only {delivered} delivered past the held key"
    );
    assert!(
        !slot_past(&db, &stuck_at).await,
        "slot confirmed past a held event"
    );

    // When the relay is SIGKILLed, the broker stops refusing, and the relay starts again
    relay.kill();
    stuck_queue.delete_queue().await;
    let stuck_queue = main.another_queue("stuck.#", FieldTable::default()).await;
    let relay = RelayProcess::spawn_with_env(&config, dir.path(), "second", &["run"], &env);
    let end = write(&db, "order", "k0", 11).await;

    // Then everything arrives, each key in order, and nothing the first run delivered is
    // delivered again
    let deadline = Instant::now() + WAIT;
    while !slot_past(&db, &end).await {
        assert!(Instant::now() < deadline, "{}", relay.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    relay.kill();
    let messages = main.consume_all(WAIT).await;
    let (distinct, repeats) = assert_queue_order(&messages);
    assert_eq!(distinct, 201);
    // (Events of other keys in the held key's lane may have reached the broker in the lane's
    // run that never finished: in flight, unacknowledged, so repeated, as in polling mode.)
    let held_lane = lane_of("s", config.relay.lanes);
    let mut seen = HashSet::new();
    let repeated_elsewhere: Vec<String> = messages
        .iter()
        .filter(|message| !seen.insert(id_of(message)))
        .map(|message| header(message, "aggregateid").unwrap())
        .filter(|key| lane_of(key, config.relay.lanes) != held_lane)
        .collect();
    eprintln!("{repeats} repeats of {delivered} delivered before the kill");
    assert!(
        repeated_elsewhere.is_empty(),
        "delivered again after the kill, though acknowledged: events of {repeated_elsewhere:?}"
    );
    assert_eq!(stuck_queue.consume_all(WAIT).await.len(), 1);
    drop_slot(&db).await;
}
