//! The sink conformance suite (tests/common/conformance.rs) against HTTP webhooks: a receiver
//! of the test's own (tests/common/webhook.rs) behind a TCP proxy the outage cuts. Every
//! request is signed with two secrets (a rotation) and the receiver, which knows only the new
//! one, must verify each; the refused event is one the receiver answers 400; backpressure is
//! the receiver answering 503 with `Retry-After: 1`.

mod common;

use common::conformance::{Delivered, Refusal, SinkUnderTest, total};
use common::proxy::Proxy;
use common::webhook::{NEW_SECRET, OLD_SECRET, Receiver};
use outboxd::config::{Config, DbUrl};
use outboxd::sink::SinkKind;
use outboxd::sink::webhook::SigningSecrets;
use std::time::Duration;

/// The event type the receiver refuses with 400.
const REFUSED: &str = "Refused";

/// A receiver and the proxy in front of it.
struct WebhookSink {
    /// The receiver.
    receiver: Receiver,
    /// Between the relay and the receiver.
    proxy: Proxy,
}

impl SinkUnderTest for WebhookSink {
    // At-least-once: a request whose answer is lost (the proxy cut mid-request, a SIGKILL
    // before the acknowledgement) is sent again; receivers deduplicate by `webhook-id`.
    const EXACTLY_ONCE: bool = false;

    async fn setup() -> Option<Self> {
        let receiver = Receiver::start(&[NEW_SECRET]).await;
        let proxy = Proxy::start(receiver.addr);
        Some(WebhookSink { receiver, proxy })
    }

    fn configure(&self, config: &mut Config) {
        config.sink.kind = SinkKind::Webhook;
        config.sink.webhook.url = DbUrl::new(format!("http://{}/events", self.proxy.addr));
        config.sink.webhook.secrets = SigningSecrets::parse(&self.secrets());
        config.sink.webhook.timeout_ms = 2000;
    }

    /// The secrets (masked in the config file a relay process reads).
    fn env(&self) -> Vec<(String, String)> {
        vec![("OUTBOXD_SINK__WEBHOOK__SECRETS".into(), self.secrets())]
    }

    async fn delivered(&mut self) -> Vec<Delivered> {
        let received = self.receiver.received();
        let unverified = received.iter().filter(|r| !r.verified).count();
        assert_eq!(unverified, 0, "requests whose signature did not verify");
        self.receiver.delivered()
    }

    async fn prepare_outage(&mut self, _config: &mut Config) -> bool {
        true
    }

    /// Every connection through the proxy is closed and new ones are refused.
    async fn outage(&mut self, down: bool) {
        if down {
            self.proxy.cut().await;
        } else {
            self.proxy.restore();
        }
    }

    /// An event of a type the receiver answers 400.
    fn refusal(&self, _config: &mut Config) -> Refusal {
        self.receiver.refuse_type(REFUSED);
        Refusal {
            event_type: REFUSED.into(),
            pad: 0,
            reason: "400 Bad Request: event type Refused is not accepted",
        }
    }

    fn prepare_backpressure(&self, _config: &mut Config) -> Option<()> {
        Some(())
    }

    /// 503 with `Retry-After: 1` for a long while, or healed.
    async fn backpressure(&mut self, on: bool) {
        if on {
            self.receiver
                .fail_for(Duration::from_secs(3600), 503, Some("1"));
        } else {
            self.receiver.heal();
        }
    }

    /// More than three push-backs per key mean some event was pushed back three times: past
    /// `relay.max_attempts` (2) had they counted as failed attempts.
    fn held_back(&self, metrics: &str, aggregates: usize) -> bool {
        total(metrics, "outboxd_publish_busy_total") > (3 * aggregates) as f64
    }
}

impl WebhookSink {
    /// The relay's secrets: the old and the new one, as during a rotation.
    fn secrets(&self) -> String {
        format!("{OLD_SECRET} {NEW_SECRET}")
    }
}

common::conformance::suite!(WebhookSink);
