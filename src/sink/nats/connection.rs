//! Connecting to NATS: authentication (user and password, token, NKey, `.creds` file), TLS
//! with a CA file, and the JetStream context publishes go through.
//!
//! The client reconnects by itself, forever, after the first connection: a server that goes
//! away is an outage the relay rides out (publishes fail and are retried), not a new start.

use super::config::NatsSinkConfig;
use crate::error::{Error, ErrorKind, Result};
use async_nats::jetstream::{self, Context};
use async_nats::{Client, ConnectErrorKind, ConnectOptions, Event};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Time allowed to open the first connection (TCP, TLS, authentication).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects with every setting of `config`, and returns the client with a count of the
/// connections it lost so far, which changes the moment one is lost. Failing here is final (a
/// [`ErrorKind::Config`] error): it runs at start-up, where a wrong password or an
/// unreachable server should stop the relay with a sentence saying so.
pub async fn connect(config: &NatsSinkConfig) -> Result<(Client, watch::Receiver<u64>)> {
    let context = format!("connecting to NATS at {}", config.url.masked());
    crate::sink::tls::ensure_crypto_provider();
    let (lost, drops) = watch::channel(0u64);
    let options = options(config, Arc::new(lost)).await?;
    let attempt = tokio::time::timeout(
        CONNECT_TIMEOUT + Duration::from_secs(1),
        options.connect(config.url.expose()),
    )
    .await;
    match attempt {
        Ok(Ok(client)) => Ok((client, drops)),
        Ok(Err(err)) => {
            let hint = match err.kind() {
                ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => {
                    "; check sink.nats.user/password, token, nkey or credentials_file"
                }
                ConnectErrorKind::Tls => "; check sink.nats.ca_file and the server's certificate",
                _ => "",
            };
            Err(Error::new(
                ErrorKind::Config,
                format!("{context}: {err}{hint}"),
            ))
        }
        Err(_) => Err(Error::new(
            ErrorKind::Config,
            format!("{context}: no answer within {}s", CONNECT_TIMEOUT.as_secs()),
        )),
    }
}

/// A JetStream context on `client` whose API requests and publish acknowledgements wait at
/// most `ack_timeout`, and whose publishes wait (rather than fail) while `max_in_flight`
/// acknowledgements are pending.
pub fn jetstream(client: Client, ack_timeout: Duration, max_in_flight: usize) -> Context {
    jetstream::ContextBuilder::new()
        .timeout(ack_timeout)
        .max_ack_inflight(max_in_flight)
        .backpressure_on_inflight(true)
        .build(client)
}

/// The client's options: name, timeouts, unlimited reconnects, logging of connection events
/// (counting lost connections in `lost`), the one way to authenticate, and TLS.
async fn options(config: &NatsSinkConfig, lost: Arc<watch::Sender<u64>>) -> Result<ConnectOptions> {
    let mut options = ConnectOptions::new()
        .name("outboxd")
        .connection_timeout(CONNECT_TIMEOUT)
        .max_reconnects(None)
        .event_callback(move |event| {
            let lost = lost.clone();
            async move {
                match event {
                    Event::Disconnected => {
                        // Acknowledgements owed on the lost connection will never come: publishers
                        // waiting for them fail at once instead of at their timeout.
                        lost.send_modify(|count| *count += 1);
                        tracing::warn!("disconnected from NATS");
                    }
                    Event::Connected => tracing::info!("connected to NATS"),
                    Event::LameDuckMode => tracing::warn!("NATS server entered lame duck mode"),
                    other => tracing::debug!(event = %other, "NATS connection event"),
                }
            }
        });
    if let Some(user) = &config.user {
        options = options.user_and_password(user.clone(), config.password.expose().to_string());
    }
    if !config.token.is_empty() {
        options = options.token(config.token.expose().to_string());
    }
    if !config.nkey.is_empty() {
        options = options.nkey(config.nkey.expose().to_string());
    }
    if let Some(path) = &config.credentials_file {
        options = options.credentials_file(path).await.map_err(|err| {
            Error::config(
                "sink.nats.credentials_file",
                format!("cannot use {}: {err}", path.display()),
            )
        })?;
    }
    if let Some(path) = &config.ca_file {
        options = options
            .add_root_certificates(path.clone())
            .require_tls(true);
    }
    Ok(options)
}
