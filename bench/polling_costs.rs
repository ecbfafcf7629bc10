//! What the polling relay's periodic statements cost as the table grows (issue #18, item 8):
//! one cleanup round when nothing has expired, one fetch while many rows wait behind a dead
//! letter, and one stats sample over a large backlog. Each should cost what it does, not what
//! the table holds.
//!
//! Creates a database of its own on `BENCH_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), migrates an outbox there, fills it and times
//! each statement `ROUNDS` times (median and max, milliseconds), then drops the database.
//!
//! Usage: `cargo run --release --example bench_polling_costs` with env `KEPT` (sent rows kept,
//! not yet expired; default 1200000), `PARKED` (pending rows behind one dead letter of their
//! aggregate; default 200000), `BACKLOG` (further pending rows for the stats sample; default
//! 1000000), `ROUNDS` (default 20); `KEEP=1` keeps the database (to EXPLAIN what was timed).

use outboxd::config::{Config, DbUrl};
use outboxd::outbox::{OutboxTable, blocked};
use std::time::{Duration, Instant};

/// An environment variable as a number, or `default`.
fn env(name: &str, default: i64) -> i64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Vacuums and analyzes the outbox after a fill, as autovacuum would before long, so the
/// planner sees the table as it is and index-only scans are possible.
async fn vacuum(client: &tokio_postgres::Client) {
    client
        .batch_execute("VACUUM ANALYZE outbox")
        .await
        .expect("vacuum");
}

/// Runs `f` `rounds` times; prints and returns the median in milliseconds.
async fn time<F, Fut>(what: &str, rounds: usize, mut f: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut times: Vec<Duration> = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        f().await;
        times.push(start.elapsed());
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = ms(times[times.len() / 2]);
    println!(
        "{what}: median {median:.2} ms, max {:.2} ms ({rounds} rounds)",
        ms(times[times.len() - 1])
    );
    median
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let (kept, parked, backlog) = (
        env("KEPT", 1_200_000),
        env("PARKED", 200_000),
        env("BACKLOG", 1_000_000),
    );
    let rounds = env("ROUNDS", 20) as usize;
    let admin_url = std::env::var("BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("outboxd_bench_polling_{}", std::process::id());
    let mut config = Config::default();
    config.source.url = DbUrl::new(admin_url.clone());
    let admin = outboxd::pg::connect(&config.source).await.expect("connect");
    admin
        .client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    let url = match admin_url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("BENCH_DATABASE_URL must be a postgres:// URL with a database"),
    };
    config.source.url = DbUrl::new(url);
    let source = config.source.clone();
    let table = OutboxTable::new(&source);
    let mut session = outboxd::pg::connect(&source).await.expect("connect");
    outboxd::outbox::migrate::migrate(session.exclusive().expect("unshared"), &table)
        .await
        .expect("migrate");
    let client = &session.client;
    let insert = |rows: i64, aggregate: &str, sent: bool, failed: bool| {
        format!(
            "INSERT INTO outbox (aggregatetype, aggregateid, type, payload, sent_at, failed_at) \
             SELECT 'order', {aggregate}, 'E', '{{}}', {}, {} FROM generate_series(1, {rows}) i",
            if sent { "now()" } else { "NULL" },
            if failed { "now()" } else { "NULL" },
        )
    };

    // 1. Cleanup with `kept` sent rows, none expired (7-day retention).
    println!("# {kept} sent rows kept, none expired");
    client
        .batch_execute(&insert(kept, "'k' || (i % 1000)", true, false))
        .await
        .expect("fill kept rows");
    vacuum(client).await;
    time("cleanup round (nothing expired)", rounds, || async {
        let deleted = outboxd::outbox::cleanup::delete_expired(&session, &table, &source)
            .await
            .expect("cleanup");
        assert_eq!(deleted, 0);
    })
    .await;

    // 2. A fetch (on_dead_letter = block_aggregate) with `parked` rows behind one dead letter,
    //    then 1,000 deliverable rows.
    println!("# {parked} pending rows parked behind one dead letter, then 1000 deliverable");
    client
        .batch_execute(&format!(
            "{}; {}; {}",
            insert(1, "'dead'", false, true),
            insert(parked, "'dead'", false, false),
            insert(1000, "'ok' || i", false, false),
        ))
        .await
        .expect("fill parked rows");
    vacuum(client).await;
    let (limit, excluded) = (1000i64, Vec::<String>::new());
    let (max_event, max_batch) = (source.max_event_bytes as i64, source.max_batch_bytes as i64);
    // As the relay does: release rows behind released dead letters, fetch, mark the rows found
    // blocked, and fetch again at once while a fetch returns only such rows. Returns the fetches run
    // and the deliverable rows of the last.
    let fetch = || async {
        let mut fetches = 0;
        loop {
            blocked::release(client, &table).await.expect("release");
            let rows = client
                .query(
                    &table.fetch_pending_blocking,
                    &[&limit, &excluded, &max_event, &max_batch],
                )
                .await
                .expect("fetch");
            fetches += 1;
            let found: Vec<(i64, i64)> = rows
                .iter()
                .filter_map(|row| Some((row.get(0), row.get::<_, Option<i64>>(11)?)))
                .collect();
            blocked::mark(client, &table, &found).await.expect("mark");
            let free = rows.len() - found.len();
            if free > 0 || rows.is_empty() {
                return (fetches, free);
            }
        }
    };
    // The first fetches after the dead letter walk and mark the rows behind it, once.
    let start = Instant::now();
    let (fetches, free) = fetch().await;
    println!(
        "first fetch, marking the blocked rows: {:.2} ms in {fetches} fetches",
        start.elapsed().as_secs_f64() * 1000.0
    );
    assert_eq!(free, 1000);
    time("fetch (block_aggregate)", rounds, || async {
        let (fetches, free) = fetch().await;
        assert_eq!((fetches, free), (1, 1000));
    })
    .await;

    // 3. A stats sample over the backlog.
    println!("# {} pending rows", parked + 1000 + backlog);
    client
        .batch_execute(&insert(backlog, "'b' || (i % 1000)", false, false))
        .await
        .expect("fill backlog");
    vacuum(client).await;
    time("stats sample", rounds, || async {
        outboxd::outbox::stats::sample(client, &table, false)
            .await
            .expect("sample");
    })
    .await;

    drop(session);
    if std::env::var_os("KEEP").is_some() {
        println!("kept database {name}");
        return;
    }
    let _ = admin
        .client
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await;
}
