//! `XLogData` payloads of one replication session (see `outboxd::fuzz::pgoutput_message` for
//! the input layout), decoded as `pgoutput` messages of every kind, streamed or not, and, for a
//! row or an emitted message, turned into an event.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| outboxd::fuzz::pgoutput_message(data));
