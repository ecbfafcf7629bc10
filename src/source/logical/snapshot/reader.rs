//! The chunk reader: a task of its own, on a database session of its own, that writes a chunk's
//! low watermark, reads the chunk ([`super::chunk::read`]), prepares its rows' JSON
//! ([`crate::source::logical::tables::prepare`]) and writes the high watermark. The stream
//! goes on decoding meanwhile, and the rows' JSON, most of a snapshot's work, is written on
//! another core than the stream's.
//!
//! The rows are prepared before the high watermark is written. So by the time the stream
//! decodes it, the chunk is (nearly always) in; the stream waits for the task otherwise, since
//! nothing after the high watermark may be decoded before the chunk's rows are queued there.

use super::chunk::{self, Shape};
use crate::error::Result;
use crate::pg::Session;
use crate::source::logical::tables::{PreparedRow, Table, Types, prepare};
use crate::source::pgoutput::Value;
use std::sync::Arc;

/// Test lever: milliseconds the reader waits after writing a chunk's high watermark before it
/// answers, so the stream decodes both watermarks first (the path a loaded machine takes now
/// and then: see [`crate::source::logical::LogicalSource::finish_held_chunk`]).
pub const ANSWER_DELAY_ENV: &str = "OUTBOXD_TEST_SNAPSHOT_ANSWER_DELAY_MS";

/// What one chunk read needs, moved into its task.
pub struct Request {
    /// The watermarks' id (`<run>:<n>`).
    pub id: String,
    /// The watermarks' prefix.
    pub prefix: String,
    /// The table as read.
    pub shape: Arc<Shape>,
    /// The table as the mapping writes its rows.
    pub table: Arc<Table>,
    /// User types, for the rows' JSON.
    pub types: Types,
    /// The last key queued: the chunk starts after it.
    pub after: Option<Vec<String>>,
    /// The backfill's `--where` condition.
    pub condition: Option<String>,
    /// Rows to read at most.
    pub limit: usize,
}

/// A chunk read and prepared, waiting for the stream to decode its high watermark.
pub struct Prepared {
    /// Its rows, in key order.
    pub rows: Vec<PreparedRow>,
    /// The key of its last row (text values), where the next chunk starts.
    pub last_key: Option<Vec<String>>,
    /// Whether no row comes after these.
    pub last: bool,
    /// Transactions its snapshot did not see although they began before it.
    pub invisible: Vec<u32>,
}

/// Writes the low watermark, reads and prepares the chunk, writes the high watermark.
pub async fn read(session: &Session, request: Request) -> Result<Prepared> {
    let client = &session.client;
    // The low watermark needs no transaction of its own: a non-transactional message is
    // decoded at its place in the WAL, which orders it against commits as a commit there
    // would, without a commit's flush. (It is decoded once the high one's commit flushes the
    // WAL past it.) The high watermark is transactional: the chunk's rows are positioned at
    // its transaction.
    let low = "SELECT pg_logical_emit_message(false, $1, $2)";
    let high = "SELECT pg_logical_emit_message(true, $1, $2)";
    let what = |err| crate::pg::classify("writing a snapshot watermark", err);
    client
        .execute(low, &[&request.prefix, &format!("{}:low", request.id)])
        .await
        .map_err(what)?;
    let rows = chunk::read(
        client,
        &request.shape,
        request.after.as_deref(),
        request.condition.as_deref(),
        request.limit,
    )
    .await?;
    let shape = &request.shape;
    let last_key = rows.rows.last().map(|row| {
        let key = shape.key.iter();
        key.map(|&i| chunk::value(row, i).unwrap_or_default().to_owned())
            .collect()
    });
    let mut values: Vec<Value<'_>> = Vec::with_capacity(shape.columns.len());
    let mut prepared = Vec::with_capacity(rows.rows.len());
    for row in &rows.rows {
        values.clear();
        values.extend(
            (0..shape.columns.len()).map(|i| match chunk::value(row, i) {
                Some(text) => Value::Text(text.as_bytes()),
                None => Value::Null,
            }),
        );
        prepared.push(prepare(&request.types, &request.table, &values));
    }
    client
        .execute(high, &[&request.prefix, &format!("{}:high", request.id)])
        .await
        .map_err(what)?;
    if let Some(delay) = answer_delay() {
        tokio::time::sleep(delay).await;
    }
    Ok(Prepared {
        rows: prepared,
        last_key,
        last: rows.last,
        invisible: rows.invisible,
    })
}

/// The [`ANSWER_DELAY_ENV`] delay, if set.
fn answer_delay() -> Option<std::time::Duration> {
    static DELAY: std::sync::LazyLock<Option<std::time::Duration>> =
        std::sync::LazyLock::new(|| {
            let ms = std::env::var(ANSWER_DELAY_ENV).ok()?.parse().ok()?;
            Some(std::time::Duration::from_millis(ms))
        });
    *DELAY
}
