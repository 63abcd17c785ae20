//! Generates the Rust types of the vault's messages (`proto/vault.proto`) with the
//! pure-Rust protobuf 3 code generator: no `protoc` binary is needed.
fn main() {
    protobuf_codegen::Codegen::new()
        .pure()
        .includes(["proto"])
        .input("proto/vault.proto")
        .cargo_out_dir("protos")
        .run_from_script();
}
