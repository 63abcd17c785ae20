//! Fuzz target `submission`: the body is `vaultfleet_proptests::decoders::submission`.
#![no_main]

use vaultfleet_proptests::decoders;

libfuzzer_sys::fuzz_target!(|data: &[u8]| decoders::submission(data));
