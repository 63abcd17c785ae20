//! Fuzz target `add_checkpoint`: the body is `vaultfleet_proptests::decoders::add_checkpoint`.
#![no_main]

use vaultfleet_proptests::decoders;

libfuzzer_sys::fuzz_target!(|data: &[u8]| decoders::add_checkpoint(data));
