//! A whole log directory built from the input, read, seeked, recovered by a writer and
//! appended to (see `outboxd::fuzz::log_directory` for the input layout).
#![no_main]

use std::path::Path;

/// Where each run's directory is made: tmpfs when there is one, so the writer's fsyncs cost
/// nothing and runs stay fast.
fn scratch() -> &'static Path {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() { shm } else { Path::new("/tmp") }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir_in(scratch()).expect("creating a scratch directory");
    outboxd::fuzz::log_directory(data, dir.path());
});
