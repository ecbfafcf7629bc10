//! Tests of the log reader.

use super::*;
use crate::log::testing::{append_range, event, flip_byte, read_all, segment_paths};
use crate::log::{LogWriter, WriterOptions};
use std::time::{Duration, Instant};

/// Options that put about two records of 200-byte payloads in each segment.
const TINY: WriterOptions = WriterOptions::with_segment_bytes(1024);

#[test]
fn a_damaged_record_in_an_older_segment_is_corruption_never_data() {
    // given several segments, with a byte flipped in the second record of the first one
    let dir = tempfile::tempdir().unwrap();
    let mut writer = LogWriter::open(dir.path(), TINY).unwrap();
    append_range(&mut writer, 0..10, 200);
    let first_segment = &segment_paths(dir.path())[0];
    let first_frame_len = {
        let mut reader = LogReader::open(dir.path()).unwrap();
        reader.next().unwrap().unwrap();
        reader.cursor.as_ref().unwrap().pos
    };
    flip_byte(first_segment, first_frame_len + 100);

    // when read from the start, then the intact record comes back and then the error
    let mut reader = LogReader::open(dir.path()).unwrap();
    assert_eq!(reader.next().unwrap().unwrap().offset, 0);
    let err = reader.next().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    let message = err.to_string();
    assert!(message.contains("00000000000000000000.log"), "{message}");
    assert!(
        message.contains(&format!("at byte {first_frame_len}")),
        "{message}"
    );
    // and asking again does not skip past the damage
    assert_eq!(reader.next().unwrap_err().kind(), ErrorKind::Corrupt);
}

#[test]
fn a_cut_off_older_segment_is_corruption_not_a_write_in_progress() {
    // given an older segment that ends in the middle of a frame
    let dir = tempfile::tempdir().unwrap();
    let mut writer = LogWriter::open(dir.path(), TINY).unwrap();
    append_range(&mut writer, 0..10, 200);
    let first_segment = &segment_paths(dir.path())[0];
    let len = std::fs::metadata(first_segment).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(first_segment)
        .unwrap();
    file.set_len(len - 3).unwrap();

    // then reading through it fails instead of waiting forever
    let mut reader = LogReader::open(dir.path()).unwrap();
    let err = loop {
        match reader.next() {
            Ok(Some(_)) => {}
            Ok(None) => panic!("reader waited at a damaged older segment"),
            Err(err) => break err,
        }
    };
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(err.to_string().contains("incomplete frame"), "{err}");
}

#[test]
fn a_frame_seen_half_written_is_read_again_from_its_start() {
    // given a full log of two segments, saved
    let dir = tempfile::tempdir().unwrap();
    let mut writer = LogWriter::open(dir.path(), TINY).unwrap();
    append_range(&mut writer, 0..4, 200);
    drop(writer);
    let paths = segment_paths(dir.path());
    let (first, second) = (&paths[0], &paths[1]);
    let (first_bytes, second_bytes) = (
        std::fs::read(first).unwrap(),
        std::fs::read(second).unwrap(),
    );
    // and the state a reader can see mid-append: the first segment's last frame half
    // written, no second segment yet
    std::fs::remove_file(second).unwrap();
    std::fs::write(first, &first_bytes[..first_bytes.len() - 20]).unwrap();
    let mut reader = LogReader::open(dir.path()).unwrap();
    assert_eq!(reader.next().unwrap().unwrap().offset, 0);
    assert!(reader.next().unwrap().is_none());

    // when the write completes and the next segment appears
    std::fs::write(first, &first_bytes).unwrap();
    std::fs::write(second, &second_bytes).unwrap();

    // then the completed record is read, then the new segment's
    let offsets: Vec<u64> = read_all(&mut reader).iter().map(|r| r.offset).collect();
    assert_eq!(offsets, vec![1, 2, 3]);
}

#[test]
fn seek_positions_at_the_first_record_at_or_after_the_offset() {
    // given records 0..40 spread over many segments
    let dir = tempfile::tempdir().unwrap();
    let mut writer = LogWriter::open(dir.path(), TINY).unwrap();
    append_range(&mut writer, 0..40, 200);
    let mut reader = LogReader::open(dir.path()).unwrap();

    // then seeking anywhere reads from exactly there
    for offset in [0, 1, 17, 38, 39] {
        reader.seek(offset).unwrap();
        let offsets: Vec<u64> = read_all(&mut reader).iter().map(|r| r.offset).collect();
        assert_eq!(offsets, (offset..40).collect::<Vec<_>>(), "seek({offset})");
    }

    // and seeking past the end waits for that offset, skipping the records before it
    reader.seek(45).unwrap();
    assert!(reader.next().unwrap().is_none());
    append_range(&mut writer, 40..50, 200);
    let offsets: Vec<u64> = read_all(&mut reader).iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (45..50).collect::<Vec<_>>());
}

#[test]
fn bounds_span_the_first_to_one_past_the_last_record() {
    let dir = tempfile::tempdir().unwrap();
    let reader = LogReader::open(dir.path()).unwrap();
    assert_eq!(reader.bounds().unwrap(), (0, 0));
    let mut writer = LogWriter::open(dir.path(), TINY).unwrap();
    assert_eq!(reader.bounds().unwrap(), (0, 0));
    append_range(&mut writer, 0..9, 200);
    assert_eq!(reader.bounds().unwrap(), (0, 9));
}

#[test]
fn a_reader_opened_before_any_segment_sees_later_appends() {
    // given a reader on an empty directory
    let dir = tempfile::tempdir().unwrap();
    let mut reader = LogReader::open(dir.path()).unwrap();
    assert!(reader.next().unwrap().is_none());

    // when a writer creates the log and rolls through segments, then all is read
    let mut writer = LogWriter::open(dir.path(), TINY).unwrap();
    append_range(&mut writer, 0..3, 200);
    assert_eq!(read_all(&mut reader).len(), 3);
    append_range(&mut writer, 3..12, 200);
    let offsets: Vec<u64> = read_all(&mut reader).iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (3..12).collect::<Vec<_>>());
}

#[test]
fn a_reader_following_a_live_writer_sees_every_record_once_in_order() {
    const TOTAL: u64 = 2_000;
    const BATCH: u64 = 50;
    let dir = tempfile::tempdir().unwrap();
    // Segments of a few KiB, so the reader also crosses segments created while it reads.
    let mut writer = LogWriter::open(dir.path(), WriterOptions::with_segment_bytes(8192)).unwrap();

    // given a reader polling in another thread
    let reader_dir = dir.path().to_owned();
    let follower = std::thread::spawn(move || {
        let mut reader = LogReader::open(&reader_dir).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        while (seen.len() as u64) < TOTAL {
            assert!(
                Instant::now() < deadline,
                "only {} records after 60s",
                seen.len()
            );
            match reader.next().unwrap() {
                Some(record) => seen.push(record),
                None => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        // Nothing beyond what was written.
        assert!(reader.next().unwrap().is_none());
        seen
    });

    // when the writer appends in batches
    for start in (0..TOTAL).step_by(BATCH as usize) {
        append_range(&mut writer, start..start + BATCH, 100);
    }

    // then the reader saw each record exactly once, in order, intact
    let seen = follower.join().unwrap();
    for (n, record) in (0..).zip(&seen) {
        assert_eq!(record.offset, n);
        assert_eq!(record.event.payload.get(), event(n, 100).payload.get());
    }
    assert!(segment_paths(dir.path()).len() > 10);
}
