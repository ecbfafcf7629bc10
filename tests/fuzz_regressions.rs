//! Replays every input kept in `fuzz/regressions/<target>/` through the code its fuzz target
//! runs (`outboxd::fuzz`), so a decoder that panicked once cannot start again unnoticed. The
//! directories hold the inputs that crashed a fuzzer (fixed since) and a few chosen to reach
//! error paths: truncations, absurd lengths, damage in the middle of a log. See
//! docs/FUZZING.md.

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// The committed inputs of one fuzz target, by path. Fails if there are none, so a moved or
/// emptied directory cannot make the test pass without checking anything.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let mut inputs: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("reading {}: {err}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "no inputs in {}", dir.display());
    inputs
}

/// Runs `run` on every input of `target` and fails naming each input that panicked.
fn replay(target: &str, run: impl Fn(&[u8])) {
    let failed: Vec<String> = inputs(target)
        .into_iter()
        .filter(|(_, bytes)| panic::catch_unwind(AssertUnwindSafe(|| run(bytes))).is_err())
        .map(|(path, _)| path.display().to_string())
        .collect();
    assert!(failed.is_empty(), "panicked on {failed:#?}");
}

#[test]
fn no_kept_pgoutput_input_panics_the_decoder() {
    replay("pgoutput", outboxd::fuzz::pgoutput_message);
}

#[test]
fn no_kept_record_input_panics_the_frame_or_body_decoder() {
    replay("log_record", outboxd::fuzz::log_record);
}

#[test]
fn no_kept_log_directory_panics_readers_or_recovery() {
    replay("log_directory", |bytes| {
        let dir = tempfile::tempdir().unwrap();
        outboxd::fuzz::log_directory(bytes, dir.path());
    });
}
