//! The webhook sink on its own, against the test receiver (tests/common/webhook.rs): what each
//! answer makes of an event, signatures during a rotation, the body in each mode, batches,
//! HTTP/2, TLS with a CA of the test's own, and the refusals that name their cause.

mod common;

use common::certs::certificates;
use common::webhook::{NEW_SECRET, OLD_SECRET, Receiver, verify};
use http::Version;
use outboxd::event::{Event, Operation, Origin, Position};
use outboxd::secret::DbUrl;
use outboxd::sink::webhook::{CloudEventsMode, HttpVersion, SigningSecrets};
use outboxd::sink::{Outcome, Sink, SinkContext, WebhookSink, WebhookSinkConfig};
use serde_json::Value;
use serde_json::value::RawValue;
use std::time::Duration;

/// An outbox event of aggregate `key` with payload `{"seq": seq}`.
fn event(key: &str, seq: i64, event_type: &str) -> Event {
    Event {
        id: uuid::Uuid::new_v4().to_string(),
        subject: "order".into(),
        key: key.into(),
        event_type: event_type.into(),
        op: Operation::Insert,
        origin: Origin::Outbox,
        payload: RawValue::from_string(format!(r#"{{"seq":{seq}}}"#)).unwrap(),
        headers: Some(RawValue::from_string(r#"{"trace":"t-1"}"#.into()).unwrap()),
        created_at: chrono::Utc::now(),
        position: Position(seq as u64),
    }
}

/// A configuration POSTing to `url`, signed with the old and the new secret.
fn config(url: String) -> WebhookSinkConfig {
    WebhookSinkConfig {
        url: DbUrl::new(url),
        secrets: SigningSecrets::parse(&format!("{OLD_SECRET} {NEW_SECRET}")),
        timeout_ms: 5000,
        ..WebhookSinkConfig::default()
    }
}

/// The sink opened on `config`.
async fn open(config: &WebhookSinkConfig) -> WebhookSink {
    config.validate().expect("valid config");
    WebhookSink::open(config, &SinkContext::default())
        .await
        .expect("open")
}

#[tokio::test]
async fn each_event_is_one_signed_post_that_either_secret_of_a_rotation_verifies() {
    // Given a receiver and a sink signing with an old and a new secret
    let receiver = Receiver::start(&[NEW_SECRET]).await;
    let mut sink = open(&config(receiver.url("http", "/in"))).await;
    let events = [event("a", 1, "Step"), event("a", 2, "Step")];

    // When two events are published
    let outcomes = sink.publish(&events).await.unwrap();

    // Then each is one POST, webhook-id its id, that verifies with either secret alone and
    // not with another one
    assert_eq!(outcomes, [Outcome::Delivered, Outcome::Delivered]);
    let received = receiver.received();
    assert_eq!(received.len(), 2);
    for (request, event) in received.iter().zip(&events) {
        assert_eq!(request.header("webhook-id"), Some(event.id.as_str()));
        assert_eq!(request.header("content-type"), Some("application/json"));
        let signatures = request.header("webhook-signature").unwrap();
        assert_eq!(signatures.split(' ').count(), 2, "{signatures}");
        for secret in [OLD_SECRET, NEW_SECRET] {
            assert!(verify(&request.headers, &request.body, &[secret.into()]));
        }
        let other = "whsec_b3RoZXItc2VjcmV0".to_string();
        assert!(!verify(&request.headers, &request.body, &[other]));
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body["id"], event.id.as_str());
        assert_eq!(body["key"], "a");
        assert_eq!(body["type"], "Step");
        assert_eq!(body["origin"]["kind"], "outbox");
        assert_eq!(body["headers"]["trace"], "t-1");
        assert_eq!(request.version, Version::HTTP_11);
    }
    assert_eq!(receiver.delivered()[1].seq, 2);
}

#[tokio::test]
async fn a_400_refuses_the_event_with_its_answer_and_defers_its_key_while_others_go() {
    // Given a receiver that answers 400 to events of type Bad
    let receiver = Receiver::start(&[]).await;
    receiver.refuse_type("Bad");
    let mut sink = open(&config(receiver.url("http", "/in"))).await;

    // When a Bad event of key a is published between others
    let events = [
        event("a", 1, "Bad"),
        event("b", 1, "Step"),
        event("a", 2, "Step"),
        event("b", 2, "Step"),
    ];
    let outcomes = sink.publish(&events).await.unwrap();

    // Then it is refused with the status and the answer's first bytes, its key's later event
    // is deferred (never sent), and key b flows
    let Outcome::Refused(reason) = &outcomes[0] else {
        panic!("{outcomes:?}");
    };
    assert!(
        reason.contains("answered 400 Bad Request: event type Bad is not accepted here"),
        "{reason}"
    );
    assert_eq!(
        outcomes[1..],
        [Outcome::Delivered, Outcome::Deferred, Outcome::Delivered]
    );
    assert_eq!(receiver.received().len(), 3);
}

#[tokio::test]
async fn a_5xx_pushes_back_and_retry_after_holds_every_request_until_it_passed() {
    // Given a receiver answering 503 with Retry-After: 120
    let receiver = Receiver::start(&[]).await;
    receiver.fail_for(Duration::from_secs(3600), 503, Some("120"));
    let mut sink = open(&config(receiver.url("http", "/in"))).await;
    let mut other_lane = sink.fork().await.unwrap();

    // When an event is published, and then another through another lane's handle
    let first = sink.publish(&[event("a", 1, "Step")]).await.unwrap();
    let second = other_lane
        .publish(&[event("b", 1, "Step"), event("b", 2, "Step")])
        .await
        .unwrap();

    // Then the first pushes back (no attempt counted), and nothing more is sent while the
    // Retry-After runs: the other lane's events push back without a request
    assert!(
        matches!(&first[0], Outcome::Busy(reason) if reason.contains("503") && reason.contains("Retry-After: 120 s")),
        "{first:?}"
    );
    assert!(
        matches!(&second[0], Outcome::Busy(r) if r.contains("Retry-After")),
        "{second:?}"
    );
    assert_eq!(second[1], Outcome::Deferred);
    assert_eq!(receiver.received().len(), 1);
}

#[tokio::test]
async fn an_unreachable_receiver_fails_the_call_retryably_and_start_up_names_it() {
    // Given a port nobody listens on
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = config(format!("http://127.0.0.1:{port}/in"));

    // Then opening the sink fails, naming the URL
    let err = WebhookSink::open(&config, &SinkContext::default())
        .await
        .err()
        .expect("opened");
    assert!(
        err.to_string()
            .starts_with("sink.webhook.url: cannot connect"),
        "{err}"
    );

    // And a sink whose receiver goes away fails its next call as a whole, retryably
    let receiver = Receiver::start(&[]).await;
    let mut sink = open(&self::config(receiver.url("http", "/in"))).await;
    drop(receiver);
    let err = sink.publish(&[event("a", 1, "Step")]).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("did not answer"), "{err}");
    assert!(!sink.is_healthy());
    assert!(!sink.probe().await);
}

#[tokio::test]
async fn an_invalid_url_or_an_oversize_body_refuses_that_event_naming_why_and_others_flow() {
    // Given a URL template with the aggregate type as the port, and a 2 KiB body limit
    let receiver = Receiver::start(&[]).await;
    let port = receiver.addr.port().to_string();
    let mut config = config("http://127.0.0.1:{aggregatetype}/in".into());
    config.max_body_bytes = 2048;
    let mut sink = WebhookSink::open(&config, &SinkContext::default())
        .await
        .unwrap();
    let mut bad_port = event("a", 1, "Step");
    bad_port.subject = "no host".into();
    let mut good = event("c", 1, "Step");
    good.subject = port.clone();
    let mut big = event("b", 1, "Step");
    big.subject = port;
    big.payload = RawValue::from_string(format!(r#"{{"pad":"{}"}}"#, "x".repeat(4096))).unwrap();

    // When they are published with a good event
    let outcomes = sink.publish(&[bad_port, big, good]).await.unwrap();

    // Then each bad one is refused naming its cause, and the good one is delivered
    assert!(
        matches!(&outcomes[0], Outcome::Refused(r) if r.contains("no%20host") && r.contains("is not a valid URL")),
        "{outcomes:?}"
    );
    assert!(
        matches!(&outcomes[1], Outcome::Refused(r) if r.contains("sink.webhook.max_body_bytes (2048)")),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[2], Outcome::Delivered);
    assert_eq!(receiver.received().len(), 1);
}

#[tokio::test]
async fn batches_are_json_arrays_of_up_to_batch_max_and_a_refused_batch_is_split() {
    // Given a sink sending batches of at most 3, and a receiver refusing type Bad
    let receiver = Receiver::start(&[NEW_SECRET]).await;
    receiver.refuse_type("Bad");
    let mut config = config(receiver.url("http", "/in"));
    config.batch = true;
    config.batch_max = 3;
    let mut sink = open(&config).await;
    let mut events: Vec<Event> = (1..=7)
        .map(|seq| event(&format!("k{seq}"), seq, "Step"))
        .collect();
    events[4].event_type = "Bad".into();

    // When 7 events are published
    let outcomes = sink.publish(&events).await.unwrap();

    // Then they went as arrays of 3, 3 (refused, then sent one by one) and 1; only the Bad
    // event is refused, and every request verified
    let refused: Vec<usize> = (0..7)
        .filter(|&i| matches!(outcomes[i], Outcome::Refused(_)))
        .collect();
    assert_eq!(refused, [4], "{outcomes:?}");
    let sizes: Vec<usize> = receiver
        .received()
        .iter()
        .map(|r| r.events().len())
        .collect();
    assert_eq!(sizes, [3, 3, 1, 1, 1, 1]);
    assert!(receiver.received().iter().all(|r| r.verified));
    let seqs: Vec<i64> = receiver.delivered().iter().map(|d| d.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 6, 7]);
    let first = &receiver.received()[0];
    assert_eq!(
        first.header("webhook-id").unwrap(),
        format!("{}_{}", events[0].id, events[2].id)
    );
}

#[tokio::test]
async fn cloudevents_structured_and_binary_mode_follow_the_http_binding() {
    // Given a receiver, and sinks in structured and in binary mode
    let receiver = Receiver::start(&[NEW_SECRET]).await;
    let mut structured = config(receiver.url("http", "/in"));
    structured.cloudevents = CloudEventsMode::Structured;
    structured.cloudevents_source = "/shop/orders".into();
    let mut binary = structured.clone();
    binary.cloudevents = CloudEventsMode::Binary;
    let one = event("a", 1, "Order Placed");
    let two = event("a", 2, "Step");

    // When one event goes through each
    let done = open(&structured)
        .await
        .publish(std::slice::from_ref(&one))
        .await
        .unwrap();
    let also = open(&binary)
        .await
        .publish(std::slice::from_ref(&two))
        .await
        .unwrap();

    // Then the first is a structured CloudEvent, the second the bare payload with ce- headers
    assert_eq!(
        (done[0].clone(), also[0].clone()),
        (Outcome::Delivered, Outcome::Delivered)
    );
    let received = receiver.received();
    let body: Value = serde_json::from_slice(&received[0].body).unwrap();
    assert_eq!(
        received[0].header("content-type"),
        Some("application/cloudevents+json")
    );
    assert_eq!(body["specversion"], "1.0");
    assert_eq!(body["id"], one.id.as_str());
    assert_eq!(body["source"], "/shop/orders");
    assert_eq!(body["type"], "Order Placed");
    assert_eq!(body["data"]["seq"], 1);
    assert_eq!(received[1].body.as_ref(), br#"{"seq":2}"#);
    assert_eq!(received[1].header("content-type"), Some("application/json"));
    assert_eq!(received[1].header("ce-id"), Some(two.id.as_str()));
    assert_eq!(received[1].header("ce-specversion"), Some("1.0"));
    assert_eq!(received[1].header("ce-source"), Some("/shop/orders"));
    assert_eq!(received[1].header("ce-type"), Some("Step"));
    assert!(received.iter().all(|r| r.verified));
}

#[tokio::test]
async fn http2_is_spoken_with_prior_knowledge_in_cleartext_and_by_alpn_over_tls() {
    // Given a cleartext receiver and an HTTPS one whose certificate a CA of the test signed
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let plain = Receiver::start(&[]).await;
    let tls = Receiver::start_tls(&[], dir.path()).await;
    let mut h2c = config(plain.url("http", "/in"));
    h2c.http_version = HttpVersion::Http2;
    let mut https = config(tls.url("https", "/in"));
    https.ca_file = Some(dir.path().join("ca.crt"));

    // When an event goes to each (HTTP/2 asked for in cleartext, auto over TLS)
    let a = open(&h2c)
        .await
        .publish(&[event("a", 1, "Step")])
        .await
        .unwrap();
    let b = open(&https)
        .await
        .publish(&[event("b", 1, "Step")])
        .await
        .unwrap();

    // Then both are delivered over HTTP/2
    assert_eq!(
        (a[0].clone(), b[0].clone()),
        (Outcome::Delivered, Outcome::Delivered)
    );
    assert_eq!(plain.received()[0].version, Version::HTTP_2);
    assert_eq!(tls.received()[0].version, Version::HTTP_2);
}

#[tokio::test]
async fn tls_trusts_the_configured_ca_and_only_it() {
    // Given an HTTPS receiver whose certificate a CA of the test signed
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let tls = Receiver::start_tls(&[], dir.path()).await;
    let mut trusting = config(tls.url("https", "/in"));
    trusting.http_version = HttpVersion::Http1;
    trusting.ca_file = Some(dir.path().join("ca.crt"));
    let mut default_roots = trusting.clone();
    default_roots.ca_file = None;

    // When an event goes through a sink trusting that CA, and one trusting the default roots
    let trusted = open(&trusting)
        .await
        .publish(&[event("a", 1, "Step")])
        .await;
    let untrusted = open(&default_roots)
        .await
        .publish(&[event("a", 1, "Step")])
        .await;

    // Then the first is delivered over HTTP/1.1; the second never reaches the receiver
    assert_eq!(trusted.unwrap(), [Outcome::Delivered]);
    let err = untrusted.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(
        err.chain().to_lowercase().contains("certificate"),
        "{}",
        err.chain()
    );
    assert_eq!(tls.received().len(), 1);
    assert_eq!(tls.received()[0].version, Version::HTTP_11);
}
