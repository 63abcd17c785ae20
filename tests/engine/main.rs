//! The engine's integration tests, one module per file in one binary: one link and one copy of
//! the shared helpers instead of one per file, which is most of what
//! `scripts/test.sh` spends building from a clean target directory.
//! The two PKCS#11 suites (one SoftHSM2 library per process) stay binaries of
//! their own; the loom models are `vaultfleet-sync`'s (`sync/tests/loom.rs`).

#[path = "../core_harness/mod.rs"]
mod core_harness;
#[path = "../harness/mod.rs"]
mod harness;
#[path = "../sealed/mod.rs"]
mod sealed;

mod durability_contract;
mod early_send;
mod hostile_peer;
mod pool;
mod replica_core;
mod replication;
mod restore_off_thread;
mod sealed_storage;
mod streamed_snapshots;
