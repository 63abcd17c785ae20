//! Fuzz target `vault_message`: the body is `vaultfleet_proptests::decoders::vault_message`.
#![no_main]

use vaultfleet_proptests::decoders;

libfuzzer_sys::fuzz_target!(|data: &[u8]| decoders::vault_message(data));
