//! `GET /v1/records` (a page of records, with a long poll) and `GET /v1/stream` (Server-Sent
//! Events, resumable with `Last-Event-ID`).

use super::Api;
use super::request::{ApiError, Query};
use crate::log::{Consumer, Record, Start, blocking};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::{Duration, Instant};

/// Records per page unless `limit` says otherwise.
pub const DEFAULT_LIMIT: u64 = 100;
/// Most records per page.
pub const MAX_LIMIT: u64 = 10_000;
/// Longest long poll (`wait_ms`).
pub const MAX_WAIT_MS: u64 = 60_000;
/// Records a stream reads from the log at a time.
const STREAM_BATCH: usize = 512;

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
    let views: Vec<_> = records.iter().map(Record::view).collect();
    Ok(Json(serde_json::json!({
        "records": views,
        "next": consumer.position(),
    })))
}

/// `GET /v1/stream?from=OFFSET&topic=T`: every record from `from` on as one event, `id:` its
/// offset, then each new record as it becomes durable. A `Last-Event-ID` header wins over
/// `from`: the stream resumes after that offset.
pub async fn stream(
    State(api): State<Api>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
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
    Ok(Sse::new(events(consumer)).keep_alive(KeepAlive::default()))
}

/// The stream of `consumer`'s records as events, forever (until the client goes).
fn events(consumer: Consumer) -> impl Stream<Item = Result<Event, Infallible>> {
    let state = (consumer, VecDeque::<Record>::new(), false);
    stream::unfold(state, |(mut consumer, mut buffered, failed)| async move {
        if failed {
            return None;
        }
        loop {
            if let Some(record) = buffered.pop_front() {
                let event = Event::default()
                    .id(record.offset.to_string())
                    .json_data(record.view())
                    .unwrap_or_else(|err| Event::default().event("error").data(err.to_string()));
                return Some((Ok(event), (consumer, buffered, false)));
            }
            // A day is "until something arrives": keep-alives go out meanwhile.
            let deadline = Instant::now() + Duration::from_secs(86_400);
            match consumer.read(STREAM_BATCH, deadline).await {
                Ok(batch) => buffered.extend(batch),
                Err(err) => {
                    tracing::error!(error = %err.chain(), "consumer stream failed");
                    let event = Event::default().event("error").data(err.to_string());
                    return Some((Ok(event), (consumer, buffered, true)));
                }
            }
        }
    })
}

/// A consumer of the API's log from `from`, of `topic` only if given.
fn open(api: &Api, from: u64, topic: Option<String>) -> Result<Consumer, ApiError> {
    let consumer = blocking(|| Consumer::open(api.dir(), Start::Offset(from)))?;
    Ok(consumer.with_topic(topic))
}
