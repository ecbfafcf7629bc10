//! HTTP webhooks as a sink: each event is POSTed to `sink.webhook.url` (a template), alone or
//! with `batch` in a JSON array of consecutive events of one lane, and counts as delivered
//! once the receiver answered 2xx.
//!
//! Requests are signed as Standard Webhooks prescribes (`webhook-id` = the event id, so a
//! receiver drops a repeat; `webhook-timestamp`; `webhook-signature` with one `v1,` signature
//! per configured secret). 408, 429 and 5xx push back without counting an attempt, honouring
//! `Retry-After`; other statuses make dead letters that quote the status and the answer's first
//! bytes; no answer at all is an outage, retried after the relay's backoff (see
//! [`publish`](self::publish) for the rules per call). Each lane sends one request at a time
//! on an HTTP/1.1 connection of its own, kept alive and driven in the lane's task
//! ([`lane`](self::lane)); HTTP/2 goes through a pool shared by every lane.

mod answer;
mod body;
mod client;
mod config;
mod lane;
mod publish;
mod request;
mod signing;
mod target;

pub use self::config::{CloudEventsMode, HttpVersion, WebhookSinkConfig};
pub use self::signing::SigningSecrets;

use self::lane::LaneClient;
use self::request::RequestMaker;
use self::target::UrlTemplate;
use super::{OpenSink, Outcome, Sink, SinkContext};
use crate::error::{Error, ErrorKind, Result};
use crate::event::Event;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a start-up check or a probe waits for a TCP connection to the receiver.
const CONNECT_CHECK: Duration = Duration::from_secs(5);

/// POSTs events to a webhook receiver.
pub struct WebhookSink {
    /// The sink's settings.
    config: Arc<WebhookSinkConfig>,
    /// The parsed URL template.
    url: UrlTemplate,
    /// The lane's connection, and the transport every lane shares.
    client: LaneClient,
    /// Builds and signs requests.
    requests: RequestMaker,
    /// Until when the receiver asked to be left alone (`Retry-After`), shared by every lane.
    hold: Hold,
    /// The request timeout.
    timeout: Duration,
    /// Whether the last request was answered.
    healthy: bool,
}

/// A `Retry-After` deadline shared by every lane's handle.
#[derive(Clone, Default)]
struct Hold(Arc<Mutex<Option<Instant>>>);

impl Hold {
    /// How long the receiver still asked to be left alone, if at all.
    fn remaining(&self) -> Option<Duration> {
        let until = (*self.0.lock().unwrap_or_else(|e| e.into_inner()))?;
        until
            .checked_duration_since(Instant::now())
            .filter(|wait| !wait.is_zero())
    }

    /// Leaves the receiver alone until `until` (a later deadline already set stays).
    fn until(&self, until: Instant) {
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if held.is_none_or(|current| current < until) {
            *held = Some(until);
        }
    }
}

impl OpenSink for WebhookSink {
    type Config = WebhookSinkConfig;

    async fn open(config: &WebhookSinkConfig, context: &SinkContext) -> Result<Self> {
        WebhookSink::open(config, context).await
    }

    fn validate(config: &WebhookSinkConfig) -> Result<()> {
        config.validate()
    }
}

impl WebhookSink {
    /// Builds the client and, when the URL is the same for every event, checks that the
    /// receiver accepts connections: a wrong host or port stops start-up with an error naming
    /// the URL, as the other sinks do for an unreachable broker.
    pub async fn open(config: &WebhookSinkConfig, context: &SinkContext) -> Result<Self> {
        let url = UrlTemplate::parse_for(&config.url, &context.outbox)?;
        let client = LaneClient::new(client::build(config)?);
        let requests = RequestMaker::new(config)?;
        if let Some(uri) = url.fixed()
            && let Err(reason) = reachable(uri).await
        {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "sink.webhook.url: cannot connect to the webhook receiver at {}: {reason}",
                    config.url
                ),
            ));
        }
        if config.secrets.is_empty() {
            tracing::warn!(
                "sink.webhook.secrets is empty: requests go unsigned, and receivers cannot \
                 verify that they come from this relay"
            );
        }
        tracing::info!(url = %config.url, batch = config.batch, "webhook sink ready");
        Ok(WebhookSink {
            config: Arc::new(config.clone()),
            url,
            client,
            requests,
            hold: Hold::default(),
            timeout: Duration::from_millis(config.timeout_ms),
            healthy: true,
        })
    }
}

impl Sink for WebhookSink {
    async fn publish(&mut self, events: &[Event]) -> Result<Vec<Outcome>> {
        self.publish_call(events).await
    }

    /// Shares the transport (connector, pool) and the `Retry-After` deadline; the new handle
    /// opens a connection of its own.
    async fn fork(&self) -> Result<Self> {
        Ok(WebhookSink {
            config: self.config.clone(),
            url: self.url.clone(),
            client: self.client.fork(),
            requests: self.requests.clone(),
            hold: self.hold.clone(),
            timeout: self.timeout,
            healthy: self.healthy,
        })
    }

    /// A handle on the same transport POSTing to the `destination` URL template.
    async fn redirect(&self, destination: &str) -> Result<Self> {
        let url = crate::secret::DbUrl::new(destination.to_owned());
        let url = UrlTemplate::parse_for(&url, self.url.outbox())
            .map_err(|err| Error::config(super::DEAD_LETTER_KEY, err.chain()))?;
        let mut sink = self.fork().await?;
        sink.url = url;
        Ok(sink)
    }

    fn name(&self) -> &'static str {
        "webhook"
    }

    /// Whether the last request was answered (whatever the status); cached state only.
    fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// Opens (and closes) a TCP connection to the receiver of a fixed URL; a URL that varies
    /// by event keeps what the last request showed. Nothing is POSTed.
    async fn probe(&mut self) -> bool {
        if let Some(uri) = self.url.fixed() {
            self.healthy = reachable(uri).await.is_ok();
        }
        self.healthy
    }
}

/// Whether a TCP connection to `uri`'s host and port opens within [`CONNECT_CHECK`].
async fn reachable(uri: &http::Uri) -> std::result::Result<(), String> {
    let host = uri.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    match tokio::time::timeout(CONNECT_CHECK, tokio::net::TcpStream::connect((host, port))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!(
            "no connection within {} s",
            CONNECT_CHECK.as_secs()
        )),
    }
}
