//! Log output through `tracing`.

use crate::config::{LogFormat, LoggingConfig};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_subscriber::EnvFilter;

/// Set once JSON logs go to stderr: a fatal error is then one more JSON line, not a bare
/// `error:` line among them (see [`report_fatal`]).
static JSON_LOGS: AtomicBool = AtomicBool::new(false);

/// Installs the global subscriber: `RUST_LOG` if set, the configured level otherwise. Logs go to
/// stderr so `outboxd log read` can write records to stdout.
pub fn init(logging: &LoggingConfig) {
    // lapin logs, at ERROR, every refusal and lost connection it hands back to the sink, which
    // reports them in its own words; `RUST_LOG` can still ask for them.
    let quiet = "lapin=off";
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(format!("{},{quiet}", logging.level)))
        .unwrap_or_else(|_| EnvFilter::new(format!("info,{quiet}")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let result = match logging.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    JSON_LOGS.store(logging.format == LogFormat::Json, Ordering::Relaxed);
    // A second init (tests that run several commands in one process) keeps the first subscriber.
    let _ = result;
}

/// Reports the error that stops the process, once: an `error:` line on stderr (the CLI's promise,
/// and what a person reads), or with JSON logs a JSON line at level ERROR, so a log collector
/// parses every line.
pub fn report_fatal(message: &str) {
    if JSON_LOGS.load(Ordering::Relaxed) {
        tracing::error!(error = %message, "outboxd stopped");
    } else {
        eprintln!("error: {message}");
    }
}
