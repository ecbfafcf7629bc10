//! Values that must never be printed: passwords and connection strings that may carry one.
//!
//! Below the configuration and the sinks, which both hold such values.

mod conninfo;

pub use self::conninfo::{Conninfo, UNPARSEABLE};

/// What a masked secret prints as.
pub const MASK: &str = "********";
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A secret string (a password). `Debug`, `Display` and `Serialize` print only [`MASK`], so a
/// secret cannot reach a log line, an error message or `check-config` by accident.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that must send it (the connection handshake).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether no secret was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({MASK})")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(if self.0.is_empty() { "" } else { MASK })
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// A connection string that may embed a password: PostgreSQL (URL or `key=value` form) or a
/// broker URL such as `amqp://user:pass@host/vhost`.
/// Printing it masks the password; [`DbUrl::expose`] gives the real string to the driver.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct DbUrl(String);

impl DbUrl {
    /// Wraps a connection string.
    pub fn new(value: impl Into<String>) -> Self {
        DbUrl(value.into())
    }

    /// The connection string as given, password included.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The connection string with any password replaced by [`MASK`].
    pub fn masked(&self) -> String {
        mask_connection_string(&self.0)
    }
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DbUrl({:?})", self.masked())
    }
}

impl fmt::Display for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl Serialize for DbUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.masked())
    }
}

impl<'de> Deserialize<'de> for DbUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(DbUrl)
    }
}

/// Renders a connection string for people, password masked: a PostgreSQL string (URL or
/// `key=value`) from the fields the driver parsed, a broker URL (`amqp://`, `nats://`,
/// `redis://`, …) from the fields the URL parser found. Nothing is edited out of the user's text, so no way of writing
/// a password (a `/` in it, a percent-encoded key, tabs, escaped quotes) can slip through; a
/// string that does not parse is not shown at all.
pub fn mask_connection_string(conn: &str) -> String {
    let lower = conn.get(..10).unwrap_or(conn).to_ascii_lowercase();
    if BROKER_SCHEMES
        .iter()
        .any(|scheme| lower.starts_with(scheme))
    {
        render_broker_url(conn)
    } else {
        conninfo::render(conn)
    }
}

/// Schemes of the brokers' URLs (RabbitMQ, NATS, Redis, webhooks), printed by [`render_broker_url`].
const BROKER_SCHEMES: &[&str] = &[
    "amqp://",
    "amqps://",
    "nats://",
    "tls://",
    "redis://",
    "rediss://",
    "http://",
    "https://",
];

/// Query parameters of an AMQP URL that are shown (lapin's; none of them carries a secret).
const SHOWN_AMQP_PARAMS: &[&str] = &[
    "heartbeat",
    "channel_max",
    "frame_max",
    "connection_timeout",
    "auth_mechanism",
];

/// `scheme://user:********@host:port/vhost?known=params`, rebuilt from the parsed URL (lapin
/// parses with the same `url` crate, so this is the user and host it connects with).
fn render_broker_url(conn: &str) -> String {
    let Ok(url) = url::Url::parse(conn) else {
        return "(unparseable broker URL, not shown)".to_string();
    };
    let mut out = format!("{}://", url.scheme());
    out.push_str(url.username());
    if url.password().is_some() {
        out.push(':');
        out.push_str(MASK);
    }
    if !url.username().is_empty() || url.password().is_some() {
        out.push('@');
    }
    if let Some(host) = url.host_str() {
        out.push_str(host);
    }
    if let Some(port) = url.port() {
        out.push_str(&format!(":{port}"));
    }
    if matches!(url.scheme(), "http" | "https") {
        // A webhook URL is a template: show its placeholders as written.
        out.push_str(&url.path().replace("%7B", "{").replace("%7D", "}"));
    } else {
        out.push_str(url.path());
    }
    let shown: Vec<String> = url
        .query_pairs()
        .filter(|(key, _)| SHOWN_AMQP_PARAMS.contains(&key.as_ref()))
        .map(|(key, value)| {
            let value: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
            format!("{key}={value}")
        })
        .collect();
    if !shown.is_empty() {
        out.push('?');
        out.push_str(&shown.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_show_user_host_and_vhost_but_no_password() {
        assert_eq!(
            mask_connection_string("amqps://app:hunter2@mq:5671/prod?heartbeat=10&token=x"),
            "amqps://app:********@mq:5671/prod?heartbeat=10"
        );
        assert_eq!(
            mask_connection_string("amqp://127.0.0.1:5672/%2f"),
            "amqp://127.0.0.1:5672/%2f"
        );
        // The URL parser ends the authority at '/', so this password is no password at all:
        // the string does not parse, and nothing of it is shown.
        let odd = mask_connection_string("amqp://app:Hunter/2Secret@mq/%2f");
        assert!(!odd.contains("Hunter") && !odd.contains("Secret"), "{odd}");
        let at = mask_connection_string("amqp://app:p@ss@mq/%2f");
        assert_eq!(at, "amqp://app:********@mq/%2f");
        assert_eq!(
            mask_connection_string("nats://app:hunter2@nats:4222"),
            "nats://app:********@nats:4222"
        );
        assert_eq!(
            mask_connection_string("rediss://:hunter2@cache:6380/0"),
            "rediss://:********@cache:6380/0"
        );
        assert_eq!(
            mask_connection_string("https://hooks.example/in/{aggregatetype}?token=hunter2"),
            "https://hooks.example/in/{aggregatetype}"
        );
    }

    #[test]
    fn secrets_never_print() {
        let secret = Secret::new("hunter2");
        assert!(!format!("{secret:?} {secret}").contains("hunter2"));
        assert!(!serde_json::to_string(&secret).unwrap().contains("hunter2"));
        let url = DbUrl::new("postgres://u:hunter2@h/db");
        assert!(!format!("{url:?} {url}").contains("hunter2"));
    }
}
