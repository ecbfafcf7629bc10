//! `outboxd backfill`: asks the running relay to deliver a table's rows again (or those a
//! `--where` condition selects), shows every snapshot and backfill, or cancels one. It talks to
//! the relay through `outboxd_snapshots` (the relay looks for requests every second), so a
//! request survives a relay restart and needs no connection to the relay itself.

use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::source::logical::snapshot::{chunk, store};
use chrono::Utc;
use clap::Args;
use std::io::IsTerminal;
use std::time::Duration;

/// The arguments of `outboxd backfill`.
#[derive(Debug, Args)]
pub struct BackfillArgs {
    /// The table, `schema.table` (the first `.` separates them), or `table` in `public`.
    #[arg(required_unless_present_any = ["status", "cancel"])]
    table: Option<String>,
    /// Only the rows this SQL condition selects (run as the relay's database user; `;`,
    /// comments and unbalanced parentheses are refused).
    #[arg(long = "where", value_name = "SQL condition")]
    condition: Option<String>,
    /// Show every snapshot and backfill and exit.
    #[arg(long, conflicts_with_all = ["table", "cancel"])]
    status: bool,
    /// Stop the backfill of this table.
    #[arg(long, value_name = "TABLE", conflicts_with = "table")]
    cancel: Option<String>,
    /// Return once the request is recorded instead of following its progress.
    #[arg(long)]
    detach: bool,
}

/// Runs `outboxd backfill`.
pub async fn run(config: &Config, args: BackfillArgs) -> Result<()> {
    if !config.source.mode.is_logical() || config.source.cdc.tables.is_empty() {
        return Err(Error::config(
            "source.cdc.tables",
            "backfills need captured tables (source.mode = \"cdc\" or \"logical\" with tables)",
        ));
    }
    let session = crate::pg::connect(&config.source).await?;
    let client = &session.client;
    let schema = &config.source.table.schema;
    let slot = &config.source.logical.slot;
    if !store::exists(client, schema).await? {
        return Err(Error::new(
            ErrorKind::Schema,
            "no snapshot records (outboxd_snapshots): run `outboxd migrate` first",
        ));
    }
    if args.status {
        print_jobs(&store::list(client, schema, slot).await?);
        return Ok(());
    }
    if let Some(table) = &args.cancel {
        let (s, t) = split(table);
        return match store::cancel(client, schema, slot, (&s, &t)).await? {
            true => {
                println!("backfill of {s}.{t} cancelled");
                Ok(())
            }
            false => Err(Error::new(
                ErrorKind::Config,
                format!("no pending or running backfill of {s}.{t}"),
            )),
        };
    }
    let Some(table) = &args.table else {
        return Ok(());
    };
    let (s, t) = split(table);
    if let Some(condition) = &args.condition {
        chunk::check_condition(condition).map_err(|reason| Error::config("--where", reason))?;
    }
    let captured = crate::source::logical::tables::publication::resolve(client, &config.source)
        .await?
        .iter()
        .any(|found| found.schema == s && found.table == t);
    if !captured {
        return Err(Error::new(
            ErrorKind::Config,
            format!("{s}.{t} is not a captured table (source.cdc.tables)"),
        ));
    }
    // The shape check refuses a table without a primary key before anything is recorded.
    chunk::shape(client, &s, &t).await?;
    if let Some(condition) = &args.condition {
        // Checked by the server now, not by the relay later.
        let probe = format!(
            "EXPLAIN SELECT 1 FROM {}.{} WHERE ({condition})",
            crate::pg::quote_ident(&s),
            crate::pg::quote_ident(&t)
        );
        client
            .batch_execute(&probe)
            .await
            .map_err(|err| crate::pg::classify("checking the --where condition", err))?;
    }
    store::request(client, schema, slot, (&s, &t), args.condition.as_deref()).await?;
    println!("backfill of {s}.{t} requested");
    if args.detach {
        return Ok(());
    }
    follow(client, schema, slot, (&s, &t)).await
}

/// `schema.table` split at the first `.`; a name without one is in `public`.
fn split(name: &str) -> (String, String) {
    match name.split_once('.') {
        Some((schema, table)) => (schema.to_owned(), table.to_owned()),
        None => ("public".to_owned(), name.to_owned()),
    }
}

/// Prints a job's progress until it ends: in place on a terminal, a line per change otherwise.
async fn follow(
    client: &tokio_postgres::Client,
    schema: &str,
    slot: &str,
    table: (&str, &str),
) -> Result<()> {
    let terminal = std::io::stdout().is_terminal();
    let mut previous = String::new();
    loop {
        let jobs = store::list(client, schema, slot).await?;
        let Some(job) = jobs
            .iter()
            .find(|j| j.schema == table.0 && j.table == table.1)
        else {
            return Ok(());
        };
        let line = line(job);
        if line != previous {
            match terminal {
                true => print!("\r\x1b[2K{line}"),
                false => println!("{line}"),
            }
            use std::io::Write;
            let _ = std::io::stdout().flush();
            previous = line;
        }
        if !matches!(job.state.as_str(), "pending" | "running") {
            if terminal {
                println!();
            }
            return match job.state.as_str() {
                "failed" => Err(Error::new(
                    ErrorKind::Schema,
                    job.detail
                        .clone()
                        .unwrap_or_else(|| "backfill failed".into()),
                )),
                _ => Ok(()),
            };
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One job as a line: table, state, rows done / estimated, rate, ETA.
pub fn line(job: &store::Job) -> String {
    let elapsed = job
        .started_at
        .map(|at| (job.updated_at - at).num_milliseconds() as f64 / 1000.0)
        .unwrap_or(0.0);
    let rate = (elapsed > 0.0).then(|| job.rows_done as f64 / elapsed);
    let estimated = job.rows_estimated.map_or("?".into(), |e| e.to_string());
    let eta = match (rate, job.rows_estimated, job.state.as_str()) {
        (Some(rate), Some(total), "running") if rate > 0.0 => {
            format!("{:.0} s", ((total - job.rows_done).max(0) as f64) / rate)
        }
        _ => "-".into(),
    };
    let rate = rate.map_or("-".into(), |r| format!("{r:.0} rows/s"));
    let condition = job
        .condition
        .as_ref()
        .map_or(String::new(), |c| format!(" where {c}"));
    let detail = job
        .detail
        .as_ref()
        .map_or(String::new(), |d| format!(" ({d})"));
    let age = (Utc::now() - job.updated_at).num_seconds();
    format!(
        "{}.{} {}{condition}: {} {} / {estimated} rows, {rate}, eta {eta}, updated {age} s ago{detail}",
        job.schema, job.table, job.kind, job.state, job.rows_done
    )
}

/// Prints every job, one line each.
pub fn print_jobs(jobs: &[store::Job]) {
    if jobs.is_empty() {
        println!("no snapshots or backfills");
    }
    for job in jobs {
        println!("{}", line(job));
    }
}
