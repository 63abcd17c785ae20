//! Fuzz target `net_hello`: the body is `vaultfleet_proptests::decoders::net_hello`.
#![no_main]

use vaultfleet_proptests::decoders;

libfuzzer_sys::fuzz_target!(|data: &[u8]| decoders::net_hello(data));
