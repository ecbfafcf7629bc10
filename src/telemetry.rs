//! Log output through `tracing`.

use crate::config::{LogFormat, LoggingConfig};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_subscriber::EnvFilter;

/// Directives added to every filter that does not name `lapin` itself. lapin logs message
/// bodies (a returned, unroutable message at `warn`, whole, as decimal bytes; frames at
/// `trace`), and at ERROR every refusal and lost connection it hands back to the sink, which
/// reports them in its own words: outboxd reports a returned event itself, with the event id,
/// exchange, routing key and the broker's reason, but never its payload. Naming `lapin` in the
/// filter (`RUST_LOG=lapin=trace`) is the explicit way to see them, for debugging only.
const PAYLOAD_SAFE_DIRECTIVES: &[&str] = &["lapin=off"];

/// The filter for `spec` (an `EnvFilter` directive string), with [`PAYLOAD_SAFE_DIRECTIVES`]
/// unless `spec` mentions lapin.
pub fn filter(spec: &str) -> Option<EnvFilter> {
    let mut filter = EnvFilter::try_new(spec).ok()?;
    if !spec.contains("lapin") {
        for directive in PAYLOAD_SAFE_DIRECTIVES {
            filter = filter.add_directive(directive.parse().expect("valid directive"));
        }
    }
    Some(filter)
}

/// Set once JSON logs go to stderr: a fatal error is then one more JSON line, not a bare
/// `error:` line among them (see [`report_fatal`]).
static JSON_LOGS: AtomicBool = AtomicBool::new(false);

/// Installs the global subscriber: `RUST_LOG` if set, the configured level otherwise. Logs go to
/// stderr so `outboxd log read` can write records to stdout.
pub fn init(logging: &LoggingConfig) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|spec| filter(&spec))
        .or_else(|| filter(&logging.level))
        .unwrap_or_else(|| filter("info").expect("valid filter"));
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
