//! Connecting to RabbitMQ: one connection, one channel in confirm mode, the exchange checked or
//! declared. Dropping a [`Link`] closes its connection.

use super::config::{AmqpSinkConfig, ExchangeType};
use crate::error::{Error, ErrorKind};
use lapin::options::{ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, DefaultConnectionBuilder, ExchangeKind};
use std::time::Duration;

/// Time allowed to open the connection and channel and check the exchange. A broker that
/// accepts TCP but never answers would otherwise hang a publish forever.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An open connection and its publishing channel.
pub struct Link {
    /// The connection; kept because dropping it closes the socket.
    pub connection: Connection,
    /// The channel events are published on, in confirm mode.
    pub channel: Channel,
}

impl Link {
    /// Whether both the connection and the channel are open.
    pub fn is_open(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }
}

/// Connects, opens a confirm-mode channel and checks (or declares) the exchange.
///
/// At start-up a refusal by the broker (wrong password, unknown vhost, missing exchange) is a
/// [`ErrorKind::Config`] error: retrying cannot fix it. Everything else, and every failure when
/// reconnecting later, is [`ErrorKind::SinkUnavailable`] so the relay retries with backoff.
pub async fn connect(config: &AmqpSinkConfig, at_startup: bool) -> Result<Link, Error> {
    let context = format!("connecting to RabbitMQ at {}", config.url.masked());
    let attempt = tokio::time::timeout(CONNECT_TIMEOUT, open(config)).await;
    let err = match attempt {
        Ok(Ok(link)) => return Ok(link),
        Ok(Err(err)) => err,
        Err(_) => {
            return Err(Error::new(
                ErrorKind::SinkUnavailable,
                format!("{context}: no answer within {}s", CONNECT_TIMEOUT.as_secs()),
            ));
        }
    };
    let kind = if at_startup && err.is_amqp_error() {
        ErrorKind::Config
    } else {
        ErrorKind::SinkUnavailable
    };
    // A refusal an operator can fix gets a sentence saying what to do, without lapin's frames.
    match refusal(config, &err) {
        Some(message) => Err(Error::new(kind, format!("{context}: {message}"))),
        None => Err(Error::with_source(kind, context, err)),
    }
}

/// What to tell an operator about a refusal by the broker that configuration can fix: a
/// missing exchange, rejected credentials, a missing vhost. `None` for anything else.
fn refusal(config: &AmqpSinkConfig, err: &lapin::Error) -> Option<String> {
    let lapin::ErrorKind::ProtocolError(amqp) = err.kind() else {
        return None;
    };
    let uri = config.uri().ok()?;
    let text = amqp.get_message().as_str();
    match amqp.kind() {
        AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) if text.contains("exchange") => Some(format!(
            "exchange {:?} does not exist in vhost {:?}; create it or set \
             sink.amqp.declare = true",
            config.exchange, uri.vhost
        )),
        AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) if text.contains("Login was refused") => {
            Some(format!(
                "authentication failed for user {:?}; check the user and password in \
                 sink.amqp.url",
                uri.authority.userinfo.username
            ))
        }
        AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => Some(format!(
            "user {:?} is not allowed to use vhost {:?} or exchange {:?} (the broker said: \
             {text})",
            uri.authority.userinfo.username, uri.vhost, config.exchange
        )),
        AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) if text.contains("vhost") => Some(format!(
            "vhost {:?} does not exist or user {:?} may not use it (the broker said: {text})",
            uri.vhost, uri.authority.userinfo.username
        )),
        _ => None,
    }
}

/// The steps of [`connect`], without the timeout and error mapping.
async fn open(config: &AmqpSinkConfig) -> lapin::Result<Link> {
    let properties = ConnectionProperties::default().with_connection_name("outboxd".into());
    let mut builder = DefaultConnectionBuilder::new()?
        .with_uri_str(config.url.expose().to_string())
        .with_properties(properties);
    if let Some(path) = &config.ca_file {
        // Read at every connect, so a rotated CA file is picked up on the next reconnect.
        let pem = std::fs::read_to_string(path).map_err(|err| {
            lapin::Error::from(lapin::ErrorKind::IOError(std::sync::Arc::new(
                std::io::Error::new(
                    err.kind(),
                    format!("sink.amqp.ca_file: cannot read {}: {err}", path.display()),
                ),
            )))
        })?;
        builder = builder.with_tls_config(OwnedTLSConfig {
            identity: None,
            cert_chain: Some(pem),
        });
    }
    let connection = builder.connect().await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let options = ExchangeDeclareOptions {
        passive: !config.declare,
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            config.exchange.as_str().into(),
            exchange_kind(config.exchange_type),
            options,
            FieldTable::default(),
        )
        .await?;
    Ok(Link {
        connection,
        channel,
    })
}

/// lapin's name for an exchange type.
fn exchange_kind(kind: ExchangeType) -> ExchangeKind {
    match kind {
        ExchangeType::Direct => ExchangeKind::Direct,
        ExchangeType::Topic => ExchangeKind::Topic,
        ExchangeType::Fanout => ExchangeKind::Fanout,
        ExchangeType::Headers => ExchangeKind::Headers,
    }
}
