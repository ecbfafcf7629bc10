//! Dates, times and intervals from PostgreSQL's text output (`DateStyle = ISO`, `IntervalStyle =
//! postgres`, the server defaults) to ISO 8601: the space between date and time becomes `T`, a
//! zone offset is always `±hh:mm`, a BC date gets its astronomical (signed) year, `infinity`
//! and `-infinity` are kept, and an interval becomes a duration such as `P1Y2M3DT4H5M6.5S`.
//! Text in any other shape is returned unchanged (`None`), never guessed at.

/// A `date` (`2020-01-02`, `0044-03-15 BC`) in ISO 8601.
pub fn date(text: &str) -> Option<String> {
    if is_infinity(text) {
        return Some(text.to_owned());
    }
    let (body, bc) = strip_bc(text);
    with_year(body, bc)
}

/// A `timestamp` (`2020-01-02 03:04:05.678`): not shifted, only the separator changes.
pub fn timestamp(text: &str) -> Option<String> {
    if is_infinity(text) {
        return Some(text.to_owned());
    }
    let (body, bc) = strip_bc(text);
    let (day, time) = body.split_once(' ')?;
    Some(format!("{}T{time}", with_year(day, bc)?))
}

/// A `timestamptz` (`2020-01-02 03:04:05.678+00`, `…+05:30`) with its offset as `±hh:mm`.
pub fn timestamptz(text: &str) -> Option<String> {
    if is_infinity(text) {
        return Some(text.to_owned());
    }
    let (body, bc) = strip_bc(text);
    let (day, time) = body.split_once(' ')?;
    Some(format!(
        "{}T{}",
        with_year(day, bc)?,
        time_with_offset(time)?
    ))
}

/// A `time` (`03:04:05.678`): already ISO 8601.
pub fn time(text: &str) -> Option<String> {
    text.as_bytes()
        .get(2)
        .is_some_and(|b| *b == b':')
        .then(|| text.to_owned())
}

/// A `timetz` (`03:04:05+05`) with its offset as `±hh:mm`.
pub fn timetz(text: &str) -> Option<String> {
    time_with_offset(text)
}

/// `infinity` or `-infinity`.
fn is_infinity(text: &str) -> bool {
    text == "infinity" || text == "-infinity"
}

/// The text without a trailing ` BC`, and whether it had one.
fn strip_bc(text: &str) -> (&str, bool) {
    match text.strip_suffix(" BC") {
        Some(body) => (body, true),
        None => (text, false),
    }
}

/// `yyyy-mm-dd` with a BC year turned into ISO 8601's signed astronomical year (1 BC is 0000).
fn with_year(day: &str, bc: bool) -> Option<String> {
    let (year, rest) = day.split_once('-')?;
    let year: i64 = year.parse().ok()?;
    Some(match bc {
        false => format!("{year:04}-{rest}"),
        true if year == 1 => format!("0000-{rest}"),
        true => format!("-{:04}-{rest}", year - 1),
    })
}

/// `hh:mm:ss[.f]±hh[:mm[:ss]]` with the offset written as at least `±hh:mm`.
fn time_with_offset(text: &str) -> Option<String> {
    let at = text.rfind(['+', '-'])?;
    let (time, offset) = text.split_at(at);
    let digits = &offset[1..];
    let offset = match digits.len() {
        2 => format!("{offset}:00"),
        5 | 8 => offset.to_owned(),
        _ => return None,
    };
    Some(format!("{time}{offset}"))
}

/// An `interval` in the `postgres` style (`1 year 2 mons -3 days 04:05:06.5`, `00:00:00`) as an
/// ISO 8601 duration (`P1Y2M-3DT4H5M6.5S`; `PT0S` when zero).
pub fn interval(text: &str) -> Option<String> {
    let (mut years, mut months, mut days) = (0i64, 0i64, 0i64);
    let mut clock: Option<(bool, i64, i64, String)> = None;
    let mut words = text.split(' ');
    while let Some(word) = words.next() {
        if word.contains(':') {
            let (negative, hms) = match word.as_bytes().first()? {
                b'-' => (true, &word[1..]),
                b'+' => (false, &word[1..]),
                _ => (false, word),
            };
            let mut parts = hms.split(':');
            let hours: i64 = parts.next()?.parse().ok()?;
            let minutes: i64 = parts.next()?.parse().ok()?;
            let seconds = parts.next()?.to_owned();
            seconds.parse::<f64>().ok()?;
            clock = Some((negative, hours, minutes, seconds));
            continue;
        }
        let amount: i64 = word.parse().ok()?;
        match words.next()? {
            "year" | "years" => years = amount,
            "mon" | "mons" => months = amount,
            "day" | "days" => days = amount,
            _ => return None,
        }
    }
    let mut out = String::from("P");
    for (amount, unit) in [(years, 'Y'), (months, 'M'), (days, 'D')] {
        if amount != 0 {
            out.push_str(&format!("{amount}{unit}"));
        }
    }
    if let Some((negative, hours, minutes, seconds)) = clock {
        let sign = if negative { "-" } else { "" };
        let zero_seconds = seconds.parse::<f64>().ok()? == 0.0;
        if hours != 0 || minutes != 0 || !zero_seconds {
            out.push('T');
            if hours != 0 {
                out.push_str(&format!("{sign}{hours}H"));
            }
            if minutes != 0 {
                out.push_str(&format!("{sign}{minutes}M"));
            }
            if !zero_seconds {
                let seconds = seconds.trim_start_matches('0');
                let seconds = if seconds.starts_with('.') {
                    format!("0{seconds}")
                } else {
                    seconds.to_owned()
                };
                out.push_str(&format!("{sign}{seconds}S"));
            }
        }
    }
    if out == "P" {
        out.push_str("T0S");
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_keep_infinity_and_bc_years_become_signed() {
        assert_eq!(date("2020-01-02").unwrap(), "2020-01-02");
        assert_eq!(date("infinity").unwrap(), "infinity");
        assert_eq!(date("-infinity").unwrap(), "-infinity");
        assert_eq!(date("0044-03-15 BC").unwrap(), "-0043-03-15");
        assert_eq!(date("0001-01-01 BC").unwrap(), "0000-01-01");
    }

    #[test]
    fn timestamps_get_a_t_and_are_not_shifted() {
        assert_eq!(
            timestamp("2020-01-02 03:04:05.678").unwrap(),
            "2020-01-02T03:04:05.678"
        );
        assert_eq!(timestamp("-infinity").unwrap(), "-infinity");
    }

    #[test]
    fn zone_offsets_are_written_in_full() {
        assert_eq!(
            timestamptz("2020-01-02 03:04:05.678+00").unwrap(),
            "2020-01-02T03:04:05.678+00:00"
        );
        assert_eq!(
            timestamptz("2020-01-02 03:04:05+05:30").unwrap(),
            "2020-01-02T03:04:05+05:30"
        );
        assert_eq!(timestamptz("infinity").unwrap(), "infinity");
        assert_eq!(timetz("03:04:05-08").unwrap(), "03:04:05-08:00");
        assert_eq!(time("24:00:00").unwrap(), "24:00:00");
    }

    #[test]
    fn intervals_become_iso_durations() {
        assert_eq!(
            interval("1 year 2 mons 3 days 04:05:06.5").unwrap(),
            "P1Y2M3DT4H5M6.5S"
        );
        assert_eq!(interval("00:00:00").unwrap(), "PT0S");
        assert_eq!(interval("-1 days +02:00:00").unwrap(), "P-1DT2H");
        assert_eq!(interval("-00:00:00.25").unwrap(), "PT-0.25S");
        assert_eq!(interval("3 mons").unwrap(), "P3M");
        assert_eq!(interval("-01:30:00").unwrap(), "PT-1H-30M");
        assert_eq!(interval("1 fortnight"), None);
    }
}
