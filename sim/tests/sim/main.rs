//! The simulator's integration tests, one module per file in one binary: one link and one copy of
//! the shared helpers instead of one per file, which is most of what
//! `scripts/test.sh` spends building from a clean target directory.

mod checkers;
mod cli;
mod determinism;
mod epochs;
mod membership;
mod shrink;
mod streamed;
mod swarm;
mod vault_attacker;
