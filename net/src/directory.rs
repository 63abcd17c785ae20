//! [`PeerDirectory`]: who is who on the fleet's network. It pins every replica id
//! to the address, datacenter and static X25519 key of the process hosting it,
//! and holds this process's own replica ids and private key, the fleet id and the
//! protocol version (both bound into every handshake's prologue).
//!
//! It also holds the static keys of the client processes allowed to send client
//! requests (`docs/network.md`, "Remote clients"). A client process has a
//! directory of its own, made with [`PeerDirectory::client`]: no local replica,
//! the fleet's replicas pinned as usual (they are what it dials).
//!
//! An engine user fills it by hand; the vault layer will fill it from the accepted
//! fleet artifact's transport keys. Invariants kept by every constructor and
//! mutator: no replica id is 0; every local id that is also listed is pinned to
//! this process's own key; all replicas pinned to one key (one process) share one
//! address, so a key names exactly one place to dial; a peer key may also be
//! allowed as a [`ClientRole::Service`] client's (a node's own vault service
//! proposes through its peers as a client, proving its one transport key; the
//! handshake's hello says which role a connection takes), but never as an
//! [`ClientRole::Admin`] client's; this process's own key is neither.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use vaultfleet::ReplicaId;

use crate::error::DirectoryError;
use crate::keys::{PublicKey, StaticSecret};
use crate::wire::hello::HELLO_IDS_MAX;

/// The protocol version this build speaks (bound into the handshake prologue).
/// Version 2 added the frame limit to the handshake's hello; version 3 the
/// client-protocol errors `Forbidden` and `ReplyTooLarge` (client roles); version 4
/// the leader's per-follower progress, the replica's state digests and its host's
/// HSM and disk health in a reply's status, the state digest marker op, and the
/// membership refusal `NotInAcceptedFleet`.
pub const PROTOCOL_VERSION: u32 = 4;

/// Longest fleet id, in bytes (the fleet artifact's limit for text).
pub const FLEET_ID_BYTES_MAX: usize = 255;

/// Longest datacenter label, in bytes.
pub const DATACENTER_BYTES_MAX: usize = 255;

/// What an allowed client key may ask of the fleet's nodes.
///
/// A client key is a replica-host credential (`docs/network.md`, "Remote
/// clients"): give it only to the fleet's own service processes, never to user
/// devices. Every role may propose any state-machine command, read, register
/// sessions and ask for a node's status; only [`Admin`](Self::Admin) may change
/// membership or transfer leadership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum ClientRole {
    /// Proposals, reads, session registrations and status requests.
    Service,
    /// Everything a service may do, plus membership changes and leadership
    /// transfers.
    Admin,
}

impl ClientRole {
    /// True if this role may change membership and transfer leadership.
    pub fn is_admin(self) -> bool {
        matches!(self, ClientRole::Admin)
    }
}

/// Where a replica lives and which key its process proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerEntry {
    /// The address its process listens on.
    pub address: SocketAddr,
    /// Its datacenter label.
    pub datacenter: String,
    /// Its process's static X25519 public key.
    pub public_key: PublicKey,
}

/// The pins of one fleet as seen by one process.
#[derive(Debug, Clone)]
pub struct PeerDirectory {
    fleet_id: String,
    protocol_version: u32,
    local_ids: BTreeSet<ReplicaId>,
    secret: StaticSecret,
    peers: BTreeMap<ReplicaId, PeerEntry>,
    clients: BTreeMap<PublicKey, ClientRole>,
    client_process: bool,
}

/// `fleet_id` if its length is within 1..=[`FLEET_ID_BYTES_MAX`].
fn checked_fleet_id(fleet_id: String) -> Result<String, DirectoryError> {
    if fleet_id.is_empty() || fleet_id.len() > FLEET_ID_BYTES_MAX {
        return Err(DirectoryError::FleetIdLength {
            len: fleet_id.len(),
        });
    }
    Ok(fleet_id)
}

impl PeerDirectory {
    /// A directory for fleet `fleet_id` in which this process, proving `secret`,
    /// hosts `local_ids`; add the fleet's replicas with [`insert`](Self::insert).
    pub fn new(
        fleet_id: impl Into<String>,
        local_ids: impl IntoIterator<Item = ReplicaId>,
        secret: StaticSecret,
    ) -> Result<Self, DirectoryError> {
        let fleet_id = checked_fleet_id(fleet_id.into())?;
        let local_ids: BTreeSet<ReplicaId> = local_ids.into_iter().collect();
        if local_ids.is_empty() {
            return Err(DirectoryError::NoLocalIds);
        }
        if local_ids.len() > HELLO_IDS_MAX {
            return Err(DirectoryError::TooManyLocalIds {
                count: local_ids.len(),
                max: HELLO_IDS_MAX,
            });
        }
        if local_ids.contains(&0) {
            return Err(DirectoryError::ZeroId);
        }
        Ok(Self {
            fleet_id,
            protocol_version: PROTOCOL_VERSION,
            local_ids,
            secret,
            peers: BTreeMap::new(),
            clients: BTreeMap::new(),
            client_process: false,
        })
    }

    /// The directory of a *client* process of fleet `fleet_id`, proving
    /// `secret`: it hosts no replica and says so in its handshakes; pin the
    /// fleet's replicas (the nodes it dials) with [`insert`](Self::insert). The
    /// nodes' directories must list its key with
    /// [`allow_client`](Self::allow_client). A transport cannot be started
    /// with it.
    pub fn client(
        fleet_id: impl Into<String>,
        secret: StaticSecret,
    ) -> Result<Self, DirectoryError> {
        let fleet_id = checked_fleet_id(fleet_id.into())?;
        Ok(Self {
            fleet_id,
            protocol_version: PROTOCOL_VERSION,
            local_ids: BTreeSet::new(),
            secret,
            peers: BTreeMap::new(),
            clients: BTreeMap::new(),
            client_process: true,
        })
    }

    /// True for a client process's directory (made with [`client`](Self::client)).
    pub fn is_client(&self) -> bool {
        self.client_process
    }

    /// Allows the client process proving `key` to send client requests, as a
    /// [`ClientRole::Service`] (no membership changes, no leadership
    /// transfers). This process's own key cannot be a client's; a key pinned
    /// to a replica can (a peer's vault service proposing through this node).
    pub fn allow_client(&mut self, key: PublicKey) -> Result<(), DirectoryError> {
        self.allow_client_as(key, ClientRole::Service)
    }

    /// Allows the client process proving `key` to send client requests in
    /// `role` (replacing its earlier role). This process's own key cannot be a
    /// client's, and a key pinned to a replica only a [`ClientRole::Service`]
    /// client's (a peer's vault service), never an admin's.
    pub fn allow_client_as(
        &mut self,
        key: PublicKey,
        role: ClientRole,
    ) -> Result<(), DirectoryError> {
        let pinned_peer = self.peers.values().any(|e| e.public_key == key);
        if key == self.secret.public_key() || (pinned_peer && role.is_admin()) {
            return Err(DirectoryError::KeyRoleConflict { key });
        }
        self.clients.insert(key, role);
        Ok(())
    }

    /// Withdraws a client key; returns whether it was allowed. Connections
    /// authenticated with it close when the directory is updated.
    pub fn remove_client(&mut self, key: &PublicKey) -> bool {
        self.clients.remove(key).is_some()
    }

    /// True if `key` is an allowed client key.
    pub fn is_pinned_client(&self, key: &PublicKey) -> bool {
        self.clients.contains_key(key)
    }

    /// The role of client key `key`, if it is allowed.
    pub fn client_role(&self, key: &PublicKey) -> Option<ClientRole> {
        self.clients.get(key).copied()
    }

    /// Every allowed client key.
    pub fn clients(&self) -> impl Iterator<Item = &PublicKey> {
        self.clients.keys()
    }

    /// The same directory speaking another protocol version (tests of version
    /// mismatch, and rolling upgrades once there is a second version).
    pub fn with_protocol_version(mut self, version: u32) -> Self {
        self.protocol_version = version;
        self
    }

    /// Pins replica `id` to `entry` (replacing an earlier pin).
    pub fn insert(&mut self, id: ReplicaId, entry: PeerEntry) -> Result<(), DirectoryError> {
        if id == 0 {
            return Err(DirectoryError::ZeroId);
        }
        if entry.datacenter.len() > DATACENTER_BYTES_MAX {
            return Err(DirectoryError::DatacenterLength {
                id,
                len: entry.datacenter.len(),
            });
        }
        if self.local_ids.contains(&id) && entry.public_key != self.secret.public_key() {
            return Err(DirectoryError::LocalKeyMismatch {
                id,
                pinned: entry.public_key,
            });
        }
        if !self.client_process
            && !self.local_ids.contains(&id)
            && entry.public_key == self.secret.public_key()
        {
            return Err(DirectoryError::ForeignIdOnOwnKey { id });
        }
        if self
            .clients
            .get(&entry.public_key)
            .is_some_and(|role| role.is_admin())
        {
            return Err(DirectoryError::KeyRoleConflict {
                key: entry.public_key,
            });
        }
        if let Some((&other, _)) = self.peers.iter().find(|(&o, e)| {
            o != id && e.public_key == entry.public_key && e.address != entry.address
        }) {
            return Err(DirectoryError::AddressConflict {
                key: entry.public_key,
                first: other,
                second: id,
            });
        }
        self.peers.insert(id, entry);
        Ok(())
    }

    /// Unpins replica `id`.
    pub fn remove(&mut self, id: ReplicaId) -> Option<PeerEntry> {
        self.peers.remove(&id)
    }

    /// The pin of replica `id`.
    pub fn peer(&self, id: ReplicaId) -> Option<&PeerEntry> {
        self.peers.get(&id)
    }

    /// Every pinned replica.
    pub fn peers(&self) -> impl Iterator<Item = (ReplicaId, &PeerEntry)> {
        self.peers.iter().map(|(&id, e)| (id, e))
    }

    /// The fleet id.
    pub fn fleet_id(&self) -> &str {
        &self.fleet_id
    }

    /// The protocol version.
    pub fn protocol_version(&self) -> u32 {
        self.protocol_version
    }

    /// The replica ids this process hosts.
    pub fn local_ids(&self) -> &BTreeSet<ReplicaId> {
        &self.local_ids
    }

    /// True if this process hosts replica `id`.
    pub fn is_local(&self, id: ReplicaId) -> bool {
        self.local_ids.contains(&id)
    }

    /// This process's public key.
    pub fn local_public_key(&self) -> PublicKey {
        self.secret.public_key()
    }

    pub(crate) fn secret(&self) -> &StaticSecret {
        &self.secret
    }

    /// The key replica `id` is pinned to, if any.
    pub fn key_of(&self, id: ReplicaId) -> Option<PublicKey> {
        self.peers.get(&id).map(|e| e.public_key)
    }

    /// True if `key` is pinned to at least one replica this process does not
    /// host: the keys a connection may be authenticated with.
    pub fn is_pinned_peer(&self, key: &PublicKey) -> bool {
        *key != self.secret.public_key() && self.peers.values().any(|e| e.public_key == *key)
    }

    /// The address of the process proving `key`.
    pub fn address_of(&self, key: &PublicKey) -> Option<SocketAddr> {
        self.peers
            .values()
            .find(|e| e.public_key == *key)
            .map(|e| e.address)
    }

    /// Checks that `next` can replace this directory: same fleet, version and key.
    pub(crate) fn check_update(&self, next: &PeerDirectory) -> Result<(), DirectoryError> {
        if next.fleet_id != self.fleet_id
            || next.protocol_version != self.protocol_version
            || next.secret.public_key() != self.secret.public_key()
            || next.client_process != self.client_process
        {
            return Err(DirectoryError::IdentityChanged);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(port: u16, key: PublicKey) -> PeerEntry {
        PeerEntry {
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            datacenter: "dc-a".into(),
            public_key: key,
        }
    }

    #[test]
    fn the_directory_refuses_what_would_make_a_pin_ambiguous() {
        let own = StaticSecret::generate().unwrap();
        let other = StaticSecret::generate().unwrap().public_key();
        let mut dir = PeerDirectory::new("fleet", [1], own.clone()).unwrap();
        assert_eq!(
            dir.insert(1, entry(1, other)),
            Err(DirectoryError::LocalKeyMismatch {
                id: 1,
                pinned: other
            })
        );
        dir.insert(1, entry(1, own.public_key())).unwrap();
        assert_eq!(
            dir.insert(5, entry(1, own.public_key())),
            Err(DirectoryError::ForeignIdOnOwnKey { id: 5 }),
            "a replica this process does not host cannot be pinned to its key"
        );
        dir.insert(2, entry(2, other)).unwrap();
        assert!(matches!(
            dir.insert(3, entry(3, other)),
            Err(DirectoryError::AddressConflict { .. })
        ));
        dir.insert(3, entry(2, other)).unwrap();
        assert_eq!(dir.insert(0, entry(2, other)), Err(DirectoryError::ZeroId));
        assert!(dir.is_pinned_peer(&other));
        assert!(
            !dir.is_pinned_peer(&own.public_key()),
            "this process's own key never authenticates a peer"
        );
        assert_eq!(
            PeerDirectory::new("", [1], own.clone()).err(),
            Some(DirectoryError::FleetIdLength { len: 0 })
        );
        assert_eq!(
            PeerDirectory::new("f", [], own.clone()).err(),
            Some(DirectoryError::NoLocalIds)
        );
        let client = StaticSecret::generate().unwrap().public_key();
        dir.allow_client(other).unwrap();
        assert!(
            dir.is_pinned_peer(&other) && dir.is_pinned_client(&other),
            "a peer key may be a service client's (its node's vault service)"
        );
        assert_eq!(dir.client_role(&other), Some(ClientRole::Service));
        dir.insert(3, entry(2, other)).unwrap();
        assert!(dir.remove_client(&other));
        assert_eq!(
            dir.allow_client(own.public_key()),
            Err(DirectoryError::KeyRoleConflict {
                key: own.public_key()
            })
        );
        dir.allow_client(client).unwrap();
        assert!(dir.is_pinned_client(&client) && !dir.is_pinned_peer(&client));
        assert_eq!(dir.client_role(&client), Some(ClientRole::Service));
        dir.allow_client_as(client, ClientRole::Admin).unwrap();
        assert_eq!(dir.client_role(&client), Some(ClientRole::Admin));
        assert_eq!(
            dir.allow_client_as(other, ClientRole::Admin),
            Err(DirectoryError::KeyRoleConflict { key: other }),
            "a peer key is never an admin client key either"
        );
        assert_eq!(
            dir.insert(4, entry(4, client)),
            Err(DirectoryError::KeyRoleConflict { key: client }),
            "a client key is never a peer key"
        );
        assert!(dir.remove_client(&client));
        assert!(!dir.is_pinned_client(&client));
        let as_client = PeerDirectory::client("fleet", own.clone()).unwrap();
        assert!(as_client.is_client() && as_client.local_ids().is_empty());
        assert_eq!(
            dir.check_update(&as_client),
            Err(DirectoryError::IdentityChanged)
        );
        let renamed = PeerDirectory::new("other fleet", [1], own).unwrap();
        assert_eq!(
            dir.check_update(&renamed),
            Err(DirectoryError::IdentityChanged)
        );
    }
}
