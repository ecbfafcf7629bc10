//! The command line: `run`, `migrate`, `check-config`, `status`, `dlq`, `backfill` and `log
//! read|tail|stats`.

mod backfill;
mod dlq;
mod log;
pub mod run;
mod status;

use crate::config::{self, Config};
use crate::error::{Error, ErrorKind, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// outboxd: relays a PostgreSQL transactional outbox to a sink, in order, losing nothing.
#[derive(Debug, Parser)]
#[command(name = "outboxd", version, about)]
pub struct Cli {
    /// Configuration file [default: config/outboxd.toml if present, built-in defaults otherwise].
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "OUTBOXD_CONFIG",
        value_name = "PATH"
    )]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Relay events until SIGINT or SIGTERM.
    Run,
    /// Create or upgrade the outbox table, its indexes and its notify trigger.
    Migrate,
    /// Validate the configuration and print it in full, secrets masked.
    CheckConfig,
    /// Show pending events, the oldest one's age, dead letters and the last publish.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Inspect, retry or skip dead letters.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Deliver a captured table's rows again (change data capture); show or cancel backfills.
    Backfill(backfill::BackfillArgs),
    /// Read the embedded log.
    #[command(subcommand)]
    Log(log::LogCommand),
}

/// Parses the command line and runs it.
pub async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run => {
            let origin = config::origin(cli.config.as_deref());
            run::run(&load(&cli.config, true)?, &origin).await
        }
        Command::Migrate => run::migrate(&load(&cli.config, true)?).await,
        Command::CheckConfig => check_config(&load(&cli.config, false)?),
        Command::Status { json } => status::run(&load(&cli.config, false)?, json).await,
        Command::Dlq(command) => dlq::run(&load(&cli.config, false)?, command).await,
        Command::Backfill(args) => backfill::run(&load(&cli.config, false)?, args).await,
        Command::Log(command) => log::run(&load(&cli.config, false)?, command).await,
    }
}

/// Loads the configuration and, for long-running commands, starts logging.
fn load(path: &Option<PathBuf>, with_logging: bool) -> Result<Config> {
    let config = config::load(path.as_deref())?;
    if with_logging {
        crate::telemetry::init(&config.logging);
    }
    Ok(config)
}

/// Prints the effective configuration as TOML; secrets print as a mask.
fn check_config(config: &Config) -> Result<()> {
    let text = toml::to_string(config).map_err(|err| {
        Error::with_source(ErrorKind::Internal, "printing the configuration", err)
    })?;
    println!("# effective configuration (secrets masked)\n{text}");
    Ok(())
}
