//! `/metrics` and `/readyz` while relaying. Its own test binary: metrics are process-wide.

mod common;

use common::http::{get, sample, wait_ready};
use common::pg::test_db;
use common::relay::*;
use outboxd::error::{Error, ErrorKind, Result};
use outboxd::event::Event;
use outboxd::sink::{AnySink, Outcome, Sink};
use outboxd::source::PollSource;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long `/readyz` may take to follow the sink.
const READY_WAIT: Duration = Duration::from_secs(30);

/// A sink that fails with a transient error while `failing` is set, and otherwise passes
/// events to the real sink.
struct FlakySink {
    /// The real sink.
    inner: AnySink,
    /// Whether to fail.
    failing: Arc<AtomicBool>,
}

impl Sink for FlakySink {
    async fn publish(&mut self, events: &[Event]) -> Result<Vec<Outcome>> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(Error::new(
                ErrorKind::SinkUnavailable,
                "injected: broker down",
            ));
        }
        self.inner.publish(events).await
    }

    async fn fork(&self) -> Result<Self> {
        Ok(FlakySink {
            inner: self.inner.fork().await?,
            failing: self.failing.clone(),
        })
    }

    fn name(&self) -> &'static str {
        "log"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_was_relayed_and_readyz_follows_the_sink() {
    // Given a relay with a sink that can be made to fail, and its HTTP endpoint
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let config = config_for(&db, &log);
    migrate(&config).await;
    create_aggregates(&db, 10).await;
    let shutdown = CancellationToken::new();
    let (addr, _http) = outboxd::http::serve("127.0.0.1:0", shutdown.clone())
        .await
        .unwrap();
    let failing = Arc::new(AtomicBool::new(false));
    let mut source = PollSource::start(&config.source, &config.relay)
        .await
        .unwrap();
    let inner = AnySink::open(&config.sink, &outboxd::cli::run::sink_context(&config))
        .await
        .unwrap();
    let sink = FlakySink {
        inner,
        failing: failing.clone(),
    };
    let relay = tokio::spawn({
        let shutdown = shutdown.clone();
        let relay_config = config.relay.clone();
        async move { outboxd::relay::run(&mut source, sink, &relay_config, shutdown).await }
    });
    outboxd::metrics::get().sink_up.set(1);
    assert_eq!(get(addr, "/healthz").await.0, 200);

    // When 300 events are relayed
    write_events(&db, 3, 100, 10).await;
    wait_for_events(&[&log], 300, Duration::from_secs(60)).await;

    // Then the counters and histograms moved by exactly that much (the counters move right
    // after the sink returns, a moment after the records are readable in the log)
    let delivered = r#"outboxd_events_published_total{sink="log",outcome="delivered"}"#;
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let (status, metrics) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        if sample(&metrics, delivered) >= 300.0 || Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(sample(&metrics, delivered), 300.0, "{metrics}");
    assert_eq!(
        sample(&metrics, "outboxd_event_latency_seconds_count"),
        300.0
    );
    assert_eq!(sample(&metrics, "outboxd_batch_size_events_sum"), 300.0);
    assert!(sample(&metrics, "outboxd_last_publish_timestamp_seconds") > 1.7e9);
    assert_eq!(sample(&metrics, "outboxd_source_up"), 1.0);
    assert!(metrics.contains("outboxd_build_info{version="), "{metrics}");
    wait_ready(addr, 200, READY_WAIT).await;

    // When the sink starts failing and an event is written, /readyz says not ready
    failing.store(true, Ordering::SeqCst);
    write_events(&db, 1, 1, 10).await;
    let body = wait_ready(addr, 503, READY_WAIT).await;
    assert!(body.contains("sink: down"), "{body}");
    let (_, metrics) = get(addr, "/metrics").await;
    assert!(sample(&metrics, r#"outboxd_publish_retries_total{sink="log"}"#) >= 1.0);

    // And when it recovers, the event arrives and /readyz is ready again
    failing.store(false, Ordering::SeqCst);
    wait_for_events(&[&log], 301, Duration::from_secs(60)).await;
    wait_ready(addr, 200, READY_WAIT).await;
    shutdown.cancel();
    relay.await.unwrap().unwrap();
}
