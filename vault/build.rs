//! Generates the Rust types of the vault's messages (`proto/vault.proto`) with the
//! pure-Rust protobuf 3 code generator: no `protoc` binary is needed.
fn main() {
    // Without these, cargo reruns the script whenever any file of the package
    // changes (a test, an example), and every crate above the vault rebuilds.
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=proto/vault.proto");
    protobuf_codegen::Codegen::new()
        .pure()
        .includes(["proto"])
        .input("proto/vault.proto")
        .cargo_out_dir("protos")
        .run_from_script();
}
