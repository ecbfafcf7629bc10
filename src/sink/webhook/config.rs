//! The `[sink.webhook]` table: where events are POSTed, how they are written and signed.

use super::signing::SigningSecrets;
use super::target::UrlTemplate;
use crate::error::{Error, Result, check_range};
use crate::secret::{DbUrl, Secret};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// How an event is written into a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CloudEventsMode {
    /// outboxd's own JSON object per event (`id`, `type`, `key`, `origin`, `payload`, …).
    #[default]
    None,
    /// CloudEvents 1.0 structured mode: the body is the CloudEvent
    /// (`application/cloudevents+json`; a batch is `application/cloudevents-batch+json`).
    Structured,
    /// CloudEvents 1.0 binary mode: the body is the payload, the attributes are `ce-` headers.
    Binary,
}

/// Which HTTP versions the client speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpVersion {
    /// HTTP/2 over TLS when the server offers it (ALPN), HTTP/1.1 otherwise and in cleartext.
    #[default]
    Auto,
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only: ALPN `h2` over TLS, prior knowledge (h2c) in cleartext.
    Http2,
}

/// The HTTP webhook sink.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSinkConfig {
    /// The URL events are POSTed to, `http://` or `https://`; a template where
    /// `{aggregatetype}`, `{aggregateid}`, `{type}`, `{schema}`, `{table}`, `{op}` and `{key}`
    /// are replaced by the event's fields, percent-encoded. Its query is not printed (it may
    /// hold a token); a user or password in it is refused (use `headers`). Default
    /// `http://127.0.0.1:8080/events`.
    pub url: DbUrl,
    /// Standard Webhooks signing secrets (`whsec_` + base64), a list or one string separated
    /// by spaces; each signs every request (`webhook-signature: v1,<sig> v1,<sig>`), so a
    /// receiver keeps verifying while a secret is rotated. Masked everywhere. Default: none
    /// (requests carry `webhook-id` and `webhook-timestamp`, unsigned).
    pub secrets: SigningSecrets,
    /// `none` (outboxd's JSON), `structured` or `binary` CloudEvents 1.0. Default `none`.
    pub cloudevents: CloudEventsMode,
    /// The CloudEvents `source` attribute. Default `outboxd`.
    pub cloudevents_source: String,
    /// Send a JSON array of up to `batch_max` events of one lane per request instead of one
    /// event. Default `false`.
    pub batch: bool,
    /// Most events in one batched request. Default 100.
    pub batch_max: usize,
    /// Largest request body, in bytes: an event whose body is larger becomes a dead letter
    /// naming this limit (a batch holds as many events as fit). Default 1048576.
    pub max_body_bytes: usize,
    /// Time a request has to be answered (connection, TLS, the whole answer), in
    /// milliseconds; a request that takes longer is retried. Default 10000.
    pub timeout_ms: u64,
    /// `auto`, `http1` or `http2` (h2c in cleartext). Default `auto`.
    pub http_version: HttpVersion,
    /// PEM file of CA certificates trusted for an `https://` receiver. Default: unset (the
    /// Mozilla set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Extra headers sent with every request (e.g. `Authorization`); values are masked when
    /// printed. Default: none.
    pub headers: BTreeMap<String, Secret>,
}

impl Default for WebhookSinkConfig {
    fn default() -> Self {
        WebhookSinkConfig {
            url: DbUrl::new("http://127.0.0.1:8080/events"),
            secrets: SigningSecrets::default(),
            cloudevents: CloudEventsMode::None,
            cloudevents_source: "outboxd".into(),
            batch: false,
            batch_max: 100,
            max_body_bytes: 1 << 20,
            timeout_ms: 10_000,
            http_version: HttpVersion::Auto,
            ca_file: None,
            headers: BTreeMap::new(),
        }
    }
}

/// Headers the sink writes itself, which `headers` may not replace.
const OWN_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

impl WebhookSinkConfig {
    /// Checks every `sink.webhook` key; the error names the key and the rule it broke.
    pub fn validate(&self) -> Result<()> {
        let url = UrlTemplate::parse(&self.url)?;
        self.secrets.validate()?;
        if self.batch && self.cloudevents == CloudEventsMode::Binary {
            return Err(Error::config(
                "sink.webhook.batch",
                "cannot be combined with sink.webhook.cloudevents = \"binary\" (a binary-mode \
                 request carries one event; use \"structured\")",
            ));
        }
        if self.cloudevents_source.is_empty() {
            return Err(Error::config(
                "sink.webhook.cloudevents_source",
                "must not be empty",
            ));
        }
        check_range("sink.webhook.batch_max", self.batch_max as u64, 1, 10_000)?;
        check_range(
            "sink.webhook.max_body_bytes",
            self.max_body_bytes as u64,
            1024,
            1 << 30,
        )?;
        check_range("sink.webhook.timeout_ms", self.timeout_ms, 100, 600_000)?;
        for (name, value) in &self.headers {
            let bad_name = http::HeaderName::from_bytes(name.as_bytes()).is_err();
            if bad_name || OWN_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                return Err(Error::config(
                    "sink.webhook.headers",
                    format!("{name:?} is not a header name this sink lets be set"),
                ));
            }
            if http::HeaderValue::from_str(value.expose()).is_err() {
                return Err(Error::config(
                    "sink.webhook.headers",
                    format!("the value of {name:?} is not a valid header value"),
                ));
            }
        }
        if let Some(path) = &self.ca_file {
            if !url.is_https() {
                return Err(Error::config(
                    "sink.webhook.ca_file",
                    "is set but sink.webhook.url is not https://",
                ));
            }
            read_ca_file(path)?;
        }
        Ok(())
    }
}

/// The certificates of the PEM file `path` (at least one), or an error naming
/// `sink.webhook.ca_file`.
pub fn read_ca_file(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).map_err(|err| {
        Error::config(
            "sink.webhook.ca_file",
            format!("cannot read {}: {err}", path.display()),
        )
    })?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(|cert| cert.ok())
        .collect();
    if certs.is_empty() {
        return Err(Error::config(
            "sink.webhook.ca_file",
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error `config` fails validation with.
    fn err(config: WebhookSinkConfig) -> String {
        config.validate().unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_valid() {
        WebhookSinkConfig::default().validate().unwrap();
    }

    #[test]
    fn keys_are_checked_and_named() {
        let scheme = err(WebhookSinkConfig {
            url: DbUrl::new("ftp://host/x"),
            ..WebhookSinkConfig::default()
        });
        assert!(scheme.starts_with("sink.webhook.url"), "{scheme}");
        let binary = err(WebhookSinkConfig {
            batch: true,
            cloudevents: CloudEventsMode::Binary,
            ..WebhookSinkConfig::default()
        });
        assert!(binary.starts_with("sink.webhook.batch"), "{binary}");
        let max = err(WebhookSinkConfig {
            batch_max: 0,
            ..WebhookSinkConfig::default()
        });
        assert!(max.starts_with("sink.webhook.batch_max"), "{max}");
        let own = err(WebhookSinkConfig {
            headers: [("Webhook-Signature".to_string(), Secret::new("x"))].into(),
            ..WebhookSinkConfig::default()
        });
        assert!(own.starts_with("sink.webhook.headers"), "{own}");
        let ca = err(WebhookSinkConfig {
            ca_file: Some("/nonexistent.pem".into()),
            ..WebhookSinkConfig::default()
        });
        assert!(ca.starts_with("sink.webhook.ca_file: is set but"), "{ca}");
    }

    #[test]
    fn secrets_and_header_values_are_masked_when_the_config_is_printed() {
        let config = WebhookSinkConfig {
            url: DbUrl::new("https://hooks.example/in?token=t0k3n"),
            secrets: SigningSecrets::parse("whsec_c2VjcmV0LW9uZQ== whsec_c2VjcmV0LXR3bw=="),
            headers: [("Authorization".to_string(), Secret::new("Bearer b34r3r"))].into(),
            ..WebhookSinkConfig::default()
        };
        config.validate().unwrap();
        let printed = format!("{config:?} {}", toml::to_string(&config).unwrap());
        for secret in ["t0k3n", "c2VjcmV0", "b34r3r"] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        assert!(printed.contains("hooks.example"), "{printed}");
    }
}
