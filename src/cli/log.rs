//! `outboxd log read` and `outboxd log tail`: records of the embedded log as JSON lines.

use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::log::{LogReader, Record};
use clap::{Args, Subcommand};
use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// How often `tail --follow` looks for new records.
const FOLLOW_INTERVAL: Duration = Duration::from_millis(50);

/// The `log` subcommands.
#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Print records from an offset on, as JSON lines.
    Read {
        /// First offset to print.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Stop after this many records.
        #[arg(long)]
        limit: Option<u64>,
        /// Common options.
        #[command(flatten)]
        common: CommonArgs,
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
            limit,
            common,
        } => read(&config, from, limit, &common),
        LogCommand::Tail {
            lines,
            follow,
            common,
        } => tail(&config, lines, follow, &common),
    })
    .await
    .map_err(|err| Error::with_source(ErrorKind::Internal, "reading the log", err))?
}

/// Opens the reader on the chosen directory.
fn open(config: &Config, common: &CommonArgs) -> Result<LogReader> {
    let dir = common
        .dir
        .clone()
        .unwrap_or_else(|| config.sink.log.dir.clone());
    if !dir.is_dir() {
        return Err(Error::new(
            ErrorKind::Io,
            format!(
                "no embedded log at {} (nothing relayed yet, or wrong --dir)",
                dir.display()
            ),
        ));
    }
    LogReader::open(&dir)
}

/// `log read`.
fn read(config: &Config, from: u64, limit: Option<u64>, common: &CommonArgs) -> Result<()> {
    let mut reader = open(config, common)?;
    reader.seek(from)?;
    let mut out = Output::new();
    let mut printed = 0;
    while limit.is_none_or(|limit| printed < limit) {
        let Some(record) = reader.next()? else { break };
        if matches(&record, common) {
            if !out.print(&record)? {
                return Ok(());
            }
            printed += 1;
        }
    }
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
    while let Some(record) = reader.next()? {
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
    loop {
        match reader.next()? {
            Some(record) if matches(&record, common) => {
                if !out.print(&record)? {
                    return Ok(());
                }
            }
            Some(_) => {}
            None => std::thread::sleep(FOLLOW_INTERVAL),
        }
    }
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
}

impl Output {
    /// Locks stdout.
    fn new() -> Self {
        Output {
            stdout: std::io::stdout().lock(),
        }
    }

    /// Prints one record as a JSON line; `false` once the reader of our output went away.
    fn print(&mut self, record: &Record) -> Result<bool> {
        let line = serde_json::to_string(record)
            .map_err(|err| Error::with_source(ErrorKind::Internal, "encoding a record", err))?;
        match writeln!(self.stdout, "{line}").and_then(|_| self.stdout.flush()) {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            Err(err) => Err(Error::io("writing to stdout", err)),
        }
    }
}
