//! `outboxd log stats`: segments, offsets, bytes and records per topic of a log directory.

use crate::error::{Error, ErrorKind, Result};
use crate::log::LogReader;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// What `log stats` reports.
#[derive(Debug, Serialize)]
struct Stats {
    /// Segment files in the directory.
    segments: usize,
    /// Bytes of all segment files.
    bytes: u64,
    /// Records in the log.
    records: u64,
    /// Offset of the first record, if any.
    first_offset: Option<u64>,
    /// Offset of the last record, if any.
    last_offset: Option<u64>,
    /// Records per topic, by topic name.
    topics: BTreeMap<String, u64>,
}

/// Reads the whole log at `dir` (without the writer lock) and prints its statistics.
pub fn run(dir: &Path, json: bool) -> Result<()> {
    let mut reader = LogReader::open(dir)?;
    let (segments, bytes) = segment_files(dir)?;
    let (first, _) = reader.bounds()?;
    reader.seek(first)?;
    let mut stats = Stats {
        segments,
        bytes,
        records: 0,
        first_offset: None,
        last_offset: None,
        topics: BTreeMap::new(),
    };
    while let Some(record) = reader.next()? {
        stats.first_offset.get_or_insert(record.offset);
        stats.last_offset = Some(record.offset);
        stats.records += 1;
        *stats.topics.entry(record.topic).or_default() += 1;
    }
    if json {
        let line = serde_json::to_string(&stats)
            .map_err(|err| Error::with_source(ErrorKind::Internal, "encoding stats", err))?;
        println!("{line}");
        return Ok(());
    }
    let offset = |o: Option<u64>| o.map_or("-".to_owned(), |o| o.to_string());
    println!("segments      {}", stats.segments);
    println!("bytes         {}", stats.bytes);
    println!("records       {}", stats.records);
    println!("first offset  {}", offset(stats.first_offset));
    println!("last offset   {}", offset(stats.last_offset));
    for (topic, count) in &stats.topics {
        println!("topic {topic:<20} {count} records");
    }
    Ok(())
}

/// How many segment files `dir` holds and their total size.
fn segment_files(dir: &Path) -> Result<(usize, u64)> {
    let list_error = |err| Error::io(format!("listing {}", dir.display()), err);
    let mut count = 0;
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir).map_err(list_error)? {
        let entry = entry.map_err(list_error)?;
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.ends_with(".log"))
        {
            count += 1;
            bytes += entry.metadata().map_err(list_error)?.len();
        }
    }
    Ok((count, bytes))
}
