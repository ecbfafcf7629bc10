//! Opening the replication stream with `pgwire-replication`, and what its errors mean.
//!
//! The connection settings come from the same `source.url` / `source.password` / `source.tls`
//! as every other connection, so logical mode needs no second set of credentials.

use crate::config::{CdcConfig, SourceConfig, TlsMode};
use crate::error::{Error, ErrorKind, Result};
use pgwire_replication::{PgWireError, ReplicationClient, ReplicationConfig, TlsConfig};
use std::time::Duration;
use tokio_postgres::config::Host;

/// Longest delay before a newly confirmed position reaches the server. Whatever the server has
/// not heard of is replayed after a crash, so the slot follows the sink's acknowledgements
/// batch by batch: a raised position wakes the client's worker, which sends a standby status
/// update once this much passed since the previous one. At 10 ms that is at most 100 small
/// messages a second under full load (updates in between coalesce), and a SIGKILL replays
/// what was in flight plus at most 10 ms of acknowledgements. (At 1 s, each kill replayed up to
/// a second of traffic: about 7,000 repeats in 10,000 events over 8 kills, tests/repeats.rs.)
const STATUS_INTERVAL: Duration = Duration::from_millis(10);

/// How often a standby status update is sent on an idle stream (and the server's keepalive
/// requests are answered at once): well inside `wal_sender_timeout` (default 60 s).
const IDLE_STATUS_INTERVAL: Duration = Duration::from_secs(5);

/// Events the client may buffer ahead of the relay. Each row arrives whole, so this times the
/// largest row bounds the memory a large transaction can take while the sink is slow.
const BUFFER_EVENTS: usize = 256;

/// Session settings pinned so `timestamptz` values arrive in one parseable form.
const SESSION_OPTIONS: &str = "-c datestyle=ISO -c timezone=UTC";

/// Opens the stream on the configured slot and publications, resuming at the slot's
/// `confirmed_flush_lsn`, and waits until the server accepted it (the slot is then ours).
pub async fn open(source: &SourceConfig) -> Result<ReplicationClient> {
    let client = ReplicationClient::connect(replication_config(source)?)
        .await
        .map_err(|err| classify("opening the replication stream", err))?;
    let mut client = client;
    client
        .wait_started()
        .await
        .map_err(|err| classify("starting replication", err))?;
    Ok(client)
}

/// Translates the source settings into the client's configuration.
fn replication_config(source: &SourceConfig) -> Result<ReplicationConfig> {
    let url = source.pg_config()?;
    let host = match url.get_hosts().first() {
        Some(Host::Tcp(name)) => name.clone(),
        Some(Host::Unix(dir)) => dir.to_string_lossy().into_owned(),
        None => "localhost".into(),
    };
    let port = url.get_ports().first().copied().unwrap_or(5432);
    let user = url.get_user().unwrap_or("postgres").to_string();
    let password = if source.password.is_empty() {
        url.get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default()
    } else {
        source.password.expose().to_string()
    };
    let database = url.get_dbname().unwrap_or(&user).to_string();
    let tls = match source.tls_mode()? {
        TlsMode::Disable => TlsConfig::disabled(),
        TlsMode::Require => TlsConfig::require(),
        TlsMode::VerifyCa => TlsConfig::verify_ca(source.tls.root_cert.clone()),
        TlsMode::VerifyFull => TlsConfig::verify_full(source.tls.root_cert.clone()),
    };
    let logical = &source.logical;
    // The insert-only tables come through a publication of their own (see
    // `tables::inserts`); the stream carries both.
    let mut publications = vec![logical.publication.clone()];
    if !source.cdc.insert_only.is_empty() {
        publications.push(CdcConfig::inserts_publication(&logical.publication));
    }
    Ok(ReplicationConfig::new(
        host,
        user,
        password,
        database,
        logical.slot.clone(),
        publications,
    )
    .with_port(port)
    .with_tls(tls)
    .with_application_name(source.application_name.clone())
    .with_options(SESSION_OPTIONS)
    .with_status_interval(STATUS_INTERVAL)
    .with_wakeup_interval(IDLE_STATUS_INTERVAL)
    .with_buffer_size(BUFFER_EVENTS))
}

/// Whether the server refused the slot because another session streams from it.
pub fn is_slot_busy(err: &Error) -> bool {
    err.kind() == ErrorKind::Locked
}

/// Wraps a replication client error with what was being done. Lost connections heal (transient);
/// a slot held by another relay is [`ErrorKind::Locked`] (the caller stands by); a slot that
/// can no longer stream, a missing slot or publication, and refused credentials need an operator.
pub fn classify(context: &str, err: PgWireError) -> Error {
    let text = err.to_string();
    let kind = match &err {
        PgWireError::Server(message)
            if message.contains("is active for PID") || message.contains("55006") =>
        {
            ErrorKind::Locked
        }
        PgWireError::Server(message)
            if message.contains("57P01")
                || message.contains("57P03")
                || message.contains("shutting down")
                || message.contains("starting up") =>
        {
            ErrorKind::Transient
        }
        PgWireError::Server(_) | PgWireError::Auth(_) | PgWireError::Tls(_) => ErrorKind::Database,
        PgWireError::MessageTooLarge { .. } => ErrorKind::Database,
        _ => ErrorKind::Transient,
    };
    Error::new(kind, format!("{context}: {text}"))
}
