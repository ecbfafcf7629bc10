//! Connecting to Redis (ACL user and password, `rediss://` with a CA file) and reading its
//! persistence settings at start-up.

use super::config::RedisSinkConfig;
use crate::error::{Error, ErrorKind, Result};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo, TlsCertificates};
use std::time::Duration;

/// Time allowed to open a connection (TCP, TLS, `AUTH`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A client for `config`'s server, with the configured user and password over the URL's.
/// Building it does no I/O; the error never quotes the URL's text.
pub fn client(config: &RedisSinkConfig) -> Result<Client> {
    let invalid = |err: redis::RedisError| {
        Error::config(
            "sink.redis.url",
            format!("{} is not usable: {}", config.url.masked(), err.category()),
        )
    };
    crate::sink::tls::ensure_crypto_provider();
    let info = config
        .url
        .expose()
        .into_connection_info()
        .map_err(invalid)?;
    let mut settings = info.redis_settings().clone();
    if let Some(user) = &config.username {
        settings = settings.set_username(user);
    }
    if !config.password.is_empty() {
        settings = settings.set_password(config.password.expose());
    }
    let info = info.set_redis_settings(settings);
    match &config.ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|err| {
                Error::config(
                    "sink.redis.ca_file",
                    format!("cannot read {}: {err}", path.display()),
                )
            })?;
            let certificates = TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            };
            Client::build_with_tls(info, certificates).map_err(invalid)
        }
        None => Client::open(info).map_err(invalid),
    }
}

/// Opens a multiplexed connection (one socket, commands pipelined) whose replies may take
/// `response_timeout`. A failure is retryable ([`ErrorKind::SinkUnavailable`]); at start-up
/// the caller makes it final.
pub async fn connect(
    client: &Client,
    config: &RedisSinkConfig,
    response_timeout: Duration,
) -> Result<MultiplexedConnection> {
    let options = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(response_timeout));
    client
        .get_multiplexed_async_connection_with_config(&options)
        .await
        .map_err(|err| {
            let hint = match err.kind() {
                redis::ErrorKind::AuthenticationFailed => {
                    "; check sink.redis.username and sink.redis.password"
                }
                _ => "",
            };
            Error::with_source(
                ErrorKind::SinkUnavailable,
                format!("connecting to Redis at {}{hint}", config.url.masked()),
                err,
            )
        })
}

/// Redis's persistence settings, and whether an acknowledged entry survives a Redis crash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Persistence {
    /// `appendonly` (`yes`/`no`), or why it could not be read.
    pub appendonly: String,
    /// `appendfsync` (`always`/`everysec`/`no`), or why it could not be read.
    pub appendfsync: String,
}

impl Persistence {
    /// Whether Redis writes every entry to its append-only file, fsynced, before it answers.
    pub fn durable(&self) -> bool {
        self.appendonly == "yes" && self.appendfsync == "always"
    }
}

/// Reads `appendonly` and `appendfsync` with `CONFIG GET` (a server that refuses it, e.g. a
/// managed one or an ACL without `+config`, reports why instead of a value).
pub async fn persistence(connection: &mut MultiplexedConnection) -> Persistence {
    Persistence {
        appendonly: setting(connection, "appendonly").await,
        appendfsync: setting(connection, "appendfsync").await,
    }
}

/// One setting's value by `CONFIG GET`, or why it could not be read.
async fn setting(connection: &mut MultiplexedConnection, name: &str) -> String {
    let answer: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
        .arg("GET")
        .arg(name)
        .query_async(connection)
        .await;
    match answer {
        Ok(pair) => pair
            .get(1)
            .cloned()
            .unwrap_or_else(|| "unknown (not reported)".into()),
        Err(err) => format!("unknown (CONFIG GET refused: {})", err.category()),
    }
}
