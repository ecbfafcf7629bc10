//! Redis Streams as a sink: one `XADD` per event to a stream key from a template; an event
//! counts as delivered once Redis answered its `XADD` with the entry's id.
//!
//! Redis answers before its own fsync unless it runs with `appendonly yes` and `appendfsync
//! always`; the settings are read at start-up and a warning names them when an acknowledged
//! entry could be lost by a Redis crash. Entries get Redis's own ids (`*`): ids derived from
//! the source position would make a stream refuse entries that parallel lanes append out of
//! position order, so a batch sent again after a relay crash is appended again (at-least-once;
//! consumers deduplicate by the `id` field).
//!
//! A batch is sent in rounds, each a pipeline holding the next event of every key: an `XADD`
//! that fails never has a later event of its key behind it in the same pipeline, so nothing
//! overtakes it. `OOM` and the server's other "not now" answers push back (busy); a key that
//! holds another type refuses the event (a dead letter naming the key); `READONLY` (a replica),
//! a timeout or a lost connection fail the batch, retryably, and the connection is opened anew.

mod config;
mod connection;
mod entry;

pub use self::config::RedisSinkConfig;

use super::{OpenSink, Outcome, Sink, SinkContext};
use crate::error::{Error, ErrorKind, Result};
use crate::event::{Event, TableName};
use crate::sink::template::{ALL_FIELDS, Template};
use redis::aio::MultiplexedConnection;
use redis::{Client, RedisError};
use std::collections::HashSet;
use std::time::Duration;

/// Appends events to Redis streams.
pub struct RedisSink {
    /// The sink's settings.
    config: RedisSinkConfig,
    /// The parsed stream key template.
    stream: Template,
    /// The outbox table (`{schema}`, `{table}` and the change fields of its events).
    outbox: TableName,
    /// The client connections are opened from.
    client: Client,
    /// The open connection (shared by forks until one of them fails); `None` after a failure
    /// until the next publish or probe reconnects.
    connection: Option<MultiplexedConnection>,
    /// How long a reply may take.
    response_timeout: Duration,
    /// Whether the last batch or probe went through.
    healthy: bool,
}

impl OpenSink for RedisSink {
    type Config = RedisSinkConfig;

    async fn open(config: &RedisSinkConfig, context: &SinkContext) -> Result<Self> {
        RedisSink::open(config, context).await
    }

    fn validate(config: &RedisSinkConfig) -> Result<()> {
        config.validate()
    }
}

impl RedisSink {
    /// Connects and reads the persistence settings, warning once when an acknowledged entry
    /// could be lost by a Redis crash. Failing to connect here is final, so a misconfigured
    /// relay says so at once instead of retrying.
    pub async fn open(config: &RedisSinkConfig, context: &SinkContext) -> Result<Self> {
        let stream = Template::parse(&config.stream, ALL_FIELDS)
            .map_err(|reason| Error::config("sink.redis.stream", reason))?
            .for_outbox(&context.outbox);
        let client = connection::client(config)?;
        let response_timeout = Duration::from_millis(config.response_timeout_ms);
        let mut link = connection::connect(&client, config, response_timeout)
            .await
            .map_err(|err| Error::new(ErrorKind::Config, err.chain()))?;
        let persistence = connection::persistence(&mut link).await;
        if !persistence.durable() {
            tracing::warn!(
                appendonly = %persistence.appendonly,
                appendfsync = %persistence.appendfsync,
                "Redis acknowledges XADD before the entry is fsynced: a Redis crash can lose \
                 acknowledged events (run Redis with appendonly yes and appendfsync always)"
            );
        }
        tracing::info!(url = %config.url, stream = %config.stream, "connected to Redis");
        Ok(RedisSink {
            config: config.clone(),
            stream,
            outbox: context.outbox.clone(),
            client,
            connection: Some(link),
            response_timeout,
            healthy: true,
        })
    }

    /// The open connection, reconnecting first if the last one failed.
    async fn connection(&mut self) -> Result<MultiplexedConnection> {
        if let Some(link) = &self.connection {
            return Ok(link.clone());
        }
        let link = connection::connect(&self.client, &self.config, self.response_timeout).await?;
        tracing::info!(url = %self.config.url, "reconnected to Redis");
        self.connection = Some(link.clone());
        Ok(link)
    }

    /// Appends `events` in rounds (the next event of every key per round, one pipeline each).
    async fn publish_batch(&mut self, events: &[Event]) -> Result<Vec<Outcome>> {
        let mut link = self.connection().await?;
        let mut outcomes: Vec<Option<Outcome>> = vec![None; events.len()];
        let mut stopped: HashSet<&str> = HashSet::new();
        let mut pending: Vec<usize> = (0..events.len()).collect();
        while !pending.is_empty() {
            let mut round = Vec::new();
            let mut later = Vec::new();
            let mut keys: HashSet<&str> = HashSet::new();
            for index in pending {
                let key = events[index].key.as_str();
                if stopped.contains(key) {
                    outcomes[index] = Some(Outcome::Deferred);
                } else if keys.insert(key) {
                    round.push(index);
                } else {
                    later.push(index);
                }
            }
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            let mut sent = Vec::new();
            for index in round {
                let event = &events[index];
                match entry::fields(event, &self.outbox) {
                    Ok(fields) => {
                        let command = pipe.cmd("XADD").arg(self.stream.render(event));
                        if let Some(maxlen) = self.config.maxlen {
                            command.arg("MAXLEN").arg("~").arg(maxlen);
                        }
                        command.arg("*");
                        for (name, value) in &fields {
                            command.arg(*name).arg(value.as_ref());
                        }
                        sent.push(index);
                    }
                    Err(reason) => {
                        stopped.insert(event.key.as_str());
                        outcomes[index] = Some(Outcome::Refused(reason));
                    }
                }
            }
            if !sent.is_empty() {
                let replies: Vec<redis::RedisResult<redis::Value>> = pipe
                    .query_async(&mut link)
                    .await
                    .map_err(|err| self.unavailable("appending to Redis streams", err))?;
                for (index, reply) in sent.into_iter().zip(replies) {
                    let outcome = match reply {
                        Ok(_) => Outcome::Delivered,
                        Err(err) => self.refusal(&self.stream.render(&events[index]), err)?,
                    };
                    if outcome != Outcome::Delivered {
                        stopped.insert(events[index].key.as_str());
                    }
                    outcomes[index] = Some(outcome);
                }
            }
            pending = later;
        }
        outcomes
            .into_iter()
            .map(|outcome| {
                outcome.ok_or_else(|| Error::new(ErrorKind::Internal, "event left unanswered"))
            })
            .collect()
    }

    /// What an `XADD`'s error answer means for its event; an error fails the batch.
    fn refusal(&self, stream: &str, err: RedisError) -> Result<Outcome> {
        let detail = err.detail().unwrap_or("").to_string();
        let code = err.code().unwrap_or("").to_string();
        Ok(match code.as_str() {
            "WRONGTYPE" => Outcome::Refused(format!(
                "Redis key \"{stream}\" holds a value that is not a stream (WRONGTYPE {detail})"
            )),
            "OOM" => Outcome::Busy(format!(
                "Redis is out of memory (maxmemory) and refuses writes: OOM {detail}"
            )),
            "LOADING" | "BUSY" | "TRYAGAIN" | "MISCONF" | "MASTERDOWN" | "CLUSTERDOWN" => {
                Outcome::Busy(format!("Redis cannot take writes now: {code} {detail}"))
            }
            "READONLY" => {
                return Err(self.unavailable(
                    &format!("Redis at {} is a read-only replica", self.config.url),
                    err,
                ));
            }
            "" => return Err(self.unavailable("appending to a Redis stream", err)),
            _ => Outcome::Retry(format!(
                "Redis refused XADD to \"{stream}\": {code} {detail}"
            )),
        })
    }

    /// A retryable error with `context`.
    fn unavailable(&self, context: &str, err: RedisError) -> Error {
        Error::with_source(ErrorKind::SinkUnavailable, context.to_string(), err)
    }
}

impl Sink for RedisSink {
    async fn publish(&mut self, events: &[Event]) -> Result<Vec<Outcome>> {
        let result = self.publish_batch(events).await;
        self.healthy = result.is_ok();
        if result.is_err() {
            // Replies still owed on this connection cannot be matched any more, and a
            // READONLY answer means the server behind the address changed: start afresh.
            self.connection = None;
        }
        result
    }

    /// Shares the connection (Redis pipelines every handle's commands on one socket); a handle
    /// whose batch fails opens a connection of its own.
    async fn fork(&self) -> Result<Self> {
        Ok(RedisSink {
            config: self.config.clone(),
            stream: self.stream.clone(),
            outbox: self.outbox.clone(),
            client: self.client.clone(),
            connection: self.connection.clone(),
            response_timeout: self.response_timeout,
            healthy: self.healthy,
        })
    }

    /// A handle on the same connection appending to the `destination` stream-key template.
    async fn redirect(&self, destination: &str) -> Result<Self> {
        let stream = Template::parse(destination, ALL_FIELDS)
            .map_err(|reason| Error::config(super::DEAD_LETTER_KEY, reason))?
            .for_outbox(self.stream.outbox());
        let mut sink = self.fork().await?;
        sink.stream = stream;
        Ok(sink)
    }

    fn name(&self) -> &'static str {
        "redis"
    }

    /// Whether a connection is open and the last batch or probe went through; reads cached
    /// state only.
    fn is_healthy(&self) -> bool {
        self.healthy && self.connection.is_some()
    }

    /// `PING`, reconnecting first if needed (bounded by the response timeout).
    async fn probe(&mut self) -> bool {
        let timeout = self.response_timeout;
        let ping = async {
            let mut link = self.connection().await.ok()?;
            redis::cmd("PING")
                .query_async::<String>(&mut link)
                .await
                .ok()
        };
        let ok = matches!(tokio::time::timeout(timeout, ping).await, Ok(Some(_)));
        if !ok {
            self.connection = None;
        }
        self.healthy = ok;
        ok
    }
}
