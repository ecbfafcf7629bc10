//! `outboxd run` and `outboxd migrate`.

use crate::config::{Config, SinkKind, SourceMode};
use crate::error::{Error, ErrorKind, Result};
use crate::event::TableName;
use crate::outbox::OutboxTable;
use crate::retry::sleep_or_shutdown;
use crate::sink::{AnySink, SinkContext};
use crate::source::AnySource;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often a relay standing by for the embedded log's writer lock tries to take it.
const LOG_LOCK_RETRY: Duration = Duration::from_millis(200);

/// Runs the relay until a signal asks it to stop. `origin` names where the configuration came
/// from (a file, or built-in defaults), for the start-up line.
///
/// Start-up order matters for standbys. With the embedded log, the log's writer lock is taken
/// (waiting while another relay on this host holds it) before the leader lock in PostgreSQL,
/// which the first fetch takes: a relay waiting for the log holds nothing in PostgreSQL, so two
/// relays can never each hold one of the two locks and wait for the other.
pub async fn run(config: &Config, origin: &str) -> Result<()> {
    let shutdown = crate::shutdown::on_signals().map_err(|err| {
        Error::with_source(ErrorKind::Internal, "installing signal handlers", err)
    })?;
    if config.source.auto_migrate {
        migrate(config).await?;
    }
    let mut source = AnySource::start(&config.source, &config.relay).await?;
    // Served before the sink opens, so a relay standing by for the log answers /readyz. The
    // consumer API reads the log meanwhile: an empty one if nothing was ever written.
    if config.http.enabled && config.http.consume.enabled {
        let options = config.sink.log.writer_options();
        crate::log::create_dir(&config.sink.log.dir, options.dir_mode)?;
    }
    let http = match config.http.enabled {
        true => Some(
            crate::http::serve_with(&config.http, &config.sink.log.dir, shutdown.clone())
                .await?
                .1,
        ),
        false => None,
    };
    let result = match open_sink(config, &shutdown).await {
        Ok(Some(sink)) => relay(config, origin, &mut source, sink, &shutdown).await,
        Ok(None) => Ok(()),
        Err(err) => Err(err),
    };
    // The relay may stop on an error without a signal: stop the helpers either way.
    shutdown.cancel();
    if let Some(http) = http {
        let _ = http.await;
    }
    result
}

/// Opens the configured sink. While another relay writes the same embedded log directory,
/// stands by (logging that once) and tries again until it can take over; `None` on shutdown.
async fn open_sink(config: &Config, shutdown: &CancellationToken) -> Result<Option<AnySink>> {
    let metrics = crate::metrics::get();
    let mut standing_by = false;
    let opened = loop {
        match AnySink::open(&config.sink, &sink_context(config)).await {
            Ok(sink) => break Ok(Some(sink)),
            Err(err) if err.kind() == ErrorKind::Locked && config.sink.kind == SinkKind::Log => {
                if !standing_by {
                    standing_by = true;
                    metrics.waiting_for_log.store(true, Ordering::Relaxed);
                    tracing::info!(dir = %config.sink.log.dir.display(),
                        "another relay writes this embedded log; standing by until it stops");
                }
            }
            Err(err) => break Err(err),
        }
        if !sleep_or_shutdown(LOG_LOCK_RETRY, shutdown).await {
            break Ok(None);
        }
    };
    if standing_by && matches!(opened, Ok(Some(_))) {
        tracing::info!(dir = %config.sink.log.dir.display(), "took over the embedded log");
    }
    metrics.waiting_for_log.store(false, Ordering::Relaxed);
    opened
}

/// Relays from `source` to `sink` with the helper tasks until shutdown or a fatal error.
async fn relay(
    config: &Config,
    origin: &str,
    source: &mut AnySource,
    sink: AnySink,
    shutdown: &CancellationToken,
) -> Result<()> {
    crate::metrics::get().sink_up.set(1);
    // Logical mode never marks rows sent, so neither cleanup nor the pending count apply.
    let polling = config.source.mode == SourceMode::Poll;
    let cleanup = (polling
        && config.source.on_sent == crate::config::OnSent::Mark
        && config.source.retention_ms > 0)
        .then(|| crate::outbox::cleanup::spawn(config.source.clone(), shutdown.clone()));
    let sink_name = crate::sink::Sink::name(&sink);
    let sampler = polling.then(|| {
        crate::outbox::stats::spawn_sampler(
            config.source.clone(),
            std::time::Duration::from_millis(config.relay.stats_interval_ms),
            shutdown.clone(),
            sink_name,
        )
    });
    started(config, origin, sink_name);
    let result = crate::relay::run(source, sink, &config.relay, shutdown.clone()).await;
    shutdown.cancel();
    if let Some(sampler) = sampler {
        let _ = sampler.await;
    }
    if let Some(cleanup) = cleanup {
        let _ = cleanup.await;
    }
    result
}

/// Logs what this relay uses, so an operator can check it at a glance: the configuration's
/// origin, the database (password masked), table, capture mode, sink and, for the embedded log,
/// its directory as an absolute path.
fn started(config: &Config, origin: &str, sink: &str) {
    let database = config.source.url.masked();
    let table = OutboxTable::new(&config.source).qualified;
    let mode = config.source.mode.name();
    if config.sink.kind == crate::config::SinkKind::Log {
        let dir = &config.sink.log.dir;
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
        let log_dir = dir.display().to_string();
        tracing::info!(config = origin, %database, %table, mode, sink, %log_dir, "outboxd started");
    } else {
        tracing::info!(
            config = origin,
            %database,
            %table,
            mode,
            sink,
            "outboxd started"
        );
    }
}

/// Most events stored in the sink but not yet acknowledged: a batch per lane, one more
/// fetched ahead (see `relay::run`), and the batches whose acknowledgement may still be under
/// way in the background (polling mode).
pub fn in_flight(config: &Config) -> usize {
    let batches = config.relay.lanes.max(1) + 1 + crate::source::ACKS_UNDER_WAY;
    config.source.batch_size * batches
}

/// What the sink is told when it opens: how much can be in flight, and the outbox table its
/// templates' `{schema}` and `{table}` stand for.
pub fn sink_context(config: &Config) -> SinkContext {
    SinkContext {
        in_flight: in_flight(config),
        outbox: TableName::new(&config.source.table.schema, &config.source.table.name),
    }
}

/// Applies pending migrations and reports what was done.
pub async fn migrate(config: &Config) -> Result<()> {
    let table = OutboxTable::new(&config.source);
    let mut session = crate::pg::connect(&config.source).await?;
    // Change data capture alone has no outbox table.
    if config.source.mode.uses_outbox() {
        let applied = crate::outbox::migrate::migrate(session.exclusive()?, &table).await?;
        if applied.is_empty() {
            tracing::info!(table = %table.qualified, "schema up to date");
        } else {
            tracing::info!(table = %table.qualified, versions = ?applied, "migrations applied");
        }
    }
    if config.source.mode.is_logical() {
        crate::source::logical::slot::prepare(&session.client, &config.source).await?;
        // A stream is read once: what the sink refuses is kept in the dead-letter store.
        crate::dlq::Store::new(&config.source)
            .create(&session.client, &config.source.table.schema)
            .await?;
        // What brokers took past the slot's confirmed position, so a crash repeats less.
        crate::source::logical::marks::create(&session.client, &config.source).await?;
    }
    if config.source.mode.is_logical() && !config.source.cdc.tables.is_empty() {
        // Snapshot progress and backfill requests (see README, "Snapshots and backfills").
        let schema = &config.source.table.schema;
        crate::source::logical::snapshot::store::create_table(&session.client, schema).await?;
    }
    Ok(())
}
