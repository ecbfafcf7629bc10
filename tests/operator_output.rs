//! What an operator reads: a fatal error printed once, a start-up line naming what outboxd
//! uses, and `log` commands that behave in a pipe.

mod common;

use std::process::Command;

/// A local port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Runs `outboxd <args>` with built-in defaults plus `env`; returns (code, stderr).
fn outboxd(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .args(args)
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .env_remove("OUTBOXD_CONFIG")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn run_and_migrate_print_a_fatal_error_once() {
    // Given a database that is not there
    let url = format!("postgres://postgres@127.0.0.1:{}/db", closed_port());
    for command in ["run", "migrate"] {
        for format in ["text", "json"] {
            // When the command starts
            let (code, stderr) = outboxd(
                &[command],
                &[
                    ("OUTBOXD_SOURCE__URL", url.as_str()),
                    ("OUTBOXD_LOGGING__FORMAT", format),
                ],
            );

            // Then it fails, and the error is in exactly one line
            assert_eq!(code, 1, "{command} {format}: {stderr}");
            let mentions = stderr
                .lines()
                .filter(|line| line.contains("Connection refused"))
                .count();
            assert_eq!(mentions, 1, "{command} {format}: {stderr}");
            if format == "text" {
                assert!(stderr.lines().any(|l| l.starts_with("error: ")), "{stderr}");
            } else {
                for line in stderr.lines() {
                    serde_json::from_str::<serde_json::Value>(line)
                        .unwrap_or_else(|_| panic!("not a JSON line: {line}"));
                }
            }
        }
    }
}
