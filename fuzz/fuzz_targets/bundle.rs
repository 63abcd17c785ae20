//! Fuzz target `bundle`: the body is `vaultfleet_proptests::decoders::bundle`.
#![no_main]

use vaultfleet_proptests::decoders;

libfuzzer_sys::fuzz_target!(|data: &[u8]| decoders::bundle(data));
