//! Hostile configuration: every mistake is one precise error line and exit status 1, never a
//! panic, and never a secret in the output.

use std::path::Path;
use std::process::Command;

/// Runs `outboxd --config <path> check-config` with extra environment; returns (code, stderr).
fn check(path: &Path, env: &[(&str, &str)]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .arg("--config")
        .arg(path)
        .arg("check-config")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Writes `toml` to a file and checks it; asserts exit 1 and one `error:` line containing
/// `expected`.
fn refused(toml: &str, env: &[(&str, &str)], expected: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outboxd.toml");
    std::fs::write(&path, toml).unwrap();
    let (code, stderr) = check(&path, env);
    assert_eq!(code, 1, "{toml:?} {env:?} was accepted: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "more than one line: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(
        stderr.contains(expected),
        "expected {expected:?} in {stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("hunter2"),
        "{stderr}"
    );
}

#[test]
fn unknown_keys_are_named() {
    refused(
        "[source]\nbatchsize = 5\n",
        &[],
        "unknown field `batchsize`",
    );
    refused("[sorce]\nurl = \"x\"\n", &[], "unknown field `sorce`");
    refused(
        "",
        &[("OUTBOXD_SINK__LOG__DIRR", "/tmp/x")],
        "unknown field `dirr`",
    );
}

#[test]
fn wrong_types_name_the_key() {
    refused(
        "[source]\nbatch_size = \"lots\"\n",
        &[],
        "source.batch_size",
    );
    refused(
        "[source]\nauto_migrate = \"maybe\"\n",
        &[],
        "source.auto_migrate",
    );
    refused(
        "[source.tls]\nmode = \"sometimes\"\n",
        &[],
        "source.tls.mode",
    );
    refused(
        "",
        &[("OUTBOXD_SOURCE__POLL_INTERVAL_MS", "soon")],
        "source.poll_interval_ms",
    );
}

#[test]
fn out_of_range_numbers_name_key_and_bounds() {
    refused(
        "[source]\nbatch_size = 0\n",
        &[],
        "source.batch_size: must be between 1 and 100000 (got 0)",
    );
    refused(
        "[source]\npoll_interval_ms = 1\n",
        &[],
        "source.poll_interval_ms: must be between 10",
    );
    refused(
        "[sink.log]\nmax_record_bytes = 10\n",
        &[],
        "sink.log.max_record_bytes",
    );
    refused("[source]\nbatch_size = -3\n", &[], "source.batch_size");
}

#[test]
fn bad_values_are_explained_without_leaking_secrets() {
    refused(
        "[source]\nurl = \"postgres://u:hunter2@h:99999999/db\"\n",
        &[],
        "source.url",
    );
    refused("[http]\nlisten = \"everywhere\"\n", &[], "http.listen");
    refused("[logging]\nlevel = \"loud[\"\n", &[], "logging.level");
    refused(
        "[source]\npassword_file = \"/nonexistent/pw\"\n",
        &[],
        "source.password_file: cannot read",
    );
    refused(
        "[source]\npassword = \"hunter2\"\npassword_file = \"/x\"\n",
        &[],
        "cannot be set together",
    );
    refused("this is not toml", &[], "invalid configuration");
}

#[test]
fn an_unreadable_file_is_one_error() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stderr) = check(&dir.path().join("missing.toml"), &[]);
    assert_eq!(code, 1);
    assert!(
        stderr.starts_with("error: cannot read config file"),
        "{stderr}"
    );
    let (code, stderr) = check(dir.path(), &[]);
    assert_eq!(code, 1);
    assert!(
        stderr.starts_with("error: cannot read config file"),
        "{stderr}"
    );
}

#[test]
fn errors_from_environment_variables_name_the_variable_not_the_file() {
    // Given a valid file and a bad value in an OUTBOXD_* variable
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outboxd.toml");
    std::fs::write(&path, "[source]\nbatch_size = 10\n").unwrap();
    for (variable, value, expected) in [
        ("OUTBOXD_SOURCE__BATCH_SIZE", "many", "expected an integer"),
        ("OUTBOXD_SOURCE__URLL", "x", "unknown field `urll`"),
        ("OUTBOXD_SINK__TYPE", "kafak", "unknown value \"kafak\""),
        (
            "OUTBOXD_SOURCE__BATCH_SIZE",
            "0",
            "must be between 1 and 100000",
        ),
    ] {
        // When outboxd reads its configuration
        let (code, stderr) = check(&path, &[(variable, value)]);

        // Then the one error line names the variable and the problem, not the file
        assert_eq!(code, 1, "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(variable), "{variable}: {stderr}");
        assert!(stderr.contains(expected), "{variable}: {stderr}");
        assert!(!stderr.contains("outboxd.toml"), "{variable}: {stderr}");
    }
}

#[test]
fn a_value_outside_a_fixed_set_lists_the_valid_values() {
    refused("[sink]\ntype = \"kafak\"\n", &[], "sink.type");
    refused(
        "[sink]\ntype = \"kafak\"\n",
        &[],
        "unknown value \"kafak\", expected one of `log`, `amqp`, `kafka`",
    );
    refused(
        "[relay]\non_dead_letter = \"block\"\n",
        &[],
        "expected `block_aggregate` or `skip`",
    );
    refused(
        "",
        &[("OUTBOXD_SOURCE__TLS__MODE", "sometimes")],
        "expected one of `disable`, `require`, `verify-ca`, `verify-full`",
    );
}

#[test]
fn a_bad_dead_letter_topic_is_named() {
    refused(
        "[relay]\ndead_letter_topic = \"dead.{aggregate}\"\n",
        &[],
        "relay.dead_letter_topic: unknown placeholder {aggregate}",
    );
    refused(
        "[relay]\ndead_letter_topic = \"\"\n",
        &[],
        "relay.dead_letter_topic: must not be empty",
    );
    // Checked as the configured sink's destination: a NATS subject takes no wildcard
    refused(
        "[sink]\ntype = \"nats\"\n[relay]\ndead_letter_topic = \"dead.>\"\n",
        &[],
        "relay.dead_letter_topic: \"dead.>\" has an empty or wildcard token",
    );
}
