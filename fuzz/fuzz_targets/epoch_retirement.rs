//! Fuzz target `epoch_retirement`: the body is `vaultfleet_proptests::decoders::epoch_retirement`.
#![no_main]

use vaultfleet_proptests::decoders;

libfuzzer_sys::fuzz_target!(|data: &[u8]| decoders::epoch_retirement(data));
