//! Amazon SQS and SNS as sinks, through the AWS SDK for Rust: `[sink] type = "sqs"` sends
//! each event as a message to a queue, `type = "sns"` publishes it to a topic. Both share the
//! message mapping ([`message`]: body, attributes, FIFO group and deduplication id), the
//! batching that keeps per-key order ([`batch`]), the reading of AWS's answers ([`outcome`])
//! and the SDK set-up ([`client`]: region and credentials from the standard chain).

mod batch;
mod client;
mod config;
mod handle;
mod message;
mod outcome;
mod sns;
mod sqs;

pub use self::config::{SnsSinkConfig, SqsSinkConfig};
pub use self::handle::AwsSink;
pub use self::message::{MAX_ATTRIBUTES, MAX_MESSAGE_BYTES, OVERFLOW_ATTRIBUTE};
pub use self::sns::{SnsApi, SnsSink};
pub use self::sqs::{SqsApi, SqsSink};
