//! Fuzz target `storage_record`: the body is `vaultfleet_proptests::decoders::storage_record`.
#![no_main]

use vaultfleet_proptests::decoders;

libfuzzer_sys::fuzz_target!(|data: &[u8]| decoders::storage_record(data));
