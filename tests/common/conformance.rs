//! The sink conformance suite: the delivery promises every sink keeps, written once and run
//! against each sink through a small adapter ([`SinkUnderTest`]).
//!
//! A sink proves itself with one file, `tests/conformance_<sink>.rs`, that implements the
//! adapter (configure the relay for it, read back what it delivered, take it away and bring it
//! back, make it refuse an event, push back) and invokes [`suite!`]. The scenarios:
//!
//! - 10,000 events from 8 concurrent writers arrive once and in per-key order;
//! - a 30-s outage mid-stream loses nothing, and `/readyz` says 503 during it and 200 after;
//! - an event the sink refuses (oversize) becomes a dead letter, its key waits behind it, and
//!   other keys keep flowing;
//! - backpressure (the sink saying "not now") never makes a dead letter;
//! - repeated SIGKILLs of the relay process lose nothing;
//! - change data capture: a table's change events, applied per key, reproduce the table
//!   across SIGKILLs ([`super::conformance_cdc`]; adapters opt in with two methods).

use super::amqp::wait_settled;
pub use super::conformance_cdc::DeliveredChange;
pub use super::conformance_order::check_order;
use super::http::{get, wait_ready};
use super::pg::{TestDb, connect, test_db};
use super::relay::*;
use outboxd::config::Config;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// Longest wait for anything that should happen.
pub const WAIT: Duration = Duration::from_secs(120);

/// How long the outage scenario keeps a sink away.
pub const OUTAGE: Duration = Duration::from_secs(30);

/// One event as the sink delivered it, read back from the sink itself.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The event id.
    pub id: String,
    /// The ordering key (the aggregate id).
    pub key: String,
    /// The `seq` field of the payload: the writer's per-key sequence number.
    pub seq: i64,
    /// The ordered stream it landed in (a Kafka partition; 0 for sinks with one order).
    pub stream: i32,
}

/// How to make a sink refuse an event for good.
pub struct Refusal {
    /// The refused event's type (a sink may refuse an over-long one).
    pub event_type: String,
    /// Bytes of padding in the refused event's payload (a sink may refuse an oversize one).
    pub pad: usize,
    /// A piece of the reason the dead letter must carry.
    pub reason: &'static str,
}

/// What the suite needs to know about one sink. Each method's doc says what the scenario
/// relies on; an adapter that cannot support a scenario says why in a comment.
// The futures are only ever awaited in place by the test that made them, never spawned, so
// they need not be `Send`.
#[allow(async_fn_in_trait)]
pub trait SinkUnderTest: Sized {
    /// Whether the sink never holds an event twice, even after a crash or an outage (the
    /// embedded log checks its tail on start-up); brokers are at-least-once.
    const EXACTLY_ONCE: bool;

    /// How many times fewer events the scenarios write than they say (1: as they say). Only
    /// for an emulator far slower than the service it stands for, with the reason in the
    /// adapter; every promise is still checked, on fewer events.
    const SHRINK: usize = 1;

    /// A fresh, empty destination of its own; `None` (after printing why) skips the test,
    /// e.g. when the broker is not reachable outside CI.
    async fn setup() -> Option<Self>;

    /// Points `config`'s sink at the destination.
    fn configure(&self, config: &mut Config);

    /// Environment for a relay process: what the config file cannot carry (it masks secrets).
    fn env(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Everything delivered so far, each stream in its delivery order. May consume what it
    /// reads (a queue); the adapter then keeps it and returns it again next time.
    async fn delivered(&mut self) -> Vec<Delivered>;

    /// Readies an outage (e.g. a short message timeout, a file system that can make the log
    /// directory unwritable); `false` (after printing why) skips the scenario.
    async fn prepare_outage(&mut self, config: &mut Config) -> bool;

    /// Takes the sink away (`true`: no connection or write succeeds) or brings it back.
    async fn outage(&mut self, down: bool);

    /// Configures the sink to refuse an event, and describes that event.
    fn refusal(&self, config: &mut Config) -> Refusal;

    /// Readies backpressure; `None` when the sink has none to show (with a comment why).
    fn prepare_backpressure(&self, config: &mut Config) -> Option<()>;

    /// Starts (`true`) or stops pushing back.
    async fn backpressure(&mut self, on: bool);

    /// Whether the relay's `/metrics` show it is being held back hard enough that counting
    /// push-backs as failed attempts would have made dead letters (see the scenario).
    fn held_back(&self, metrics: &str, aggregates: usize) -> bool;

    /// Readies the sink and `config` (already `configure`d) for the change events of `table`
    /// (`schema.table`, also their `aggregatetype`; their `type` is the operation), e.g.
    /// creates the Kafka topic a `{aggregatetype}` template names; `false` (after printing
    /// why) skips the change-data-capture scenario.
    async fn prepare_changes(&mut self, _config: &mut Config, _table: &str) -> bool {
        let sink = std::any::type_name::<Self>();
        eprintln!("skipped: {sink} does not read back change events (prepare_changes)");
        false
    }

    /// Every change event of `table` delivered so far, each stream in delivery order, with its
    /// payload parsed. May consume what it reads, like [`Self::delivered`].
    async fn delivered_changes(&mut self, _table: &str) -> Vec<DeliveredChange> {
        Vec::new()
    }

    /// Removes what setup created.
    async fn teardown(self) {}
}

/// Invokes every scenario of the suite against the adapter `$sink`, one test each.
#[allow(unused_macros)]
macro_rules! suite {
    ($sink:ty) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn ten_thousand_events_from_eight_writers_arrive_once_and_in_key_order() {
            common::conformance::ten_thousand_events_arrive_once_in_order::<$sink>().await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_30_s_outage_mid_stream_loses_nothing_and_readyz_follows() {
            common::conformance::an_outage_loses_nothing::<$sink>().await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_refused_event_becomes_a_dead_letter_while_other_keys_flow() {
            common::conformance::a_refused_event_is_a_dead_letter::<$sink>().await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn backpressure_never_makes_a_dead_letter() {
            common::conformance::backpressure_makes_no_dead_letter::<$sink>().await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn repeated_sigkills_of_the_relay_lose_nothing() {
            common::conformance::sigkills_lose_nothing::<$sink>().await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn table_changes_across_sigkills_replay_to_the_table() {
            common::conformance_cdc::changes_replay_to_the_table::<$sink>().await;
        }
    };
}
// Only the conformance test files invoke it; every other test binary compiles this module too.
#[allow(unused_imports)]
pub(crate) use suite;

/// A database, a directory and a configuration pointed at `sink`.
async fn given<S: SinkUnderTest>(sink: &S) -> (TestDb, tempfile::TempDir, Config) {
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&db, &dir.path().join("log"));
    sink.configure(&mut config);
    (db, dir, config)
}

/// The relay binary on `config`, with the adapter's environment; returns it and its HTTP
/// address.
async fn spawn<S: SinkUnderTest>(
    sink: &S,
    config: &Config,
    dir: &Path,
    name: &str,
) -> (RelayProcess, SocketAddr) {
    let env = sink.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut relay = RelayProcess::spawn_with_env(config, dir, name, &["run"], &env);
    let addr = relay.http_addr().await;
    (relay, addr)
}

/// 10,000 events from 8 connections over 50 shared keys all arrive, none twice, each key's
/// sequence complete and in order, and no row is a dead letter.
pub async fn ten_thousand_events_arrive_once_in_order<S: SinkUnderTest>() {
    // Given a relay delivering to the sink, and 50 aggregates that writers serialize on
    let Some(mut sink) = S::setup().await else {
        return;
    };
    let (db, _dir, config) = given(&sink).await;
    let relay = InProcessRelay::start(&config).await;
    create_aggregates(&db, 50).await;

    // When 8 connections write 1,250 events each, concurrently
    write_events(&db, 8, 1250 / S::SHRINK, 50).await;

    // Then every row is sent only once the sink confirmed it, and the sink holds all 10,000
    // once each, every key in order
    let total = 10_000 / S::SHRINK;
    wait_settled(&db, total as i64, WAIT).await;
    relay.stop().await;
    let (distinct, repeats) = check_order(&sink.delivered().await);
    assert_eq!((distinct, repeats), (total, 0));
    assert_eq!(failed_rows(&db).await, 0);
    sink.teardown().await;
}

/// Mid-stream the sink goes away for [`OUTAGE`] while more events are written: `/readyz`
/// turns 503, nothing is marked sent meanwhile; once it is back everything arrives, in order,
/// and `/readyz` turns 200.
pub async fn an_outage_loses_nothing<S: SinkUnderTest>() {
    // Given a relay process delivering to a sink that can be taken away
    let Some(mut sink) = S::setup().await else {
        return;
    };
    let (db, dir, mut config) = given(&sink).await;
    if !sink.prepare_outage(&mut config).await {
        return;
    }
    config.source.batch_size = 100;
    migrate(&config).await;
    create_aggregates(&db, 20).await;
    let (relay, addr) = spawn(&sink, &config, dir.path(), "relay").await;
    let writers = tokio::spawn({
        let db = db.clone();
        async move { write_events(&db, 4, 500 / S::SHRINK, 20).await }
    });

    // When, once 300 are sent, the sink goes away for 30 s while 500 more are written
    wait_sent_at_least(&db, 300 / S::SHRINK as i64).await;
    sink.outage(true).await;
    let down_at = Instant::now();
    let more = tokio::spawn({
        let db = db.clone();
        async move { write_events(&db, 2, 250 / S::SHRINK, 20).await }
    });

    // Then /readyz says the sink is down, and no row is marked sent until it is back
    let body = wait_ready(addr, 503, OUTAGE).await;
    let down_after = down_at.elapsed();
    assert!(body.contains("sink: down"), "{body}");
    writers.await.unwrap();
    more.await.unwrap();
    let sent = sent_count(&db).await;
    // A fixed wait: "nothing is marked sent during the outage" can only be checked by letting
    // the outage last; its length is the scenario's.
    tokio::time::sleep_until((down_at + OUTAGE).into()).await;
    assert_eq!(
        sent_count(&db).await,
        sent,
        "rows marked sent while the sink was away"
    );
    assert_eq!(get(addr, "/readyz").await.0, 503);

    // When it is back and 500 more are written
    sink.outage(false).await;
    write_events(&db, 2, 250 / S::SHRINK, 20).await;

    // Then all 3,000 are settled, /readyz is ready again, and the sink holds every event with
    // each key in order
    let total = 3000 / S::SHRINK;
    wait_settled(&db, total as i64, WAIT).await;
    wait_ready(addr, 200, WAIT).await;
    relay.kill();
    let (distinct, repeats) = check_order(&sink.delivered().await);
    println!(
        "{} away for {OUTAGE:?} (not ready after {down_after:?}): {distinct} distinct, \
         {repeats} duplicates, {sent} sent before",
        std::any::type_name::<S>()
    );
    assert_eq!(distinct, total);
    if S::EXACTLY_ONCE {
        assert_eq!(repeats, 0, "duplicates after the outage");
    }
    assert_eq!(failed_rows(&db).await, 0);
    sink.teardown().await;
}

/// Key `1` has a small event, one the sink refuses, and a small one; keys `2`..`5` have small
/// ones, before and after the refusal. The refused event becomes a dead letter with the sink's
/// reason, the event after it waits (default `relay.on_dead_letter = block_aggregate`), and
/// every other key's events arrive, in order.
pub async fn a_refused_event_is_a_dead_letter<S: SinkUnderTest>() {
    // Given a sink that refuses one kind of event, and one of them between two small events
    // of key 1, committed with small events of four other keys
    let Some(mut sink) = S::setup().await else {
        return;
    };
    let (db, _dir, mut config) = given(&sink).await;
    let refusal = sink.refusal(&mut config);
    migrate(&config).await;
    let refused = ("1", 2, refusal.event_type.as_str(), refusal.pad);
    let mut first = vec![("1", 1, "Step", 0), refused];
    first.push(("1", 3, "Step", 0));
    for key in ["2", "3", "4", "5"] {
        first.extend((1..=3).map(|seq| (key, seq, "Step", 0)));
    }
    insert_events(&db, &first).await;

    // When the relay runs
    let relay = InProcessRelay::start(&config).await;

    // Then the refused event becomes a dead letter, and the other keys' later events flow
    wait_failed(&db, 1).await;
    let later: Vec<_> = ["2", "3", "4", "5"]
        .into_iter()
        .flat_map(|key| (4..=6).map(move |seq| (key, seq, "Step", 0)))
        .collect();
    insert_events(&db, &later).await;
    wait_sent_at_least(&db, 1 + 4 * 6).await;
    // (stopping settles whatever the relay had in flight, so what follows is final)
    relay.stop().await;
    let client = connect(&db.url).await;
    let failed = client
        .query_one(
            "SELECT aggregateid, (payload->>'seq')::int, last_error FROM outbox \
             WHERE failed_at IS NOT NULL",
            &[],
        )
        .await
        .unwrap();
    let reason: String = failed.get(2);
    assert_eq!(
        (failed.get::<_, String>(0), failed.get::<_, i32>(1)),
        ("1".into(), 2)
    );
    assert!(reason.contains(refusal.reason), "{reason}");
    // And the event behind it in its key waits, undelivered
    let waiting: Vec<(String, i32)> = client
        .query(
            "SELECT aggregateid, (payload->>'seq')::int FROM outbox \
             WHERE sent_at IS NULL AND failed_at IS NULL",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(waiting, [("1".to_string(), 3)]);
    let delivered = sink.delivered().await;
    let (distinct, _) = check_order(&delivered);
    assert_eq!(distinct, 1 + 4 * 6);
    let of_key_1: Vec<i64> = delivered
        .iter()
        .filter(|d| d.key == "1")
        .map(|d| d.seq)
        .collect();
    assert_eq!(of_key_1, [1]);
    sink.teardown().await;
}

/// While the sink pushes back, events wait, however often the relay is told "not now"; with
/// `relay.max_attempts` at 2, counting a push-back as a failed attempt would make dead letters
/// at once. Once it stops, everything arrives in order, and no row is a dead letter.
pub async fn backpressure_makes_no_dead_letter<S: SinkUnderTest>() {
    // Given a relay process delivering to a sink that pushes back
    let Some(mut sink) = S::setup().await else {
        return;
    };
    let (db, dir, mut config) = given(&sink).await;
    if sink.prepare_backpressure(&mut config).is_none() {
        eprintln!(
            "not applicable: {} has no backpressure to show",
            std::any::type_name::<S>()
        );
        return;
    }
    config.relay.max_attempts = 2;
    config.source.batch_size = 200;
    migrate(&config).await;
    const AGGREGATES: usize = 20;
    create_aggregates(&db, AGGREGATES).await;
    sink.backpressure(true).await;
    let (relay, addr) = spawn(&sink, &config, dir.path(), "relay").await;

    // When 2,000 events are written
    write_events(&db, 4, 500 / S::SHRINK, AGGREGATES).await;

    // Then the relay is held back, and no row becomes a dead letter
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, metrics) = get(addr, "/metrics").await;
        assert_eq!(failed_rows(&db).await, 0, "a push-back made a dead letter");
        assert_eq!(total(&metrics, "outboxd_dead_letters_total"), 0.0);
        if sink.held_back(&metrics, AGGREGATES) {
            break;
        }
        assert!(Instant::now() < deadline, "never held back:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // When the sink stops pushing back
    sink.backpressure(false).await;

    // Then every event arrives, each key in order, and none is a dead letter
    let events = 2000 / S::SHRINK;
    wait_settled(&db, events as i64, WAIT).await;
    let (_, metrics) = get(addr, "/metrics").await;
    relay.kill();
    assert_eq!(failed_rows(&db).await, 0, "a push-back made a dead letter");
    assert_eq!(total(&metrics, "outboxd_dead_letters_total"), 0.0);
    let (distinct, _) = check_order(&sink.delivered().await);
    assert_eq!(distinct, events);
    sink.teardown().await;
}

/// The relay process is SIGKILLed five times while 3,000 events stream in, each time after it
/// delivered a little more; after a last start every event has arrived, each key in order.
pub async fn sigkills_lose_nothing<S: SinkUnderTest>() {
    // Given writers producing 3,000 events, and a relay process
    let Some(mut sink) = S::setup().await else {
        return;
    };
    let (db, dir, mut config) = given(&sink).await;
    config.source.batch_size = 100;
    migrate(&config).await;
    create_aggregates(&db, 20).await;
    let writers = tokio::spawn({
        let db = db.clone();
        async move { write_events(&db, 4, 750 / S::SHRINK, 20).await }
    });

    // When it is SIGKILLed five times, each time after it marked a little more sent
    const KILLS: usize = 5;
    for kill in 0..KILLS {
        let (relay, _) = spawn(&sink, &config, dir.path(), &format!("run-{kill}")).await;
        let sent = sent_count(&db).await;
        let total = 3000 / S::SHRINK as i64;
        let target = (sent + 1 + fastrand::i64(0..total / 10)).min(total);
        wait_sent_at_least(&db, target).await;
        relay.kill();
    }
    writers.await.unwrap();
    let (last, _) = spawn(&sink, &config, dir.path(), "last").await;

    // Then every event arrives, each key in order
    let total = 3000 / S::SHRINK;
    wait_settled(&db, total as i64, WAIT).await;
    last.kill();
    let (distinct, repeats) = check_order(&sink.delivered().await);
    println!(
        "{}, {KILLS} kills: {distinct} distinct, {repeats} duplicates",
        std::any::type_name::<S>()
    );
    assert_eq!(distinct, total);
    if S::EXACTLY_ONCE {
        assert_eq!(repeats, 0, "duplicates after {KILLS} kills");
    }
    assert_eq!(failed_rows(&db).await, 0);
    sink.teardown().await;
}

/// Inserts events given as (key, seq, type, payload padding) in one transaction.
async fn insert_events(db: &TestDb, events: &[(&str, i32, &str, usize)]) {
    let mut client = connect(&db.url).await;
    let tx = client.transaction().await.unwrap();
    for (key, seq, event_type, pad) in events {
        tx.execute(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
             VALUES ('order', $1, $2, jsonb_build_object('seq', $3::int, 'pad', repeat('x', $4)))",
            &[key, event_type, seq, &(*pad as i32)],
        )
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
}

/// How many rows are marked sent.
async fn sent_count(db: &TestDb) -> i64 {
    connect(&db.url)
        .await
        .query_one("SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0)
}

/// Waits until `count` rows are marked failed.
async fn wait_failed(db: &TestDb, count: i64) {
    let deadline = Instant::now() + WAIT;
    while failed_rows(db).await < count {
        assert!(Instant::now() < deadline, "no row marked failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The sum of every sample of the metric `name`, whatever its labels.
pub fn total(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
