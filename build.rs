//! Generates the Rust types for our own wire messages (`proto/vaultfleet.proto`) with the
//! pure-Rust protobuf 3 code generator: no `protoc` binary is needed.
fn main() {
    protobuf_codegen::Codegen::new()
        .pure()
        .includes(["proto"])
        .input("proto/vaultfleet.proto")
        .cargo_out_dir("protos")
        .run_from_script();
}
