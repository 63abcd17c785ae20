//! Property tests live in `tests/`. The library holds what the fuzz targets
//! (`fuzz/`) and the stable corpus replay (`tests/props/fuzz_corpus.rs`) share: one
//! function per decoder, in [`decoders`].

pub mod decoders;
