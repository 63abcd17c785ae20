//! Fuzz target `tlog_tiles`: the body is `vaultfleet_proptests::decoders::tlog_tiles`.
#![no_main]

use vaultfleet_proptests::decoders;

libfuzzer_sys::fuzz_target!(|data: &[u8]| decoders::tlog_tiles(data));
