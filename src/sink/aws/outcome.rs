//! What AWS's answers mean for the events: per-entry results of a batch call, and a call that
//! failed as a whole. Throttling pushes back (busy); a missing queue or topic, an invalid
//! address or message is refused for good with AWS's own words; other client errors are
//! retried (and counted); 5xx answers, network failures, timeouts and refused credentials
//! fail the batch retryably (nothing is counted, `/readyz` says the sink is down: an operator
//! or AWS must act, and the events wait instead of becoming dead letters).

use crate::error::{BoxError, Error, ErrorKind, Result};
use crate::sink::Outcome;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};

/// Codes that refuse an event for good: its queue or topic does not exist, its address or
/// message is invalid.
const REFUSING: &[&str] = &[
    "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist",
    "NonExistentQueue",
    "InvalidAddress",
    "NotFound",
    "NotFoundException",
    "InvalidParameter",
    "InvalidParameterValue",
    "InvalidParameterException",
    "InvalidMessageContents",
    "ValidationError",
];

/// Codes that mean the credentials or their permissions were refused.
const CREDENTIALS: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "AuthorizationError",
    "ExpiredToken",
    "ExpiredTokenException",
    "IncompleteSignature",
    "InvalidAccessKeyId",
    "InvalidClientTokenId",
    "InvalidSecurity",
    "MissingAuthenticationToken",
    "RequestExpired",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
];

/// One entry a batch call reports failed.
#[derive(Clone, Copy, Debug)]
pub struct EntryFailure<'a> {
    /// The entry's id in the call (its index).
    pub id: &'a str,
    /// Whether AWS blames the request (a refusal) rather than itself (a retry).
    pub sender_fault: bool,
    /// AWS's error code.
    pub code: &'a str,
    /// AWS's message.
    pub message: &'a str,
}

/// One outcome per entry of a call of `count` entries (ids `"0"`, `"1"`, …): delivered if
/// AWS lists it as successful, by its failure otherwise; an entry AWS reports neither way is
/// retried.
pub fn entry_outcomes<'a>(
    service: &str,
    count: usize,
    succeeded: impl IntoIterator<Item = &'a str>,
    failed: impl IntoIterator<Item = EntryFailure<'a>>,
) -> Vec<Outcome> {
    let unreported = Outcome::Retry(format!("{service} did not report on the message"));
    let mut outcomes = vec![unreported; count];
    let slot = |id: &str| id.parse::<usize>().ok().filter(|&index| index < count);
    for id in succeeded {
        if let Some(index) = slot(id) {
            outcomes[index] = Outcome::Delivered;
        }
    }
    for failure in failed {
        if let Some(index) = slot(failure.id) {
            let words = format!("{}: {}", failure.code, failure.message);
            outcomes[index] = if throttling(failure.code) {
                Outcome::Busy(format!("{service} is throttling: {words}"))
            } else if failure.sender_fault {
                Outcome::Refused(format!("{service} refused the message: {words}"))
            } else {
                Outcome::Retry(format!("{service} failed to store the message: {words}"))
            };
        }
    }
    outcomes
}

/// What a call that failed as a whole means for every entry of it (all to `target`): an
/// outcome for each, or an error that fails the batch retryably.
pub fn call_failed<E>(service: &str, target: &str, err: SdkError<E>) -> Result<Outcome>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let SdkError::ServiceError(context) = &err else {
        return Err(unavailable(
            format!("{service} at {target} unreachable"),
            err,
        ));
    };
    let status = context.raw().status().as_u16();
    let code = context.err().code().unwrap_or("").to_string();
    let message = context.err().message().unwrap_or("").to_string();
    let words = format!("{code}: {message} (HTTP {status})");
    classify(service, target, status, &code, &words, err)
}

/// [`call_failed`] on the parts of the answer (separate, so it can be tested without one).
fn classify(
    service: &str,
    target: &str,
    status: u16,
    code: &str,
    words: &str,
    err: impl Into<BoxError>,
) -> Result<Outcome> {
    if throttling(code) {
        Ok(Outcome::Busy(format!("{service} is throttling: {words}")))
    } else if CREDENTIALS.contains(&code) {
        Err(unavailable(
            format!(
                "{service} refused outboxd's AWS credentials or their permissions for {target}"
            ),
            err,
        ))
    } else if status >= 500 {
        Err(unavailable(format!("{service} failed: {words}"), err))
    } else if REFUSING.contains(&code) {
        Ok(Outcome::Refused(format!(
            "{service} refused {target}: {words}"
        )))
    } else {
        Ok(Outcome::Retry(format!(
            "{service} refused the call to {target}: {words}"
        )))
    }
}

/// Whether `code` is one of AWS's throttling answers (`RequestThrottled`, `Throttling`,
/// `ThrottlingException`, `KmsThrottled`, …).
fn throttling(code: &str) -> bool {
    code.to_ascii_lowercase().contains("throttl")
}

/// Whether a call reached the service: it answered, even with a refusal below 500.
pub fn reached<O, E>(result: std::result::Result<O, SdkError<E>>) -> bool {
    match result {
        Ok(_) => true,
        Err(SdkError::ServiceError(context)) => context.raw().status().as_u16() < 500,
        Err(_) => false,
    }
}

/// A retryable error with `context`.
pub fn unavailable(context: String, err: impl Into<BoxError>) -> Error {
    Error::with_source(ErrorKind::SinkUnavailable, context, err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_entry_failures_map_to_per_event_outcomes() {
        let failed = [
            EntryFailure {
                id: "1",
                sender_fault: true,
                code: "InvalidMessageContents",
                message: "bad char",
            },
            EntryFailure {
                id: "2",
                sender_fault: false,
                code: "InternalError",
                message: "try again",
            },
            EntryFailure {
                id: "3",
                sender_fault: false,
                code: "RequestThrottled",
                message: "slow down",
            },
        ];
        let outcomes = entry_outcomes("SQS", 5, ["0"], failed);
        assert_eq!(outcomes[0], Outcome::Delivered);
        assert_eq!(
            outcomes[1],
            Outcome::Refused("SQS refused the message: InvalidMessageContents: bad char".into())
        );
        assert!(matches!(&outcomes[2], Outcome::Retry(r) if r.contains("InternalError")));
        assert!(matches!(&outcomes[3], Outcome::Busy(r) if r.contains("slow down")));
        assert!(matches!(&outcomes[4], Outcome::Retry(r) if r.contains("did not report")));
    }

    #[test]
    fn whole_call_failures_refuse_push_back_or_fail_the_batch() {
        let q = "http://q/1/missing";
        let missing = classify("SQS", q, 400, "QueueDoesNotExist", "gone", "x").unwrap();
        assert_eq!(missing, Outcome::Refused(format!("SQS refused {q}: gone")));
        let slow = classify("SNS", q, 400, "Throttling", "slow", "x").unwrap();
        assert!(matches!(slow, Outcome::Busy(_)));
        let other = classify("SQS", q, 400, "UnsupportedOperation", "no", "x").unwrap();
        assert!(matches!(other, Outcome::Retry(_)));
        let denied = classify("SQS", q, 403, "AccessDenied", "no", "x").unwrap_err();
        assert!(denied.is_retryable() && denied.to_string().contains("credentials"));
        assert!(
            classify("SQS", q, 503, "ServiceUnavailable", "", "x")
                .unwrap_err()
                .is_retryable()
        );
    }
}
