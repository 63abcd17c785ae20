//! The network pins of a fleet, from the fleet artifact a deployment accepted:
//! every replica's transport key and datacenter, as the witness logged and the
//! operator countersigned them, at the addresses the operator's configuration
//! gives. The net crate does not know the audit crate; the vault layer joins
//! them here, so the keys a replica pins for its peers are exactly the keys an
//! auditor checks.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use vaultfleet::ReplicaId;
use vaultfleet_audit::fleet::FleetArtifact;
use vaultfleet_net::{DirectoryError, PeerDirectory, PeerEntry, PublicKey, StaticSecret};

/// Why a fleet artifact and an address book do not make a directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeersError {
    /// A replica of the artifact has no address in the address book.
    #[error("replica {replica} of fleet epoch {epoch} has no address: add it to the address book")]
    NoAddress {
        /// The replica.
        replica: ReplicaId,
        /// The artifact's epoch.
        epoch: u64,
    },
    /// The address book names a replica the artifact does not list (a stale or
    /// mistyped configuration; it would be pinned to nothing).
    #[error("the address book names replica {replica}, which fleet epoch {epoch} does not list")]
    NotInFleet {
        /// The replica.
        replica: ReplicaId,
        /// The artifact's epoch.
        epoch: u64,
    },
    /// A replica this process hosts is not in the artifact.
    #[error("this process hosts replica {replica}, which fleet epoch {epoch} does not list")]
    LocalNotInFleet {
        /// The replica.
        replica: ReplicaId,
        /// The artifact's epoch.
        epoch: u64,
    },
    /// A replica this process hosts is listed with another transport key than
    /// this process's own: the wrong key file, or the wrong artifact.
    #[error("fleet epoch {epoch} lists replica {replica} with another transport key than this process's own")]
    LocalKeyMismatch {
        /// The replica.
        replica: ReplicaId,
        /// The artifact's epoch.
        epoch: u64,
    },
    /// The directory refused an entry.
    #[error(transparent)]
    Directory(#[from] DirectoryError),
}

/// The directory of a process hosting `local` replicas with `secret`, pinning
/// every replica of `artifact` to its transport key and datacenter at the
/// address `addresses` gives. Every replica of the artifact needs an address,
/// and the address book names no other; the local replicas must be listed with
/// this process's own key. Rebuild it (and hand it to the transport's
/// `update_directory`) when a new epoch is accepted: a replica the new epoch
/// drops, or whose key it changes, is cut off.
pub fn peer_directory(
    artifact: &FleetArtifact,
    local: &[ReplicaId],
    secret: StaticSecret,
    addresses: &BTreeMap<ReplicaId, SocketAddr>,
) -> Result<PeerDirectory, PeersError> {
    let epoch = artifact.epoch;
    if let Some(&replica) = addresses.keys().find(|id| artifact.replica(**id).is_none()) {
        return Err(PeersError::NotInFleet { replica, epoch });
    }
    let own = secret.public_key();
    for &replica in local {
        match artifact.replica(replica) {
            None => return Err(PeersError::LocalNotInFleet { replica, epoch }),
            Some(r) if PublicKey::from_bytes(r.transport_key) != own => {
                return Err(PeersError::LocalKeyMismatch { replica, epoch })
            }
            Some(_) => {}
        }
    }
    let mut directory =
        PeerDirectory::new(artifact.fleet_id.clone(), local.iter().copied(), secret)?;
    for r in &artifact.replicas {
        let address = *addresses.get(&r.id).ok_or(PeersError::NoAddress {
            replica: r.id,
            epoch,
        })?;
        directory.insert(
            r.id,
            PeerEntry {
                address,
                datacenter: r.datacenter.clone(),
                public_key: PublicKey::from_bytes(r.transport_key),
            },
        )?;
    }
    Ok(directory)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vaultfleet_audit::fleet::ReplicaKeys;

    fn secret(seed: u8) -> StaticSecret {
        StaticSecret::from_bytes(zeroize::Zeroizing::new([seed; 32])).expect("a key")
    }

    fn artifact(keys: &[(ReplicaId, PublicKey)]) -> FleetArtifact {
        let replicas: Vec<ReplicaKeys> = keys
            .iter()
            .map(|&(id, key)| ReplicaKeys {
                id,
                datacenter: format!("dc-{id}"),
                response_key: [id as u8; 32],
                transport_key: *key.as_bytes(),
                opaque_key: [0; 32],
            })
            .collect();
        FleetArtifact {
            fleet_id: "fleet".into(),
            epoch: 3,
            voters: replicas.iter().map(|r| r.id).collect(),
            replicas,
            learners: vec![],
            not_before: 0,
            not_after: 1,
        }
    }

    fn addresses(ids: &[ReplicaId]) -> BTreeMap<ReplicaId, SocketAddr> {
        ids.iter()
            .map(|&id| (id, SocketAddr::from(([127, 0, 0, 1], 7000 + id as u16))))
            .collect()
    }

    #[test]
    fn every_replica_is_pinned_to_the_artifacts_transport_key() {
        let keys: Vec<(ReplicaId, PublicKey)> = (1..=3)
            .map(|id| (id, secret(id as u8).public_key()))
            .collect();
        let a = artifact(&keys);
        let d = peer_directory(&a, &[1], secret(1), &addresses(&[1, 2, 3])).expect("directory");
        for (id, key) in keys {
            assert_eq!(d.key_of(id), Some(key));
            assert_eq!(
                d.peer(id).map(|p| p.datacenter.as_str()),
                Some(format!("dc-{id}").as_str())
            );
        }
        assert_eq!(d.fleet_id(), "fleet");
    }

    #[test]
    fn a_mismatched_artifact_or_address_book_is_refused() {
        let keys: Vec<(ReplicaId, PublicKey)> = (1..=3)
            .map(|id| (id, secret(id as u8).public_key()))
            .collect();
        let a = artifact(&keys);
        assert!(matches!(
            peer_directory(&a, &[1], secret(9), &addresses(&[1, 2, 3])),
            Err(PeersError::LocalKeyMismatch {
                replica: 1,
                epoch: 3
            })
        ));
        assert!(matches!(
            peer_directory(&a, &[4], secret(1), &addresses(&[1, 2, 3])),
            Err(PeersError::LocalNotInFleet { replica: 4, .. })
        ));
        assert!(matches!(
            peer_directory(&a, &[1], secret(1), &addresses(&[1, 2])),
            Err(PeersError::NoAddress { replica: 3, .. })
        ));
        assert!(matches!(
            peer_directory(&a, &[1], secret(1), &addresses(&[1, 2, 3, 4])),
            Err(PeersError::NotInFleet { replica: 4, .. })
        ));
    }
}
