//! The one error type of outboxd: a kind that decides what to do next, a message that names the
//! problem, and the underlying cause kept as `source`.

use std::fmt;

/// Boxed cause of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Shorthand used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, at the level a caller acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The configuration is invalid; fix the file or the environment.
    Config,
    /// The database refused or dropped us in a way that may heal (connection lost, restart).
    Transient,
    /// The database answered, and the answer will not change on retry (missing table, privilege).
    Database,
    /// The outbox schema is not what outboxd needs (missing column, migration not applied).
    Schema,
    /// A sink failed in a way that may heal (broker down, disk full, timeout).
    SinkUnavailable,
    /// A sink is no longer safe to write to (a failed fsync); an operator must look.
    SinkPoisoned,
    /// A local file or directory could not be used.
    Io,
    /// Stored data failed an integrity check.
    Corrupt,
    /// Another process holds a resource that must be exclusive.
    Locked,
    /// A request names something that does not exist (an unknown consumer group).
    NotFound,
    /// A request is malformed or contradicts what exists; the message names the field.
    Invalid,
    /// Anything else: a bug or an unexpected state.
    Internal,
}

/// How a caller should react to an error of a given kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDirective {
    /// Wait (with backoff) and try again.
    Retry,
    /// Stop: an operator has to change something first.
    Stop,
}

impl ErrorKind {
    /// Whether retrying after a backoff can succeed without an operator.
    pub fn directive(self) -> RetryDirective {
        match self {
            ErrorKind::Transient | ErrorKind::SinkUnavailable => RetryDirective::Retry,
            _ => RetryDirective::Stop,
        }
    }
}

/// An outboxd error.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    /// What went wrong, for the caller to act on.
    kind: ErrorKind,
    /// A sentence naming the problem (never a secret).
    message: String,
    /// The underlying cause, if any.
    #[source]
    source: Option<BoxError>,
}

impl Error {
    /// Builds an error without an underlying cause.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Builds an error that wraps `source`.
    pub fn with_source(
        kind: ErrorKind,
        message: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Error {
            kind,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// Shorthand for a configuration error naming `key` and the constraint it broke.
    pub fn config(key: &str, constraint: impl fmt::Display) -> Self {
        Error::new(ErrorKind::Config, format!("{key}: {constraint}"))
    }

    /// Shorthand for a local I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::with_source(ErrorKind::Io, context, source)
    }

    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether the operation may succeed if retried later.
    pub fn is_retryable(&self) -> bool {
        self.kind.directive() == RetryDirective::Retry
    }

    /// The message and every cause, joined into one line for logs and the CLI.
    pub fn chain(&self) -> String {
        let mut line = self.message.clone();
        let mut cause = std::error::Error::source(self);
        while let Some(err) = cause {
            let text = err.to_string();
            if !text.is_empty() && !line.contains(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            cause = err.source();
        }
        line
    }
}

/// A configuration error naming `key` unless `min <= value <= max`.
pub fn check_range(key: &str, value: u64, min: u64, max: u64) -> Result<()> {
    if value < min || value > max {
        return Err(Error::config(
            key,
            format!("must be between {min} and {max} (got {value})"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_joins_every_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "permission denied");
        let err = Error::io("opening ./data/log", io);
        assert_eq!(err.chain(), "opening ./data/log: permission denied");
        assert_eq!(err.kind(), ErrorKind::Io);
        assert!(!err.is_retryable());
    }

    #[test]
    fn transient_kinds_are_retryable() {
        assert!(Error::new(ErrorKind::Transient, "x").is_retryable());
        assert!(Error::new(ErrorKind::SinkUnavailable, "x").is_retryable());
        assert!(!Error::new(ErrorKind::SinkPoisoned, "x").is_retryable());
    }
}
