//! Logs written by earlier releases stay readable: a version-2 log (outbox events only), checked
//! in as `tests/fixtures/log-v2` together with what that release's `outboxd log read` printed,
//! reads back field for field, and new records appended to it carry the whole change event.

use outboxd::event::{Event, Operation, Origin, Position};
use outboxd::log::{LogReader, LogWriter, NewRecord, Record, WriterOptions};
use serde_json::Value;
use serde_json::value::RawValue;
use std::path::{Path, PathBuf};

/// The fixture's directory.
fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/log-v2")
}

/// Every record of the log at `dir`.
fn read_all(dir: &Path) -> Vec<Record> {
    let mut reader = LogReader::open(dir).unwrap();
    let mut records = Vec::new();
    while let Some(record) = reader.next().unwrap() {
        records.push(record);
    }
    records
}

/// A copy of the fixture's segment and index in a fresh directory, writable.
fn copy_of_fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name.ends_with(".log") || name.ends_with(".index") {
            std::fs::copy(&path, dir.path().join(name)).unwrap();
        }
    }
    dir
}

#[test]
fn a_version_two_log_reads_back_exactly_as_its_release_printed_it() {
    // Given the log a version-2 release wrote, and what its `log read` printed
    let expected: Vec<Value> = std::fs::read_to_string(fixture().join("expected.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(expected.len(), 3);

    // When this release reads it
    let records = read_all(&fixture());

    // Then every field is as it was, and the events are outbox inserts
    assert_eq!(records.len(), expected.len());
    for (record, old) in records.iter().zip(&expected) {
        let mut now = serde_json::to_value(record).unwrap();
        assert_eq!(now["event"]["op"], "insert");
        now["event"].as_object_mut().unwrap().remove("op");
        assert_eq!(&now, old, "record {}", record.offset);
        assert_eq!(record.event.origin, Origin::Outbox);
        assert_eq!(record.event.op, Operation::Insert);
    }
    assert_eq!(records[0].event.key, "o-1");
    assert_eq!(records[0].event.subject, "order");
    assert_eq!(
        records[2].event.payload.get(),
        r#"{"name": "Zoë"}"#,
        "payloads stay byte for byte as stored"
    );
}

#[test]
fn records_appended_to_a_version_two_log_keep_their_origin_and_operation() {
    // Given a copy of the version-2 log
    let dir = copy_of_fixture();

    // When a table change and a logical message are appended to it by this release
    let mut writer = LogWriter::open(dir.path(), WriterOptions::DEFAULT).unwrap();
    assert_eq!(writer.next_offset(), 3);
    let change = Event {
        id: "c-1".into(),
        subject: "shop.orders".into(),
        key: r#"{"id":7}"#.into(),
        event_type: "shop.orders.update".into(),
        op: Operation::Update,
        origin: Origin::Table {
            schema: "shop".into(),
            table: "orders".into(),
        },
        payload: RawValue::from_string(r#"{"after":{"id":7}}"#.into()).unwrap(),
        headers: None,
        created_at: chrono::Utc::now(),
        position: Position(90),
    };
    let message = Event {
        id: "m-1".into(),
        subject: "audit".into(),
        key: "k".into(),
        event_type: "Audited".into(),
        op: Operation::Message,
        origin: Origin::Message {
            prefix: "app".into(),
        },
        payload: RawValue::from_string("[1]".into()).unwrap(),
        headers: Some(RawValue::from_string(r#"{"h":"v"}"#.into()).unwrap()),
        created_at: chrono::Utc::now(),
        position: Position(91),
    };
    let batch = [
        NewRecord {
            topic: "shop.orders",
            event: &change,
        },
        NewRecord {
            topic: "audit",
            event: &message,
        },
    ];
    writer.append(&batch).unwrap();
    writer.sync().unwrap();
    drop(writer);

    // Then old and new records read back in one sequence, each with what it stored
    let records = read_all(dir.path());
    assert_eq!(records.len(), 5);
    assert_eq!(records[2].event.id, "00000000-0000-4000-8000-000000000003");
    let (new_change, new_message) = (&records[3].event, &records[4].event);
    assert_eq!(
        (new_change.op, &new_change.origin),
        (change.op, &change.origin)
    );
    assert_eq!(new_change.key, change.key);
    assert_eq!(
        (new_message.op, &new_message.origin),
        (message.op, &message.origin)
    );
    assert_eq!(new_message.headers.as_ref().unwrap().get(), r#"{"h":"v"}"#);
    assert_eq!(records[4].topic, "audit");
}
