//! Metrics of the consumer groups the HTTP consumer API serves, labelled by group (names are
//! chosen by the operator's consumers, like queue names, so the label stays low-cardinality).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Records from a group's committed offset to the end of the log.
pub const GROUP_LAG_RECORDS: &str = "outboxd_consumer_group_lag_records";
/// Age of a group's oldest unacked record, seconds (0 when none).
pub const GROUP_LAG_SECONDS: &str = "outboxd_consumer_group_lag_seconds";
/// Messages of a group handed out and not acked.
pub const GROUP_IN_FLIGHT: &str = "outboxd_consumer_group_in_flight_messages";
/// Messages of a group handed out again (visibility timeout passed, or nacked).
pub const GROUP_REDELIVERIES: &str = "outboxd_consumer_group_redeliveries";
/// Messages of a group acked.
pub const GROUP_ACKS: &str = "outboxd_consumer_group_acks";

/// Segments past a retention limit kept because a consumer group has not acked their records.
pub const RETENTION_HELD: &str = "outboxd_log_retention_held_segments";
/// Records retention deleted before every group acked them (`retention_over_groups`).
pub const RETENTION_UNACKED_DELETED: &str = "outboxd_log_retention_unacked_deleted_records";

/// Labels naming a group.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    /// The group's name.
    pub group: String,
}

/// The consumer groups' metrics.
#[derive(Default)]
pub struct GroupMetrics {
    /// See [`GROUP_LAG_RECORDS`].
    pub lag_records: Family<GroupLabels, Gauge>,
    /// See [`GROUP_LAG_SECONDS`].
    pub lag_seconds: Family<GroupLabels, Gauge<f64, AtomicU64>>,
    /// See [`GROUP_IN_FLIGHT`].
    pub in_flight: Family<GroupLabels, Gauge>,
    /// See [`GROUP_REDELIVERIES`].
    pub redeliveries: Family<GroupLabels, Counter>,
    /// See [`GROUP_ACKS`].
    pub acks: Family<GroupLabels, Counter>,
    /// See [`RETENTION_HELD`].
    pub retention_held: Gauge,
    /// See [`RETENTION_UNACKED_DELETED`].
    pub retention_unacked_deleted: Counter,
}

impl GroupMetrics {
    /// Registers every family in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            GROUP_LAG_RECORDS,
            "Records from a consumer group's committed offset to the end of the log",
            self.lag_records.clone(),
        );
        registry.register(
            GROUP_LAG_SECONDS,
            "Age in seconds of a consumer group's oldest unacked record",
            self.lag_seconds.clone(),
        );
        registry.register(
            GROUP_IN_FLIGHT,
            "Messages of a consumer group handed out and not acked",
            self.in_flight.clone(),
        );
        registry.register(
            GROUP_REDELIVERIES,
            "Messages of a consumer group handed out again",
            self.redeliveries.clone(),
        );
        registry.register(
            GROUP_ACKS,
            "Messages of a consumer group acked",
            self.acks.clone(),
        );
        registry.register(
            RETENTION_HELD,
            "Log segments past a retention limit kept because a consumer group has not acked them",
            self.retention_held.clone(),
        );
        registry.register(
            RETENTION_UNACKED_DELETED,
            "Log records retention deleted before every consumer group acked them",
            self.retention_unacked_deleted.clone(),
        );
    }

    /// Takes the log's retention numbers (see `log::retention`).
    pub fn observe_retention(&self, held_segments: u64, unacked_deleted_records: u64) {
        self.retention_held.set(held_segments as i64);
        let counter = &self.retention_unacked_deleted;
        counter.inc_by(unacked_deleted_records.saturating_sub(counter.get()));
    }

    /// Sets a group's gauges, and moves its counters up to the totals given.
    pub fn observe(&self, group: &str, status: GroupSample) {
        let labels = GroupLabels {
            group: group.to_owned(),
        };
        self.lag_records
            .get_or_create(&labels)
            .set(status.lag_records as i64);
        self.lag_seconds
            .get_or_create(&labels)
            .set(status.lag_seconds);
        self.in_flight
            .get_or_create(&labels)
            .set(status.in_flight as i64);
        let raise = |counter: &Counter, total: u64| {
            counter.inc_by(total.saturating_sub(counter.get()));
        };
        raise(
            &self.redeliveries.get_or_create(&labels),
            status.redeliveries,
        );
        raise(&self.acks.get_or_create(&labels), status.acks);
    }
}

/// One group's numbers, as [`GroupMetrics::observe`] takes them.
#[derive(Clone, Copy, Debug)]
pub struct GroupSample {
    /// See [`GROUP_LAG_RECORDS`].
    pub lag_records: u64,
    /// See [`GROUP_LAG_SECONDS`].
    pub lag_seconds: f64,
    /// See [`GROUP_IN_FLIGHT`].
    pub in_flight: usize,
    /// Redeliveries so far (a total).
    pub redeliveries: u64,
    /// Acks so far (a total).
    pub acks: u64,
}
