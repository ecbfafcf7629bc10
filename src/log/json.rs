//! A record as JSON, written straight into a byte buffer: the bytes `serde_json` writes for a
//! [`RecordView`](super::RecordView), without its per-field machinery (the consumer API sends
//! every record it reads this way, so this is its hottest path). Strings are escaped by
//! `serde_json` itself; the payload and headers are copied as stored; times are written
//! digit by digit for the common case (years 0-9999, no leap second) and by `chrono`
//! otherwise, exactly as `chrono`'s `Serialize` would.

use super::Record;
use crate::event::Origin;
use chrono::{DateTime, Datelike, Timelike, Utc};

/// Appends `record` as JSON, the same bytes as `serde_json::to_writer(out, &record.view())`.
pub fn write_record(out: &mut Vec<u8>, record: &Record) {
    let event = &record.event;
    out.extend_from_slice(b"{\"offset\":");
    write_u64(out, record.offset);
    out.extend_from_slice(b",\"topic\":");
    write_str(out, &record.topic);
    out.extend_from_slice(b",\"key\":");
    write_str(out, &event.key);
    out.extend_from_slice(b",\"appended_at\":");
    write_time(out, record.appended_at);
    out.extend_from_slice(b",\"event\":{\"id\":");
    write_str(out, &event.id);
    out.extend_from_slice(b",\"aggregatetype\":");
    write_str(out, &event.subject);
    out.extend_from_slice(b",\"aggregateid\":");
    write_str(out, &event.key);
    out.extend_from_slice(b",\"type\":");
    write_str(out, &event.event_type);
    out.extend_from_slice(b",\"op\":\"");
    out.extend_from_slice(event.op.name().as_bytes());
    out.push(b'"');
    match &event.origin {
        Origin::Outbox => {}
        Origin::Table { schema, table } => {
            out.extend_from_slice(b",\"origin\":{\"kind\":\"table\",\"schema\":");
            write_str(out, schema);
            out.extend_from_slice(b",\"table\":");
            write_str(out, table);
            out.push(b'}');
        }
        Origin::Message { prefix } => {
            out.extend_from_slice(b",\"origin\":{\"kind\":\"message\",\"prefix\":");
            write_str(out, prefix);
            out.push(b'}');
        }
    }
    out.extend_from_slice(b",\"payload\":");
    out.extend_from_slice(event.payload.get().as_bytes());
    if let Some(headers) = &event.headers {
        out.extend_from_slice(b",\"headers\":");
        out.extend_from_slice(headers.get().as_bytes());
    }
    out.extend_from_slice(b",\"created_at\":");
    write_time(out, event.created_at);
    out.extend_from_slice(b",\"position\":");
    write_u64(out, event.position.0);
    out.extend_from_slice(b"}}");
}

/// Appends `n` in decimal.
pub fn write_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Appends `s` as a JSON string, escaped as `serde_json` escapes it.
fn write_str(out: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Appends `time` as a JSON string, as `chrono` serializes it (RFC 3339, `Z`, the fraction in
/// 0, 3, 6 or 9 digits, whichever is exact).
fn write_time(out: &mut Vec<u8>, time: DateTime<Utc>) {
    let year = time.year();
    let nano = time.nanosecond();
    if !(0..=9999).contains(&year) || nano >= 1_000_000_000 {
        // Rare (a leap second, a far year): chrono's own formatting.
        let _ = serde_json::to_writer(&mut *out, &time);
        return;
    }
    let two = |out: &mut Vec<u8>, n: u32| {
        out.extend_from_slice(&[b'0' + (n / 10) as u8, b'0' + (n % 10) as u8])
    };
    out.push(b'"');
    two(out, year as u32 / 100);
    two(out, year as u32 % 100);
    out.push(b'-');
    two(out, time.month());
    out.push(b'-');
    two(out, time.day());
    out.push(b'T');
    two(out, time.hour());
    out.push(b':');
    two(out, time.minute());
    out.push(b':');
    two(out, time.second());
    let (digits, value) = if nano == 0 {
        (0, 0)
    } else if nano.is_multiple_of(1_000_000) {
        (3, nano / 1_000_000)
    } else if nano.is_multiple_of(1_000) {
        (6, nano / 1_000)
    } else {
        (9, nano)
    };
    if digits > 0 {
        out.push(b'.');
        let mut buf = [b'0'; 9];
        let mut rest = value;
        for slot in buf[..digits].iter_mut().rev() {
            *slot = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        out.extend_from_slice(&buf[..digits]);
    }
    out.extend_from_slice(b"Z\"");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, Operation, Position};
    use serde_json::value::RawValue;

    /// A record with the given origin, headers and times.
    fn record(origin: Origin, headers: Option<&str>, at: DateTime<Utc>) -> Record {
        Record {
            offset: 18_446_744_073_709_551_614,
            topic: "or\"ders\u{1}\n".into(),
            appended_at: at,
            event: Event {
                id: "id-\\1".into(),
                subject: "sübject".into(),
                key: "k\u{7f}\u{2028}".into(),
                event_type: "Typé\t".into(),
                op: Operation::Update,
                origin,
                payload: RawValue::from_string("{\"a\" : [1,\n 2]}".into()).unwrap(),
                headers: headers.map(|h| RawValue::from_string(h.into()).unwrap()),
                created_at: at,
                position: Position(0),
            },
        }
    }

    #[test]
    fn writes_exactly_the_bytes_serde_json_writes_for_the_record_view() {
        let times = [
            DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            DateTime::from_timestamp(1_700_000_000, 120_000_000).unwrap(),
            DateTime::from_timestamp(1_700_000_000, 120_300_000).unwrap(),
            DateTime::from_timestamp(1_700_000_000, 1).unwrap(),
            DateTime::from_timestamp(0, 999_999_999).unwrap(),
            DateTime::from_timestamp(-62_200_000_000, 5_000).unwrap(),
            DateTime::from_timestamp(253_402_300_800, 7).unwrap(),
            DateTime::from_timestamp(1_483_228_799, 1_500_000_000).unwrap(),
        ];
        let origins = [
            Origin::Outbox,
            Origin::Table {
                schema: "pub\"lic".into(),
                table: "t".into(),
            },
            Origin::Message {
                prefix: "p/é".into(),
            },
        ];
        for at in times {
            for origin in &origins {
                for headers in [None, Some("{\"h\":\"v\"}")] {
                    let record = record(origin.clone(), headers, at);
                    let mut fast = Vec::new();
                    write_record(&mut fast, &record);
                    let serde = serde_json::to_vec(&record.view()).unwrap();
                    assert_eq!(
                        String::from_utf8(fast).unwrap(),
                        String::from_utf8(serde).unwrap()
                    );
                }
            }
        }
    }
}
