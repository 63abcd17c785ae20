//! Property tests live in `tests/`. The library holds what the fuzz targets
//! (`fuzz/`) and the stable corpus replay (`tests/fuzz_corpus.rs`) share: one
//! function per decoder, in [`decoders`].

pub mod decoders;
