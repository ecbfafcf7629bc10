//! Shared support for the integration tests.

// Each test binary compiles this module but uses only part of it.
#![allow(dead_code)]

pub mod amqp;
pub mod aws;
pub mod certs;
pub mod conformance;
pub mod conformance_aws;
pub mod conformance_cdc;
pub mod conformance_order;
pub mod consume;
pub mod disk;
pub mod events;
pub mod faults;
pub mod http;
pub mod kafka;
pub mod nats;
pub mod nats_keys;
pub mod pg;
pub mod proxy;
pub mod redis;
pub mod relay;
pub mod webhook;
