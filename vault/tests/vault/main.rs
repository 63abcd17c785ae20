//! The vault's integration tests, one module per file in one binary: one link and one copy of
//! the shared helpers instead of one per file, which is most of what
//! `scripts/test.sh` spends building from a clean target directory.
//! `log_redaction.rs` (it installs the process's log subscriber) and
//! `vault_pkcs11.rs` (one SoftHSM2 library per process) stay binaries of their own.

#[path = "../../../tests/harness/mod.rs"]
mod harness;

mod remote;
mod remote_processes;
mod tampering;
mod vault;
