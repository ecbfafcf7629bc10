//! Prometheus metrics, one registry per process. Every metric is documented in docs/METRICS.md;
//! labels stay low-cardinality (sink, outcome — never an aggregate or event id).

mod groups;

pub use self::groups::{
    GROUP_ACKS, GROUP_IN_FLIGHT, GROUP_LAG_RECORDS, GROUP_LAG_SECONDS, GROUP_REDELIVERIES,
    GroupMetrics, GroupSample, RETENTION_HELD, RETENTION_UNACKED_DELETED,
};

use crate::event::Event;
use crate::sink::Outcome;
use chrono::Utc;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Events handed to a sink, by outcome: `delivered` or `refused`.
pub const EVENTS_PUBLISHED: &str = "outboxd_events_published";
/// Seconds from the event's `created_at` (its commit, near enough) to the sink's confirmation.
pub const EVENT_LATENCY: &str = "outboxd_event_latency_seconds";
/// Events per published batch.
pub const BATCH_SIZE: &str = "outboxd_batch_size_events";
/// Publish attempts that failed transiently and were retried.
pub const RETRIES: &str = "outboxd_publish_retries";
/// Events the sink took but could not store this time (a RabbitMQ nack: a full queue), sent
/// again later. A nacked message may still have reached the exchange's other queues, so each
/// one can leave a copy there.
pub const BUSY: &str = "outboxd_publish_busy";
/// Events marked failed (dead letters) by this process.
pub const DEAD_LETTERS_TOTAL: &str = "outboxd_dead_letters";
/// Dead letters published to `relay.dead_letter_topic`.
pub const DEAD_LETTERS_PUBLISHED: &str = "outboxd_dead_letters_published";
/// Dead letters `relay.dead_letter_topic` refused for good (they stay in the outbox table or
/// dead-letter store only).
pub const DEAD_LETTER_PUBLISH_FAILURES: &str = "outboxd_dead_letter_publish_failures";
/// Failed events currently in the outbox (sampled from the table).
pub const DEAD_LETTERS_CURRENT: &str = "outboxd_dead_letters_current";
/// Events waiting to be delivered (sampled from the table).
pub const PENDING: &str = "outboxd_pending_events";
/// Age of the oldest pending event, seconds (sampled from the table; 0 when none).
pub const OLDEST_PENDING_AGE: &str = "outboxd_oldest_pending_age_seconds";
/// Events the visibility guard holds back in polling mode (among those of the last fetch):
/// written after a transaction that is still open began.
pub const HELD_BACK: &str = "outboxd_held_back_events";
/// Age of the oldest open transaction while the guard holds events back, seconds (0 otherwise).
pub const HOLDING_TRANSACTION_AGE: &str = "outboxd_holding_transaction_age_seconds";
/// Server process id of that transaction (-1: a prepared transaction; 0: none or not visible).
pub const HOLDING_TRANSACTION_PID: &str = "outboxd_holding_transaction_pid";
/// Bytes of WAL the replication slot holds back (logical mode; 0 when polling).
pub const SLOT_LAG: &str = "outboxd_replication_slot_lag_bytes";
/// Events handed to the sink and not yet confirmed.
pub const IN_FLIGHT: &str = "outboxd_in_flight_events";
/// Unix time of the last confirmed publish.
pub const LAST_PUBLISH: &str = "outboxd_last_publish_timestamp_seconds";
/// 1 while the source (PostgreSQL) is connected.
pub const SOURCE_UP: &str = "outboxd_source_up";
/// 1 while the sink accepts events.
pub const SINK_UP: &str = "outboxd_sink_up";
/// 1 while this relay is the active one, 0 while it stands by.
pub const RELAY_ACTIVE: &str = "outboxd_relay_active";
/// Always 1; the labels carry the version.
pub const BUILD_INFO: &str = "outboxd_build_info";

/// Labels of [`EVENTS_PUBLISHED`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PublishLabels {
    /// Sink name, e.g. `log`.
    pub sink: &'static str,
    /// `delivered` or `refused`.
    pub outcome: &'static str,
}

/// Changes of captured tables decoded from the stream (change data capture).
pub const TABLE_CHANGES: &str = "outboxd_table_changes";

/// Labels of [`TABLE_CHANGES`]: bounded by the configured tables.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    /// The table's schema.
    pub schema: String,
    /// The table's name.
    pub table: String,
    /// `insert`, `update`, `delete` or `truncate`.
    pub op: &'static str,
}

/// Rows delivered by snapshots and backfills, by table.
pub const BACKFILL_ROWS: &str = "outboxd_backfill_rows";

/// Rows a running snapshot or backfill has still to deliver (from the table's row estimate),
/// by table; 0 once it ends.
pub const BACKFILL_REMAINING: &str = "outboxd_backfill_remaining_rows";

/// Labels of [`BACKFILL_ROWS`] and [`BACKFILL_REMAINING`]: bounded by the captured tables.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackfillLabels {
    /// `schema.table`.
    pub table: String,
}

/// Labels naming a sink.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    /// Sink name, e.g. `log`.
    pub sink: &'static str,
}

/// Labels of [`BUILD_INFO`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    /// Crate version.
    version: &'static str,
}

/// Every metric of the process.
pub struct Metrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    /// See [`EVENTS_PUBLISHED`].
    pub published: Family<PublishLabels, Counter>,
    /// See [`TABLE_CHANGES`].
    pub table_changes: Family<TableLabels, Counter>,
    /// See [`BACKFILL_ROWS`].
    pub backfill_rows: Family<BackfillLabels, Counter>,
    /// See [`BACKFILL_REMAINING`].
    pub backfill_remaining: Family<BackfillLabels, Gauge>,
    /// See [`EVENT_LATENCY`].
    pub latency: Histogram,
    /// See [`BATCH_SIZE`].
    pub batch_size: Histogram,
    /// See [`RETRIES`].
    pub retries: Family<SinkLabels, Counter>,
    /// See [`BUSY`].
    pub busy: Family<SinkLabels, Counter>,
    /// See [`DEAD_LETTERS_TOTAL`].
    pub dead_letters: Counter,
    /// See [`DEAD_LETTERS_PUBLISHED`].
    pub dead_letters_published: Counter,
    /// See [`DEAD_LETTER_PUBLISH_FAILURES`].
    pub dead_letter_publish_failures: Counter,
    /// See [`DEAD_LETTERS_CURRENT`].
    pub dead_letters_current: Gauge,
    /// See [`PENDING`].
    pub pending: Gauge,
    /// See [`OLDEST_PENDING_AGE`].
    pub oldest_pending_age: Gauge<f64, AtomicU64>,
    /// See [`HELD_BACK`].
    pub held_back: Gauge,
    /// See [`HOLDING_TRANSACTION_AGE`].
    pub holding_transaction_age: Gauge<f64, AtomicU64>,
    /// See [`HOLDING_TRANSACTION_PID`].
    pub holding_transaction_pid: Gauge,
    /// See [`SLOT_LAG`].
    pub slot_lag: Gauge,
    /// See [`IN_FLIGHT`].
    pub in_flight: Gauge,
    /// See [`LAST_PUBLISH`].
    pub last_publish: Gauge<f64, AtomicU64>,
    /// See [`SOURCE_UP`].
    pub source_up: Gauge,
    /// See [`SINK_UP`].
    pub sink_up: Gauge,
    /// See [`RELAY_ACTIVE`]: 1 while this relay holds the leadership (the leader lock in
    /// polling mode, the replication slot in logical mode) and, with the embedded log, its
    /// writer lock.
    pub relay_active: Gauge,
    /// The consumer groups' metrics (see `groups.rs`).
    pub groups: GroupMetrics,
    /// Not exported: whether the relay stands by for the embedded log's writer lock. Its sink
    /// is not open meanwhile, which `/readyz` must not take for a sink that is down.
    pub waiting_for_log: AtomicBool,
}

/// The process's metrics, created on first use.
static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    /// Creates and registers every metric.
    fn new() -> Self {
        let mut registry = Registry::default();
        let published = Family::<PublishLabels, Counter>::default();
        // 1 ms .. ~65 s: a healthy relay sits in the first buckets, a stalled one at the end.
        let latency = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 18));
        let retries = Family::<SinkLabels, Counter>::default();
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        let metrics = Metrics {
            registry: Registry::default(),
            published,
            latency,
            batch_size,
            retries,
            busy: Family::default(),
            table_changes: Family::default(),
            backfill_rows: Family::default(),
            backfill_remaining: Family::default(),
            dead_letters: Counter::default(),
            dead_letters_published: Counter::default(),
            dead_letter_publish_failures: Counter::default(),
            dead_letters_current: Gauge::default(),
            pending: Gauge::default(),
            oldest_pending_age: Gauge::default(),
            held_back: Gauge::default(),
            holding_transaction_age: Gauge::default(),
            holding_transaction_pid: Gauge::default(),
            slot_lag: Gauge::default(),
            in_flight: Gauge::default(),
            last_publish: Gauge::default(),
            source_up: Gauge::default(),
            sink_up: Gauge::default(),
            relay_active: Gauge::default(),
            groups: GroupMetrics::default(),
            waiting_for_log: AtomicBool::new(false),
        };
        let m = &metrics;
        registry.register(
            EVENTS_PUBLISHED,
            "Events handed to a sink, by outcome",
            m.published.clone(),
        );
        registry.register(
            EVENT_LATENCY,
            "Seconds from event creation to sink confirmation",
            m.latency.clone(),
        );
        registry.register(
            BATCH_SIZE,
            "Events per published batch",
            m.batch_size.clone(),
        );
        registry.register(
            RETRIES,
            "Publish attempts retried after a transient failure",
            m.retries.clone(),
        );
        registry.register(
            BUSY,
            "Events the sink could not take this time (nacked), sent again later",
            m.busy.clone(),
        );
        registry.register(
            DEAD_LETTERS_TOTAL,
            "Events marked failed by this process",
            m.dead_letters.clone(),
        );
        registry.register(
            DEAD_LETTERS_PUBLISHED,
            "Dead letters published to relay.dead_letter_topic",
            m.dead_letters_published.clone(),
        );
        registry.register(
            DEAD_LETTER_PUBLISH_FAILURES,
            "Dead letters relay.dead_letter_topic refused for good",
            m.dead_letter_publish_failures.clone(),
        );
        registry.register(
            DEAD_LETTERS_CURRENT,
            "Failed events currently in the outbox",
            m.dead_letters_current.clone(),
        );
        registry.register(PENDING, "Events waiting to be delivered", m.pending.clone());
        registry.register(
            OLDEST_PENDING_AGE,
            "Age of the oldest pending event in seconds",
            m.oldest_pending_age.clone(),
        );
        registry.register(
            HELD_BACK,
            "Events the visibility guard holds back (polling)",
            m.held_back.clone(),
        );
        registry.register(
            HOLDING_TRANSACTION_AGE,
            "Age in seconds of the oldest open transaction while events are held back",
            m.holding_transaction_age.clone(),
        );
        registry.register(
            HOLDING_TRANSACTION_PID,
            "Server process id of the oldest open transaction while events are held back",
            m.holding_transaction_pid.clone(),
        );
        registry.register(
            TABLE_CHANGES,
            "Changes of captured tables decoded from the stream, by table and operation",
            m.table_changes.clone(),
        );
        registry.register(
            BACKFILL_ROWS,
            "Rows delivered by snapshots and backfills, by table",
            m.backfill_rows.clone(),
        );
        registry.register(
            BACKFILL_REMAINING,
            "Rows a running snapshot or backfill has still to deliver (estimate), by table",
            m.backfill_remaining.clone(),
        );
        registry.register(
            SLOT_LAG,
            "WAL bytes held back by the replication slot",
            m.slot_lag.clone(),
        );
        registry.register(
            IN_FLIGHT,
            "Events handed to the sink and not yet confirmed",
            m.in_flight.clone(),
        );
        registry.register(
            LAST_PUBLISH,
            "Unix time of the last confirmed publish",
            m.last_publish.clone(),
        );
        registry.register(
            SOURCE_UP,
            "1 while PostgreSQL is connected",
            m.source_up.clone(),
        );
        registry.register(
            SINK_UP,
            "1 while the sink accepts events",
            m.sink_up.clone(),
        );
        registry.register(
            RELAY_ACTIVE,
            "1 while this relay is the active one, 0 while it stands by",
            m.relay_active.clone(),
        );
        registry.register(BUILD_INFO, "Build information", build_info);
        m.groups.register(&mut registry);
        Metrics {
            registry,
            ..metrics
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Records a batch the sink answered: outcomes, batch size, latency of each delivered event
    /// since its creation, and the time of this publish.
    pub fn observe_published(&self, sink: &'static str, events: &[Event], outcomes: &[Outcome]) {
        let now = Utc::now();
        let (mut delivered, mut refused) = (0, 0);
        for (event, outcome) in events.iter().zip(outcomes) {
            match outcome {
                Outcome::Delivered => {
                    delivered += 1;
                    let age = (now - event.created_at)
                        .num_microseconds()
                        .unwrap_or(i64::MAX);
                    self.latency.observe(age.max(0) as f64 / 1e6);
                }
                Outcome::Refused(_) => refused += 1,
                Outcome::Retry(_) | Outcome::Busy(_) | Outcome::Deferred => {}
            }
        }
        // The delivered counter moves last, so a reader who sees it has seen everything else.
        self.batch_size.observe(events.len() as f64);
        if delivered > 0 {
            self.last_publish.set(now.timestamp_micros() as f64 / 1e6);
        }
        let label = |outcome| PublishLabels { sink, outcome };
        self.published
            .get_or_create(&label("delivered"))
            .inc_by(delivered);
        if refused > 0 {
            self.published
                .get_or_create(&label("refused"))
                .inc_by(refused);
            self.dead_letters.inc_by(refused);
        }
    }

    /// Whether the relay can do its job: source connected and sink accepting.
    pub fn ready(&self) -> (bool, bool) {
        (self.source_up.get() == 1, self.sink_up.get() == 1)
    }

    /// Whether this relay is the active one (see [`RELAY_ACTIVE`]).
    pub fn active(&self) -> bool {
        self.relay_active.get() == 1
    }

    /// Whether the relay stands by for the embedded log's writer lock.
    pub fn waiting_for_log(&self) -> bool {
        self.waiting_for_log.load(Ordering::Relaxed)
    }
}
