//! Commit → sink-confirmed latency at a fixed insert rate (`bench/run.sh` runs it).
//!
//! One process runs both sides, so both ends of every measurement come from the same monotonic
//! clock:
//! - the relay, exactly as `outboxd run` builds it (source and sink from the `OUTBOXD_*`
//!   environment, `outboxd::relay::run`), with its sink wrapped so that the moment `publish`
//!   returns (for the embedded log: written and fsynced) is noted for every delivered event id;
//! - writers on `CONNECTIONS` connections inserting one row per transaction (autocommit) on a
//!   fixed schedule, event `i` due at `start + i / RATE`, noting when each `INSERT … RETURNING
//!   id` returned, i.e. when the commit was acknowledged to the client.
//!
//! Latency = confirmed − commit acknowledged, per event, nanosecond clock. It slightly
//! understates the true commit → confirmed time by the commit reply's trip to the client
//! (loopback, tens of µs). Prints p50/p90/p99/p99.9/max and how far the writers fell behind
//! their schedule (a writer that fell behind would hide latency).
//!
//! Usage: `bench_latency` with env `RATE` (events/s, default 1000), `SECONDS` (default 30),
//! `WARMUP_SECONDS` (events of the first seconds are not counted, default 2), `CONNECTIONS`
//! (default 8), `AGGS` (default 10000), and the relay's own `OUTBOXD_*` configuration.

use outboxd::config::Config;
use outboxd::error::Result;
use outboxd::event::Event;
use outboxd::sink::{AnySink, Outcome, Sink};
use outboxd::source::AnySource;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// When each delivered event id was confirmed.
type Confirmed = Arc<Mutex<HashMap<String, Instant>>>;

/// The configured sink, noting when `publish` returned for each delivered event.
struct TimedSink {
    /// The real sink.
    inner: AnySink,
    /// Where confirmation times go.
    confirmed: Confirmed,
}

impl Sink for TimedSink {
    async fn publish(&mut self, events: &[Event]) -> Result<Vec<Outcome>> {
        let outcomes = self.inner.publish(events).await?;
        let now = Instant::now();
        let mut confirmed = self.confirmed.lock().expect("lock");
        for (event, outcome) in events.iter().zip(&outcomes) {
            if *outcome == Outcome::Delivered {
                confirmed.entry(event.id.clone()).or_insert(now);
            }
        }
        Ok(outcomes)
    }

    fn already_delivered(&mut self) -> Vec<outboxd::event::Stored> {
        self.inner.already_delivered()
    }

    async fn fork(&self) -> Result<Self> {
        Ok(TimedSink {
            inner: self.inner.fork().await?,
            confirmed: self.confirmed.clone(),
        })
    }

    fn max_lanes(&self) -> usize {
        self.inner.max_lanes()
    }

    fn name(&self) -> &'static str {
        self.inner.name()
    }
}

/// An integer from the environment, or `default`.
fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let rate = env("RATE", 1000);
    let seconds = env("SECONDS", 30);
    let warmup = env("WARMUP_SECONDS", 2);
    let connections = env("CONNECTIONS", 8);
    let aggs = env("AGGS", 10_000);
    let config: Config = outboxd::config::load(Some(Path::new("/dev/null"))).expect("config");

    let confirmed: Confirmed = Arc::default();
    let shutdown = CancellationToken::new();
    let mut source = AnySource::start(&config.source, &config.relay)
        .await
        .expect("source");
    let inner = AnySink::open(&config.sink, &outboxd::cli::run::sink_context(&config))
        .await
        .expect("sink");
    let sink = TimedSink {
        inner,
        confirmed: confirmed.clone(),
    };
    let relay_config = config.relay.clone();
    let relay_shutdown = shutdown.clone();
    let relay = tokio::spawn(async move {
        outboxd::relay::run(&mut source, sink, &relay_config, relay_shutdown).await
    });
    // Let the relay settle (first fetch, stream start) before the clock starts.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let total = rate * seconds;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now() + Duration::from_millis(100);
    let url = config.source.url.expose().to_string();
    let mut writers = Vec::new();
    for writer in 0..connections {
        let url = url.clone();
        writers.push(tokio::spawn(async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("connect");
            tokio::spawn(connection);
            let insert = client
                .prepare(
                    "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) \
                     VALUES ('order', $1, 'Step', jsonb_build_object('seq', $2::bigint, \
                     'pad', repeat('x', 270))) RETURNING id::text",
                )
                .await
                .expect("prepare");
            let mut commits = Vec::new();
            let mut behind = Duration::ZERO;
            let mut i = writer;
            while i < total {
                let due = start + interval * i as u32;
                let now = Instant::now();
                if now < due {
                    tokio::time::sleep_until(due.into()).await;
                } else {
                    behind = behind.max(now - due);
                }
                let aggregate = (i % aggs).to_string();
                let row = client
                    .query_one(&insert, &[&aggregate, &(i as i64)])
                    .await
                    .expect("insert");
                let committed = Instant::now();
                let id: String = row.get(0);
                commits.push((i, id, committed));
                i += connections;
            }
            (commits, behind)
        }));
    }
    let mut commits = Vec::new();
    let mut behind = Duration::ZERO;
    for writer in writers {
        let (mut part, late) = writer.await.expect("writer");
        commits.append(&mut part);
        behind = behind.max(late);
    }
    let inserted = Instant::now();
    // Wait for the last events (at most 30 s).
    loop {
        let done = {
            let confirmed = confirmed.lock().expect("lock");
            commits.iter().all(|(_, id, _)| confirmed.contains_key(id))
        };
        if done || inserted.elapsed() > Duration::from_secs(30) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.cancel();
    relay.await.expect("relay task").expect("relay");

    let confirmed = confirmed.lock().expect("lock");
    let skip = rate * warmup;
    let mut latencies: Vec<Duration> = Vec::new();
    let mut missing = 0;
    for (i, id, committed) in &commits {
        if *i < skip {
            continue;
        }
        match confirmed.get(id) {
            Some(at) => latencies.push(at.saturating_duration_since(*committed)),
            None => missing += 1,
        }
    }
    latencies.sort();
    let pick = |q: f64| {
        let index = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len());
        latencies[index - 1].as_secs_f64() * 1000.0
    };
    let elapsed = inserted - start;
    println!("mode:        {:?}", config.source.mode);
    println!(
        "events:      {} at {rate}/s for {seconds} s ({} counted after {warmup} s warm-up), \
         achieved {:.0}/s",
        commits.len(),
        latencies.len(),
        commits.len() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "writers:     {connections} connections, at most {:.1} ms behind schedule",
        behind.as_secs_f64() * 1000.0
    );
    println!("unconfirmed: {missing}");
    if latencies.is_empty() {
        return;
    }
    println!(
        "latency ms:  p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
        pick(0.50),
        pick(0.90),
        pick(0.99),
        pick(0.999),
        pick(1.0)
    );
    // One machine-readable line for bench/run.sh.
    println!(
        "RESULT p50={:.2} p99={:.2} max={:.2} missing={missing} behind_ms={:.1}",
        pick(0.50),
        pick(0.99),
        pick(1.0),
        behind.as_secs_f64() * 1000.0
    );
}
