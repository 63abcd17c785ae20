//! Generates the Rust types for our own wire messages (`proto/vaultfleet.proto`) with the
//! pure-Rust protobuf 3 code generator: no `protoc` binary is needed.
//!
//! The payload fields a command carries from the client to the state machine and
//! back (`Request.command`, `Request.owner`, `CachedResponse.response`) are
//! generated as `bytes::Bytes`: a command is copied once, when it is encoded into
//! its log entry, and every replica decodes it as a slice of that entry
//! (`parse_from_tokio_bytes`); a cached response is shared, not cloned.

use protobuf::reflect::FieldDescriptor;
use protobuf_codegen::{Customize, CustomizeCallback};

/// The fields generated as `bytes::Bytes`, as `package.Message.field` (full
/// names, so that no other message of the same short name is caught).
const SHARED_BYTES_FIELDS: [&str; 3] = [
    "vaultfleet.wire.Request.command",
    "vaultfleet.wire.Request.owner",
    "vaultfleet.wire.CachedResponse.response",
];

struct SharedPayloads;

impl CustomizeCallback for SharedPayloads {
    fn field(&self, field: &FieldDescriptor) -> Customize {
        let name = format!(
            "{}.{}",
            field.containing_message().full_name(),
            field.name()
        );
        Customize::default().tokio_bytes(SHARED_BYTES_FIELDS.contains(&name.as_str()))
    }
}

fn main() {
    // Without these, cargo reruns the script whenever any file of the package
    // changes (a test, a doc), and every crate above the engine rebuilds.
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=proto/vaultfleet.proto");
    protobuf_codegen::Codegen::new()
        .pure()
        .includes(["proto"])
        .input("proto/vaultfleet.proto")
        .cargo_out_dir("protos")
        .customize_callback(SharedPayloads)
        .run_from_script();
}
