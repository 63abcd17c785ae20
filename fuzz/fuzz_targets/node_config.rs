//! Fuzz target `node_config`: the body is `vaultfleet_proptests::decoders::node_config`.
#![no_main]

use vaultfleet_proptests::decoders;

libfuzzer_sys::fuzz_target!(|data: &[u8]| decoders::node_config(data));
