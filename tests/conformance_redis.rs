//! The sink conformance suite (tests/common/conformance.rs) against Redis Streams: the real
//! server at 127.0.0.1:6379, reached through a TCP proxy the outage cuts, each test with
//! stream keys of its own. Backpressure needs a server-wide setting (`maxmemory`), so that
//! scenario runs on a private `redis-server`. Without a server the tests are skipped, except
//! under `CI=true`.

mod common;

use common::conformance::{Delivered, DeliveredChange, Refusal, SinkUnderTest, total};
use common::proxy::Proxy;
use common::redis::{
    PrivateRedis, REDIS_ADDR, config_set, configure, connect, read_stream, redis_server,
    unique_prefix,
};
use outboxd::config::{Config, DbUrl};
use std::sync::OnceLock;

/// Stream keys `<prefix>:{aggregatetype}:{type}` on the shared server, through a proxy.
struct RedisSink {
    /// The keys' prefix.
    prefix: String,
    /// Between the relay and the shared server.
    proxy: Proxy,
    /// The private server of the backpressure scenario, once started.
    private: OnceLock<PrivateRedis>,
}

/// The event type whose stream key holds a string, so its `XADD` is refused.
const WRONG_TYPE: &str = "Wrong";

impl RedisSink {
    /// The stream every scenario's small events land in (aggregate type `order`, type `Step`).
    fn key(&self) -> String {
        format!("{}:order:Step", self.prefix)
    }

    /// The server the relay writes to: the private one once started, else the shared one.
    fn server(&self) -> String {
        self.private
            .get()
            .map_or(REDIS_ADDR.to_string(), |private| private.addr.clone())
    }
}

impl SinkUnderTest for RedisSink {
    // At-least-once: entries get Redis's own ids, so a batch appended again after a lost
    // answer or a SIGKILL is appended twice.
    const EXACTLY_ONCE: bool = false;

    async fn setup() -> Option<Self> {
        let mut shared = redis_server().await?;
        let prefix = unique_prefix();
        let _: () = redis::cmd("SET")
            .arg(format!("{prefix}:order:{WRONG_TYPE}"))
            .arg("not a stream")
            .query_async(&mut shared)
            .await
            .expect("SET");
        Some(RedisSink {
            prefix,
            proxy: Proxy::start(REDIS_ADDR.parse().unwrap()),
            private: OnceLock::new(),
        })
    }

    fn configure(&self, config: &mut Config) {
        let template = format!("{}:{{aggregatetype}}:{{type}}", self.prefix);
        configure(config, &self.proxy.addr.to_string(), &template);
    }

    async fn delivered(&mut self) -> Vec<Delivered> {
        let mut connection = connect(&self.server()).await.expect("connect");
        read_stream(&mut connection, &self.key())
            .await
            .iter()
            .map(|entry| Delivered {
                id: entry.field("id").expect("id field").to_string(),
                key: entry.field("key").expect("key field").to_string(),
                seq: entry.seq(),
                stream: 0,
            })
            .collect()
    }

    /// One stream key per table, `<prefix>:<schema>.<table>`: the default template's `{type}`
    /// (the operation) would split a key's events over three streams with no order between.
    async fn prepare_changes(&mut self, config: &mut Config, _table: &str) -> bool {
        let template = format!("{}:{{aggregatetype}}", self.prefix);
        configure(config, &self.proxy.addr.to_string(), &template);
        true
    }

    async fn delivered_changes(&mut self, table: &str) -> Vec<DeliveredChange> {
        let mut connection = connect(&self.server()).await.expect("connect");
        read_stream(&mut connection, &format!("{}:{table}", self.prefix))
            .await
            .iter()
            .map(|entry| DeliveredChange {
                id: entry.field("id").expect("id field").to_string(),
                key: entry.field("key").expect("key field").to_string(),
                payload: serde_json::from_str(entry.field("payload").expect("payload"))
                    .expect("JSON payload"),
                stream: 0,
            })
            .collect()
    }

    async fn prepare_outage(&mut self, _config: &mut Config) -> bool {
        true
    }

    /// Every connection through the proxy is closed and new ones are refused, as when the
    /// network to the server fails (the shared server keeps running for other tests).
    async fn outage(&mut self, down: bool) {
        if down {
            self.proxy.cut().await;
        } else {
            self.proxy.restore();
        }
    }

    /// An event whose stream key holds a string: Redis answers WRONGTYPE, for good.
    fn refusal(&self, _config: &mut Config) -> Refusal {
        Refusal {
            event_type: WRONG_TYPE.into(),
            pad: 0,
            reason: "WRONGTYPE",
        }
    }

    /// A private server (its `maxmemory` is the lever), the relay pointed at it directly.
    fn prepare_backpressure(&self, config: &mut Config) -> Option<()> {
        let private = self.private.get_or_init(|| PrivateRedis::start(&[]));
        config.sink.redis.url = DbUrl::new(format!("redis://{}", private.addr));
        Some(())
    }

    /// `maxmemory 1` (with the default `noeviction` policy every XADD is answered OOM), or
    /// no limit.
    async fn backpressure(&mut self, on: bool) {
        let mut connection = connect(&self.server()).await.expect("connect");
        config_set(&mut connection, "maxmemory", if on { "1" } else { "0" }).await;
    }

    /// Each key's first pending event is retried after an OOM, the later ones wait, so more
    /// than three push-backs per key mean some event was pushed back three times: past
    /// `relay.max_attempts` (2) had they counted as failed attempts.
    fn held_back(&self, metrics: &str, aggregates: usize) -> bool {
        total(metrics, "outboxd_publish_busy_total") > (3 * aggregates) as f64
    }

    async fn teardown(self) {
        if let Ok(mut connection) = connect(REDIS_ADDR).await {
            let _: redis::RedisResult<()> = redis::cmd("DEL")
                .arg(self.key())
                .arg(format!("{}:order:{WRONG_TYPE}", self.prefix))
                .query_async(&mut connection)
                .await;
        }
    }
}

common::conformance::suite!(RedisSink);
