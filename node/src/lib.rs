//! The vaultfleet node daemon as a library: what `vaultfleet node run` and
//! `vaultfleet admin` are made of.
//!
//! - [`config`]: the node's TOML config (every field documented, unknown
//!   fields refused) and its validation.
//! - [`files`]: opening input files safely (regular files only, never a
//!   FIFO; the config's owner and folder) and writing small state files.
//! - [`hsm`]: the node's HSM, a soft key file or a PKCS#11 token whose PIN
//!   comes from a file or an environment variable, never from the config.
//! - [`run`]: a running node: the replica on its sealed sled store, the
//!   network transport, the vault service and its listener, the served
//!   validation bundle, and the graceful stop on SIGTERM.
//! - [`served_log`]: the served witness log (`[vault] witness_log_url`):
//!   fetched and checked, extending the checkpoint accepted before (kept in
//!   the data directory with a verified copy of the log, and the evidence of
//!   a fork).
//! - [`admin`]: the operator's calls over Noise IK with a pinned admin key.
//! - [`metrics`]: the Prometheus endpoint, `/healthz` and `/readyz`.
//! - [`testbed`]: a whole local fleet generated into a folder (configs, soft
//!   HSMs, keys, a witnessed bundle), for trying the daemon and for tests.
//! - [`logging`]: tracing-subscriber set-up shared by every binary (text or
//!   JSON).

pub mod admin;
pub mod config;
pub mod files;
pub mod hsm;
pub mod logging;
pub mod metrics;
pub mod run;
pub mod served_log;
pub mod testbed;
