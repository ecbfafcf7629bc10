//! The embedded log as a sink: events appended to local segment files, fsynced before
//! `publish` returns.

use super::{Outcome, Sink};
use crate::config::LogSinkConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::event::Event;
use crate::log::{LogWriter, NewRecord, WriterOptions};
use std::sync::{Arc, Mutex};

/// Appends events to the embedded log. The topic is the aggregate type.
pub struct LogSink {
    /// The writer, shared with the blocking thread that does the file I/O.
    writer: Arc<Mutex<LogWriter>>,
    /// Largest record accepted, in bytes.
    max_record_bytes: usize,
}

impl LogSink {
    /// Opens (and recovers) the log directory, taking its writer lock.
    pub async fn open(config: &LogSinkConfig) -> Result<Self> {
        let dir = config.dir.clone();
        let options = WriterOptions {
            segment_bytes: config.segment_bytes,
        };
        let writer = tokio::task::spawn_blocking(move || LogWriter::open(&dir, options))
            .await
            .map_err(|err| Error::with_source(ErrorKind::Internal, "opening the log", err))??;
        Ok(LogSink {
            writer: Arc::new(Mutex::new(writer)),
            max_record_bytes: config.max_record_bytes,
        })
    }
}

impl Sink for LogSink {
    async fn publish(&mut self, events: &[Event]) -> Result<Vec<Outcome>> {
        let mut outcomes = Vec::with_capacity(events.len());
        let mut accepted = Vec::with_capacity(events.len());
        for event in events {
            let record = NewRecord {
                topic: &event.aggregate_type,
                event,
            };
            let size = LogWriter::encoded_len(&record)?;
            if size > self.max_record_bytes {
                outcomes.push(Outcome::Refused(format!(
                    "record of {size} bytes exceeds sink.log.max_record_bytes ({})",
                    self.max_record_bytes
                )));
            } else {
                outcomes.push(Outcome::Delivered);
                accepted.push(event.clone());
            }
        }
        if accepted.is_empty() {
            return Ok(outcomes);
        }
        let writer = self.writer.clone();
        tokio::task::spawn_blocking(move || {
            let records: Vec<NewRecord<'_>> = accepted
                .iter()
                .map(|event| NewRecord {
                    topic: &event.aggregate_type,
                    event,
                })
                .collect();
            let mut writer = writer
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            writer.append(&records)
        })
        .await
        .map_err(|err| Error::with_source(ErrorKind::Internal, "appending to the log", err))??;
        Ok(outcomes)
    }

    fn name(&self) -> &'static str {
        "log"
    }
}
