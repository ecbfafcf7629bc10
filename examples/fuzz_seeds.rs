//! Writes the seed corpora of the fuzz targets in `fuzz/`: valid `pgoutput` messages, record
//! frames and bodies, and log directories written by the real [`LogWriter`], so the fuzzers
//! start from inputs that get deep and mutate from there.
//!
//! ```sh
//! cargo run --example fuzz_seeds -- fuzz/corpus
//! ```
//!
//! Creates `<dir>/pgoutput`, `<dir>/log_record` and `<dir>/log_directory`. The layout of a
//! `log_directory` input is documented on `outboxd::fuzz::log_directory`.

use chrono::DateTime;
use outboxd::event::{Event, Position};
use outboxd::fuzz::{FILE_MARK, FIX_FRAME_CHECKSUMS, FIX_INDEX_CHECKSUMS, MESSAGE_MARK};
use outboxd::log::{LogWriter, NewRecord, WriterOptions};
use serde_json::value::RawValue;
use std::path::{Path, PathBuf};

fn main() {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/corpus".into()),
    );
    let pgoutput = pgoutput_seeds();
    let (records, directories) = log_seeds();
    for (target, seeds) in [
        ("pgoutput", pgoutput),
        ("log_record", records),
        ("log_directory", directories),
    ] {
        let dir = out.join(target);
        std::fs::create_dir_all(&dir).expect("creating the corpus directory");
        for (n, seed) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{n:03}")), seed).expect("writing a seed");
        }
        println!("{}: {} seeds", dir.display(), seeds.len());
    }
}

/// Builds messages the way the server lays them out (big-endian, NUL-terminated strings).
#[derive(Default)]
struct Wire(Vec<u8>);

impl Wire {
    /// One byte.
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    /// An Int16.
    fn u16(mut self, v: u16) -> Self {
        self.0.extend(v.to_be_bytes());
        self
    }
    /// An Int32.
    fn u32(mut self, v: u32) -> Self {
        self.0.extend(v.to_be_bytes());
        self
    }
    /// An Int64.
    fn u64(mut self, v: u64) -> Self {
        self.0.extend(v.to_be_bytes());
        self
    }
    /// A String.
    fn cstr(mut self, v: &str) -> Self {
        self.0.extend(v.as_bytes());
        self.0.push(0);
        self
    }
    /// A text column value of TupleData.
    fn text(self, v: &str) -> Self {
        let mut w = self.u8(b't').u32(v.len() as u32);
        w.0.extend(v.as_bytes());
        w
    }
}

/// The outbox's columns in migration order.
const OUTBOX_COLUMNS: [&str; 7] = [
    "id",
    "aggregatetype",
    "aggregateid",
    "type",
    "payload",
    "headers",
    "created_at",
];

/// One message of every kind the decoder reads (versions 1 and 2), and a streamed session.
fn pgoutput_seeds() -> Vec<Vec<u8>> {
    let mut relation = Wire::default()
        .u8(b'R')
        .u32(16_384)
        .cstr("public")
        .cstr("outbox")
        .u8(b'd')
        .u16(OUTBOX_COLUMNS.len() as u16);
    for column in OUTBOX_COLUMNS {
        relation = relation.u8(0).cstr(column).u32(25).u32(u32::MAX);
    }
    let insert = |payload: &str, headers: Option<&str>| {
        let w = Wire::default()
            .u8(b'I')
            .u32(16_384)
            .u8(b'N')
            .u16(7)
            .text("6f1c2a9e-0d1b-4a51-9d5e-1b7a2f9c0e11")
            .text("order")
            .text("42")
            .text("OrderPlaced")
            .text(payload);
        let w = match headers {
            Some(h) => w.text(h),
            None => w.u8(b'n'),
        };
        w.text("2026-11-23 19:19:00.123456+00").0
    };
    let message = |content: &str| {
        let w = Wire::default()
            .u8(b'M')
            .u8(1)
            .u64(0x1_6B37_4D48)
            .cstr("outboxd")
            .u32(content.len() as u32);
        let mut bytes = w.0;
        bytes.extend(content.as_bytes());
        bytes
    };
    vec![
        Wire::default()
            .u8(b'B')
            .u64(0x1_6B37_4D48)
            .u64(5)
            .u32(731)
            .0,
        Wire::default().u8(b'C').u8(0).u64(16).u64(72).u64(9).0,
        relation.0.clone(),
        insert(r#"{"order_id": 42, "total": "19.90"}"#, None),
        insert(
            r#"{"a": [1, 2, {"b": null}]}"#,
            Some(r#"{"trace_id": "abc"}"#),
        ),
        insert("{not json", Some("[1]")),
        Wire::default()
            .u8(b'I')
            .u32(16_384)
            .u8(b'N')
            .u16(3)
            .u8(b'n')
            .u8(b'u')
            .u8(b'b')
            .u32(2)
            .u8(0xff)
            .u8(0)
            .0,
        message(r#"{"aggregatetype":"order","aggregateid":"1","type":"X","payload":[1]}"#),
        message(
            r#"{"id":"e1","aggregatetype":"o","aggregateid":"1","type":"X","payload":{},"headers":{"h":"v"}}"#,
        ),
        message(r#"{"aggregatetype":"o","aggregateid":"","type":"X","payload":1,"headers":[1]}"#),
        Wire::default().u8(b'U').u32(16_384).u8(b'N').u16(0).0,
        Wire::default()
            .u8(b'U')
            .u32(16_384)
            .u8(b'K')
            .u16(1)
            .text("1")
            .u8(b'N')
            .u16(2)
            .text("2")
            .u8(b'u')
            .0,
        Wire::default()
            .u8(b'U')
            .u32(16_384)
            .u8(b'O')
            .u16(1)
            .u8(b'n')
            .u8(b'N')
            .u16(1)
            .text("2")
            .0,
        Wire::default()
            .u8(b'D')
            .u32(16_384)
            .u8(b'K')
            .u16(1)
            .text("1")
            .0,
        Wire::default()
            .u8(b'D')
            .u32(16_384)
            .u8(b'O')
            .u16(1)
            .u8(b'n')
            .0,
        Wire::default().u8(b'T').u32(1).u8(0).u32(16_384).0,
        Wire::default()
            .u8(b'T')
            .u32(2)
            .u8(3)
            .u32(16_384)
            .u32(16_390)
            .0,
        Wire::default()
            .u8(b'Y')
            .u32(25)
            .cstr("pg_catalog")
            .cstr("text")
            .0,
        Wire::default().u8(b'O').u64(12).cstr("upstream").0,
        Wire::default().u8(b'S').u32(900).u8(1).0,
        Wire::default().u8(b'E').0,
        Wire::default()
            .u8(b'c')
            .u32(900)
            .u8(0)
            .u64(40)
            .u64(48)
            .u64(7)
            .0,
        Wire::default().u8(b'A').u32(900).u32(901).0,
        Wire::default().u8(b'A').u32(900).u32(900).u64(64).u64(3).0,
        streamed_session(&relation.0, &insert(r#"{"n": 1}"#, None)),
    ]
}

/// A session with one stream block (start, a Relation and an Insert each with its xid, stop)
/// and the stream's commit, joined with `MESSAGE_MARK`, so the fuzzer starts inside a stream.
fn streamed_session(relation: &[u8], insert: &[u8]) -> Vec<u8> {
    let with_xid = |message: &[u8]| {
        let mut bytes = vec![message[0]];
        bytes.extend(900u32.to_be_bytes());
        bytes.extend(&message[1..]);
        bytes
    };
    let messages = [
        Wire::default().u8(b'S').u32(900).u8(1).0,
        with_xid(relation),
        with_xid(insert),
        Wire::default().u8(b'E').0,
        Wire::default()
            .u8(b'c')
            .u32(900)
            .u8(0)
            .u64(40)
            .u64(48)
            .u64(7)
            .0,
    ];
    messages.join(MESSAGE_MARK)
}

/// The event numbered `n`, with headers on every third one.
fn event(n: u64) -> Event {
    let payload = format!(r#"{{"n":{n},"items":[1,{{"x":null}}],"note":"caf\u00e9"}}"#);
    Event {
        id: format!("event-{n}"),
        subject: "orders".to_owned(),
        key: format!("order-{}", n % 3),
        op: outboxd::event::Operation::Insert,
        origin: outboxd::event::Origin::Outbox,
        event_type: "OrderPlaced".to_owned(),
        payload: RawValue::from_string(payload).expect("valid JSON"),
        headers: n
            .is_multiple_of(3)
            .then(|| RawValue::from_string(r#"{"trace":"t"}"#.to_owned()).expect("valid JSON")),
        created_at: DateTime::from_timestamp(1_700_000_000 + n as i64, 1000).expect("valid time"),
        position: Position(n),
    }
}

/// Seeds of `log_record` (frames, bodies, a version-1 JSON body) and of `log_directory` (logs
/// of one and of several segments with their indexes, as written, torn, and with flags set).
fn log_seeds() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let scratch = tempfile::tempdir().expect("creating a scratch directory");
    let small = WriterOptions {
        index_interval_bytes: 256,
        ..WriterOptions::with_segment_bytes(1024)
    };
    let one = scratch.path().join("one");
    write_log(&one, WriterOptions::default(), 0..4);
    let many = scratch.path().join("many");
    write_log(&many, small, 0..12);

    let one_files = files(&one);
    let segment = &one_files[0].1;
    let mut records = vec![segment.clone()];
    let mut at = 0;
    while at + 8 <= segment.len() {
        let len = u32::from_le_bytes(segment[at..at + 4].try_into().expect("4 bytes")) as usize;
        records.push(segment[at..at + 8 + len].to_vec());
        records.push(segment[at + 8..at + 8 + len].to_vec());
        at += 8 + len;
    }
    let json = format!(
        r#"{{"offset":3,"topic":"orders","appended_at":"2024-01-01T00:00:00Z","event":{}}}"#,
        serde_json::to_string(&event(3)).expect("serializable")
    );
    records.push([&[1u8][..], json.as_bytes()].concat());

    let many_files = files(&many);
    let mut directories = Vec::new();
    for flags in [0, FIX_FRAME_CHECKSUMS | FIX_INDEX_CHECKSUMS] {
        directories.push(directory(flags, &one_files));
        directories.push(directory(flags, &many_files));
    }
    // A torn tail: the last segment cut inside its last record.
    let mut torn = many_files.clone();
    if let Some(last) = torn.iter_mut().rev().find(|(kind, _)| *kind == b'L') {
        let len = last.1.len();
        last.1.truncate(len.saturating_sub(17));
    }
    directories.push(directory(FIX_FRAME_CHECKSUMS, &torn));
    (records, directories)
}

/// Appends the events numbered `numbers` to a new log at `dir`, two per batch.
fn write_log(dir: &Path, options: WriterOptions, numbers: std::ops::Range<u64>) {
    let mut writer = LogWriter::open(dir, options).expect("opening a writer");
    let events: Vec<Event> = numbers.map(event).collect();
    for pair in events.chunks(2) {
        let batch: Vec<NewRecord<'_>> = pair
            .iter()
            .map(|event| NewRecord {
                topic: &event.subject,
                event,
            })
            .collect();
        writer.append(&batch).expect("appending");
    }
}

/// The segments and indexes of the log at `dir` in name order, as (kind, content): `L` for a
/// segment, `I` for its index, which sorts right after it.
fn files(dir: &Path) -> Vec<(u8, Vec<u8>)> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("listing the log")
        .map(|entry| {
            entry
                .expect("a directory entry")
                .file_name()
                .into_string()
                .expect("UTF-8")
        })
        .filter(|name| name.ends_with(".log") || name.ends_with(".index"))
        .collect();
    // "x.index" sorts before "x.log"; put each index after its segment.
    names.sort_by_key(|name| (name[..20].to_owned(), name.ends_with(".index")));
    names
        .into_iter()
        .map(|name| {
            let kind = if name.ends_with(".log") { b'L' } else { b'I' };
            (
                kind,
                std::fs::read(dir.join(&name)).expect("reading a log file"),
            )
        })
        .collect()
}

/// A `log_directory` input of these files.
fn directory(flags: u8, files: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut input = vec![flags];
    for (n, (kind, content)) in files.iter().enumerate() {
        if n > 0 {
            input.extend_from_slice(FILE_MARK);
        }
        input.push(*kind);
        input.extend_from_slice(content);
    }
    input
}
