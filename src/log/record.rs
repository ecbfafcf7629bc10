//! Records: what the log stores and what its readers get back. How one is laid out on disk is
//! [`super::frame`]'s and [`super::codec`]'s job.

use crate::event::Event;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A record as stored in the log.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    /// Position in the log's one global sequence, starting at 0.
    pub offset: u64,
    /// The topic the record was appended under (by default the event's aggregate type).
    pub topic: String,
    /// When the writer appended the record.
    pub appended_at: DateTime<Utc>,
    /// The event, with its payload exactly as the source read it.
    pub event: Event,
}

/// What the caller appends; the writer adds the offset and the append time.
#[derive(Clone, Copy, Debug)]
pub struct NewRecord<'a> {
    /// The topic to append under.
    pub topic: &'a str,
    /// The event to store.
    pub event: &'a Event,
}

/// How a record is printed (`outboxd log read`) and served (the HTTP consumer API): its
/// fields, with the event's ordering key beside the offset and topic.
#[derive(Debug, Serialize)]
pub struct RecordView<'a> {
    /// The record's offset.
    pub offset: u64,
    /// Its topic.
    pub topic: &'a str,
    /// The event's ordering key (also in the event, as `aggregateid`).
    pub key: &'a str,
    /// When it was appended.
    pub appended_at: DateTime<Utc>,
    /// The event.
    pub event: &'a Event,
}

impl Record {
    /// The record as printed and served.
    pub fn view(&self) -> RecordView<'_> {
        RecordView {
            offset: self.offset,
            topic: &self.topic,
            key: &self.event.key,
            appended_at: self.appended_at,
            event: &self.event,
        }
    }
}
