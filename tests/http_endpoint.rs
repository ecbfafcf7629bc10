//! The HTTP endpoint cannot be starved: half-sent requests are closed after the header timeout,
//! connections are capped well below the descriptor limit, and the relay's own connections keep
//! working meanwhile.

mod common;

use common::pg::{connect, test_db};
use common::relay::*;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The descriptor limit the relay runs under, as in the report: 128.
const FD_LIMIT: libc::rlim_t = 128;

/// GETs `/readyz` on a fresh connection; `None` if the server closed it without an answer.
async fn try_readyz(addr: std::net::SocketAddr) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(2), stream.read_to_string(&mut response))
        .await
        .ok()?
        .ok()?;
    response.get(9..12)?.parse().ok()
}

/// Starts `outboxd run` with `config` and the open-files limit at `soft`/`hard`.
fn spawn_limited(
    config: &std::path::Path,
    dir: &std::path::Path,
    soft: libc::rlim_t,
    hard: libc::rlim_t,
) -> RelayProcess {
    let stderr = std::fs::File::create(dir.join("relay.log")).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_outboxd"));
    command
        .arg("--config")
        .arg(config)
        .arg("run")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(stderr);
    // SAFETY: setrlimit is async-signal-safe and touches only the child about to exec.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    RelayProcess {
        child: command.spawn().unwrap(),
        log: dir.join("relay.log"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_files_soft_limit_is_raised_to_the_hard_one() {
    // Given a relay started with a soft limit of 128 under a hard limit of 1024
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(&db, &dir.path().join("log"));
    migrate(&config).await;
    let path = write_config(&config, dir.path(), "c");
    let mut relay = spawn_limited(&path, dir.path(), FD_LIMIT, 1024);

    // When it serves HTTP, then its soft limit is the hard one
    relay.http_addr().await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", relay.child.id())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, ["1024", "1024"], "{line}");
    relay.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_closed_and_neither_readyz_nor_the_relay_starve() {
    // Given a relay limited to 128 file descriptors
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let config = config_for(&db, &log);
    migrate(&config).await;
    let path = write_config(&config, dir.path(), "c");
    let mut relay = spawn_limited(&path, dir.path(), FD_LIMIT, FD_LIMIT);
    let addr = relay.http_addr().await;
    // (the endpoint listens before the relay is ready: /readyz says 503 until it is)
    let deadline = Instant::now() + Duration::from_secs(30);
    while try_readyz(addr).await != Some(200) {
        assert!(
            Instant::now() < deadline,
            "/readyz never answered 200 at start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // When 200 clients each send half a request and wait
    let mut held = Vec::new();
    for _ in 0..200 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let _ = stream
            .write_all(b"GET /readyz HTTP/1.1\r\nHost: t\r\n")
            .await;
        held.push(stream);
    }
    // and the relay's database sessions are cut, so it must open new ones (only this test's
    // database: other tests' relays and migrations run on the same server at the same time)
    let client = connect(&db.url).await;
    client
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'outboxd' AND datname = current_database() \
             AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();

    // Then every half-sent request is closed by the server within the header timeout
    let started = Instant::now();
    for stream in &mut held {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "a half-sent request was still open after {:?}",
            started.elapsed()
        );
    }
    // And /readyz answers again, and an event written now is relayed over fresh sessions
    let deadline = Instant::now() + Duration::from_secs(30);
    while try_readyz(addr).await != Some(200) {
        assert!(Instant::now() < deadline, "/readyz never answered 200");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client
        .execute(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
             VALUES ('t', 'a', 'E', '{}')",
            &[],
        )
        .await
        .unwrap();
    wait_for_events(&[&log], 1, Duration::from_secs(30)).await;
    relay.kill();
}
