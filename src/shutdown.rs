//! Turning SIGINT and SIGTERM into a cancellation every task can watch.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Returns a token cancelled at the first SIGINT or SIGTERM. A second signal exits at once with
/// status 130, for an operator who does not want to wait for the batch in flight.
pub fn on_signals() -> std::io::Result<CancellationToken> {
    let token = CancellationToken::new();
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let cancel = token.clone();
    tokio::spawn(async move {
        for round in 0..2 {
            let name = tokio::select! {
                _ = interrupt.recv() => "SIGINT",
                _ = terminate.recv() => "SIGTERM",
            };
            if round == 0 {
                tracing::info!(
                    signal = name,
                    "shutting down: finishing the batch in flight"
                );
                cancel.cancel();
            } else {
                tracing::warn!(signal = name, "second signal: exiting now");
                std::process::exit(130);
            }
        }
    });
    Ok(token)
}
