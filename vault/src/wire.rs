//! The Backup Key Vault's messages, generated from `proto/vault.proto` by pure-Rust
//! protobuf 3 codegen (no `protoc` binary is needed), and the engine's typed
//! decode / encode helpers that every vault message goes through.

#[allow(missing_docs, clippy::all, clippy::pedantic, unused_qualifications)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/protos/mod.rs"));
}

pub use generated::vault::*;
pub use vaultfleet::wire::{decode, decode_whole, encode, encode_bounded, DecodeError};
