//! One `XLogData` payload of the replication stream, decoded as a `pgoutput` message and, for
//! an insert or an emitted message, turned into an event (see `outboxd::fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| outboxd::fuzz::pgoutput_message(data));
