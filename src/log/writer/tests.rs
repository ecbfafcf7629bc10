//! Tests of the log writer.

use super::*;
use crate::log::LogReader;
use crate::log::testing::{append_range, event, read_all, segment_paths};

#[test]
fn batches_read_back_with_consecutive_offsets_and_identical_payloads() {
    // given three appended batches
    let dir = tempfile::tempdir().unwrap();
    let mut writer = LogWriter::open(dir.path(), WriterOptions::default()).unwrap();
    assert_eq!(append_range(&mut writer, 0..5, 300), 0..5);
    assert_eq!(append_range(&mut writer, 5..6, 0), 5..6);
    assert_eq!(append_range(&mut writer, 6..20, 4_000), 6..20);
    assert_eq!(writer.next_offset(), 20);

    // when read back, then every record is there, in order, payload bytes unchanged
    let mut reader = LogReader::open(dir.path()).unwrap();
    let records = read_all(&mut reader);
    assert_eq!(records.len(), 20);
    for (n, record) in (0..).zip(&records) {
        let sent_len = match n {
            0..5 => 300,
            5 => 0,
            _ => 4_000,
        };
        let sent = event(n, sent_len);
        assert_eq!(record.offset, n);
        assert_eq!(record.topic, sent.subject);
        assert_eq!(record.event.id, sent.id);
        assert_eq!(record.event.payload.get(), sent.payload.get());
        assert_eq!(record.event.created_at, sent.created_at);
    }
    assert_eq!(reader.bounds().unwrap(), (0, 20));
}

#[test]
fn an_empty_batch_assigns_no_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = LogWriter::open(dir.path(), WriterOptions::default()).unwrap();
    assert_eq!(writer.append(&[]).unwrap(), 0..0);
    assert_eq!(writer.next_offset(), 0);
}

#[test]
fn tiny_segments_roll_and_a_reopened_writer_continues_the_offsets() {
    // given segments of 1 KiB and records of about 400 bytes
    let dir = tempfile::tempdir().unwrap();
    let options = WriterOptions::with_segment_bytes(1024);
    let mut writer = LogWriter::open(dir.path(), options).unwrap();
    append_range(&mut writer, 0..7, 200);
    append_range(&mut writer, 7..30, 200);
    // and one record larger than a whole segment
    append_range(&mut writer, 30..31, 5_000);
    append_range(&mut writer, 31..33, 200);
    drop(writer);

    // then records span many segments, none over the limit unless it holds one record
    let paths = segment_paths(dir.path());
    assert!(paths.len() >= 10, "only {} segments", paths.len());
    let mut reader = LogReader::open(dir.path()).unwrap();
    let records = read_all(&mut reader);
    for pair in paths.windows(2) {
        let base = |p: &PathBuf| segment::parse_name(p.file_name()?.to_str()?);
        let (first, next) = (base(&pair[0]).unwrap(), base(&pair[1]).unwrap());
        let len = std::fs::metadata(&pair[0]).unwrap().len();
        assert!(
            len <= 1024 || next - first == 1,
            "{} has {len} bytes",
            pair[0].display()
        );
    }

    // and when the writer reopens, offsets continue where they stopped
    let mut writer = LogWriter::open(dir.path(), options).unwrap();
    assert_eq!(writer.next_offset(), 33);
    append_range(&mut writer, 33..35, 200);
    let records: Vec<u64> = records
        .into_iter()
        .chain(read_all(&mut reader))
        .map(|r| r.offset)
        .collect();
    assert_eq!(records, (0..35).collect::<Vec<_>>());
}

#[test]
fn a_second_writer_is_locked_out_until_the_first_is_dropped() {
    // given a live writer
    let dir = tempfile::tempdir().unwrap();
    let mut writer = LogWriter::open(dir.path(), WriterOptions::default()).unwrap();
    append_range(&mut writer, 0..1, 10);

    // then a second writer is refused, naming the lock file
    let err = LogWriter::open(dir.path(), WriterOptions::default())
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::Locked);
    assert!(
        err.to_string().contains("is locked by another writer"),
        "{err}"
    );
    assert!(err.to_string().contains("LOCK"), "{err}");
    // and a reader is not
    let mut reader = LogReader::open(dir.path()).unwrap();
    assert_eq!(read_all(&mut reader).len(), 1);

    // when the first writer is dropped, then the second gets in
    drop(writer);
    let writer = LogWriter::open(dir.path(), WriterOptions::default()).unwrap();
    assert_eq!(writer.next_offset(), 1);
}

#[test]
fn a_failed_write_that_cannot_be_cut_back_poisons_the_writer_for_good() {
    // given a writer whose segment handle can no longer be written (nor truncated)
    let dir = tempfile::tempdir().unwrap();
    let mut writer = LogWriter::open(dir.path(), WriterOptions::default()).unwrap();
    append_range(&mut writer, 0..2, 10);
    let good = std::mem::replace(
        &mut writer.segment,
        File::open(&writer.segment_path).unwrap(),
    );

    // when an append fails and cutting it back fails too, then it and every later append
    // report poisoning, naming both failures
    let sent = event(2, 10);
    let batch = [NewRecord {
        topic: "orders",
        event: &sent,
    }];
    let err = writer.append(&batch).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SinkPoisoned);
    assert!(err.to_string().contains("restart outboxd"), "{err}");
    writer.segment = good;
    let err = writer.append(&batch).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::SinkPoisoned);
    assert!(err.to_string().contains("writing"), "{err}");
    assert!(err.to_string().contains("then truncating"), "{err}");
    // and no offsets were assigned
    assert_eq!(writer.next_offset(), 2);
}
