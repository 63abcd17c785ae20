//! Fuzz target `signed_note`: the body is `vaultfleet_proptests::decoders::signed_note`.
#![no_main]

use vaultfleet_proptests::decoders;

libfuzzer_sys::fuzz_target!(|data: &[u8]| decoders::signed_note(data));
