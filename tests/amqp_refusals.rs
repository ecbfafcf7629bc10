//! Events RabbitMQ cannot take (issue #15, item 1), against the real broker: each is a dead
//! letter at once with the reason, while the other aggregates of its lane are delivered in
//! order and `/readyz` stays 200. Covered: a content header over `frame_max` (the broker would
//! close the connection), a body over `max_message_size` and an over-long header name (refused
//! before sending), and refusals the relay does not check for itself, which the broker reports
//! by closing the channel (a body over the broker's lowered `max_message_size`, a `CC` header
//! that is not an array).

mod common;

use common::amqp::*;
use common::pg::{TestDb, connect, test_db};
use common::relay::*;
use outboxd::config::Config;
use outboxd::relay::lane_of;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Aggregates sharing the refused event's lane, each writing [`PER_NEIGHBOUR`] events.
const NEIGHBOURS: usize = 15;

/// Events each neighbour writes.
const PER_NEIGHBOUR: i32 = 10;

/// How long the refusal and the neighbours' delivery may take: "promptly", against a lane
/// that used to stay jammed for good. Generous for a loaded two-core machine.
const PROMPTLY: Duration = Duration::from_secs(20);

/// A relay process publishing to a fresh queue bound for every routing key.
struct Setup {
    /// The outbox's database.
    db: TestDb,
    /// The exchange and queue.
    topology: Topology,
    /// The relay, kept alive (killed on drop).
    relay: RelayProcess,
    /// Its HTTP endpoint.
    addr: SocketAddr,
    /// Its lane count.
    lanes: usize,
    /// Holds its config and log.
    _dir: tempfile::TempDir,
}

/// Starts a relay process (configured further by `adjust`) and waits until it is ready; `None`
/// when there is no broker (the test is skipped).
async fn start(adjust: impl FnOnce(&mut Config)) -> Option<Setup> {
    let url = rabbit().await?;
    let topology = Topology::declare(&url, "#").await;
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(&db, &dir.path().join("log"));
    topology.configure(&mut config);
    adjust(&mut config);
    migrate(&config).await;
    // The written config masks the URL's password: hand the URL over in the environment.
    let env = [("OUTBOXD_SINK__AMQP__URL", topology.url.as_str())];
    let mut relay = RelayProcess::spawn_with_env(&config, dir.path(), "relay", &["run"], &env);
    let addr = relay.http_addr().await;
    // (the endpoint listens before the relay is ready: /readyz says 503 until it is)
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = readyz(addr).await;
        if matches!(answer, Some((200, _))) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never answered 200 at start (last: {answer:?}); relay log:\n{}",
            relay.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Some(Setup {
        db,
        topology,
        relay,
        addr,
        lanes: config.relay.lanes,
        _dir: dir,
    })
}

impl Setup {
    /// Writes one event of aggregate `odd` with `payload` and `headers` (SQL expressions), then
    /// [`PER_NEIGHBOUR`] events for each of [`NEIGHBOURS`] aggregates of the same lane.
    async fn write(&self, odd: &str, payload: &str, headers: &str) {
        let client = connect(&self.db.url).await;
        client
            .execute(
                &format!(
                    "INSERT INTO outbox (aggregatetype, aggregateid, type, payload, headers) \
                     VALUES ('t', $1, 'Odd', {payload}, {headers})"
                ),
                &[&odd],
            )
            .await
            .expect("insert the odd event");
        let lane = lane_of(odd, self.lanes);
        let neighbours: Vec<String> = (0..)
            .map(|i| format!("n{i}"))
            .filter(|aggregate| lane_of(aggregate, self.lanes) == lane)
            .take(NEIGHBOURS)
            .collect();
        client
            .execute(
                "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
                 SELECT 't', a, 'Step', jsonb_build_object('seq', s) \
                 FROM generate_series(1, $2::int) s, unnest($1::text[]) a ORDER BY s",
                &[&neighbours, &PER_NEIGHBOUR],
            )
            .await
            .expect("insert the neighbours' events");
    }

    /// Waits until no row is pending, checking `/readyz` answers 200 all along; returns how
    /// long it took. Panics if it takes longer than [`PROMPTLY`].
    async fn settle_while_ready(&self) -> Duration {
        let client = connect(&self.db.url).await;
        let started = Instant::now();
        loop {
            if let Some((status, body)) = readyz(self.addr).await {
                assert_eq!(
                    status, 200,
                    "/readyz while a refused event was pending: {body}"
                );
            }
            let pending: i64 = client
                .query_one(
                    "SELECT count(*) FROM outbox WHERE sent_at IS NULL AND failed_at IS NULL",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if pending == 0 {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < PROMPTLY,
                "{pending} rows still pending after {PROMPTLY:?}; relay log:\n{}",
                self.relay.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `last_error` of `aggregate`'s failed row (panics if it has none).
    async fn reason(&self, aggregate: &str) -> String {
        let row = connect(&self.db.url)
            .await
            .query_one(
                "SELECT last_error FROM outbox WHERE aggregateid = $1 AND failed_at IS NOT NULL",
                &[&aggregate],
            )
            .await
            .unwrap_or_else(|err| panic!("no failed row for {aggregate}: {err}"));
        row.get::<_, Option<String>>(0).expect("last_error")
    }

    /// Checks that every neighbour event reached the queue, in order per aggregate, and that
    /// nothing of `odd` did.
    async fn assert_neighbours_delivered(&self, odd: &str) {
        let messages = self.topology.consume_all(Duration::from_secs(30)).await;
        let (distinct, _) = assert_queue_order(&messages);
        assert_eq!(distinct, NEIGHBOURS * PER_NEIGHBOUR as usize);
        assert!(
            messages
                .iter()
                .all(|m| header(m, "aggregateid").as_deref() != Some(odd)),
            "the refused event reached the queue"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_over_frame_max_is_a_dead_letter_at_once_and_its_lane_flows() {
    // Given a ready relay
    let Some(setup) = start(|_| {}).await else {
        return;
    };

    // When a row carries a 200 KB header value (the content header cannot fit in RabbitMQ's
    // 128 KiB frame_max), and 15 aggregates of its lane write 10 events each
    setup
        .write(
            "huge",
            "'{\"seq\": 1}'",
            "jsonb_build_object('blob', repeat('x', 200000))",
        )
        .await;

    // Then the row is a dead letter within moments, naming frame_max, while /readyz stays 200,
    // and every neighbour event is delivered in order
    let took = setup.settle_while_ready().await;
    eprintln!("settled in {took:?}");
    let reason = setup.reason("huge").await;
    eprintln!("refused: {reason}");
    assert!(reason.contains("frame_max of 131072 bytes"), "{reason}");
    setup.assert_neighbours_delivered("huge").await;
    setup.topology.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_max_message_size_is_a_dead_letter_before_it_is_sent() {
    // Given a relay told the broker takes bodies of at most 64 KiB
    let Some(setup) = start(|config| config.sink.amqp.max_message_size = 64 << 10).await else {
        return;
    };

    // When a row's payload is 100 KB, and its lane's neighbours write meanwhile
    setup
        .write(
            "fat",
            "jsonb_build_object('seq', 1, 'blob', repeat('x', 100000))",
            "NULL",
        )
        .await;

    // Then it is a dead letter naming the setting, the rest is delivered, /readyz stays 200
    setup.settle_while_ready().await;
    let reason = setup.reason("fat").await;
    assert!(
        reason.contains("exceeds the broker's max_message_size of 65536 bytes"),
        "{reason}"
    );
    setup.assert_neighbours_delivered("fat").await;
    setup.topology.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_long_header_name_is_a_dead_letter_naming_it() {
    // Given a ready relay
    let Some(setup) = start(|_| {}).await else {
        return;
    };

    // When a row has a header whose name is 300 bytes (AMQP short strings hold 255)
    setup
        .write(
            "longname",
            "'{\"seq\": 1}'",
            "jsonb_build_object(repeat('h', 300), 1)",
        )
        .await;

    // Then it is a dead letter saying so (not a header dropped in silence)
    setup.settle_while_ready().await;
    let reason = setup.reason("longname").await;
    assert!(
        reason.starts_with("header name of 300 bytes exceeds AMQP's limit of 255"),
        "{reason}"
    );
    setup.assert_neighbours_delivered("longname").await;
    setup.topology.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_broker_closes_the_channel_for_is_that_messages_refusal() {
    // Given a ready relay (it does not check CC headers itself)
    let Some(setup) = start(|_| {}).await else {
        return;
    };

    // When a row has a CC header that is a string (RabbitMQ wants an array, and closes the
    // channel with PRECONDITION_FAILED, failing every message in flight with it)
    setup
        .write("cc", "'{\"seq\": 1}'", "'{\"CC\": \"audit\"}'")
        .await;

    // Then that row, and only it, is a dead letter with the broker's reason, and the rest of
    // the lane is delivered in order. (/readyz may not stay 200 here: the close fails one batch
    // as an outage before the message is singled out.)
    wait_no_pending(&setup.db, PROMPTLY, &setup.relay).await;
    let reason = setup.reason("cc").await;
    assert!(
        reason.starts_with("RabbitMQ refused the message: PRECONDITION_FAILED"),
        "{reason}"
    );
    setup.assert_neighbours_delivered("cc").await;
    assert_eq!(failed_rows(&setup.db).await, 1);
    setup.topology.delete().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_brokers_own_max_message_size_is_that_messages_refusal() {
    // Given the broker's max_message_size lowered to 1 MiB (above any message the other tests
    // send; only channels opened meanwhile see it) and a relay that assumes the default 128 MiB
    let Some(url) = rabbit().await else {
        return;
    };
    drop(url);
    let lowered = tokio::task::spawn_blocking(|| LoweredMaxMessageSize::set(1 << 20))
        .await
        .unwrap();
    let Some(setup) = start(|_| {}).await else {
        return;
    };

    // When a row's payload is 1.5 MB
    setup
        .write(
            "obese",
            "jsonb_build_object('seq', 1, 'blob', repeat('x', 1500000))",
            "NULL",
        )
        .await;

    // Then the broker's refusal (a closed channel) makes it a dead letter with the broker's
    // reason, and the rest of the lane is delivered in order
    wait_no_pending(&setup.db, PROMPTLY, &setup.relay).await;
    tokio::task::spawn_blocking(move || drop(lowered))
        .await
        .unwrap();
    let reason = setup.reason("obese").await;
    assert!(
        reason.starts_with("RabbitMQ refused the message: PRECONDITION_FAILED"),
        "{reason}"
    );
    assert!(
        reason.contains("larger than configured max size"),
        "{reason}"
    );
    setup.assert_neighbours_delivered("obese").await;
    setup.topology.delete().await;
}

/// The status and body `/readyz` answers on a fresh connection; `None` if the server closed it
/// without an answer.
async fn readyz(addr: SocketAddr) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut response))
        .await
        .ok()?
        .ok()?;
    let response = String::from_utf8_lossy(&response);
    let status = response.get(9..12)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string());
    Some((status, body.unwrap_or_default()))
}

/// Waits until no row is pending; panics with the relay's log if `timeout` passes first.
async fn wait_no_pending(db: &TestDb, timeout: Duration, relay: &RelayProcess) {
    let client = connect(&db.url).await;
    let deadline = Instant::now() + timeout;
    loop {
        let pending: i64 = client
            .query_one(
                "SELECT count(*) FROM outbox WHERE sent_at IS NULL AND failed_at IS NULL",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if pending == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{pending} rows still pending after {timeout:?}; relay log:\n{}",
            relay.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
