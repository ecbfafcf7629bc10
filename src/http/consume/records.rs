//! `GET /v1/records` (a page of records, with a long poll) and `GET /v1/stream` (Server-Sent
//! Events, resumable with `Last-Event-ID`).

use super::Api;
use super::request::{ApiError, Query};
use crate::log::{Consumer, Record, RecordView, Start, blocking};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Uri, header};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use serde::Serialize;
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
pub async fn records(State(api): State<Api>, uri: Uri) -> Result<impl IntoResponse, ApiError> {
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
    let records = consumer.read(limit, deadline).await?;
    let page = Page {
        records: records.iter().map(Record::view).collect(),
        next: consumer.position(),
    };
    // Serializing a record cannot fail: every field is a string, number or valid JSON.
    let body = serde_json::to_vec(&page).unwrap_or_default();
    Ok(([(header::CONTENT_TYPE, "application/json")], body))
}

/// The answer of `GET /v1/records`, serialized straight from the records.
#[derive(Serialize)]
struct Page<'a> {
    /// The records, as `outboxd log read` prints them.
    records: Vec<RecordView<'a>>,
    /// Where the next page starts.
    next: u64,
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
    let mut json = Vec::with_capacity(1024);
    for record in records {
        json.clear();
        // Serializing a record cannot fail: every field is a string, number or valid JSON.
        let _ = serde_json::to_writer(&mut json, &record.view());
        out.extend_from_slice(format!("id: {}\n", record.offset).as_bytes());
        for line in json.split(|&b| b == b'\n' || b == b'\r') {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(line);
            out.push(b'\n');
        }
        out.push(b'\n');
    }
    Bytes::from(out)
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
