//! What a receiver's answer means for the events of its request: a 2xx delivers them; 408,
//! 429 and 5xx push back (tried again after the relay's backoff, or after `Retry-After` if
//! longer, never a dead letter); any other status refuses them for good, with the status and
//! the first bytes of the answer.

use super::client::Answer;
use std::time::{Duration, SystemTime};

/// The longest `Retry-After` honoured: a receiver asking for more is asked again then.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// The verdict on one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A 2xx.
    Delivered,
    /// The receiver cannot take it now; with how long it asked to be left alone.
    Busy(String, Option<Duration>),
    /// The receiver refused it for good.
    Refused(String),
}

/// Judges `answer` to a request to `url` (masked for the reason).
pub fn judge(answer: &Answer, url: &str, now: SystemTime) -> Verdict {
    let status = answer.status;
    if status.is_success() {
        return Verdict::Delivered;
    }
    let head = String::from_utf8_lossy(&answer.head);
    let head: String = head
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let code = status.as_u16();
    if code == 408 || code == 429 || status.is_server_error() {
        let wait = answer
            .retry_after
            .as_deref()
            .and_then(|text| retry_after(text, now));
        let asked = wait.map_or(String::new(), |wait| {
            format!(" (Retry-After: {} s)", wait.as_secs())
        });
        return Verdict::Busy(
            format!("the webhook receiver at {url} answered {status}{asked}: {head}"),
            wait,
        );
    }
    Verdict::Refused(format!(
        "the webhook receiver at {url} answered {status}: {head}"
    ))
}

/// A `Retry-After` value (delay-seconds or an HTTP date) as a wait from `now`, at most
/// [`MAX_RETRY_AFTER`]; `None` if it cannot be read.
pub fn retry_after(text: &str, now: SystemTime) -> Option<Duration> {
    let text = text.trim();
    let wait = match text.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(text).ok()?;
            let at = SystemTime::UNIX_EPOCH
                .checked_add(Duration::from_secs(u64::try_from(at.timestamp()).ok()?))?;
            at.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    /// An answer with `status`, `Retry-After` and body.
    fn answer(status: u16, retry_after: Option<&str>, body: &str) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            retry_after: retry_after.map(str::to_string),
            head: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn statuses_map_to_delivered_busy_and_refused() {
        let now = SystemTime::now();
        assert_eq!(judge(&answer(204, None, ""), "u", now), Verdict::Delivered);
        for code in [408, 429, 500, 502, 503] {
            assert!(
                matches!(
                    judge(&answer(code, None, ""), "u", now),
                    Verdict::Busy(_, None)
                ),
                "{code}"
            );
        }
        for code in [301, 400, 401, 404, 413, 422] {
            assert!(
                matches!(
                    judge(&answer(code, None, ""), "u", now),
                    Verdict::Refused(_)
                ),
                "{code}"
            );
        }
        let Verdict::Refused(reason) = judge(&answer(400, None, "bad\nevent"), "http://h/x", now)
        else {
            panic!("not refused");
        };
        assert_eq!(
            reason,
            "the webhook receiver at http://h/x answered 400 Bad Request: bad event"
        );
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_a_date_and_capped() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(retry_after("99999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(retry_after("soon", now), None);
        let busy = judge(&answer(503, Some("3"), ""), "u", now);
        assert!(matches!(busy, Verdict::Busy(_, Some(wait)) if wait == Duration::from_secs(3)));
    }
}
