//! The sink conformance suite (tests/common/conformance.rs) against SQS as the `moto` emulator
//! serves it: a standard queue per test (tests/common/conformance_aws.rs).

mod common;

common::conformance::suite!(common::conformance_aws::AwsSink<false>);
