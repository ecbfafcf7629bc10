//! The `outboxd` binary: parses the command line and reports errors in one line.

use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: in profiles of drains into NATS and Redis, glibc's
/// allocator (its free path for memory allocated on another thread above all) took 30-40 % of
/// the relay's CPU; events are built by the source's task and dropped by the lanes'.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
