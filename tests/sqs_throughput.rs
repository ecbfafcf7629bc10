//! For reference only, not a check: how fast the SQS sink publishes to the `moto` emulator
//! (docs/BENCHMARKS.md). Ignored by default; run with
//! `cargo test --test sqs_throughput -- --ignored --nocapture`.

mod common;
use common::aws::*;
use outboxd::event::Event;
use outboxd::sink::{AnySink, Sink, SinkConfig, SinkContext};
use std::time::Instant;

/// Publishes five batches of 100 events (20 keys) to one standard queue and prints the time of
/// each; the queue is not read meanwhile, so the later batches show moto slowing down as the
/// queue fills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark for reference; run with --ignored"]
async fn five_batches_of_100_events_to_one_queue() {
    let moto = moto().unwrap();
    let clients = Clients::new(&moto);
    let url = clients.create_queue("probe").await;
    let mut config = outboxd::config::Config::default();
    configure_sqs(&mut config, &moto.endpoint(), &url);
    let sink_config: SinkConfig = config.sink.clone();
    let mut sink = AnySink::open(&sink_config, &SinkContext::default())
        .await
        .unwrap();
    let events: Vec<Event> = (0..100)
        .map(|i| serde_json::from_value(serde_json::json!({
            "id": format!("id-{i}"), "aggregatetype": "order", "aggregateid": format!("{}", i % 20),
            "type": "Step", "payload": {"seq": i}, "created_at": "2023-11-14T22:13:20Z", "position": i
        })).unwrap())
        .collect();
    for round in 0..5 {
        let t = Instant::now();
        let out = sink.publish(&events).await.unwrap();
        println!(
            "round {round}: {} events in {:?}: {:?}",
            out.len(),
            t.elapsed(),
            &out[..2]
        );
    }
}
