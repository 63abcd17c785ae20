//! Fuzz target `entry_payload`: the body is `vaultfleet_proptests::decoders::entry_payload`.
#![no_main]

use vaultfleet_proptests::decoders;

libfuzzer_sys::fuzz_target!(|data: &[u8]| decoders::entry_payload(data));
