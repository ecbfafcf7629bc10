//! The `outboxd` binary: parses the command line and reports errors in one line.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    // On a worker thread, not the main one: the tasks the relay hands work to (the replication
    // reader, PostgreSQL connections, lanes) and the relay then wake each other on the same
    // worker, instead of every hand-over crossing threads (half the relay's CPU per event in
    // logical mode, see docs/BENCHMARKS.md).
    let result = match tokio::spawn(outboxd::cli::main()).await {
        Ok(result) => result,
        Err(err) => Err(outboxd::error::Error::with_source(
            outboxd::error::ErrorKind::Internal,
            "the main task failed",
            err,
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            outboxd::telemetry::report_fatal(&err.chain());
            ExitCode::FAILURE
        }
    }
}
