//! Fuzz target `raft_message`: the body is `vaultfleet_proptests::decoders::raft_message`.
#![no_main]

use vaultfleet_proptests::decoders;

libfuzzer_sys::fuzz_target!(|data: &[u8]| decoders::raft_message(data));
