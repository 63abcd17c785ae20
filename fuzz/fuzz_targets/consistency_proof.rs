//! Fuzz target `consistency_proof`: the body is `vaultfleet_proptests::decoders::consistency_proof`.
#![no_main]

use vaultfleet_proptests::decoders;

libfuzzer_sys::fuzz_target!(|data: &[u8]| decoders::consistency_proof(data));
