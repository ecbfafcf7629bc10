//! The sink conformance suite (tests/common/conformance.rs) against SNS as the `moto` emulator
//! serves it: a standard topic per test, read back through an SQS queue subscribed to it
//! (tests/common/conformance_aws.rs).

mod common;

common::conformance::suite!(common::conformance_aws::AwsSink<true>);
