//! NATS JetStream for `bench/run.sh` (see the commands in bench/broker.rs).

use async_nats::jetstream::{self, Context, stream};
use std::time::{Duration, Instant};

/// Runs `work` with a JetStream context on `url`.
pub fn with_jetstream<F, Fut>(url: &str, work: F)
where
    F: FnOnce(Context) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let client = async_nats::connect(url).await.expect("connect to NATS");
        work(jetstream::new(client)).await;
    });
}

/// How many messages `stream` holds.
pub async fn count(js: Context, name: &str) {
    let mut stream = js.get_stream(name).await.expect("stream");
    println!("{}", stream.info().await.expect("info").state.messages);
}

/// JetStream's own rate: `messages` messages shaped as the relay's (a ~300-byte body, a
/// `Nats-Msg-Id` and the five headers outboxd sends: `id`, `type`, `aggregatetype`,
/// `aggregateid`, `position`), each acknowledged, from one connection with up to 1,000
/// unacknowledged at once (what one relay does at most), into a fresh file stream; prints
/// `messages/s`.
pub async fn ceiling(js: Context, messages: usize) {
    let name = format!("BENCH_CEILING_{}", std::process::id());
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![format!("{name}.>")],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .expect("create stream");
    let payload = bytes::Bytes::from(format!(r#"{{"seq":1,"pad":"{}"}}"#, "x".repeat(270)));
    let subject = format!("{name}.order.Step");
    let started = Instant::now();
    let mut pending = std::collections::VecDeque::new();
    for i in 0..messages {
        if pending.len() >= 1000 {
            let ack: jetstream::context::PublishAckFuture = pending.pop_front().unwrap();
            ack.await.expect("ack");
        }
        let id = format!("{:08x}-0000-4000-8000-{i:012x}", std::process::id());
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        headers.insert("id", id.as_str());
        headers.insert("type", "Step");
        headers.insert("aggregatetype", "order");
        headers.insert("aggregateid", (i % 10_000).to_string().as_str());
        headers.insert("position", (i + 1).to_string().as_str());
        let ack = js
            .publish_with_headers(subject.clone(), headers, payload.clone())
            .await
            .expect("publish");
        pending.push_back(ack);
    }
    for ack in pending {
        ack.await.expect("ack");
    }
    let rate = messages as f64 / started.elapsed().as_secs_f64();
    js.delete_stream(&name).await.expect("delete stream");
    println!("{}", rate as u64);
    tokio::time::sleep(Duration::from_millis(10)).await;
}
