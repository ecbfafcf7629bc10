//! Real PostgreSQL for integration tests: one server per test process, one fresh database per test.
//!
//! With `OUTBOXD_TEST_DATABASE_URL` set, tests use that server. Otherwise the first call starts a
//! throwaway cluster (`wal_level=logical`) from the newest `/usr/lib/postgresql/*/bin`, which is
//! stopped and deleted when the process exits. Every failure panics with the reason: a test that
//! needs Postgres must never pass by silently skipping, in CI or anywhere else.

use std::ffi::OsStr;
use std::fs;
use std::io::ErrorKind;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use tokio_postgres::NoTls;
use uuid::Uuid;

/// Names an existing server to use instead of starting a throwaway cluster.
pub const DATABASE_URL_ENV: &str = "OUTBOXD_TEST_DATABASE_URL";

/// Where the server binaries of every installed major version live (Debian layout).
const PG_LIB_DIR: &str = "/usr/lib/postgresql";

/// Cluster directories are `<temp>/outboxd-test-pg-<pid>`; the pid tells whether the owner lives.
const CLUSTER_DIR_PREFIX: &str = "outboxd-test-pg-";

/// Settings appended to `postgresql.conf`. Durability is traded for speed (the cluster dies with
/// the process) except `synchronous_commit`, which crash tests rely on to keep acknowledged
/// commits across an immediate restart. Prepared transactions are enabled for the two-phase
/// commit tests.
const SERVER_SETTINGS: &str = "\
wal_level = logical
max_replication_slots = 20
max_wal_senders = 20
listen_addresses = '127.0.0.1'
fsync = off
full_page_writes = off
synchronous_commit = on
max_connections = 300
max_prepared_transactions = 20
shared_buffers = 128MB
";

/// A fresh database for one test.
#[derive(Debug, Clone)]
pub struct TestDb {
    /// The database name, `outboxd_test_<simple uuid>`.
    pub name: String,
    /// A `postgres://` URL to this database.
    pub url: String,
}

/// A throwaway PostgreSQL cluster started by this test process.
#[derive(Debug)]
pub struct Cluster {
    /// Where its files are and how to run its tools.
    layout: Layout,
    /// The TCP port it listens on, on 127.0.0.1.
    port: u16,
}

/// The files of a cluster and how its tools are run; enough to stop and delete it at exit.
#[derive(Debug, Clone)]
struct Layout {
    /// The cluster directory: socket, server log and the data directory.
    root: PathBuf,
    /// The data directory (`<root>/data`).
    data: PathBuf,
    /// The directory holding `initdb` and `pg_ctl`.
    bin: PathBuf,
    /// Whether tools run as `postgres`, because the server refuses to run as root.
    as_postgres: bool,
}

/// The server that every test in this process shares.
enum Server {
    /// A server named by `OUTBOXD_TEST_DATABASE_URL`; the URL as given.
    External(String),
    /// A cluster this process started.
    Throwaway(Cluster),
}

/// Initialised once per process. The error is kept so that every test panics with the same reason
/// rather than retrying a startup that already failed.
static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();

/// What the exit handler stops and deletes; set as soon as there is a cluster directory to clean.
static AT_EXIT: OnceLock<Layout> = OnceLock::new();

/// Creates a new uniquely named database on the shared server and returns it.
pub async fn test_db() -> TestDb {
    // Starting the cluster blocks for seconds; keep it off the runtime's worker threads.
    let server = match tokio::task::spawn_blocking(server).await {
        Ok(server) => server,
        Err(err) => match err.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(err) => panic!("starting the test server was cancelled: {err}"),
        },
    };
    let name = format!("outboxd_test_{}", Uuid::new_v4().simple());
    let (admin_url, url) = match server {
        Server::External(base) => (base.clone(), with_database(base, &name)),
        Server::Throwaway(cluster) => (cluster.url("postgres"), cluster.url(&name)),
    };
    let admin = connect(&admin_url).await;
    if let Err(err) = admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
    {
        panic!(
            "cannot create test database {name} on {}: {err}",
            redact(&admin_url)
        );
    }
    TestDb { name, url }
}

/// Connects with tokio-postgres (spawning the connection task) and returns the client.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = match tokio_postgres::connect(url, NoTls).await {
        Ok(pair) => pair,
        Err(err) => panic!("cannot connect to {}: {err}", redact(url)),
    };
    tokio::spawn(async move {
        // Expected after a restart; printed because it explains a later "connection closed".
        if let Err(err) = connection.await {
            eprintln!("test connection ended: {err}");
        }
    });
    client
}

/// The throwaway cluster, if this process started one (None when `OUTBOXD_TEST_DATABASE_URL` is
/// used). Starts it if no test has yet, blocking the calling thread meanwhile.
pub fn cluster() -> Option<&'static Cluster> {
    match server() {
        Server::External(_) => None,
        Server::Throwaway(cluster) => Some(cluster),
    }
}

/// The shared server, starting a throwaway cluster on first use; panics if that failed.
fn server() -> &'static Server {
    let started = SERVER.get_or_init(|| match std::env::var(DATABASE_URL_ENV) {
        Ok(url) if !url.trim().is_empty() => Ok(Server::External(url)),
        _ => Cluster::start().map(Server::Throwaway),
    });
    match started {
        Ok(server) => server,
        Err(reason) => panic!("cannot provide a PostgreSQL server for tests: {reason}"),
    }
}

impl Cluster {
    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory (`PGDATA`).
    pub fn data_dir(&self) -> &Path {
        &self.layout.data
    }

    /// The directory of the server binaries it runs.
    pub fn bin_dir(&self) -> &Path {
        &self.layout.bin
    }

    /// `pg_ctl restart` with the given mode ("fast" or "immediate"), waiting until it accepts
    /// connections. Existing connections break, so only one test per process should use it.
    pub fn restart(&self, mode: &str) {
        self.restart_within(mode, Duration::from_secs(60));
    }

    /// [`Self::restart`], failing if stopping or starting takes longer than `timeout` (a
    /// shutdown that waits on a walsender never ends by itself).
    pub fn restart_within(&self, mode: &str, timeout: Duration) {
        let layout = &self.layout;
        let seconds = timeout.as_secs().max(1).to_string();
        let args: [&dyn AsRef<OsStr>; 10] = [
            &"restart",
            &"-w",
            &"-t",
            &seconds,
            &"-m",
            &mode,
            &"-D",
            &layout.data,
            &"-l",
            &layout.log(),
        ];
        if let Err(err) = layout.run("pg_ctl", &args) {
            panic!(
                "pg_ctl restart -m {mode} failed: {err}\n{}",
                layout.log_tail()
            );
        }
    }

    /// A URL to database `db` as the superuser.
    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates, configures and starts a cluster in `<temp>/outboxd-test-pg-<pid>`.
    fn start() -> Result<Cluster, String> {
        let bin = newest_bin_dir()?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let temp = std::env::temp_dir();
        remove_leftover_clusters(&temp, &bin, as_postgres);

        let layout = Layout::new(&temp, std::process::id(), bin, as_postgres);
        // A dead process that had our pid may have left its cluster behind.
        layout.stop_and_remove();
        prepare_root(&temp, &layout)?;
        AT_EXIT
            .set(layout.clone())
            .expect("the cluster is started only once");
        // SAFETY: stop_at_exit is a plain function that neither unwinds nor calls exit.
        if unsafe { libc::atexit(stop_at_exit) } != 0 {
            return Err("cannot register the exit handler that stops the test cluster".into());
        }

        let args: [&dyn AsRef<OsStr>; 10] = [
            &"-D",
            &layout.data,
            &"-A",
            &"trust",
            &"-U",
            &"postgres",
            &"--no-sync",
            &"-E",
            &"UTF8",
            &"--locale=C",
        ];
        layout.run("initdb", &args)?;
        let socket_dir = layout.root.display();
        append(
            &layout.data.join("postgresql.conf"),
            &format!("{SERVER_SETTINGS}unix_socket_directories = '{socket_dir}'\n"),
        )?;

        // The port is free when we look but another process may take it before the server binds;
        // that race is rare, so a couple of fresh ports is enough.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port()?;
            append(
                &layout.data.join("postgresql.conf"),
                &format!("port = {port}\n"),
            )?;
            let log_before = fs::metadata(layout.log()).map(|m| m.len()).unwrap_or(0);
            let args: [&dyn AsRef<OsStr>; 6] =
                [&"-w", &"-D", &layout.data, &"-l", &layout.log(), &"start"];
            match layout.run("pg_ctl", &args) {
                Ok(()) => return Ok(Cluster { layout, port }),
                Err(err) => {
                    let log = fs::read(layout.log()).unwrap_or_default();
                    let new_log =
                        String::from_utf8_lossy(log.get(log_before as usize..).unwrap_or(&[]));
                    if attempt < 3 && new_log.contains("could not bind") {
                        continue;
                    }
                    return Err(format!("pg_ctl start failed: {err}\n{}", layout.log_tail()));
                }
            }
        }
    }
}

impl Layout {
    /// The layout of the cluster owned by process `pid`.
    fn new(temp: &Path, pid: u32, bin: PathBuf, as_postgres: bool) -> Layout {
        let root = temp.join(format!("{CLUSTER_DIR_PREFIX}{pid}"));
        Layout {
            data: root.join("data"),
            root,
            bin,
            as_postgres,
        }
    }

    /// The server log file.
    fn log(&self) -> PathBuf {
        self.root.join("server.log")
    }

    /// The last lines of the server log, for panic messages.
    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        format!("--- tail of {} ---\n{tail}", self.log().display())
    }

    /// Runs a server tool to completion, as `postgres` when we are root.
    fn run(&self, tool: &str, args: &[&dyn AsRef<OsStr>]) -> Result<(), String> {
        let mut command_line = vec![self.bin.join(tool).into_os_string()];
        command_line.extend(args.iter().map(|arg| arg.as_ref().to_os_string()));
        let output = if !self.as_postgres {
            self.command(&command_line[0])
                .args(&command_line[1..])
                .output()
        } else {
            match self
                .command("runuser")
                .args(["-u", "postgres", "--"])
                .args(&command_line)
                .output()
            {
                Err(err) if err.kind() == ErrorKind::NotFound => {
                    let words: Vec<String> = command_line
                        .iter()
                        .map(|w| shell_quote(&w.to_string_lossy()))
                        .collect();
                    let script = words.join(" ");
                    self.command("su")
                        .args(["-s", "/bin/sh", "postgres", "-c", &script])
                        .output()
                }
                other => other,
            }
        };
        let shown: Vec<_> = command_line
            .iter()
            .map(|word| word.to_string_lossy())
            .collect();
        let shown = shown.join(" ");
        let output = output.map_err(|err| format!("cannot run {shown}: {err}"))?;
        if output.status.success() {
            return Ok(());
        }
        Err(format!(
            "`{shown}` exited with {}\nstdout:\n{}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        ))
    }

    /// A command with no input, run from the cluster directory: `postgres` may not be allowed to
    /// read the caller's working directory.
    fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(program);
        command.stdin(Stdio::null());
        if self.root.is_dir() {
            command.current_dir(&self.root);
        }
        command
    }

    /// Stops the server if it may be running and deletes the cluster directory; best effort.
    fn stop_and_remove(&self) {
        if self.data.join("postmaster.pid").exists() {
            let args: [&dyn AsRef<OsStr>; 5] = [&"stop", &"-m", &"immediate", &"-D", &self.data];
            let _ = self.run("pg_ctl", &args);
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// Registered with `atexit`: the test harness ends with `exit()`, and nothing else would stop the
/// daemonised server.
extern "C" fn stop_at_exit() {
    if let Some(layout) = AT_EXIT.get() {
        layout.stop_and_remove();
    }
}

/// Finds the `bin` directory of the highest installed PostgreSQL version.
fn newest_bin_dir() -> Result<PathBuf, String> {
    let missing = || format!("install them or set {DATABASE_URL_ENV}");
    let entries = fs::read_dir(PG_LIB_DIR).map_err(|err| {
        format!(
            "no PostgreSQL binaries ({PG_LIB_DIR}: {err}); {}",
            missing()
        )
    })?;
    let version =
        |name: &str| -> Option<Vec<u32>> { name.split('.').map(|p| p.parse().ok()).collect() };
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = version(entry.file_name().to_str()?)?;
            let bin = entry.path().join("bin");
            (bin.join("pg_ctl").exists() && bin.join("initdb").exists()).then_some((version, bin))
        })
        .max()
        .map(|(_, bin)| bin)
        .ok_or_else(|| {
            format!(
                "no PostgreSQL binaries in {PG_LIB_DIR}/*/bin; {}",
                missing()
            )
        })
}

/// Stops and deletes clusters left by test processes that died without running their exit handler.
fn remove_leftover_clusters(temp: &Path, bin: &Path, as_postgres: bool) {
    let Ok(entries) = fs::read_dir(temp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(CLUSTER_DIR_PREFIX))
        else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if pid != std::process::id() && !process_is_alive(pid) {
            Layout::new(temp, pid, bin.to_path_buf(), as_postgres).stop_and_remove();
        }
    }
}

/// Whether a process with this pid exists (it may belong to another user). A zombie counts as
/// dead: a killed test whose parent has not reaped it yet will never clean up after itself.
fn process_is_alive(pid: u32) -> bool {
    if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself contain ") ".
        return stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'));
    }
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let result = unsafe { libc::kill(pid, 0) };
    result == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Creates the cluster directory; as root, hands it to `postgres` and makes sure `postgres` can
/// reach it through the temp dir.
fn prepare_root(temp: &Path, layout: &Layout) -> Result<(), String> {
    let root = &layout.root;
    fs::create_dir_all(root).map_err(|err| format!("cannot create {}: {err}", root.display()))?;
    fs::set_permissions(root, fs::Permissions::from_mode(0o755))
        .map_err(|err| format!("cannot chmod {}: {err}", root.display()))?;
    if !layout.as_postgres {
        return Ok(());
    }
    let mode =
        fs::metadata(temp).map_err(|err| format!("cannot stat {}: {err}", temp.display()))?;
    let mode = mode.permissions().mode();
    if mode & 0o001 == 0 {
        fs::set_permissions(temp, fs::Permissions::from_mode(mode | 0o001))
            .map_err(|err| format!("cannot make {} traversable: {err}", temp.display()))?;
    }
    // SAFETY: the name is a valid C string; the record is read before any other getpw* call.
    let (uid, gid) = unsafe {
        let pw = libc::getpwnam(c"postgres".as_ptr());
        if pw.is_null() {
            return Err("running as root but there is no `postgres` user to run the server".into());
        }
        ((*pw).pw_uid, (*pw).pw_gid)
    };
    std::os::unix::fs::chown(root, Some(uid), Some(gid))
        .map_err(|err| format!("cannot chown {} to postgres: {err}", root.display()))
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> Result<u16, String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|err| format!("no free port: {err}"))?;
    listener
        .local_addr()
        .map(|addr| addr.port())
        .map_err(|err| format!("no free port: {err}"))
}

/// Appends `text` to the file at `path`.
fn append(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .map_err(|err| format!("cannot append to {}: {err}", path.display()))
}

/// Quotes one word for `sh`.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// `base` pointing at database `name`: the URL path is replaced, user, host, port and query kept.
/// A `key=value` connection string gets a trailing `dbname`, which overrides any earlier one.
fn with_database(base: &str, name: &str) -> String {
    let Some(scheme_end) = base.find("://") else {
        return format!("{base} dbname={name}");
    };
    let authority_start = scheme_end + 3;
    let authority_end = base[authority_start..]
        .find(['/', '?'])
        .map_or(base.len(), |i| authority_start + i);
    let query = base[authority_end..]
        .find('?')
        .map_or("", |i| &base[authority_end + i..]);
    format!("{}/{name}{query}", &base[..authority_end])
}

/// `url` with any password masked, for messages.
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        let words = url
            .split_whitespace()
            .map(|word| match word.split_once('=') {
                Some((key, _)) if key.trim() == "password" => "password=***",
                _ => word,
            });
        return words.collect::<Vec<_>>().join(" ");
    };
    let authority_start = scheme_end + 3;
    let authority_end = url[authority_start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| authority_start + i);
    let authority = &url[authority_start..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}{}:***{}",
            &url[..authority_start],
            &authority[..colon],
            &url[authority_start + at..]
        ),
        _ => url.to_string(),
    }
}
