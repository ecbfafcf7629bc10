//! stub
#![allow(missing_docs, unused)]
use crate::error::Result;
use crate::event::Event;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::path::Path;
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record { pub offset: u64, pub topic: String, pub appended_at: DateTime<Utc>, pub event: Event }
pub struct NewRecord<'a> { pub topic: &'a str, pub event: &'a Event }
pub struct WriterOptions { pub segment_bytes: u64 }
pub struct LogWriter;
impl LogWriter {
    pub fn open(dir: &Path, options: WriterOptions) -> Result<LogWriter> { todo!() }
    pub fn append(&mut self, batch: &[NewRecord<'_>]) -> Result<std::ops::Range<u64>> { todo!() }
    pub fn encoded_len(record: &NewRecord<'_>) -> Result<usize> { todo!() }
}
pub struct LogReader;
impl LogReader {
    pub fn open(dir: &Path) -> Result<LogReader> { todo!() }
    pub fn seek(&mut self, offset: u64) -> Result<()> { todo!() }
    pub fn next(&mut self) -> Result<Option<Record>> { todo!() }
    pub fn bounds(&self) -> Result<(u64, u64)> { todo!() }
}
