//! Fuzz target `net_client_frame`: the body is `vaultfleet_proptests::decoders::net_client_frame`.
#![no_main]

use vaultfleet_proptests::decoders;

libfuzzer_sys::fuzz_target!(|data: &[u8]| decoders::net_client_frame(data));
