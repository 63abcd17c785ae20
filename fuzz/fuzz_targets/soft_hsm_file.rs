//! Fuzz target `soft_hsm_file`: the body is `vaultfleet_proptests::decoders::soft_hsm_file`.
#![no_main]

use vaultfleet_proptests::decoders;

libfuzzer_sys::fuzz_target!(|data: &[u8]| decoders::soft_hsm_file(data));
