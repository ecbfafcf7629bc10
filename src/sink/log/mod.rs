//! The embedded log as a sink: events appended to local segment files, durable per
//! `sink.log.durability` before `publish` returns.

mod config;

pub use self::config::LogSinkConfig;

use super::headers::is_dead_letter;
use super::template::{ALL_FIELDS, Template};
use super::{DEAD_LETTER_KEY, OpenSink, Outcome, Sink, SinkContext};
use crate::error::{Error, ErrorKind, Result};
use crate::event::{Event, Stored};
use crate::log::{Durability, LogReader, LogWriter, NewRecord, Syncer, lock_writer};
use std::borrow::Cow;
use std::collections::HashSet;
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::runtime::{Handle, RuntimeFlavor};

/// Records at the end of the log always read back at open, whatever the batch size.
const MIN_TAIL_RECORDS: usize = 10_000;

/// Appends events to the embedded log, under the topic `sink.log.topic` names.
pub struct LogSink {
    /// The writer, shared with the blocking thread that does the file I/O (and the syncer).
    writer: Arc<Mutex<LogWriter>>,
    /// With `durability = "interval"`: the background syncer publish waits on (shared by the
    /// lanes' handles; the last one dropped runs the final fsync).
    syncer: Option<Arc<Syncer>>,
    /// Largest record accepted, in bytes.
    max_record_bytes: usize,
    /// The parsed `topic` template.
    topic: Template,
    /// (position, event id) of the records at the end of the log when it was opened, until
    /// the relay takes them (see [`Sink::already_delivered`]).
    tail: Vec<Stored>,
    /// The last run appended whose publish has not resolved yet, shared by the lanes' handles.
    /// A publish abandoned after its append (the relay's publish timeout while it waited for
    /// an fsync) is retried with the same events; they are then not appended a second time.
    unconfirmed: Arc<Mutex<Option<Appended>>>,
}

/// A run of events written to the log, by (position, event id), and the offset after it.
#[derive(Debug, PartialEq, Eq)]
struct Appended {
    /// The events, in order.
    events: Vec<(u64, String)>,
    /// The offset after the last of them.
    end: u64,
}

/// (position, event id) of each record, to recognise a run appended before.
fn run_of(records: &[NewRecord<'_>]) -> Vec<(u64, String)> {
    records
        .iter()
        .map(|record| (record.event.position.0, record.event.id.clone()))
        .collect()
}

impl OpenSink for LogSink {
    type Config = LogSinkConfig;

    async fn open(config: &LogSinkConfig, context: &SinkContext) -> Result<Self> {
        LogSink::open(config, context).await
    }

    fn validate(config: &LogSinkConfig) -> Result<()> {
        config.validate()
    }
}

impl LogSink {
    /// Opens (and recovers) the log directory, taking its writer lock, and reads back the last
    /// `max(10_000, 2 × in_flight)` records so the relay can acknowledge those its previous
    /// run appended but never acknowledged.
    pub async fn open(config: &LogSinkConfig, context: &SinkContext) -> Result<Self> {
        let topic = config.topic_template()?.for_outbox(&context.outbox);
        let in_flight = context.in_flight;
        let dir = config.dir.clone();
        let options = config.writer_options();
        let window = MIN_TAIL_RECORDS.max(in_flight.saturating_mul(2));
        let (writer, tail) = tokio::task::spawn_blocking(move || {
            let writer = LogWriter::open(&dir, options)?;
            let tail = read_tail(&dir, window)?;
            Ok::<_, Error>((writer, tail))
        })
        .await
        .map_err(|err| Error::with_source(ErrorKind::Internal, "opening the log", err))??;
        let writer = Arc::new(Mutex::new(writer));
        let syncer = match config.durability {
            Durability::Interval => Some(Arc::new(Syncer::start(
                writer.clone(),
                Duration::from_millis(config.fsync_interval_ms),
            )?)),
            Durability::Batch | Durability::None => None,
        };
        Ok(LogSink {
            writer,
            syncer,
            max_record_bytes: config.max_record_bytes,
            topic,
            tail,
            unconfirmed: Arc::default(),
        })
    }

    /// The interval syncer, if the log runs in `interval` mode.
    pub fn syncer(&self) -> Option<&Syncer> {
        self.syncer.as_deref()
    }
}

/// The last `window` records of the log at `dir`, oldest first, read through the index so a
/// long log is not read from its start.
fn read_tail(dir: &Path, window: usize) -> Result<Vec<Stored>> {
    let mut reader = LogReader::open(dir)?;
    let (first, end) = reader.bounds()?;
    reader.seek(end.saturating_sub(window as u64).max(first))?;
    let mut tail = Vec::with_capacity(window.min((end - first) as usize));
    while let Some(record) = reader.next()? {
        // A dead letter published to `relay.dead_letter_topic` carries the event's position
        // and id too, but is no delivery: its row must stay a dead letter, not be marked sent.
        if is_dead_letter(&record.event) {
            continue;
        }
        tail.push(Stored {
            position: record.event.position,
            id: record.event.id,
            key: record.event.key,
        });
    }
    Ok(tail)
}

/// Appends `records` off the async threads (the write, and with `durability = "batch"` the
/// fsync, block), and records them as [`Appended`] in `unconfirmed` under the writer's lock, so
/// that even an append finishing after its caller gave up is known. On a multi-threaded runtime
/// the calling worker blocks in place and hands its other tasks on, so the records are written
/// where they are; elsewhere (a current-thread runtime, as in tests) they are copied to a
/// blocking thread.
async fn append(
    writer: &Arc<Mutex<LogWriter>>,
    records: &[NewRecord<'_>],
    unconfirmed: &Arc<Mutex<Option<Appended>>>,
) -> Result<Range<u64>> {
    let run = run_of(records);
    let unconfirmed = unconfirmed.clone();
    let note = move |offsets: &Range<u64>| {
        *unconfirmed.lock().unwrap_or_else(|p| p.into_inner()) = Some(Appended {
            events: run,
            end: offsets.end,
        });
    };
    if Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread {
        return tokio::task::block_in_place(|| {
            let mut writer = lock_writer(writer);
            let offsets = writer.append(records)?;
            note(&offsets);
            Ok(offsets)
        });
    }
    let owned: Vec<(String, Event)> = records
        .iter()
        .map(|record| (record.topic.to_owned(), record.event.clone()))
        .collect();
    let writer = writer.clone();
    tokio::task::spawn_blocking(move || {
        let records: Vec<NewRecord<'_>> = owned
            .iter()
            .map(|(topic, event)| NewRecord { topic, event })
            .collect();
        let mut writer = lock_writer(&writer);
        let offsets = writer.append(&records)?;
        note(&offsets);
        Ok(offsets)
    })
    .await
    .map_err(|err| Error::with_source(ErrorKind::Internal, "appending to the log", err))?
}

impl Sink for LogSink {
    async fn publish(&mut self, events: &[Event]) -> Result<Vec<Outcome>> {
        let mut outcomes = Vec::with_capacity(events.len());
        let mut accepted = Vec::with_capacity(events.len());
        let mut refused: HashSet<&str> = HashSet::new();
        let topics: Vec<Cow<'_, str>> = events.iter().map(|e| self.topic.render_cow(e)).collect();
        for (event, topic) in events.iter().zip(&topics) {
            if refused.contains(event.key.as_str()) {
                outcomes.push(Outcome::Deferred);
                continue;
            }
            let record = NewRecord {
                topic: topic.as_ref(),
                event,
            };
            let size = LogWriter::encoded_len(&record)?;
            if size > self.max_record_bytes {
                refused.insert(&event.key);
                outcomes.push(Outcome::Refused(format!(
                    "record of {size} bytes exceeds sink.log.max_record_bytes ({})",
                    self.max_record_bytes
                )));
            } else {
                outcomes.push(Outcome::Delivered);
                accepted.push(record);
            }
        }
        if accepted.is_empty() {
            return Ok(outcomes);
        }
        // A run appended by a publish that was abandoned before it resolved (see
        // `unconfirmed`) is only waited for again.
        let known = {
            let unconfirmed = self.unconfirmed.lock().unwrap_or_else(|p| p.into_inner());
            unconfirmed
                .as_ref()
                .filter(|appended| appended.events == run_of(&accepted))
                .map(|appended| appended.end)
        };
        let end = match known {
            Some(end) => {
                tracing::debug!(
                    end,
                    "waiting again for records a timed-out publish appended"
                );
                end
            }
            None => {
                append(&self.writer, &accepted, &self.unconfirmed)
                    .await?
                    .end
            }
        };
        if let Some(syncer) = &self.syncer {
            syncer.wait_durable(end).await?;
        }
        let mut unconfirmed = self.unconfirmed.lock().unwrap_or_else(|p| p.into_inner());
        if unconfirmed
            .as_ref()
            .is_some_and(|appended| appended.end == end)
        {
            *unconfirmed = None;
        }
        Ok(outcomes)
    }

    fn already_delivered(&mut self) -> Vec<Stored> {
        std::mem::take(&mut self.tail)
    }

    fn reads_back(&self) -> bool {
        true
    }

    /// Shares the writer: lanes append in turn under its lock.
    async fn fork(&self) -> Result<Self> {
        Ok(LogSink {
            writer: self.writer.clone(),
            syncer: self.syncer.clone(),
            max_record_bytes: self.max_record_bytes,
            topic: self.topic.clone(),
            tail: Vec::new(),
            unconfirmed: self.unconfirmed.clone(),
        })
    }

    /// Shares the writer, with records under the `destination` topic template; its own note of
    /// unconfirmed appends, as its runs are never the lanes'.
    async fn redirect(&self, destination: &str) -> Result<Self> {
        let topic = Template::parse(destination, ALL_FIELDS)
            .map_err(|reason| Error::config(DEAD_LETTER_KEY, reason))?
            .for_outbox(self.topic.outbox());
        let mut sink = self.fork().await?;
        sink.topic = topic;
        sink.unconfirmed = Arc::default();
        Ok(sink)
    }

    /// One: the log has one writer, so more lanes would only contend for it, and one lane
    /// keeps the records in the order the source handed them out (in logical mode, commit
    /// order).
    fn max_lanes(&self) -> usize {
        1
    }

    fn name(&self) -> &'static str {
        "log"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::testing::event;
    use std::time::Duration;
    use tokio::time::timeout;

    /// A log sink configuration in `dir` with the given durability.
    /// What the relay tells a sink at open, with room for 10 events in flight.
    fn context() -> SinkContext {
        SinkContext {
            in_flight: 10,
            ..SinkContext::default()
        }
    }

    fn config(dir: &Path, durability: Durability, fsync_interval_ms: u64) -> LogSinkConfig {
        LogSinkConfig {
            dir: dir.to_owned(),
            durability,
            fsync_interval_ms,
            ..LogSinkConfig::default()
        }
    }

    #[tokio::test]
    async fn interval_mode_does_not_resolve_publish_before_an_fsync_covers_it() {
        // given a sink in interval mode whose syncer would wait a minute
        let dir = tempfile::tempdir().unwrap();
        let mut sink = LogSink::open(
            &config(dir.path(), Durability::Interval, 60_000),
            &context(),
        )
        .await
        .unwrap();
        let probe = sink.syncer().unwrap().probe();
        let before = probe.fsyncs();
        let events = vec![event(0, 100), event(1, 100)];

        // when a batch is published, then it stays unresolved while no fsync runs
        let publish = sink.publish(&events);
        tokio::pin!(publish);
        assert!(
            timeout(Duration::from_millis(300), &mut publish)
                .await
                .is_err()
        );
        assert_eq!(probe.fsyncs(), before);

        // and resolves once an fsync completed after the append
        let syncing = probe.clone();
        tokio::task::spawn_blocking(move || syncing.sync_now())
            .await
            .unwrap();
        let outcomes = timeout(Duration::from_secs(5), publish)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(outcomes, vec![Outcome::Delivered; 2]);
        assert_eq!(probe.fsyncs(), before + 1);
    }

    #[tokio::test]
    async fn a_publish_abandoned_while_waiting_for_the_fsync_is_not_appended_again() {
        // given a sink in interval mode whose syncer would wait a minute
        let dir = tempfile::tempdir().unwrap();
        let mut sink = LogSink::open(
            &config(dir.path(), Durability::Interval, 60_000),
            &context(),
        )
        .await
        .unwrap();
        let probe = sink.syncer().unwrap().probe();
        let events = vec![event(0, 100), event(1, 100)];

        // when a publish times out waiting for the fsync, as the relay's timeout makes it
        assert!(
            timeout(Duration::from_millis(200), sink.publish(&events))
                .await
                .is_err()
        );

        // and the relay publishes the same events again, which resolves after an fsync
        let syncing = probe.clone();
        let retry = tokio::spawn(async move {
            let outcomes = sink.publish(&events).await;
            (sink, outcomes)
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        tokio::task::spawn_blocking(move || syncing.sync_now())
            .await
            .unwrap();
        let (sink, outcomes) = timeout(Duration::from_secs(5), retry)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(outcomes.unwrap(), vec![Outcome::Delivered; 2]);
        drop(sink);

        // then the log holds each event once
        let records = crate::log::testing::read_all(&mut LogReader::open(dir.path()).unwrap());
        assert_eq!(records.len(), 2, "{records:?}");
    }

    #[tokio::test]
    async fn interval_mode_resolves_within_an_interval_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = LogSink::open(&config(dir.path(), Durability::Interval, 20), &context())
            .await
            .unwrap();
        let probe = sink.syncer().unwrap().probe();
        let events = vec![event(0, 100)];
        timeout(Duration::from_secs(5), sink.publish(&events))
            .await
            .unwrap()
            .unwrap();
        assert!(probe.fsyncs() >= 1);
    }

    #[tokio::test]
    async fn a_reopened_sink_reports_the_events_at_the_end_of_the_log() {
        // given a log holding 30 events, in none mode (no fsync at all)
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), Durability::None, 50);
        let mut sink = LogSink::open(&cfg, &context()).await.unwrap();
        assert!(sink.already_delivered().is_empty());
        let events: Vec<Event> = (0..30).map(|n| event(n, 50)).collect();
        sink.publish(&events).await.unwrap();
        drop(sink);

        // when it is opened again, then it reports their positions and ids, once
        let mut sink = LogSink::open(&cfg, &context()).await.unwrap();
        let tail = sink.already_delivered();
        assert_eq!(tail.len(), 30);
        assert_eq!(tail[29].position, crate::event::Position(29));
        assert_eq!(tail[29].id, "event-29");
        assert!(sink.already_delivered().is_empty());
    }

    #[tokio::test]
    async fn after_a_failed_fsync_publish_fails_for_good_and_appends_nothing() {
        // given a sink in interval mode whose writer then sees an fsync fail
        let dir = tempfile::tempdir().unwrap();
        let mut sink = LogSink::open(
            &config(dir.path(), Durability::Interval, 60_000),
            &context(),
        )
        .await
        .unwrap();
        let probe = sink.syncer().unwrap().probe();
        let failure = std::io::Error::other("injected EIO");
        sink.writer
            .lock()
            .unwrap()
            .poison(("fsyncing the active log segment".to_owned(), failure));
        probe.sync_now();

        // then publishing fails as poisoned (not retryable), and the log stays empty
        let events = vec![event(0, 10)];
        let err = sink.publish(&events).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::SinkPoisoned);
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("injected EIO"), "{err}");
        drop(sink);
        assert!(
            crate::log::testing::read_all(&mut LogReader::open(dir.path()).unwrap()).is_empty()
        );
    }
}
