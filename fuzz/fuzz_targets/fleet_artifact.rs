//! Fuzz target `fleet_artifact`: the body is `vaultfleet_proptests::decoders::fleet_artifact`.
#![no_main]

use vaultfleet_proptests::decoders;

libfuzzer_sys::fuzz_target!(|data: &[u8]| decoders::fleet_artifact(data));
