use super::*;
use crate::log::testing::append_range;
use crate::log::{Durability, LogWriter, Syncer};
use futures_util::FutureExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A writer in `durability` mode on a fresh directory.
fn writer(dir: &Path, durability: Durability) -> LogWriter {
    let options = WriterOptions {
        durability,
        ..WriterOptions::DEFAULT
    };
    LogWriter::open(dir, options).unwrap()
}

/// Offsets of `records`.
fn offsets(records: &[Record]) -> Vec<u64> {
    records.iter().map(|record| record.offset).collect()
}

#[tokio::test]
async fn a_waiting_follower_wakes_when_an_append_is_durable_in_batch_and_none_modes() {
    for durability in [Durability::Batch, Durability::None] {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = writer(dir.path(), durability);
        let mut consumer = Consumer::open(dir.path(), Start::Offset(0)).unwrap();
        assert!(consumer.next().unwrap().is_none());
        {
            // Nothing new: the wait does not finish by itself (it is not a timer).
            let mut waiting = std::pin::pin!(consumer.wait());
            tokio::task::yield_now().await;
            assert!((&mut waiting).now_or_never().is_none(), "{durability:?}");
        }
        let waiter = tokio::spawn(async move {
            consumer.wait().await;
            consumer.next_batch(10).unwrap()
        });
        tokio::task::yield_now().await;
        append_range(&mut writer, 0..3, 10);
        let got = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("the follower woke")
            .unwrap();
        assert_eq!(offsets(&got), vec![0, 1, 2], "{durability:?}");
    }
}

#[tokio::test]
async fn in_interval_mode_a_record_is_handed_out_only_after_the_syncer_fsynced_it() {
    let dir = tempfile::tempdir().unwrap();
    let writer = Arc::new(Mutex::new(writer(dir.path(), Durability::Interval)));
    // An interval long enough that only the probe syncs during the test.
    let syncer = Syncer::start(writer.clone(), Duration::from_secs(3600)).unwrap();
    let mut consumer = Consumer::open(dir.path(), Start::Offset(0)).unwrap();
    append_range(&mut writer.lock().unwrap(), 0..2, 10);
    assert!(
        consumer.next().unwrap().is_none(),
        "written but not fsynced yet"
    );
    {
        let mut waiting = std::pin::pin!(consumer.wait());
        tokio::task::yield_now().await;
        assert!((&mut waiting).now_or_never().is_none());
    }
    let probe = syncer.probe();
    let waiter = tokio::spawn(async move {
        consumer.wait().await;
        consumer.next_batch(10).unwrap()
    });
    tokio::task::yield_now().await;
    tokio::task::spawn_blocking(move || probe.sync_now())
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the follower woke after the fsync")
        .unwrap();
    assert_eq!(offsets(&got), vec![0, 1]);
}

#[tokio::test]
async fn a_consumer_starts_at_an_offset_a_time_or_a_group_and_filters_by_topic() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = writer(dir.path(), Durability::Batch);
    append_range(&mut writer, 0..5, 10);
    let middle = Utc::now();
    append_range(&mut writer, 5..10, 10);

    let mut from_offset = Consumer::open(dir.path(), Start::Offset(7)).unwrap();
    assert_eq!(
        offsets(&from_offset.next_batch(100).unwrap()),
        vec![7, 8, 9]
    );

    let mut from_time = Consumer::open(dir.path(), Start::Time(middle)).unwrap();
    assert_eq!(
        offsets(&from_time.next_batch(100).unwrap()),
        vec![5, 6, 7, 8, 9]
    );

    let mut group = Consumer::open(dir.path(), Start::Group("billing".into())).unwrap();
    assert_eq!(offsets(&group.next_batch(4).unwrap()), vec![0, 1, 2, 3]);
    group.commit().unwrap();
    let mut resumed = Consumer::open(dir.path(), Start::Group("billing".into())).unwrap();
    assert_eq!(resumed.next().unwrap().unwrap().offset, 4);

    let mut none = Consumer::open(dir.path(), Start::Offset(0))
        .unwrap()
        .with_topic(Some("invoices".into()));
    assert!(none.next_batch(100).unwrap().is_empty());
    assert_eq!(
        none.position(),
        10,
        "skipped records still move the position"
    );
    let mut orders = Consumer::open(dir.path(), Start::Offset(0))
        .unwrap()
        .with_topic(Some("orders".into()));
    assert_eq!(orders.next_batch(100).unwrap().len(), 10);
}

#[tokio::test]
async fn without_a_writer_in_this_process_a_follower_finds_records_written_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    drop(writer(dir.path(), Durability::Batch));
    let mut consumer = Consumer::open(dir.path(), Start::Offset(0)).unwrap();
    // A writer elsewhere (here: opened and dropped around the append) announces nothing the
    // consumer could wait for, yet the record is found (the kernel reports the write; a
    // separate process is tested in tests/log_cli.rs).
    let waiter = tokio::spawn(async move {
        loop {
            if let Some(record) = consumer.next().unwrap() {
                return record.offset;
            }
            consumer.wait().await;
        }
    });
    let dir_path = dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let mut writer = writer(&dir_path, Durability::Batch);
        append_range(&mut writer, 0..1, 10);
    })
    .await
    .unwrap();
    let offset = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("found")
        .unwrap();
    assert_eq!(offset, 0);
}
