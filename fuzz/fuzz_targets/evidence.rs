//! Fuzz target `evidence`: the body is `vaultfleet_proptests::decoders::evidence`.
#![no_main]

use vaultfleet_proptests::decoders;

libfuzzer_sys::fuzz_target!(|data: &[u8]| decoders::evidence(data));
