//! Fuzz target `pins`: the body is `vaultfleet_proptests::decoders::pins`.
#![no_main]

use vaultfleet_proptests::decoders;

libfuzzer_sys::fuzz_target!(|data: &[u8]| decoders::pins(data));
