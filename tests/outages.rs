//! Issue #10's fault matrix, the outage rows: the embedded log's disk fills up, its directory
//! turns unwritable (or is read-only from the start), RabbitMQ is unreachable for 30 s, every
//! Kafka broker is down for 30 s. Each relay runs as its own process, so its `/readyz` and
//! metrics are its own.
//!
//! Each outage comes mid-stream, while writers commit events, and each test ends by checking
//! that every event written arrived, each aggregate in order.

mod common;

use common::amqp::{Topology, assert_queue_order, rabbit, wait_settled};
use common::disk::{Tmpfs, fill_leaving};
use common::http::{get, wait_ready};
use common::kafka::{TestKafka, assert_partition_order};
use common::pg::{TestDb, connect, test_db};
use common::proxy::Proxy;
use common::relay::*;
use outboxd::log::{LogWriter, WriterOptions};
use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Longest wait for anything that should happen.
const WAIT: Duration = Duration::from_secs(120);

/// How long a sink stays unreachable.
const OUTAGE: Duration = Duration::from_secs(30);

/// Ids of the rows marked sent.
async fn sent_ids(db: &TestDb) -> HashSet<String> {
    connect(&db.url)
        .await
        .query("SELECT id::text FROM outbox WHERE sent_at IS NOT NULL", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_log_disk_stops_acknowledging_until_space_returns_and_nothing_is_lost() {
    // Given a relay whose log lives on a 1 MiB tmpfs, with 100 events already relayed
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&dir.path().join("disk"), "size=1m") else {
        return;
    };
    let log = disk.dir.join("log");
    let db = test_db().await;
    let mut config = config_for(&db, &log);
    config.source.batch_size = 100;
    migrate(&config).await;
    create_aggregates(&db, 20).await;
    let mut relay = RelayProcess::spawn(&config, dir.path(), "relay", &["run"]);
    let addr = relay.http_addr().await;
    write_events(&db, 2, 50, 20).await;
    wait_for_events(&[&log], 100, WAIT).await;
    wait_ready(addr, 200, WAIT).await;

    // When a filler file leaves 64 KiB free and 3,000 more events (about 450 KiB of log) are
    // written
    let filler = disk.dir.join("filler");
    fill_leaving(&filler, 64 * 1024);
    let started = Instant::now();
    write_events(&db, 4, 750, 20).await;

    // Then the relay says why, naming the log directory, and /readyz is not ready
    let line = relay
        .wait_for_log_line(
            &[&log.display().to_string(), "No space left on device"],
            WAIT,
        )
        .await;
    println!("disk full after {:?}: {line}", started.elapsed());
    let body = wait_ready(addr, 503, WAIT).await;
    assert!(body.contains("sink: down"), "{body}");
    // And it stops acknowledging, with every row marked sent already in the log
    let sent = sent_ids(&db).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sent_ids(&db).await,
        sent,
        "rows were marked sent while the disk was full"
    );
    assert!(sent.len() < 3100, "the disk never filled");
    let logged: HashSet<String> = read_log(&log).into_iter().map(|r| r.event.id).collect();
    assert!(
        sent.is_subset(&logged),
        "a row marked sent is not in the log"
    );
    assert!(
        relay.child.try_wait().unwrap().is_none(),
        "the relay exited"
    );

    // When space returns
    std::fs::remove_file(&filler).unwrap();

    // Then every event arrives exactly once, each aggregate in order, all rows are sent, and
    // /readyz is ready again
    let logs = wait_for_events(&[&log], 3100, WAIT).await;
    wait_sent_at_least(&db, 3100).await;
    wait_ready(addr, 200, WAIT).await;
    let repeats = assert_in_order(&logs[0]);
    assert_eq!(repeats, 0, "the log holds {repeats} duplicates");
    assert_eq!(
        assert_complete(&logs[0].iter().collect::<Vec<_>>(), 3100),
        0
    );
    // And after a clean stop the log opens for writing with nothing to recover or cut
    relay.signal(libc::SIGTERM);
    assert_eq!(relay.wait_exit(Duration::from_secs(30)), Some(0));
    let writer = LogWriter::open(&log, WriterOptions::default()).unwrap();
    assert_eq!(writer.next_offset(), 3100);
}

/// `chattr <flag> <path>`; whether it worked.
fn chattr(flag: &str, path: &Path) -> bool {
    let status = Command::new("chattr").arg(flag).arg(path).status();
    status.is_ok_and(|status| status.success())
}

/// Clears the immutable flag of a directory on drop, so a failing test still cleans up.
struct Immutable<'a>(&'a Path);

impl Drop for Immutable<'_> {
    fn drop(&mut self) {
        chattr("-i", self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_directory_that_turns_unwritable_mid_stream_stops_acknowledging_until_it_is_writable()
{
    // Given a relay whose log rolls a segment every 16 KiB, with 100 events relayed. (Root
    // ignores permission bits and cannot remount read-only while the relay has files open for
    // writing, but an immutable directory refuses new files even to root; the open segment
    // stays writable, so the failure comes at the next roll.)
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&dir.path().join("disk"), "size=16m") else {
        return;
    };
    let log = disk.dir.join("log");
    let db = test_db().await;
    let mut config = config_for(&db, &log);
    config.source.batch_size = 100;
    config.sink.log.segment_bytes = 16 * 1024;
    migrate(&config).await;
    create_aggregates(&db, 20).await;
    let mut relay = RelayProcess::spawn(&config, dir.path(), "relay", &["run"]);
    let addr = relay.http_addr().await;
    write_events(&db, 2, 50, 20).await;
    wait_for_events(&[&log], 100, WAIT).await;

    // When the log directory becomes immutable and 1,000 more events are written
    if !chattr("+i", &log) {
        eprintln!("skipped: chattr +i does not work here");
        return;
    }
    let immutable = Immutable(&log);
    write_events(&db, 4, 250, 20).await;

    // Then the relay says why, naming the directory, /readyz is not ready, and it stops
    // acknowledging, with every row marked sent already in the log
    let line = relay
        .wait_for_log_line(
            &[&log.display().to_string(), "Operation not permitted"],
            WAIT,
        )
        .await;
    println!("unwritable: {line}");
    wait_ready(addr, 503, WAIT).await;
    let sent = sent_ids(&db).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sent_ids(&db).await,
        sent,
        "rows marked sent while unwritable"
    );
    assert!(sent.len() < 1100, "the log never needed a new segment");
    let logged: HashSet<String> = read_log(&log).into_iter().map(|r| r.event.id).collect();
    assert!(
        sent.is_subset(&logged),
        "a row marked sent is not in the log"
    );

    // When it is writable again
    drop(immutable);

    // Then every event arrives exactly once, each aggregate in order, and it is ready again
    let logs = wait_for_events(&[&log], 1100, WAIT).await;
    wait_sent_at_least(&db, 1100).await;
    wait_ready(addr, 200, WAIT).await;
    assert_eq!(assert_in_order(&logs[0]), 0, "duplicates in the log");
    assert_eq!(
        assert_complete(&logs[0].iter().collect::<Vec<_>>(), 1100),
        0
    );
    relay.signal(libc::SIGTERM);
    assert_eq!(relay.wait_exit(Duration::from_secs(30)), Some(0));
    let writer = LogWriter::open(&log, WriterOptions::default()).unwrap();
    assert_eq!(writer.next_offset(), 1100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_log_disk_at_start_up_is_one_clear_error() {
    // Given a log directory on a read-only file system (root ignores permission bits, so a
    // read-only mount is the way to make it unwritable)
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&dir.path().join("disk"), "size=1m,ro") else {
        return;
    };
    let db = test_db().await;
    let config = config_for(&db, &disk.dir.join("log"));
    let path = write_config(&config, dir.path(), "relay");

    // When the relay starts, then it exits non-zero with one line naming the directory and why
    let (code, _, stderr) = run_cli(&path, &["run"]);
    assert_eq!(code, 1, "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: "), "{stderr}");
    assert!(
        last.contains(&disk.dir.join("log").display().to_string()),
        "{stderr}"
    );
    assert!(last.contains("Read-only file system"), "{stderr}");
}

/// The `host:port` of an `amqp://user:password@host:port/vhost` URL, resolved.
fn broker_addr(url: &str) -> SocketAddr {
    let authority = url
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next());
    let authority = authority.unwrap_or_else(|| panic!("no host:port in {url}"));
    authority
        .to_socket_addrs()
        .expect("resolve broker")
        .next()
        .expect("a broker address")
}

/// `url` with its `host:port` replaced by `addr`.
fn url_through(url: &str, addr: SocketAddr) -> String {
    let (credentials, rest) = url.split_once('@').expect("credentials in URL");
    let (_, vhost) = rest.split_once('/').expect("vhost in URL");
    format!("{credentials}@{addr}/{vhost}")
}

/// The part both broker outages share, with a relay at `addr` delivering from `db`: writes
/// 2,000 events and, once 300 are sent, takes the broker away (`outage(true)`) for [`OUTAGE`]
/// while 500 more are written. Checks that /readyz reports the sink down and that nothing is
/// marked sent meanwhile; then brings the broker back (`outage(false)`), writes 500 more and
/// waits until all 3,000 are settled and /readyz is ready again. Returns how soon the relay
/// reported the outage, and how many rows were sent before it.
async fn ride_out_outage(
    db: &TestDb,
    addr: SocketAddr,
    mut outage: impl AsyncFnMut(bool),
) -> (Duration, i64) {
    let writers = tokio::spawn({
        let db = db.clone();
        async move { write_events(&db, 4, 500, 20).await }
    });
    wait_sent_at_least(db, 300).await;
    outage(true).await;
    let down_at = Instant::now();
    let more = tokio::spawn({
        let db = db.clone();
        async move { write_events(&db, 2, 250, 20).await }
    });
    let body = wait_ready(addr, 503, OUTAGE).await;
    let down_after = down_at.elapsed();
    assert!(body.contains("sink: down"), "{body}");
    writers.await.unwrap();
    more.await.unwrap();
    let sent = sent_count(db).await;
    tokio::time::sleep_until((down_at + OUTAGE).into()).await;
    assert_eq!(
        sent_count(db).await,
        sent,
        "rows marked sent while the broker was away"
    );
    assert_eq!(get(addr, "/readyz").await.0, 503);
    outage(false).await;
    write_events(db, 2, 250, 20).await;
    wait_settled(db, 3000, WAIT).await;
    wait_ready(addr, 200, WAIT).await;
    (down_after, sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_unreachable_for_30_s_mid_stream_loses_nothing_and_readyz_follows() {
    // Given a relay publishing to RabbitMQ through a proxy that can be cut
    let Some(url) = rabbit().await else {
        return;
    };
    let topology = Topology::declare(&url, "#").await;
    let mut proxy = Proxy::start(broker_addr(&url));
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&db, &dir.path().join("log"));
    topology.configure(&mut config);
    config.source.batch_size = 100;
    migrate(&config).await;
    create_aggregates(&db, 20).await;
    let proxied = url_through(&topology.url, proxy.addr);
    let env = [("OUTBOXD_SINK__AMQP__URL", proxied.as_str())];
    let mut relay = RelayProcess::spawn_with_env(&config, dir.path(), "relay", &["run"], &env);
    let addr = relay.http_addr().await;

    // When, mid-stream, every connection to the broker is cut and new ones are refused for
    // 30 s, while more events are written, and then the broker is reachable again
    // Then /readyz follows, nothing is marked sent meanwhile, and everything is settled after
    let (down_after, sent) = ride_out_outage(&db, addr, async |down| {
        if down {
            proxy.cut().await;
        } else {
            proxy.restore();
        }
    })
    .await;

    // and every event is in the queue, each aggregate in order
    let messages = topology.consume_all(WAIT).await;
    let (distinct, repeats) = assert_queue_order(&messages);
    println!(
        "RabbitMQ cut off for {OUTAGE:?} (not ready after {down_after:?}): {distinct} \
         distinct, {repeats} duplicates, {sent} sent before the cut"
    );
    assert_eq!(distinct, 3000);
    assert_eq!(failed_rows(&db).await, 0);
    relay.kill();
    topology.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_brokers_all_down_for_30_s_mid_stream_lose_nothing_and_readyz_follows() {
    // Given a relay producing to a three-broker mock cluster, with a 5 s message timeout so a
    // publish fails (and /readyz can tell) well within the outage
    let kafka = TestKafka::start(3);
    let Some(mock) = kafka.mock_or_skip("kafka_brokers_all_down") else {
        return;
    };
    let topic = TestKafka::unique_topic("outage");
    kafka.create_topic(&topic, 6).await;
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&db, &dir.path().join("log"));
    kafka.configure(&mut config, &topic);
    config.sink.kafka.message_timeout_ms = 5_000;
    config.source.batch_size = 100;
    migrate(&config).await;
    create_aggregates(&db, 20).await;
    let mut relay = RelayProcess::spawn(&config, dir.path(), "relay", &["run"]);
    let addr = relay.http_addr().await;

    // When, mid-stream, every broker goes down for 30 s while more events are written, and
    // then the brokers are back
    // Then /readyz follows, nothing is marked sent meanwhile, and everything is settled after
    let (down_after, sent) = ride_out_outage(&db, addr, async |down| {
        for broker in 1..=3 {
            let result = match down {
                true => mock.broker_down(broker),
                false => mock.broker_up(broker),
            };
            result.expect("broker down or up");
        }
    })
    .await;

    // and every event is on the topic, each aggregate in order in its one partition
    relay.kill();
    let records = kafka.read_whole_topic(&topic, WAIT).await;
    let (distinct, repeats) = assert_partition_order(&records);
    println!(
        "Kafka brokers down for {OUTAGE:?} (not ready after {down_after:?}): {distinct} \
         distinct, {repeats} duplicates, {sent} sent before the outage"
    );
    assert_eq!(distinct, 3000);
    assert_eq!(failed_rows(&db).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_relay_reports_rabbitmq_going_away_and_coming_back_on_readyz() {
    // Given a relay with nothing to send, connected to RabbitMQ through a proxy that can be cut
    let Some(url) = rabbit().await else {
        return;
    };
    let topology = Topology::declare(&url, "#").await;
    let mut proxy = Proxy::start(broker_addr(&url));
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&db, &dir.path().join("log"));
    topology.configure(&mut config);
    migrate(&config).await;
    let proxied = url_through(&topology.url, proxy.addr);
    let env = [("OUTBOXD_SINK__AMQP__URL", proxied.as_str())];
    let mut relay = RelayProcess::spawn_with_env(&config, dir.path(), "relay", &["run"], &env);
    let addr = relay.http_addr().await;
    wait_ready(addr, 200, WAIT).await;

    // When the broker becomes unreachable, then /readyz says so without any event to send
    proxy.cut().await;
    let body = wait_ready(addr, 503, Duration::from_secs(20)).await;
    assert!(body.contains("sink: down"), "{body}");

    // When it is reachable again, then /readyz is ready again, and an event goes through
    proxy.restore();
    wait_ready(addr, 200, Duration::from_secs(20)).await;
    create_aggregates(&db, 1).await;
    write_events(&db, 1, 1, 1).await;
    wait_settled(&db, 1, WAIT).await;
    relay.kill();
    topology.delete().await;
}
