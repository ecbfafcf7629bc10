//! `GET /v1/records` (a page of records, with a long poll) and `GET /v1/stream` (Server-Sent
//! Events, resumable with `Last-Event-ID`).

use super::Api;
use super::request::{ApiError, Query};
use crate::log::{Consumer, Record, Start, blocking, json};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Uri, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use futures_util::stream::{self, Stream};
use std::convert::Infallible;
use std::time::{Duration, Instant};

/// Records per page unless `limit` says otherwise.
pub const DEFAULT_LIMIT: u64 = 100;
/// Most records per page.
pub const MAX_LIMIT: u64 = 10_000;
/// Longest long poll (`wait_ms`).
pub const MAX_WAIT_MS: u64 = 60_000;
/// Records a stream reads from the log at a time (one chunk of events).
const STREAM_BATCH: usize = 512;
/// A stream without records sends a comment line this often.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `GET /v1/records?from=OFFSET&topic=T&limit=N&wait_ms=MS` → `{"records": […], "next": N}`:
/// the records from `from` (default 0) on, of `topic` only if given, at most `limit`; with
/// `wait_ms`, waits that long for the first one. `next` is where the next page starts.
///
/// The page is sent as it is read, [`STREAM_BATCH`] records at a time, so a large page costs
/// no more memory than a small one and the client parses while the relay reads. A read that
/// fails after the first records were sent aborts the response (the client sees a truncated
/// body, never a short page that looks complete).
pub async fn records(State(api): State<Api>, uri: Uri) -> Result<Response, ApiError> {
    let query = Query::of(&uri);
    let from = query.number("from", u64::MAX - 1)?.unwrap_or(0);
    let limit = query
        .number("limit", MAX_LIMIT)?
        .unwrap_or(DEFAULT_LIMIT)
        .max(1) as usize;
    let wait = Duration::from_millis(query.number("wait_ms", MAX_WAIT_MS)?.unwrap_or(0));
    let topic = query.string("topic");
    let deadline = Instant::now() + wait;
    let mut consumer = open(&api, from, topic)?;
    let chunk = limit.min(STREAM_BATCH);
    let first = consumer.read(chunk, deadline).await?;
    let mut page = PageWriter::new(limit);
    let mut out = Vec::with_capacity(first.len() * 640 + 64);
    out.extend_from_slice(b"{\"records\":[");
    page.add(&mut out, &first);
    let headers = [(header::CONTENT_TYPE, "application/json")];
    if page.left == 0 || first.len() < chunk {
        // Complete already (full, or nothing more is durable): one body with its length.
        page.finish(&mut out, consumer.position());
        return Ok((headers, out).into_response());
    }
    let rest = stream::unfold(Some((consumer, page)), |state| async move {
        let (mut consumer, mut page) = state?;
        let chunk = page.left.min(STREAM_BATCH);
        let batch = match blocking(|| consumer.next_batch(chunk)) {
            Ok(batch) => batch,
            Err(err) => {
                tracing::error!(error = %err.chain(), "reading a page of records failed");
                return Some((Err(std::io::Error::other(err.to_string())), None));
            }
        };
        let mut out = Vec::with_capacity(batch.len() * 640 + 64);
        page.add(&mut out, &batch);
        if page.left == 0 || batch.len() < chunk {
            page.finish(&mut out, consumer.position());
            return Some((Ok(Bytes::from(out)), None));
        }
        Some((Ok(Bytes::from(out)), Some((consumer, page))))
    });
    let body = stream::once(async { Ok(Bytes::from(out)) }).chain(rest);
    Ok((headers, Body::from_stream(body)).into_response())
}

/// Writes the records of one page, separated by commas, up to its limit.
struct PageWriter {
    /// Records the page may still hold.
    left: usize,
    /// Whether a record was written (the next one needs a comma before it).
    started: bool,
}

impl PageWriter {
    /// A page of at most `limit` records.
    fn new(limit: usize) -> PageWriter {
        PageWriter {
            left: limit,
            started: false,
        }
    }

    /// Appends `records` (no more than the page has room for) to `out`.
    fn add(&mut self, out: &mut Vec<u8>, records: &[Record]) {
        for record in records {
            if self.started {
                out.push(b',');
            }
            self.started = true;
            json::write_record(out, record);
        }
        self.left -= records.len();
    }

    /// Closes the page: the records' array, and `next`.
    fn finish(&self, out: &mut Vec<u8>, next: u64) {
        out.extend_from_slice(b"],\"next\":");
        json::write_u64(out, next);
        out.push(b'}');
    }
}

/// `GET /v1/stream?from=OFFSET&topic=T`: every record from `from` on as one event, `id:` its
/// offset, then each new record as it becomes durable. A `Last-Event-ID` header wins over
/// `from`: the stream resumes after that offset.
pub async fn stream(
    State(api): State<Api>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let query = Query::of(&uri);
    let mut from = query.number("from", u64::MAX - 1)?.unwrap_or(0);
    if let Some(last) = headers.get("last-event-id") {
        let last: u64 = last
            .to_str()
            .ok()
            .and_then(|last| last.trim().parse().ok())
            .filter(|&last| last < u64::MAX - 1)
            .ok_or_else(|| ApiError::bad("Last-Event-ID", "must be a record offset"))?;
        from = last + 1;
    }
    let consumer = open(&api, from, query.string("topic"))?;
    let headers = [
        (header::CONTENT_TYPE, "text/event-stream"),
        (header::CACHE_CONTROL, "no-cache"),
    ];
    Ok((headers, Body::from_stream(events(consumer))).into_response())
}

/// The stream of `consumer`'s records as Server-Sent Events, forever (until the client goes):
/// each batch read from the log becomes one chunk of events, and a comment line goes out after
/// [`KEEP_ALIVE`] without records, so proxies keep the connection.
fn events(consumer: Consumer) -> impl Stream<Item = Result<Bytes, Infallible>> {
    stream::unfold((consumer, false), |(mut consumer, failed)| async move {
        if failed {
            return None;
        }
        let deadline = Instant::now() + KEEP_ALIVE;
        let chunk = match consumer.read(STREAM_BATCH, deadline).await {
            Ok(batch) if batch.is_empty() => Bytes::from_static(b":\n\n"),
            Ok(batch) => encode(&batch),
            Err(err) => {
                tracing::error!(error = %err.chain(), "consumer stream failed");
                let message = err.to_string().replace(['\r', '\n'], " ");
                let event = format!("event: error\ndata: {message}\n\n");
                return Some((Ok(Bytes::from(event)), (consumer, true)));
            }
        };
        Some((Ok(chunk), (consumer, false)))
    })
}

/// `records` as events: `id: <offset>`, then the record's JSON as `data:` lines (a payload
/// stored with line breaks between its tokens takes several lines, which SSE joins back).
fn encode(records: &[Record]) -> Bytes {
    let mut out = Vec::with_capacity(records.len() * 640);
    for record in records {
        out.extend_from_slice(b"id: ");
        json::write_u64(&mut out, record.offset);
        out.extend_from_slice(b"\ndata: ");
        let start = out.len();
        json::write_record(&mut out, record);
        // Only the payload and headers, copied as stored, can hold a raw line break: strings
        // are escaped.
        let event = &record.event;
        let multiline = has_line_break(event.payload.get())
            || event
                .headers
                .as_ref()
                .is_some_and(|h| has_line_break(h.get()));
        if multiline {
            let json = out.split_off(start);
            out.truncate(start - b"data: ".len());
            for line in json.split(|&b| b == b'\n' || b == b'\r') {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(line);
                out.push(b'\n');
            }
        } else {
            out.push(b'\n');
        }
        out.push(b'\n');
    }
    Bytes::from(out)
}

/// Whether `text` holds a line break (which SSE would take for the end of a `data:` line).
fn has_line_break(text: &str) -> bool {
    text.bytes().any(|b| b == b'\n' || b == b'\r')
}

/// A consumer of the API's log from `from`, of `topic` only if given.
fn open(api: &Api, from: u64, topic: Option<String>) -> Result<Consumer, ApiError> {
    let consumer = blocking(|| Consumer::open(api.dir(), Start::Offset(from)))?;
    Ok(consumer.with_topic(topic))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_with_line_breaks_becomes_several_data_lines_that_join_back_into_the_record() {
        let mut event = crate::log::testing::event(7, 3);
        event.payload =
            serde_json::value::RawValue::from_string("{\"a\":\r\n[1,\n2]}".into()).unwrap();
        let record = Record {
            offset: 41,
            topic: "orders".into(),
            appended_at: chrono::Utc::now(),
            event,
        };
        let text = String::from_utf8(encode(std::slice::from_ref(&record)).to_vec()).unwrap();
        assert!(
            text.starts_with("id: 41\ndata: ") && text.ends_with("\n\n"),
            "{text}"
        );
        let data: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("data: "))
            .collect();
        assert!(data.len() > 1, "{text}");
        let joined: serde_json::Value = serde_json::from_str(&data.join("\n")).unwrap();
        assert_eq!(joined["event"]["payload"]["a"][1], 2);
        assert_eq!(joined["offset"], 41);
    }
}
