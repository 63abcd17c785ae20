//! `vaultfleet-tlog`: the witness's log in public, the way the transparency
//! ecosystem expects it, so tools and witnesses that are not ours can check it.
//!
//! * [`log_server`]: `vaultfleet witness serve`: each namespace of the witness's
//!   log as C2SP tlog-tiles over HTTP (checkpoint, hash tiles, entry bundles),
//!   the operator's signed submissions, and cosignatures collected from
//!   independent witnesses with C2SP tlog-witness `add-checkpoint`.
//! * [`cosigner_server`]: `vaultfleet cosigner serve`: such an independent
//!   witness (the sans-IO rules are `vaultfleet_audit::cosigner`).
//! * [`walk`]: the auditor's side: fetch a served log, check every entry, every
//!   checkpoint and their consistency, and a bundle's inclusion.
//! * [`submit`]: the operator's side of a submission.
//! * [`client`]: the small HTTP/1 client all of that uses.
//!
//! The formats and rules are in `vaultfleet-audit` (sans-IO: `tiles`,
//! `cosigner`, `note`, `submission`); this crate adds sockets, HTTP and time.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod cosigner_server;
pub mod log_server;
mod server;
pub mod submit;
pub mod walk;

use std::net::SocketAddr;

pub use client::{BaseUrl, HttpError};
pub use cosigner_server::CosignerServer;
pub use log_server::{CosignerEndpoint, LogConfig, LogServer};

/// A server that could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// What the socket reported.
        #[source]
        source: std::io::Error,
    },
    /// The runtime or the server thread could not start.
    #[error("cannot start the server's runtime: {source}")]
    Runtime {
        /// What the OS reported.
        #[source]
        source: std::io::Error,
    },
    /// The witness could not rebuild or sign its published state.
    #[error("the witness: {0}")]
    Witness(#[from] vaultfleet_audit::WitnessError),
    /// Two cosigners share a name or a key ID.
    #[error("two cosigners are named {0:?} or share its key ID: list each once")]
    DuplicateCosigner(String),
    /// A cosigner's key is not a `cosignature/v1` key.
    #[error("cosigner {0:?}: its key is not a cosignature/v1 key (algorithm 0x04); use the key `vaultfleet cosigner init` prints")]
    NotACosignatureKey(String),
    /// A log leaf could not be published as tiles.
    #[error("publishing the log as tiles: {0}")]
    Tiles(#[from] vaultfleet_audit::tiles::TileError),
}

/// Seconds since the Unix epoch, by this machine's clock (0 before 1970).
// The servers sign with the time of day: this is the runtime, not the core.
#[allow(clippy::disallowed_methods)]
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
