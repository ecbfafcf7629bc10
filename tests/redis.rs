//! The Redis Streams sink against real servers (the shared one at 127.0.0.1:6379, or a private
//! `redis-server` where a test changes server-wide settings): the entry shape, trimming, what
//! each failure answer becomes, ACL credentials, and the persistence warning. The shared
//! delivery scenarios are in conformance_redis.rs.

mod common;

use common::conformance::{Delivered, WAIT, check_order};
use common::events::outbox_event;
use common::pg::test_db;
use common::redis::{
    PrivateRedis, config_set, configure, connect, read_stream, redis_server, unique_prefix,
};
use common::relay::*;
use outboxd::config::{Config, DbUrl, Secret};
use outboxd::error::ErrorKind;
use outboxd::event::Event;
use outboxd::sink::{Outcome, RedisSink, Sink, SinkContext};
use serde_json::value::RawValue;
use std::time::Duration;

/// A config writing to the server at `addr`, stream keys `<prefix>:{aggregatetype}`.
fn config_at(addr: &str, prefix: &str) -> Config {
    let mut config = Config::default();
    configure(&mut config, addr, &format!("{prefix}:{{aggregatetype}}"));
    config
}

/// Opens the sink of `config`.
async fn open(config: &Config) -> outboxd::error::Result<RedisSink> {
    RedisSink::open(&config.sink.redis, &SinkContext::default()).await
}

#[tokio::test]
async fn entries_carry_the_event_fields_and_maxlen_trims_the_stream() {
    // Given a sink trimming streams to about 100 entries
    let Some(mut shared) = redis_server().await else {
        return;
    };
    let prefix = unique_prefix();
    let mut config = config_at("127.0.0.1:6379", &prefix);
    config.sink.redis.maxlen = Some(100);
    let mut sink = open(&config).await.unwrap();

    // When an event with row headers and then 1,000 more are appended
    let mut first = outbox_event("42", 1);
    first.headers = Some(RawValue::from_string(r#"{"trace":"t-1"}"#.into()).unwrap());
    assert_eq!(
        sink.publish(std::slice::from_ref(&first)).await.unwrap(),
        [Outcome::Delivered]
    );
    let key = format!("{prefix}:order");
    let entries = read_stream(&mut shared, &key).await;
    let batch: Vec<Event> = (2..=1001)
        .map(|seq| outbox_event(&format!("k{}", seq % 7), seq))
        .collect();
    let outcomes = sink.publish(&batch).await.unwrap();

    // Then the first entry has the event's fields, and the stream was trimmed
    let names: Vec<&str> = entries[0].fields.iter().map(|f| f.0.as_str()).collect();
    assert_eq!(names, ["id", "type", "key", "payload", "headers"]);
    assert_eq!(entries[0].field("id"), Some(first.id.as_str()));
    assert_eq!(entries[0].field("type"), Some("Placed"));
    assert_eq!(entries[0].field("key"), Some("42"));
    assert_eq!(entries[0].field("payload"), Some(r#"{"seq":1}"#));
    let headers: serde_json::Value =
        serde_json::from_str(entries[0].field("headers").unwrap()).unwrap();
    assert_eq!(headers["aggregateid"], "42");
    assert_eq!(headers["trace"], "t-1");
    assert!(outcomes.iter().all(|o| *o == Outcome::Delivered));
    let len: u64 = redis::cmd("XLEN")
        .arg(&key)
        .query_async(&mut shared)
        .await
        .unwrap();
    assert!((100..1001).contains(&len), "XLEN {len}");
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut shared)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_key_of_another_type_is_a_dead_letter_naming_it_and_other_keys_flow() {
    // Given a stream key that holds a string
    let Some(mut shared) = redis_server().await else {
        return;
    };
    let prefix = unique_prefix();
    let mut config = config_at("127.0.0.1:6379", &prefix);
    config.sink.redis.stream = format!("{prefix}:{{key}}");
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}:a"))
        .arg("x")
        .query_async(&mut shared)
        .await
        .unwrap();
    let mut sink = open(&config).await.unwrap();

    // When events of that key and another are appended
    let outcomes = sink
        .publish(&[
            outbox_event("a", 1),
            outbox_event("b", 1),
            outbox_event("a", 2),
            outbox_event("b", 2),
        ])
        .await
        .unwrap();

    // Then the first is refused naming the key, its key's next waits, the other key flows
    let Outcome::Refused(reason) = &outcomes[0] else {
        panic!("{outcomes:?}")
    };
    assert!(
        reason.contains(&format!("\"{prefix}:a\"")) && reason.contains("WRONGTYPE"),
        "{reason}"
    );
    assert_eq!(
        outcomes[1..],
        [Outcome::Delivered, Outcome::Deferred, Outcome::Delivered]
    );
}

#[tokio::test]
async fn out_of_memory_pushes_back_and_a_read_only_replica_fails_the_batch_until_promoted() {
    // Given a private server and a sink on it
    if redis_server().await.is_none() {
        return;
    }
    let server = PrivateRedis::start(&[]);
    let mut admin = connect(&server.addr).await.unwrap();
    let mut sink = open(&config_at(&server.addr, "t")).await.unwrap();

    // When it is out of memory: busy, the key's later event waits, nothing is stored
    config_set(&mut admin, "maxmemory", "1").await;
    let outcomes = sink
        .publish(&[outbox_event("a", 1), outbox_event("a", 2)])
        .await
        .unwrap();
    assert!(
        matches!(&outcomes[0], Outcome::Busy(r) if r.contains("OOM")),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[1], Outcome::Deferred);
    config_set(&mut admin, "maxmemory", "0").await;

    // When it becomes a read-only replica: a retryable error saying so, and not ready
    let primary = PrivateRedis::start(&[]);
    let port = primary.socket_addr().port().to_string();
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(&port)
        .query_async(&mut admin)
        .await
        .unwrap();
    let err = sink.publish(&[outbox_event("a", 1)]).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("read-only replica"), "{err}");
    assert!(!sink.is_healthy());

    // Then once promoted, the same events go through: no wedge
    let _: () = redis::cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query_async(&mut admin)
        .await
        .unwrap();
    let outcomes = sink
        .publish(&[outbox_event("a", 1), outbox_event("a", 2)])
        .await
        .unwrap();
    assert_eq!(outcomes, [Outcome::Delivered, Outcome::Delivered]);
    assert!(sink.probe().await);
}

#[tokio::test]
async fn acl_credentials_are_used_and_never_printed() {
    // Given a private server with an ACL user
    if redis_server().await.is_none() {
        return;
    }
    let server =
        PrivateRedis::start(&["--user", "app", "on", ">Hunter2Secret", "~*", "&*", "+@all"]);
    let mut config = config_at(&server.addr, "t");
    config.sink.redis.username = Some("app".into());

    // When the password is wrong, start-up fails naming the keys, not the password
    config.sink.redis.password = Secret::new("WrongSecret");
    let err = open(&config).await.err().expect("wrong password");
    assert_eq!(err.kind(), ErrorKind::Config);
    let text = err.chain();
    assert!(text.contains("sink.redis.password"), "{text}");
    assert!(!text.contains("WrongSecret"), "{text}");

    // When it is right (here in the URL), events are appended
    config.sink.redis.username = None;
    config.sink.redis.password = Secret::default();
    config.sink.redis.url = DbUrl::new(format!("redis://app:Hunter2Secret@{}", server.addr));
    assert!(!format!("{:?}", config.sink.redis).contains("Hunter2Secret"));
    let mut sink = open(&config).await.unwrap();
    assert_eq!(
        sink.publish(&[outbox_event("a", 1)]).await.unwrap(),
        [Outcome::Delivered]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_warns_once_naming_the_settings_when_redis_could_lose_acknowledged_entries() {
    // Given a server without an fsynced append-only file, and one with it
    if redis_server().await.is_none() {
        return;
    }
    let lossy = PrivateRedis::start(&["--appendonly", "no"]);
    let durable = PrivateRedis::start(&["--appendonly", "yes", "--appendfsync", "always"]);
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&db, &dir.path().join("log"));
    config.relay.lanes = 4;
    migrate(&config).await;

    // When a relay starts on each
    configure(&mut config, &lossy.addr, "t:{aggregatetype}");
    let mut on_lossy = RelayProcess::spawn(&config, dir.path(), "lossy", &["run"]);
    on_lossy
        .wait_for_log_line(&["connected to Redis"], Duration::from_secs(60))
        .await;
    configure(&mut config, &durable.addr, "t:{aggregatetype}");
    let mut on_durable = RelayProcess::spawn(&config, dir.path(), "durable", &["run"]);
    on_durable
        .wait_for_log_line(&["connected to Redis"], Duration::from_secs(60))
        .await;

    // Then the first warns once, naming both settings, and the second does not
    let log = on_lossy.log_text();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("fsynced")).collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(
        warnings[0].contains("appendonly") && warnings[0].contains("appendfsync"),
        "{log}"
    );
    assert!(
        !on_durable.log_text().contains("fsynced"),
        "{}",
        on_durable.log_text()
    );
}

#[tokio::test]
async fn rediss_with_a_private_ca_is_trusted_with_ca_file_only() {
    // Given a TLS-only server with a certificate from a private CA
    if redis_server().await.is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    common::certs::certificates(dir.path());
    let file = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let server = PrivateRedis::start(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &file("server.crt"),
        "--tls-key-file",
        &file("server.key"),
        "--tls-auth-clients",
        "no",
    ]);
    let mut config = config_at(&server.addr, "t");
    config.sink.redis.url = DbUrl::new(format!("rediss://localhost:{tls_port}"));

    // When the CA file is not given, start-up fails
    assert!(open(&config).await.is_err());

    // When it is, events are appended
    config.sink.redis.ca_file = Some(dir.path().join("ca.crt"));
    config.sink.redis.validate().unwrap();
    let mut sink = open(&config).await.unwrap();
    assert_eq!(
        sink.publish(&[outbox_event("a", 1)]).await.unwrap(),
        [Outcome::Delivered]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_sigkills_during_20_000_events_lose_nothing_and_keep_each_key_in_order() {
    // Given writers producing 20,000 events, and a relay process appending to a stream
    let Some(mut shared) = redis_server().await else {
        return;
    };
    let prefix = unique_prefix();
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&db, &dir.path().join("log"));
    configure(
        &mut config,
        "127.0.0.1:6379",
        &format!("{prefix}:{{aggregatetype}}"),
    );
    config.source.batch_size = 200;
    migrate(&config).await;
    create_aggregates(&db, 50).await;
    const TOTAL: i64 = 20_000;
    let writers = tokio::spawn({
        let db = db.clone();
        async move { write_events(&db, 4, 5000, 50).await }
    });

    // When it is SIGKILLed ten times, each time after it marked a little more sent
    for kill in 0..10 {
        let mut relay = RelayProcess::spawn(&config, dir.path(), &format!("run-{kill}"), &["run"]);
        relay.http_addr().await;
        let sent = sent_rows(&db).await;
        wait_sent_at_least(&db, (sent + 1 + fastrand::i64(0..1500)).min(TOTAL)).await;
        relay.kill();
    }
    writers.await.unwrap();
    let mut last = RelayProcess::spawn(&config, dir.path(), "last", &["run"]);
    last.http_addr().await;

    // Then every event is in the stream, each key in order (a batch a kill interrupted may be
    // appended again: at-least-once)
    common::amqp::wait_settled(&db, TOTAL, WAIT * 3).await;
    last.kill();
    let key = format!("{prefix}:order");
    let delivered: Vec<Delivered> = read_stream(&mut shared, &key)
        .await
        .iter()
        .map(|entry| Delivered {
            id: entry.field("id").expect("id field").to_string(),
            key: entry.field("key").expect("key field").to_string(),
            seq: entry.seq(),
            stream: 0,
        })
        .collect();
    let (distinct, repeats) = check_order(&delivered);
    println!("10 kills, {TOTAL} events: {distinct} distinct, {repeats} appended again");
    assert_eq!(distinct, TOTAL as usize);
    assert_eq!(failed_rows(&db).await, 0);
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut shared)
        .await
        .unwrap();
}

/// How many rows are marked sent.
async fn sent_rows(db: &common::pg::TestDb) -> i64 {
    common::pg::connect(&db.url)
        .await
        .query_one("SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0)
}
