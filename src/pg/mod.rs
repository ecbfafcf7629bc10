//! Connections to PostgreSQL: TLS, secrets, notifications, and what an error means for retrying.

mod tls;

use crate::config::{SourceConfig, TlsMode};
use crate::error::{Error, ErrorKind, Result};
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client};

/// One connection to PostgreSQL, with the task that drives it.
///
/// Notifications (LISTEN/NOTIFY) are coalesced into `notified`: the relay only needs to know that
/// something arrived, not how many times. Dropping the session closes the connection.
pub struct Session {
    /// The client to run statements on; shared, so a lease or leadership check can run on the
    /// same session beside its owner's statements.
    pub client: Arc<Client>,
    /// Woken whenever a notification arrives on this connection.
    pub notified: Arc<Notify>,
    /// The task polling the connection; aborted on drop.
    driver: JoinHandle<()>,
}

impl Session {
    /// Whether the connection has ended (server gone, network cut, or closed).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// The client for a statement that needs it alone (a transaction); an internal error if it
    /// is shared at the moment.
    pub fn exclusive(&mut self) -> Result<&mut Client> {
        Arc::get_mut(&mut self.client).ok_or_else(|| {
            Error::new(
                ErrorKind::Internal,
                "a session needed for a transaction is in use elsewhere",
            )
        })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Opens a session as configured: TLS mode, password from config or file, timeouts.
pub async fn connect(source: &SourceConfig) -> Result<Session> {
    let mut pg = source.pg_config()?;
    let tls_mode = source.tls_mode()?;
    if !source.password.is_empty() {
        pg.password(source.password.expose());
    }
    if pg.get_application_name().is_none() {
        pg.application_name(&source.application_name);
    }
    pg.connect_timeout(Duration::from_millis(source.connect_timeout_ms));
    // Keepalives let PostgreSQL notice a dead relay, and the relay a dead server, within a minute
    // instead of the kernel's two hours: a leader's lock must not outlive its process for long.
    pg.keepalives(true);
    pg.keepalives_idle(Duration::from_secs(15));
    pg.keepalives_interval(Duration::from_secs(5));
    pg.keepalives_retries(3);
    pg.ssl_mode(match tls_mode {
        TlsMode::Disable => tokio_postgres::config::SslMode::Disable,
        _ => tokio_postgres::config::SslMode::Require,
    });
    let connector = tls::connector(tls_mode, &source.tls)?;
    let target = source.url.masked();
    let (client, mut connection) = pg
        .connect(connector)
        .await
        .map_err(|err| classify(format!("connecting to PostgreSQL at {target}"), err))?;
    let notified = Arc::new(Notify::new());
    let wake = notified.clone();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(_)) => wake.notify_one(),
                Ok(AsyncMessage::Notice(notice)) => {
                    tracing::debug!(message = notice.message(), "postgres notice");
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "postgres connection ended");
                    break;
                }
            }
        }
        // Wake a waiting relay so it notices the closed connection at once.
        wake.notify_one();
    });
    Ok(Session {
        client: Arc::new(client),
        notified,
        driver,
    })
}

/// Wraps a driver error with what was being done, choosing the kind by SQLSTATE: connection
/// problems and server restarts are transient, missing tables and columns are schema errors,
/// anything else the server said is permanent.
pub fn classify(context: impl Into<String>, err: tokio_postgres::Error) -> Error {
    let context = context.into();
    let Some(db) = err.as_db_error() else {
        // No server answer: refused, reset, timed out or closed. All may heal.
        return Error::with_source(ErrorKind::Transient, context, err);
    };
    let code = db.code().code();
    let kind = match code {
        c if c.starts_with("08") => ErrorKind::Transient, // connection exception
        c if c.starts_with("53") => ErrorKind::Transient, // insufficient resources
        "57P01" | "57P02" | "57P03" => ErrorKind::Transient, // shutdown, crash, starting up
        "40001" | "40P01" | "55P03" => ErrorKind::Transient, // serialization, deadlock, lock
        "42P01" | "42703" | "3F000" => ErrorKind::Schema, // undefined table, column, schema
        _ => ErrorKind::Database,
    };
    let mut message = format!("{context}: {} {code}: {}", db.severity(), db.message());
    if let Some(detail) = db.detail() {
        message.push_str(&format!(" ({detail})"));
    }
    if let Some(hint) = db.hint() {
        message.push_str(&format!("; hint: {hint}"));
    }
    Error::new(kind, message)
}

/// Quotes an identifier for SQL: every name that comes from configuration goes through here,
/// so a name is never spliced into a statement as code.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal for the few statements that cannot take parameters (DDL, LISTEN).
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_not_spliced() {
        assert_eq!(quote_ident("outbox"), "\"outbox\"");
        assert_eq!(
            quote_ident("a\"; DROP TABLE x; --"),
            "\"a\"\"; DROP TABLE x; --\""
        );
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
