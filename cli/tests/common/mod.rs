//! What the `vaultfleet` binary's flow tests share: run the binary, require
//! success, and name files in a test's folder.

use std::path::Path;
use std::process::Command;

/// The `vaultfleet` binary under test.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vaultfleet"))
}

/// Runs `vaultfleet ARGS`: whether it succeeded, and its stdout then stderr.
pub fn run(args: &[&str]) -> (bool, String) {
    let out = bin().args(args).output().expect("run vaultfleet");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs `vaultfleet ARGS`, which must succeed; its output.
pub fn ok(args: &[&str]) -> String {
    let (success, text) = run(args);
    assert!(success, "vaultfleet {args:?} failed:\n{text}");
    text
}

/// `dir/rest` as a string argument.
pub fn p(dir: &Path, rest: &str) -> String {
    dir.join(rest).display().to_string()
}
