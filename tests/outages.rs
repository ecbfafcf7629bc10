//! Issue #10's fault matrix, the outage rows the sink conformance suite does not cover: the
//! embedded log's disk fills up or is read-only from the start, and an idle relay reports
//! RabbitMQ going away. (A 30-s outage mid-stream of each sink, the log directory turning
//! unwritable among them, is a scenario of tests/common/conformance.rs.) Each relay runs as
//! its own process, so its `/readyz` and metrics are its own.

mod common;

use common::amqp::{Topology, broker_addr, rabbit, url_through, wait_settled};
use common::conformance::total;
use common::disk::{Tmpfs, fill_leaving};
use common::http::{get, wait_ready};
use common::pg::{TestDb, connect, test_db};
use common::proxy::Proxy;
use common::relay::*;
use outboxd::log::{LogWriter, WriterOptions};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// Longest wait for anything that should happen.
const WAIT: Duration = Duration::from_secs(120);

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
    wait_failed_publishes(addr, 3.0).await;
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

/// Waits until the relay at `addr` has retried `count` more failed publishes than when called:
/// proof that it went on trying, so what was not acknowledged meanwhile never will be while
/// the failure lasts.
async fn wait_failed_publishes(addr: std::net::SocketAddr, count: f64) {
    let retries = async || {
        let (_, metrics) = get(addr, "/metrics").await;
        total(&metrics, "outboxd_publish_retries_total")
    };
    let start = retries().await;
    let deadline = Instant::now() + WAIT;
    while retries().await < start + count {
        assert!(Instant::now() < deadline, "the relay stopped retrying");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
