//! Fuzz target `vault_machine`: the body is `vaultfleet_proptests::decoders::vault_machine`.
#![no_main]

use vaultfleet_proptests::decoders;

libfuzzer_sys::fuzz_target!(|data: &[u8]| decoders::vault_machine(data));
