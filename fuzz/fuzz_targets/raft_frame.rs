//! Fuzz target `raft_frame`: the body is `vaultfleet_proptests::decoders::raft_frame`.
#![no_main]

use vaultfleet_proptests::decoders;

libfuzzer_sys::fuzz_target!(|data: &[u8]| decoders::raft_frame(data));
