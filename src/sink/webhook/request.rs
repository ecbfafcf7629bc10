//! Building one POST: the body, `Content-Type`, the Standard Webhooks headers (`webhook-id`,
//! `webhook-timestamp`, `webhook-signature`), the CloudEvents binary-mode headers and the
//! configured static headers.

use super::body::{binary_headers, content_type};
use super::config::{CloudEventsMode, WebhookSinkConfig};
use super::signing::Signer;
use crate::error::{Error, Result};
use crate::event::Event;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue, USER_AGENT};
use http::{Method, Request, Uri};
use http_body_util::Full;
use std::time::{SystemTime, UNIX_EPOCH};

/// What every request of the sink shares.
#[derive(Clone)]
pub struct RequestMaker {
    /// Signs bodies.
    signer: Signer,
    /// The configured static headers, parsed.
    extra: Vec<(HeaderName, HeaderValue)>,
    /// The body's form.
    mode: CloudEventsMode,
    /// Whether bodies are arrays.
    batch: bool,
    /// The CloudEvents `source`.
    source: String,
}

impl RequestMaker {
    /// From the configuration (already validated; a bad header is still an error naming it).
    pub fn new(config: &WebhookSinkConfig) -> Result<Self> {
        let mut extra = Vec::with_capacity(config.headers.len());
        for (name, value) in &config.headers {
            let bad = || Error::config("sink.webhook.headers", format!("{name:?} is not usable"));
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
            let mut value = HeaderValue::from_str(value.expose()).map_err(|_| bad())?;
            // Kept out of HTTP/2's header compression tables and any debug output.
            value.set_sensitive(true);
            extra.push((name, value));
        }
        Ok(RequestMaker {
            signer: Signer::new(&config.secrets)?,
            extra,
            mode: config.cloudevents,
            batch: config.batch,
            source: config.cloudevents_source.clone(),
        })
    }

    /// The POST of `body` to `uri`, with `id` as `webhook-id` (the event id; a batch's is made
    /// of its first and last ids) and, in binary mode, `event`'s attributes as headers. An error
    /// is the reason to refuse the events (an id that cannot be a header value).
    pub fn make(
        &self,
        uri: Uri,
        id: &str,
        body: Bytes,
        event: Option<&Event>,
    ) -> std::result::Result<Request<Full<Bytes>>, String> {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs() as i64);
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header(CONTENT_TYPE, content_type(self.mode, self.batch))
            .header(USER_AGENT, concat!("outboxd/", env!("CARGO_PKG_VERSION")));
        let headers = request.headers_mut().ok_or("the request cannot be built")?;
        let id_value = HeaderValue::from_str(id)
            .map_err(|_| format!("the event id {id:?} cannot be a webhook-id header"))?;
        headers.insert("webhook-id", id_value);
        headers.insert("webhook-timestamp", HeaderValue::from(timestamp));
        if let Some(signature) = self.signer.signature(id, timestamp, &body) {
            let value = HeaderValue::from_str(&signature).map_err(|err| err.to_string())?;
            headers.insert("webhook-signature", value);
        }
        if let (CloudEventsMode::Binary, Some(event)) = (self.mode, event) {
            for (name, value) in binary_headers(event, &self.source) {
                let value = HeaderValue::from_str(&value).map_err(|err| err.to_string())?;
                headers.insert(name, value);
            }
        }
        for (name, value) in &self.extra {
            headers.insert(name.clone(), value.clone());
        }
        request
            .body(Full::new(body))
            .map_err(|err| format!("the request cannot be built: {err}"))
    }
}
