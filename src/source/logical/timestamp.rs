//! Reading a row's `created_at` from the text the replication session sends.
//!
//! Every inserted row carries one, so this is on the hot path of logical mode: the common shape
//! is read by hand, and only anything else goes through chrono's format parser (which took ~8 %
//! of the relay's CPU in logical mode when it read every value).

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

/// Parses a `created_at` in the text form the replication session produces (`DateStyle = ISO`,
/// `TimeZone = UTC`, pinned at connect): `timestamptz` as `2026-11-23 19:19:00.123456+00`, and
/// `timestamp` (as Debezium-style tables often have) without the offset, which is read in that
/// session zone, UTC, as casting it to `timestamptz` there would. `None` for anything else
/// (`infinity`, BC dates); the caller falls back to the commit time.
pub fn parse(text: &[u8]) -> Option<DateTime<Utc>> {
    if let Some(parsed) = parse_common(text) {
        return Some(parsed);
    }
    parse_any(std::str::from_utf8(text).ok()?)
}

/// Any shape chrono's format parser reads: with an offset, or without one (as UTC).
fn parse_any(text: &str) -> Option<DateTime<Utc>> {
    const ISO: &str = "%Y-%m-%d %H:%M:%S%.f";
    DateTime::parse_from_str(text, &format!("{ISO}%#z"))
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| NaiveDateTime::parse_from_str(text, ISO).map(|t| t.and_utc()))
        .ok()
}

/// The common shape, `YYYY-MM-DD HH:MM:SS`, up to six fraction digits, then `+00` or nothing
/// (both UTC in the pinned session); `None` for any other shape or an impossible date.
fn parse_common(text: &[u8]) -> Option<DateTime<Utc>> {
    let (stamp, rest) = text.split_at_checked(19)?;
    let rest = rest.strip_suffix(b"+00").unwrap_or(rest);
    let micros = match rest {
        [] => 0,
        [b'.', digits @ ..] if (1..=6).contains(&digits.len()) => {
            digits_value(digits)? * 10u32.pow(6 - digits.len() as u32)
        }
        _ => return None,
    };
    let separators = [(4, b'-'), (7, b'-'), (10, b' '), (13, b':'), (16, b':')];
    if separators.iter().any(|&(at, byte)| stamp[at] != byte) {
        return None;
    }
    let date = NaiveDate::from_ymd_opt(
        digits_value(&stamp[0..4])? as i32,
        digits_value(&stamp[5..7])?,
        digits_value(&stamp[8..10])?,
    )?;
    let time = date.and_hms_micro_opt(
        digits_value(&stamp[11..13])?,
        digits_value(&stamp[14..16])?,
        digits_value(&stamp[17..19])?,
        micros,
    )?;
    Some(time.and_utc())
}

/// The value of a run of ASCII digits (at most nine, so it cannot overflow); `None` if any
/// byte is not a digit.
fn digits_value(digits: &[u8]) -> Option<u32> {
    digits.iter().try_fold(0u32, |value, &byte| {
        byte.is_ascii_digit()
            .then(|| value * 10 + u32::from(byte - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_path_agrees_with_chrono_on_every_shape_it_takes() {
        for text in [
            "2026-11-23 19:19:00.123456+00",
            "2026-11-23 19:19:00.5+00",
            "2026-11-23 19:19:00+00",
            "2026-11-23 19:19:00.000001",
            "2026-11-23 19:19:00",
            "2024-02-29 23:59:59.999999+00",
            "0001-01-01 00:00:00+00",
        ] {
            assert!(parse_common(text.as_bytes()).is_some(), "{text}");
            assert_eq!(parse(text.as_bytes()), parse_any(text), "{text}");
        }
    }

    #[test]
    fn other_shapes_fall_back_to_chrono_or_to_none() {
        // Offsets other than UTC (a session zone other than the pinned one) still parse.
        let text = "2020-01-02 03:04:05.678+05:30";
        assert_eq!(parse_common(text.as_bytes()), None);
        assert_eq!(parse(text.as_bytes()), parse_any(text));
        assert!(parse(text.as_bytes()).is_some());
        for bad in [
            "infinity",
            "-infinity",
            "2023-02-29 00:00:00+00",
            "2026-11-23 24:00:00+00",
            "2026-11-23T19:19:00+00",
            "2026-11-23 19:19:00.1234567+00",
            "2026-11-23 19:19:00.+00",
            "2026-1x-23 19:19:00+00",
            "0044-03-15 12:00:00+00 BC",
            "",
        ] {
            assert_eq!(parse_common(bad.as_bytes()), None, "{bad}");
            assert_eq!(parse(bad.as_bytes()), parse_any(bad), "{bad}");
        }
        assert_eq!(parse(b"\xff\xfe"), None);
    }
}
