//! Fuzz target `witness_log`: the body is `vaultfleet_proptests::decoders::witness_log`.
#![no_main]

use vaultfleet_proptests::decoders;

libfuzzer_sys::fuzz_target!(|data: &[u8]| decoders::witness_log(data));
