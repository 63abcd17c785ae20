//! `vaultfleet-net`: the fleet over the network. Replicas in different processes
//! (and datacenters) exchange raft messages over TCP, every connection
//! authenticated and encrypted with Noise (`Noise_IK_25519_ChaChaPoly_BLAKE2s`),
//! every peer's static key pinned in a [`PeerDirectory`].
//!
//! # How to use
//!
//! Each process makes a [`StaticSecret`], fills a [`PeerDirectory`] with every
//! replica's address, datacenter and public key, starts one [`NetTransport`],
//! hands it to its nodes as their [`Transport`](vaultfleet::Transport) and
//! registers each node as the inbox of its (group, replica):
//!
//! ```
//! use std::sync::Arc;
//! use vaultfleet::transport::{Envelope, Inbox};
//! use vaultfleet_net::{NetConfig, NetTransport, PeerDirectory, PeerEntry, StaticSecret};
//!
//! struct Print;
//! impl Inbox for Print {
//!     fn deliver(&self, envelope: Envelope) {
//!         println!("group {} got {:?}", envelope.group, envelope.message.get_msg_type());
//!     }
//! }
//!
//! let secret = StaticSecret::generate()?;
//! let public = secret.public_key();
//! let directory = PeerDirectory::new("fleet-1", [1], secret)?;
//! let config = NetConfig::new("127.0.0.1:0".parse()?);
//! let transport = NetTransport::start(directory, config)?;
//! transport.register(7, 1, Arc::new(Print))?;
//!
//! // Once the peers' keys and addresses are known, pin them:
//! let mut directory = (*transport.directory()).clone();
//! directory.insert(
//!     1,
//!     PeerEntry { address: transport.local_addr(), datacenter: "dc-a".into(), public_key: public },
//! )?;
//! transport.update_directory(directory)?;
//! // ... vaultfleet::Node::spawn(cfg, store, machine, Arc::new(transport.clone())) ...
//! transport.shutdown();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Design
//!
//! * [`handshake`]: Noise IK; the prologue binds the protocol version and the
//!   fleet id; the responder refuses an unpinned initiator key before decoding
//!   anything it sent; handshake payloads carry only a [`wire::hello::Hello`].
//! * [`wire`]: records (one Noise message each, `u16` length) carry frames
//!   (`u32` length, kind, clear header (group, from, to), raft message).
//! * `connection`: the checks every inbound frame passes before its raft message
//!   reaches an inbox; `link`: the bounded queue and reconnecting dialer of one
//!   peer process; [`NetTransport`]: the listener and the engine-facing handle.
//! * Snapshots travel in chunk frames (`Transport::send_snapshot`): encoded
//!   once, cut by the connection's writer, reported `Written` only once the
//!   last chunk reached the socket; the receiver reassembles them within
//!   `snapshot_bytes_max` before one whole `MsgSnapshot` is decoded.
//! * Streamed snapshots (`Transport::send_snapshot_stream`, a store with
//!   snapshot files): an open frame (descriptor and message), the file's
//!   chunks in data frames read off the reactor a chunk or two ahead, an end
//!   frame; the receiver writes each chunk into its replica's snapshot files
//!   (one chunk in memory), and delivers the message only once the file
//!   checked against the descriptor's digest (`stream`).
//! * Inbound connections handshake in a small pool of their own (capped per
//!   source address) and count as established only once a transport record
//!   decrypts; each key keeps at most its newest few connections.
//! * [`NetStats`]: every refusal and drop is counted.
//! * Remote clients: a client process proves a key the nodes' directories
//!   allow as a *client* key ([`PeerDirectory::allow_client`]; its own
//!   directory is a [`PeerDirectory::client`]) and speaks the client frames of
//!   [`wire::client`] over the same listener and handshake. The node side
//!   (`server`) answers through the engine's `NodeApi` of the nodes registered
//!   with [`NetTransport::serve_clients`]; the client side is [`remote`]:
//!   a [`RemoteNode`] per node, and [`RemoteClient::session`] for an engine
//!   `Client` over them.
//!
//! `docs/network.md` is the full manual: the wire format, what each check
//! defends against, and every limit and timeout with its default.
//!
//! # Threat model (network attacker)
//!
//! An attacker on the network can delay, drop, reorder and inject bytes and open
//! connections. Without a pinned static key it cannot complete a handshake that
//! any process accepts, cannot read or alter a session, and a replayed handshake
//! or session yields no accepted frame. A *pinned* but compromised process can
//! send only as the replicas pinned to its own key, only to replicas and groups
//! the receiver hosts; what it then sends is bounded by the frame limit and by
//! the engine's own checks on raft messages (the engine's `tests/engine/hostile_peer.rs`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod backoff;
pub mod config;
mod connection;
pub mod directory;
pub mod error;
pub mod handshake;
pub mod http;
pub mod keys;
mod link;
pub mod open;
pub mod remote;
mod server;
mod snapshot;
pub mod stats;
mod stream;
mod transport;
pub mod wire;

#[cfg(test)]
mod tests;

pub use config::NetConfig;
pub use directory::{ClientRole, PeerDirectory, PeerEntry, PROTOCOL_VERSION};
pub use error::{
    ConfigError, ConnectionError, DirectoryError, HandshakeError, KeyError, NetError, SendError,
};
pub use handshake::Role;
pub use keys::{PublicKey, StaticSecret};
pub use open::{ChannelId, OpenConnection, OpenServer};
pub use remote::{RemoteClient, RemoteConfig, RemoteError, RemoteNode};
pub use stats::NetStats;
pub use transport::NetTransport;
