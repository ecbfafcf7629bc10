use super::*;
use crate::log::testing::append_range;
use crate::log::{LogWriter, WriterOptions};

/// A log of `n` events (keys `order-0` … `order-6`, by number modulo 7) in a fresh directory.
fn log_of(n: u64) -> (tempfile::TempDir, LogWriter) {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = LogWriter::open(dir.path(), WriterOptions::DEFAULT).unwrap();
    if n > 0 {
        append_range(&mut writer, 0..n, 10);
    }
    (dir, writer)
}

/// Offsets of `handed`.
fn offsets(handed: &[Handed]) -> Vec<u64> {
    handed.iter().map(|h| h.record.offset).collect()
}

/// Ack ids of `handed`.
fn ids(handed: &[Handed]) -> Vec<String> {
    handed.iter().map(|h| h.ack_id.clone()).collect()
}

const VISIBLE: Duration = Duration::from_secs(30);

#[test]
fn while_a_message_of_a_key_is_out_no_later_message_of_that_key_is_handed_out() {
    let (dir, _writer) = log_of(14);
    let mut queue = GroupQueue::open(dir.path(), "g", None, 100).unwrap();
    let now = Instant::now();
    let first = queue.receive(100, VISIBLE, now).unwrap();
    assert_eq!(offsets(&first), (0..7).collect::<Vec<_>>(), "one per key");
    assert!(queue.receive(100, VISIBLE, now).unwrap().is_empty());
    // Acking offset 3 (key order-3) frees offset 10, the next of that key, and only it.
    assert_eq!(queue.ack(&ids(&first[3..4])).unwrap(), 1);
    assert_eq!(
        offsets(&queue.receive(100, VISIBLE, now).unwrap()),
        vec![10]
    );
}

#[test]
fn a_message_not_acked_within_its_visibility_timeout_is_handed_out_again_and_a_stale_ack_is_ignored()
 {
    let (dir, _writer) = log_of(1);
    let mut queue = GroupQueue::open(dir.path(), "g", None, 100).unwrap();
    let now = Instant::now();
    let first = queue.receive(10, VISIBLE, now).unwrap();
    assert!(
        queue
            .receive(10, VISIBLE, now + VISIBLE / 2)
            .unwrap()
            .is_empty()
    );
    let again = queue.receive(10, VISIBLE, now + VISIBLE).unwrap();
    assert_eq!(offsets(&again), vec![0]);
    assert!(again[0].redelivered);
    assert_eq!(queue.redeliveries, 1);
    assert_eq!(queue.ack(&ids(&first)).unwrap(), 0, "that delivery is over");
    assert_eq!(queue.ack(&ids(&again)).unwrap(), 1);
    assert_eq!(queue.committed(), 1);
}

#[test]
fn a_nacked_message_comes_back_after_its_delay_and_keeps_its_key_blocked_until_then() {
    let (dir, _writer) = log_of(8);
    let mut queue = GroupQueue::open(dir.path(), "g", None, 100).unwrap();
    let now = Instant::now();
    let first = queue.receive(1, VISIBLE, now).unwrap();
    assert_eq!(offsets(&first), vec![0]);
    let delay = VISIBLE / 3;
    assert_eq!(queue.nack(&ids(&first), delay, now).unwrap(), 1);
    let others = queue.receive(100, VISIBLE, now).unwrap();
    assert_eq!(offsets(&others), (1..7).collect::<Vec<_>>(), "not 0, not 7");
    assert_eq!(queue.next_timer(), Some(now + delay));
    assert!(
        queue
            .receive(100, VISIBLE, now + delay / 2)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        offsets(&queue.receive(100, VISIBLE, now + delay).unwrap()),
        vec![0]
    );
}

#[test]
fn no_more_than_max_in_flight_messages_are_out_at_once() {
    let (dir, _writer) = log_of(20);
    let mut queue = GroupQueue::open(dir.path(), "g", None, 3).unwrap();
    let now = Instant::now();
    let out = queue.receive(100, VISIBLE, now).unwrap();
    assert_eq!(out.len(), 3);
    assert!(queue.receive(100, VISIBLE, now).unwrap().is_empty());
    queue.ack(&ids(&out[..1])).unwrap();
    assert_eq!(queue.receive(100, VISIBLE, now).unwrap().len(), 1);
}

#[test]
fn acks_out_of_order_survive_reopening_and_acked_messages_are_never_handed_out_again() {
    let (dir, _writer) = log_of(7);
    let now = Instant::now();
    {
        let mut queue = GroupQueue::open(dir.path(), "g", None, 100).unwrap();
        let out = queue.receive(100, VISIBLE, now).unwrap();
        // Ack 1, 2 and 5, not 0: the committed offset stays at 0.
        let acked: Vec<String> = [1, 2, 5].iter().map(|&i| out[i].ack_id.clone()).collect();
        assert_eq!(queue.ack(&acked).unwrap(), 3);
        assert_eq!(queue.committed(), 0);
    }
    let mut queue = GroupQueue::open(dir.path(), "g", None, 100).unwrap();
    let out = queue.receive(100, VISIBLE, now).unwrap();
    assert_eq!(offsets(&out), vec![0, 3, 4, 6]);
    queue.ack(&ids(&out)).unwrap();
    assert_eq!(queue.committed(), 7);
    let group = ConsumerGroup::open(dir.path(), "g").unwrap();
    assert_eq!(group.offset().unwrap(), Some(7), "log read --group sees it");
}

#[test]
fn after_a_restart_in_flight_messages_go_out_again_at_once_and_old_ack_ids_ack_nothing() {
    // Given a message handed out for an hour by a relay that then stops (timeouts are kept in
    // memory only).
    let (dir, _writer) = log_of(1);
    let now = Instant::now();
    let before = GroupQueue::open(dir.path(), "g", None, 100)
        .unwrap()
        .receive(100, Duration::from_secs(3600), now)
        .unwrap();
    // When the relay starts again, then the message goes out again at once (at least once).
    let mut queue = GroupQueue::open(dir.path(), "g", None, 100).unwrap();
    let after = queue.receive(100, VISIBLE, now).unwrap();
    assert_eq!(offsets(&after), vec![0]);
    // And the old consumer's ack id is not the new delivery's: acking with it acks nothing,
    // so the message stays with its new consumer.
    assert_ne!(before[0].ack_id, after[0].ack_id);
    assert_eq!(queue.ack(&ids(&before)).unwrap(), 0);
    assert_eq!(queue.in_flight(), 1);
    assert_eq!(queue.ack(&ids(&after)).unwrap(), 1);
}

#[test]
fn a_group_keeps_the_topic_it_was_created_with() {
    let (dir, _writer) = log_of(3);
    let mut queue = GroupQueue::open(dir.path(), "g", Some("invoices"), 100).unwrap();
    assert!(
        queue
            .receive(100, VISIBLE, Instant::now())
            .unwrap()
            .is_empty()
    );
    assert!(queue.check_topic("g", Some("orders")).is_err());
    let mut orders = GroupQueue::open(dir.path(), "h", Some("orders"), 100).unwrap();
    assert_eq!(
        orders.receive(100, VISIBLE, Instant::now()).unwrap().len(),
        3
    );
}

#[test]
fn a_malformed_ack_id_is_refused_naming_the_field() {
    let (dir, _writer) = log_of(1);
    let mut queue = GroupQueue::open(dir.path(), "g", None, 100).unwrap();
    let err = queue.ack(&["nope".to_owned()]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid);
    assert!(err.to_string().starts_with("ack_ids:"), "{err}");
}

/// A receive of up to `max` messages waiting up to a minute.
fn waiting(max: usize) -> Receive {
    Receive {
        max,
        wait: Duration::from_secs(60),
        visibility: VISIBLE,
        topic: None,
    }
}

#[tokio::test]
async fn a_waiting_receive_wakes_when_an_ack_frees_the_key_and_when_a_record_becomes_durable() {
    // Given a group whose only key's first message is out.
    let dir = tempfile::tempdir().unwrap();
    let mut writer = LogWriter::open(dir.path(), WriterOptions::DEFAULT).unwrap();
    let events: Vec<_> = (0..2)
        .map(|n| {
            let mut event = crate::log::testing::event(n, 5);
            event.key = "one-key".into();
            event
        })
        .collect();
    let batch: Vec<_> = events
        .iter()
        .map(|event| crate::log::NewRecord {
            topic: "orders",
            event,
        })
        .collect();
    writer.append(&batch).unwrap();
    let groups = Arc::new(Groups::new(dir.path(), 100));
    let first = groups.receive("g", &waiting(10)).await.unwrap();
    assert_eq!(offsets(&first), vec![0]);

    // When a receive waits and the first message is acked, then it gets the second at once.
    let second = tokio::spawn({
        let groups = groups.clone();
        async move { groups.receive("g", &waiting(10)).await.unwrap() }
    });
    tokio::task::yield_now().await;
    groups.ack("g", &ids(&first)).await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("woken by the ack")
        .unwrap();
    assert_eq!(offsets(&second), vec![1]);
    groups.ack("g", &ids(&second)).await.unwrap();

    // When a receive waits at the end of the log and a record is appended, then it gets it.
    let third = tokio::spawn({
        let groups = groups.clone();
        async move { groups.receive("g", &waiting(10)).await.unwrap() }
    });
    tokio::task::yield_now().await;
    append_range(&mut writer, 2..3, 5);
    let third = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("woken by the append")
        .unwrap();
    assert_eq!(offsets(&third), vec![2]);
    let status = groups.status("g").await.unwrap();
    assert_eq!((status.committed, status.in_flight, status.acks), (2, 1, 2));

    // When the group is deleted, then its files are gone and its old ack ids find no group.
    groups.delete("g").await.unwrap();
    let err = groups.ack("g", &ids(&third)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(!ConsumerGroup::open(dir.path(), "g").unwrap().exists());
}
