//! The embedded log's record body and frame decoders (see `outboxd::fuzz`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| outboxd::fuzz::log_record(data));
