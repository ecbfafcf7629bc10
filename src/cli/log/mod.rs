//! `outboxd log read`, `log commit`, `log tail` and `log stats`: the embedded log as JSON
//! lines, consumer groups' progress, and a summary of what it holds.
//!
//! Consumer groups are at-least-once: `log read --group G` starts at the group's committed
//! offset and commits nothing, since a line written to a pipe is not a line processed (a
//! consumer may crash, or close the pipe after one line); `log commit` records progress once
//! the consumer has processed the records.

mod stats;

use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::log::{Consumer, ConsumerGroup, LogReader, Record, consumer};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// The `log` subcommands.
#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Print records from a starting point on, as JSON lines.
    Read {
        /// First offset to print [default: the group's next offset, else the beginning].
        #[arg(long, conflicts_with_all = ["from_time", "from_beginning"])]
        from: Option<u64>,
        /// Start at the first record appended at or after this time (RFC 3339).
        #[arg(long, value_name = "RFC3339", conflicts_with = "from_beginning")]
        from_time: Option<DateTime<Utc>>,
        /// Start at the first record still in the log.
        #[arg(long)]
        from_beginning: bool,
        /// Start at this consumer group's committed offset. Reading never commits: after
        /// processing, commit with `log commit`. --from/--from-time/--from-beginning override
        /// where this read starts without changing the group.
        #[arg(long, value_name = "NAME")]
        group: Option<String>,
        /// Stop after this many records.
        #[arg(long)]
        limit: Option<u64>,
        /// Common options.
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Commit a consumer group's progress once its records are processed: the next `log read
    /// --group` starts after them.
    Commit {
        /// The consumer group.
        #[arg(long, value_name = "NAME")]
        group: String,
        /// The offset of the last record processed; the group resumes after it.
        #[arg(
            long,
            value_name = "OFFSET",
            required_unless_present = "next",
            conflicts_with = "next"
        )]
        through: Option<u64>,
        /// The offset the group reads next (e.g. 0 to start over).
        #[arg(long, value_name = "OFFSET")]
        next: Option<u64>,
        /// Log directory [default: sink.log.dir from the configuration].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Print the last records, and with --follow every record appended after them.
    Tail {
        /// How many of the last records to print first.
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: usize,
        /// Keep running and print records as they are appended.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Common options.
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Summarize the log: segments, offsets, bytes, and records per topic.
    Stats {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Log directory [default: sink.log.dir from the configuration].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// Where `log read` starts.
#[derive(Debug, Clone, Copy)]
enum Start {
    /// At this offset.
    Offset(u64),
    /// At the first record appended at or after this time.
    Time(DateTime<Utc>),
}

/// Options every `log` subcommand takes.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Only records of this topic (by default the aggregate type).
    #[arg(long)]
    topic: Option<String>,
    /// Log directory [default: sink.log.dir from the configuration].
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Runs a `log` subcommand.
pub async fn run(config: &Config, command: LogCommand) -> Result<()> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || match command {
        LogCommand::Read {
            from,
            from_time,
            from_beginning,
            group,
            limit,
            common,
        } => {
            let start = match (from, from_time, from_beginning) {
                (Some(offset), _, _) => Some(Start::Offset(offset)),
                (_, Some(time), _) => Some(Start::Time(time)),
                (_, _, true) => Some(Start::Offset(0)),
                _ => None,
            };
            read(&config, start, group.as_deref(), limit, &common)
        }
        LogCommand::Commit {
            group,
            through,
            next,
            dir,
        } => {
            let dir = existing(dir.unwrap_or_else(|| config.sink.log.dir.clone()))?;
            commit(&dir, &group, through, next)
        }
        LogCommand::Stats { json, dir } => {
            let dir = dir.unwrap_or_else(|| config.sink.log.dir.clone());
            stats::run(&existing(dir)?, json)
        }
        LogCommand::Tail {
            lines,
            follow,
            common,
        } => tail(&config, lines, follow, &common),
    })
    .await
    .map_err(|err| Error::with_source(ErrorKind::Internal, "reading the log", err))?
}

/// The chosen log directory.
fn log_dir(config: &Config, common: &CommonArgs) -> Result<PathBuf> {
    existing(
        common
            .dir
            .clone()
            .unwrap_or_else(|| config.sink.log.dir.clone()),
    )
}

/// `dir`, if it exists.
fn existing(dir: PathBuf) -> Result<PathBuf> {
    if !dir.is_dir() {
        return Err(Error::new(
            ErrorKind::Io,
            format!(
                "no embedded log at {} (nothing relayed yet, or wrong --dir)",
                dir.display()
            ),
        ));
    }
    Ok(dir)
}

/// Opens the reader on the chosen directory.
fn open(config: &Config, common: &CommonArgs) -> Result<LogReader> {
    LogReader::open(&log_dir(config, common)?)
}

/// `log read`, through a [`Consumer`] started at `start`, else at the group's committed
/// offset, else at the beginning.
fn read(
    config: &Config,
    start: Option<Start>,
    group: Option<&str>,
    limit: Option<u64>,
    common: &CommonArgs,
) -> Result<()> {
    let dir = log_dir(config, common)?;
    // Checks the group's name even when --from and the like override where it starts.
    let group = group
        .map(|name| ConsumerGroup::open(&dir, name).map(|_| name.to_owned()))
        .transpose()?;
    let end = LogReader::open(&dir)?.bounds()?.1;
    let from = match (start, group) {
        (Some(Start::Time(time)), _) => consumer::Start::Time(time),
        (Some(Start::Offset(offset)), _) => {
            // Not an error (a consumer may poll ahead), but an empty answer must not look like
            // an empty log.
            if offset > end {
                eprintln!(
                    "offset {offset} is past the end of the log: the next record will have \
                     offset {end}"
                );
            }
            consumer::Start::Offset(offset)
        }
        (None, Some(group)) => consumer::Start::Group(group),
        (None, None) => consumer::Start::Offset(0),
    };
    let mut consumer = Consumer::open(&dir, from)?.with_topic(common.topic.clone());
    let mut out = Output::new();
    let mut printed = 0;
    let mut progress = Progress::new(end);
    while limit.is_none_or(|limit| printed < limit) {
        let Some(record) = consumer.next()? else {
            break;
        };
        progress.at(record.offset);
        if !out.print(&record)? {
            break;
        }
        printed += 1;
    }
    progress.done();
    Ok(())
}

/// `log commit`: records the group's next offset, `next` or the one after `through`. Refuses
/// an offset beyond the end of the log, which would skip records not appended yet.
fn commit(dir: &Path, name: &str, through: Option<u64>, next: Option<u64>) -> Result<()> {
    let group = ConsumerGroup::open(dir, name)?;
    let next = match (through, next) {
        (Some(through), _) => through.checked_add(1).ok_or_else(|| {
            Error::new(
                ErrorKind::Config,
                format!("--through {through} is not an offset"),
            )
        })?,
        (None, Some(next)) => next,
        (None, None) => {
            return Err(Error::new(
                ErrorKind::Config,
                "log commit needs --through OFFSET or --next OFFSET",
            ));
        }
    };
    let (_, end) = LogReader::open(dir)?.bounds()?;
    if next > end {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "cannot commit group {name} to read offset {next} next: the log ends before \
                 offset {end}, so records not appended yet would be skipped"
            ),
        ));
    }
    group.commit(next)?;
    println!("group {name}: next offset {next}");
    Ok(())
}

/// `log tail`.
fn tail(config: &Config, lines: usize, follow: bool, common: &CommonArgs) -> Result<()> {
    let mut reader = open(config, common)?;
    let (first, end) = reader.bounds()?;
    // Without a topic filter the last `lines` records are simply the last offsets; with one,
    // scan and keep the last matches.
    let start = if common.topic.is_none() {
        end.saturating_sub(lines as u64).max(first)
    } else {
        first
    };
    reader.seek(start)?;
    let mut last: VecDeque<Record> = VecDeque::with_capacity(lines);
    let mut read_to = start;
    while let Some(record) = reader.next()? {
        read_to = record.offset + 1;
        if matches(&record, common) {
            if last.len() == lines {
                last.pop_front();
            }
            if lines > 0 {
                last.push_back(record);
            }
        }
    }
    let mut out = Output::new();
    for record in &last {
        if !out.print(record)? {
            return Ok(());
        }
    }
    if !follow {
        return Ok(());
    }
    // Follow through a consumer: it wakes on the writer's announcements when the writer runs in
    // this process, and on the kernel's report of a write when (as usual) it runs in another.
    let dir = log_dir(config, common)?;
    let mut consumer =
        Consumer::open(&dir, consumer::Start::Offset(read_to))?.with_topic(common.topic.clone());
    let runtime = tokio::runtime::Handle::current();
    let mut closed = runtime.block_on(async { StdoutClosed::watch() });
    loop {
        match consumer.next()? {
            Some(record) => {
                if !out.print(&record)? {
                    return Ok(());
                }
            }
            // Nothing is written while waiting, so a closed pipe would go unnoticed until the
            // next record: look for it.
            None if reader_gone() => return Ok(()),
            None => runtime.block_on(async {
                tokio::select! {
                    () = consumer.wait() => {}
                    () = closed.wait() => {}
                }
            }),
        }
    }
}

/// The error condition of stdout, reported by the kernel when the reader of a pipe goes away,
/// so a follower waiting for records notices a closed pipe at once.
struct StdoutClosed(Option<AsyncFd<OwnedFd>>);

impl StdoutClosed {
    /// Watches stdout, through a descriptor of its own (nothing to watch when stdout is a
    /// regular file, which never closes).
    fn watch() -> StdoutClosed {
        let Ok(fd) = std::io::stdout().as_fd().try_clone_to_owned() else {
            return StdoutClosed(None);
        };
        // SAFETY: the descriptor is owned by the AsyncFd and closed only when it is dropped.
        let watch = unsafe { AsyncFd::register_with_interest(fd, Interest::ERROR) };
        StdoutClosed(watch.ok())
    }

    /// Resolves once stdout reports an error condition; never without a watch.
    async fn wait(&mut self) {
        let Some(stdout) = &self.0 else {
            return std::future::pending().await;
        };
        match stdout.ready(Interest::ERROR).await {
            // Whatever it was, it is not a closed reader: wait for the next report.
            Ok(mut ready) if !reader_gone() => ready.clear_ready(),
            Ok(_) => {}
            Err(_) => self.0 = None,
        }
    }
}

/// Whether stdout is a pipe whose reading end was closed (`tail -f | head -n 3` after three
/// lines): `poll` reports an error condition on the writing end then.
fn reader_gone() -> bool {
    let mut stdout = libc::pollfd {
        fd: libc::STDOUT_FILENO,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid, initialised pollfd and its count; a zero timeout never blocks.
    let ready = unsafe { libc::poll(&mut stdout, 1, 0) };
    ready > 0 && stdout.revents & (libc::POLLERR | libc::POLLHUP) != 0
}

/// Whether `record` passes the filters.
fn matches(record: &Record, common: &CommonArgs) -> bool {
    common
        .topic
        .as_ref()
        .is_none_or(|topic| &record.topic == topic)
}

/// Standard output, flushed per record so `tail -f | ...` sees records at once.
struct Output {
    /// Locked stdout.
    stdout: std::io::StdoutLock<'static>,
    /// The line being printed (reused).
    line: Vec<u8>,
}

impl Output {
    /// Locks stdout.
    fn new() -> Self {
        Output {
            stdout: std::io::stdout().lock(),
            line: Vec::new(),
        }
    }

    /// Prints one record as a JSON line; `false` once the reader of our output went away.
    fn print(&mut self, record: &Record) -> Result<bool> {
        self.line.clear();
        crate::log::json::write_record(&mut self.line, record);
        self.line.push(b'\n');
        match self
            .stdout
            .write_all(&self.line)
            .and_then(|_| self.stdout.flush())
        {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            Err(err) => Err(Error::io("writing to stdout", err)),
        }
    }
}

/// Progress of a long read on stderr, shown only when stderr is a terminal (so scripts piping
/// the records see nothing extra) and only once a read takes more than a second.
struct Progress {
    /// Offset after the last record when the read started.
    end: u64,
    /// When the read started.
    started: std::time::Instant,
    /// When progress was last shown.
    shown: Option<std::time::Instant>,
    /// Whether stderr is a terminal.
    enabled: bool,
}

impl Progress {
    /// Starts tracking a read towards `end`.
    fn new(end: u64) -> Self {
        use std::io::IsTerminal;
        let enabled = std::io::stderr().is_terminal();
        Progress {
            end,
            started: std::time::Instant::now(),
            shown: None,
            enabled,
        }
    }

    /// Reports that the record at `offset` was read.
    fn at(&mut self, offset: u64) {
        let now = std::time::Instant::now();
        let due = self.shown.map_or(now - self.started, |shown| now - shown);
        if self.enabled && due >= std::time::Duration::from_secs(1) {
            eprint!("\rread up to offset {offset} of {}", self.end);
            self.shown = Some(now);
        }
    }

    /// Clears the progress line.
    fn done(&self) {
        if self.shown.is_some() {
            eprintln!();
        }
    }
}
