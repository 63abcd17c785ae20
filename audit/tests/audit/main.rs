//! The audit layer's integration tests, one module per file in one binary: one link and one copy of
//! the shared helpers instead of one per file, which is most of what
//! `scripts/test.sh` spends building from a clean target directory.

mod cosigned_bundles;
mod cosigner;
mod deployment_evidence;
mod fleet_keys;
mod merkle_vectors;
mod signed_encodings;
mod tlog_interop;
