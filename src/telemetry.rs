//! Log output through `tracing`.

use crate::config::{LogFormat, LoggingConfig};
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Directives added to every filter that does not name `lapin` itself, because lapin logs
/// message bodies: a returned (unroutable) message at `warn`, whole, as decimal bytes, and frames
/// at `trace`. outboxd reports a returned event itself, with the event id, exchange, routing key
/// and the broker's reason, but never its payload. Naming `lapin` in the filter (`RUST_LOG=
/// lapin=trace`) is the explicit way to see them, for debugging only.
const PAYLOAD_SAFE_DIRECTIVES: &[&str] = &["lapin=warn", "lapin::returned_messages=error"];

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
    // A second init (tests that run several commands in one process) keeps the first subscriber.
    let _ = result;
}
