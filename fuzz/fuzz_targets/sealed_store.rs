//! Fuzz target `sealed_store`: the body is `vaultfleet_proptests::decoders::sealed_store`.
#![no_main]

use vaultfleet_proptests::decoders;

libfuzzer_sys::fuzz_target!(|data: &[u8]| decoders::sealed_store(data));
