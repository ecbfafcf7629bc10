//! Running the relay in tests (in-process or as the real binary), writing events the way an
//! application does, and reading back what reached the embedded log.

use super::pg::{TestDb, connect};
use outboxd::config::{Config, DbUrl, SourceMode};
use outboxd::log::{LogReader, Record};
use outboxd::sink::{AnySink, Sink};
use outboxd::source::AnySource;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A configuration for `db` that writes the log under `log_dir`.
pub fn config_for(db: &TestDb, log_dir: &Path) -> Config {
    let mut config = Config::default();
    config.source.url = DbUrl::new(db.url.clone());
    config.source.poll_interval_ms = 200;
    config.sink.log.dir = log_dir.to_path_buf();
    config.relay.retry_initial_ms = 20;
    config.relay.retry_max_ms = 500;
    // Relays run side by side in tests: let each bind a free port.
    config.http.listen = "127.0.0.1:0".into();
    config
}

/// A configuration for `db` in `mode` that writes the log under `log`; in logical mode with a
/// slot and publication of its own (named after the database, as slots count cluster-wide)
/// and a short heartbeat.
pub fn config_in(mode: SourceMode, db: &TestDb, log: &Path) -> Config {
    let mut config = config_for(db, log);
    config.source.mode = mode;
    config.source.logical.slot = db.name.clone();
    config.source.logical.publication = db.name.clone();
    config.source.logical.heartbeat_interval_ms = 200;
    config
}

/// Drops the test's slot, so the cluster-wide slot count stays low.
pub async fn drop_slot(db: &TestDb) {
    let client = connect(&db.url).await;
    // The relay may still be letting go of it: retry briefly.
    for _ in 0..100 {
        let dropped = client
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = $1",
                &[&db.name],
            )
            .await;
        if dropped.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A relay running inside the test process.
pub struct InProcessRelay {
    /// Cancels the relay.
    shutdown: CancellationToken,
    /// The relay task.
    task: JoinHandle<outboxd::error::Result<()>>,
}

impl InProcessRelay {
    /// Migrates (if configured) and starts relaying.
    pub async fn start(config: &Config) -> Self {
        Self::start_with(config, |sink| sink).await
    }

    /// Like [`Self::start`], with the configured sink wrapped by `wrap` (e.g. to inject faults).
    pub async fn start_with<K: Sink + 'static>(
        config: &Config,
        wrap: impl FnOnce(AnySink) -> K,
    ) -> Self {
        if config.source.auto_migrate {
            migrate(config).await;
        }
        let mut source = AnySource::start(&config.source, &config.relay)
            .await
            .expect("source");
        let sink = AnySink::open(&config.sink, &outboxd::cli::run::sink_context(config))
            .await
            .expect("sink");
        let sink = wrap(sink);
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let relay = config.relay.clone();
        let task =
            tokio::spawn(
                async move { outboxd::relay::run(&mut source, sink, &relay, token).await },
            );
        InProcessRelay { shutdown, task }
    }

    /// Asks the relay to stop and waits for it; panics if it had failed.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("relay task").expect("relay result");
    }
}

/// Applies the migrations for `config`'s table.
pub async fn migrate(config: &Config) {
    let table = outboxd::outbox::OutboxTable::new(&config.source);
    let mut session = outboxd::pg::connect(&config.source).await.expect("connect");
    if config.source.mode.uses_outbox() {
        outboxd::outbox::migrate::migrate(session.exclusive().expect("unshared"), &table)
            .await
            .expect("migrate");
    }
    if config.source.mode.is_logical() {
        outboxd::source::logical::slot::prepare(&session.client, &config.source)
            .await
            .expect("publication and slot");
    }
}

/// The real `outboxd` binary, run as a child process.
pub struct RelayProcess {
    /// The child.
    pub child: Child,
    /// Where its stderr (the log) goes.
    pub log: PathBuf,
}

impl RelayProcess {
    /// Starts `outboxd <args>` with `config` written to a file in `dir`, stderr to `dir/<name>.log`.
    pub fn spawn(config: &Config, dir: &Path, name: &str, args: &[&str]) -> Self {
        RelayProcess::spawn_with_env(config, dir, name, args, &[])
    }

    /// Like [`RelayProcess::spawn`], with extra environment variables: the way to hand it a
    /// secret (e.g. `OUTBOXD_SINK__AMQP__URL` with a password), which the written config masks.
    pub fn spawn_with_env(
        config: &Config,
        dir: &Path,
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let path = write_config(config, dir, name);
        RelayProcess::spawn_file(&path, dir, name, args, env)
    }

    /// Starts `outboxd --config <path> <args>` with a configuration file written already (e.g.
    /// with a secret that [`write_config`] would mask), stderr to `dir/<name>.log`.
    pub fn spawn_file(
        path: &Path,
        dir: &Path,
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let log = dir.join(format!("{name}.log"));
        let stderr = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_outboxd"))
            .arg("--config")
            .arg(path)
            .args(args)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn outboxd");
        RelayProcess { child, log }
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until a line of its log contains every one of `needles`, and returns that line;
    /// panics with the log if `timeout` passes or the process exits first.
    pub async fn wait_for_log_line(&mut self, needles: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.log_text();
            if let Some(line) = text.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
                return line.to_string();
            }
            let exited = self.child.try_wait().expect("try_wait");
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "no log line with {needles:?} (exited: {exited:?}):\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The address its HTTP endpoint bound (configure `http.listen = "127.0.0.1:0"`), read from
    /// its start-up log line.
    pub async fn http_addr(&mut self) -> std::net::SocketAddr {
        let line = self
            .wait_for_log_line(&["serving /metrics"], Duration::from_secs(60))
            .await;
        let addr = line
            .split_whitespace()
            .find_map(|field| field.strip_prefix("addr="))
            .unwrap_or_else(|| panic!("no addr= in {line:?}"));
        addr.parse().expect("socket address")
    }

    /// SIGKILL, and reap.
    pub fn kill(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
    }

    /// Sends a signal (e.g. `libc::SIGTERM`).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits for exit up to `timeout`; returns the exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "outboxd did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `config` as TOML into `dir/<name>.toml`, with the real password (tests use none).
pub fn write_config(config: &Config, dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml::to_string(config).expect("toml")).expect("write config");
    path
}

/// Runs `outboxd <args>` to completion and returns (exit code, stdout, stderr).
pub fn run_cli(config_path: &Path, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_outboxd"))
        .arg("--config")
        .arg(config_path)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run outboxd");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Every record in the log at `dir` (empty if there is no log yet).
pub fn read_log(dir: &Path) -> Vec<Record> {
    if !dir.exists() {
        return Vec::new();
    }
    let mut reader = LogReader::open(dir).expect("open log");
    let mut records = Vec::new();
    while let Some(record) = reader.next().expect("read log") {
        records.push(record);
    }
    records
}

/// Waits until the logs in `dirs` together hold `count` distinct event ids; returns all records
/// of each log. Panics with what arrived if `timeout` passes first.
pub async fn wait_for_events(dirs: &[&Path], count: usize, timeout: Duration) -> Vec<Vec<Record>> {
    wait_for_events_or_explain(dirs, count, timeout, String::new).await
}

/// [`wait_for_events`], adding what `explain` returns (a relay's log, say) to the panic.
pub async fn wait_for_events_or_explain(
    dirs: &[&Path],
    count: usize,
    timeout: Duration,
    explain: impl Fn() -> String,
) -> Vec<Vec<Record>> {
    let deadline = Instant::now() + timeout;
    loop {
        let logs: Vec<Vec<Record>> = dirs.iter().map(|dir| read_log(dir)).collect();
        let distinct: HashSet<&str> = logs.iter().flatten().map(|r| r.event.id.as_str()).collect();
        if distinct.len() >= count {
            return logs;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {count} events arrived within {timeout:?}\n{}",
            distinct.len(),
            explain()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Creates the table writers serialize on: one row per aggregate with its last sequence number.
pub async fn create_aggregates(db: &TestDb, aggregates: usize) {
    let client = connect(&db.url).await;
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS aggregates (id text PRIMARY KEY, seq int NOT NULL)",
        )
        .await
        .expect("create aggregates");
    for i in 0..aggregates {
        client
            .execute(
                "INSERT INTO aggregates VALUES ($1, 0) ON CONFLICT DO NOTHING",
                &[&format!("agg-{i}")],
            )
            .await
            .expect("insert aggregate");
    }
}

/// Writes `per_writer` events from each of `writers` concurrent connections, the way an
/// application does: lock the aggregate's row, bump its sequence, insert the event with the
/// sequence in the payload, commit. Aggregates are shared, so writers contend on them.
pub async fn write_events(db: &TestDb, writers: usize, per_writer: usize, aggregates: usize) {
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let url = db.url.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = connect(&url).await;
            for i in 0..per_writer {
                let aggregate = format!("agg-{}", (writer * 7919 + i * 31) % aggregates);
                let tx = client.transaction().await.expect("begin");
                let seq: i32 = tx
                    .query_one(
                        "UPDATE aggregates SET seq = seq + 1 WHERE id = $1 RETURNING seq",
                        &[&aggregate],
                    )
                    .await
                    .expect("lock aggregate")
                    .get(0);
                tx.execute(
                    "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
                     VALUES ('order', $1, 'Step', jsonb_build_object('seq', $2::int, 'writer', $3::int))",
                    &[&aggregate, &seq, &(writer as i32)],
                )
                .await
                .expect("insert event");
                tx.commit().await.expect("commit");
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer");
    }
}

/// The `seq` field of a record's payload.
pub fn seq_of(record: &Record) -> i64 {
    let payload: serde_json::Value = serde_json::from_str(record.event.payload.get()).unwrap();
    payload["seq"].as_i64().expect("seq in payload")
}

/// Checks one log's per-aggregate order: ignoring repeats of events already seen (redelivery
/// after a crash), each aggregate's sequence numbers increase by exactly one. Returns how many
/// records were repeats.
pub fn assert_in_order(records: &[Record]) -> usize {
    let mut last: HashMap<&str, i64> = HashMap::new();
    let mut seen: HashSet<&str> = HashSet::new();
    let mut repeats = 0;
    for record in records {
        if !seen.insert(record.event.id.as_str()) {
            repeats += 1;
            continue;
        }
        let seq = seq_of(record);
        let previous = last.insert(record.event.key.as_str(), seq).unwrap_or(0);
        assert_eq!(
            seq,
            previous + 1,
            "aggregate {} out of order at offset {}: seq {seq} after {previous}",
            record.event.key,
            record.offset
        );
    }
    repeats
}

/// Checks that exactly `expected` distinct events arrived and each aggregate's sequence is
/// complete; returns the number of duplicate records.
pub fn assert_complete(records: &[&Record], expected: usize) -> usize {
    let distinct: HashSet<&str> = records.iter().map(|r| r.event.id.as_str()).collect();
    assert_eq!(distinct.len(), expected, "distinct events");
    records.len() - distinct.len()
}

/// Waits until the log at `dir` holds at least `count` records.
pub async fn wait_for_records(dir: &Path, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while read_log(dir).len() < count {
        assert!(
            Instant::now() < deadline,
            "log at {} never reached {count}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Rows marked failed.
pub async fn failed_rows(db: &TestDb) -> i64 {
    connect(&db.url)
        .await
        .query_one(
            "SELECT count(*) FROM outbox WHERE failed_at IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Waits until at least `count` rows are marked sent.
pub async fn wait_sent_at_least(db: &TestDb, count: i64) {
    let client = connect(&db.url).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let sent: i64 = client
            .query_one("SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL", &[])
            .await
            .unwrap()
            .get(0);
        if sent >= count {
            return;
        }
        assert!(Instant::now() < deadline, "only {sent} rows sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Peak resident memory of process `pid`, in kB.
pub fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
