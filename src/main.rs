//! The `outboxd` binary: parses the command line and reports errors in one line.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    match outboxd::cli::main().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err.chain(), "outboxd stopped");
            eprintln!("error: {}", err.chain());
            ExitCode::FAILURE
        }
    }
}
