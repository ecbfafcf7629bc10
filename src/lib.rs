//! outboxd: a transactional-outbox relay for PostgreSQL.
//!
//! Applications insert events into an outbox table in the same transaction as their business
//! data; outboxd moves each committed event to a sink, in order per aggregate, and marks it sent
//! only after the sink has durably confirmed it.
//!
//! The pieces: a [`source`] hands out events in order, a [`sink`] stores them durably, and the
//! [`relay`] loop between them acknowledges to the source only what the sink confirmed.

pub mod cli;
pub mod config;
pub mod dlq;
pub mod error;
pub mod event;
#[doc(hidden)]
pub mod fuzz;
pub mod http;
pub mod log;
pub mod metrics;
pub mod outbox;
pub mod pg;
pub mod progress;
pub mod relay;
pub mod retry;
pub mod secret;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod telemetry;
