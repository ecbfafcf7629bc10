//! What RabbitMQ will refuse in one message, checked before it is sent, and the broker's
//! refusals of one message recognised after the fact.
//!
//! A message the broker cannot take never becomes takeable by sending it again: it must be a
//! dead letter, not an outage. Sending it anyway costs more than the message: a content header
//! larger than `frame_max` makes RabbitMQ close the whole connection (`FRAME_ERROR`), and a body
//! over `max_message_size` (or a header RabbitMQ rejects, like a `CC` that is not an array)
//! closes the channel (`PRECONDITION_FAILED`), failing every other message in flight with it.

use lapin::BasicProperties;
use lapin::protocol::basic::gen_properties;
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};

/// Bytes of a frame around its payload: type (1), channel (2), size (4) and the end marker (1).
const FRAME_OVERHEAD: usize = 8;

/// Bytes of a content header's payload before the properties: class id (2), weight (2) and
/// body size (8).
const CONTENT_HEADER_FIXED: usize = 12;

/// The limits of one connection to the broker.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The negotiated largest frame, in bytes (0: no limit).
    pub frame_max: u32,
    /// The largest body the broker takes (`sink.amqp.max_message_size`).
    pub max_message_size: usize,
}

impl Limits {
    /// Why the broker would refuse a message with these `properties` and a body of `body`
    /// bytes, if it would.
    pub fn refusal(&self, properties: &BasicProperties, body: usize) -> Option<String> {
        if body > self.max_message_size {
            return Some(format!(
                "body of {body} bytes exceeds the broker's max_message_size of {} bytes \
                 (sink.amqp.max_message_size)",
                self.max_message_size
            ));
        }
        let frame_max = usize::try_from(self.frame_max).unwrap_or(usize::MAX);
        let header = match header_frame_bytes(properties) {
            Ok(bytes) => bytes,
            Err(reason) => return Some(reason),
        };
        (frame_max > 0 && header > frame_max).then(|| {
            format!(
                "content header frame of {header} bytes (properties and headers) exceeds the \
                 connection's frame_max of {frame_max} bytes; RabbitMQ cannot split it"
            )
        })
    }
}

/// Bytes of the content-header frame that carries `properties`, encoded exactly as lapin will.
fn header_frame_bytes(properties: &BasicProperties) -> Result<usize, String> {
    let written = gen_properties(properties)(Vec::new().into())
        .map_err(|err| format!("the message properties cannot be encoded: {err}"))?;
    Ok(FRAME_OVERHEAD + CONTENT_HEADER_FIXED + written.position as usize)
}

/// A close of the link by the broker while a message was being published or confirmed,
/// of a kind one message causes (see [`refused_message`]). Kept as the source of the batch's
/// error, so the sink tells it from the same codes met while connecting (a `PRECONDITION_FAILED`
/// exchange declaration is no message's fault).
#[derive(Debug, thiserror::Error)]
#[error("the broker closed the link over a message")]
pub struct ClosedOverMessage(#[source] pub lapin::Error);

/// The broker's refusal of one message in `err`, if it is one: a connection closed with
/// `FRAME_ERROR` or `SYNTAX_ERROR`, or a channel closed with `PRECONDITION_FAILED`, while
/// publishing. Such a close follows the message that caused it, so it is that message's refusal
/// (the reason quotes the broker), not an outage: sending it again would close the link again.
pub fn refused_message(err: &lapin::Error) -> Option<String> {
    let lapin::ErrorKind::ProtocolError(amqp) = err.kind() else {
        return None;
    };
    let caused_by_message = matches!(
        amqp.kind(),
        AMQPErrorKind::Hard(AMQPHardError::FRAMEERROR | AMQPHardError::SYNTAXERROR)
            | AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
    );
    caused_by_message.then(|| format!("RabbitMQ refused the message: {}", amqp.get_message()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::amqp::message::{properties, tests::event};

    /// RabbitMQ's default limits.
    const DEFAULTS: Limits = Limits {
        frame_max: 131_072,
        max_message_size: 128 << 20,
    };

    #[test]
    fn only_frame_syntax_and_precondition_closes_are_refusals_of_a_message() {
        let close = |kind| {
            lapin::Error::from(lapin::ErrorKind::ProtocolError(
                lapin::protocol::AMQPError::new(kind, "PRECONDITION_FAILED - x".into()),
            ))
        };
        let precondition = AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED);
        assert_eq!(
            refused_message(&close(precondition)).as_deref(),
            Some("RabbitMQ refused the message: PRECONDITION_FAILED - x")
        );
        let frame = AMQPErrorKind::Hard(AMQPHardError::FRAMEERROR);
        assert!(refused_message(&close(frame)).is_some());
        let missing = AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND);
        assert_eq!(refused_message(&close(missing)), None);
    }

    #[test]
    fn an_ordinary_message_fits() {
        let props = properties(&event(Some(r#"{"trace":"abc"}"#))).unwrap();
        assert_eq!(DEFAULTS.refusal(&props, 1000), None);
    }

    #[test]
    fn a_header_over_frame_max_is_refused_with_both_sizes() {
        let big = format!(r#"{{"blob":"{}"}}"#, "x".repeat(200_000));
        let props = properties(&event(Some(&big))).unwrap();
        let reason = DEFAULTS.refusal(&props, 10).unwrap();
        assert!(
            reason.starts_with("content header frame of 200"),
            "{reason}"
        );
        assert!(reason.contains("frame_max of 131072 bytes"), "{reason}");
    }

    #[test]
    fn the_header_size_is_exact_at_the_limit() {
        let props = properties(&event(None)).unwrap();
        let exact = header_frame_bytes(&props).unwrap();
        let limits = |frame_max| Limits {
            frame_max,
            ..DEFAULTS
        };
        assert_eq!(limits(exact as u32).refusal(&props, 0), None);
        assert!(limits(exact as u32 - 1).refusal(&props, 0).is_some());
        assert_eq!(limits(0).refusal(&props, 0), None, "0 means no limit");
    }

    #[test]
    fn a_body_over_max_message_size_is_refused_naming_the_key() {
        let props = properties(&event(None)).unwrap();
        let limits = Limits {
            max_message_size: 1000,
            ..DEFAULTS
        };
        assert_eq!(limits.refusal(&props, 1000), None);
        let reason = limits.refusal(&props, 1001).unwrap();
        assert_eq!(
            reason,
            "body of 1001 bytes exceeds the broker's max_message_size of 1000 bytes \
             (sink.amqp.max_message_size)"
        );
    }
}
