//! `/v1/groups…`: consumer groups with queue semantics (see `log::queue`).

use super::Api;
use super::request::{ApiError, Body};
use crate::error::{Error, ErrorKind};
use crate::log::queue::{GroupStatus, Receive};
use axum::Json;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use serde_json::{Value, json};
use std::time::Duration;

/// Most messages one receive hands out.
pub const MAX_RECEIVE: u64 = 1000;
/// Messages per receive unless `max` says otherwise.
pub const DEFAULT_RECEIVE: u64 = 10;
/// Visibility timeout unless `visibility_ms` says otherwise.
pub const DEFAULT_VISIBILITY_MS: u64 = 30_000;
/// Longest visibility timeout (12 hours).
pub const MAX_VISIBILITY_MS: u64 = 12 * 3_600_000;
/// Longest long poll (`wait_ms`).
pub const MAX_WAIT_MS: u64 = 60_000;
/// Longest nack delay (12 hours).
pub const MAX_DELAY_MS: u64 = 12 * 3_600_000;

/// `POST /v1/groups/{group}/receive {"max", "wait_ms", "visibility_ms", "topic"}` →
/// `{"messages": [{"ack_id", "record", "redelivered"}]}`; creates the group if new.
pub async fn receive(
    State(api): State<Api>,
    Path(group): Path<String>,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    body.only(&["max", "wait_ms", "visibility_ms", "topic"])?;
    let request = Receive {
        max: body
            .number("max", MAX_RECEIVE)?
            .unwrap_or(DEFAULT_RECEIVE)
            .max(1) as usize,
        wait: Duration::from_millis(body.number("wait_ms", MAX_WAIT_MS)?.unwrap_or(0)),
        visibility: Duration::from_millis(
            body.number("visibility_ms", MAX_VISIBILITY_MS)?
                .unwrap_or(DEFAULT_VISIBILITY_MS)
                .max(1),
        ),
        topic: body.string("topic")?,
    };
    let handed = api
        .groups()
        .receive(&group, &request)
        .await
        .map_err(named)?;
    let messages: Vec<Value> = handed
        .iter()
        .map(|message| {
            json!({
                "ack_id": message.ack_id,
                "record": message.record.view(),
                "redelivered": message.redelivered,
            })
        })
        .collect();
    Ok(Json(json!({ "messages": messages })))
}

/// `POST /v1/groups/{group}/ack {"ack_ids": […]}` → `{"acked": N}`, once the acks are durable.
pub async fn ack(
    State(api): State<Api>,
    Path(group): Path<String>,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    body.only(&["ack_ids"])?;
    let ids = body.strings("ack_ids")?;
    let acked = api.groups().ack(&group, &ids).await.map_err(named)?;
    Ok(Json(json!({ "acked": acked })))
}

/// `POST /v1/groups/{group}/nack {"ack_ids": […], "delay_ms": MS}` → `{"nacked": N}`.
pub async fn nack(
    State(api): State<Api>,
    Path(group): Path<String>,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    body.only(&["ack_ids", "delay_ms"])?;
    let ids = body.strings("ack_ids")?;
    let delay = Duration::from_millis(body.number("delay_ms", MAX_DELAY_MS)?.unwrap_or(0));
    let nacked = api
        .groups()
        .nack(&group, &ids, delay)
        .await
        .map_err(named)?;
    Ok(Json(json!({ "nacked": nacked })))
}

/// `GET /v1/groups/{group}`: committed offset, lag, in flight.
pub async fn status(
    State(api): State<Api>,
    Path(group): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let status = api.groups().status(&group).await.map_err(named)?;
    Ok(Json(to_json(&status)))
}

/// `GET /v1/groups` → `{"groups": [status…]}`.
pub async fn list(State(api): State<Api>) -> Result<impl IntoResponse, ApiError> {
    let statuses = api.groups().list().await?;
    let groups: Vec<Value> = statuses.iter().map(to_json).collect();
    Ok(Json(json!({ "groups": groups })))
}

/// `DELETE /v1/groups/{group}` → `{"deleted": group}`.
pub async fn delete(
    State(api): State<Api>,
    Path(group): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    api.groups().delete(&group).await.map_err(named)?;
    Ok(Json(json!({ "deleted": group })))
}

/// A group's status as JSON.
fn to_json(status: &GroupStatus) -> Value {
    json!({
        "group": status.name,
        "topic": status.topic,
        "committed": status.committed,
        "lag": { "records": status.lag_records, "seconds": status.lag_seconds },
        "in_flight": status.in_flight,
        "redeliveries": status.redeliveries,
        "acks": status.acks,
    })
}

/// An invalid group name is the `group` path parameter's fault: say so.
fn named(err: Error) -> ApiError {
    if err.kind() == ErrorKind::Config {
        return ApiError::bad("group", err);
    }
    err.into()
}
