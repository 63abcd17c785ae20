//! One user's state in the [`BackupVault`](super::BackupVault): its standing
//! (registered with a record, locked after its last attempt, or deleted), the
//! tables kept across registrations, and their conversion to and from the
//! snapshot's `VaultUserState`. A locked user with a record cannot be built.

use sha2::{Digest, Sha256};

use super::{FIELD_MAX, REGISTRATIONS_MAX, SEEN_MAX};
use crate::limits::MAX_ATTEMPTS_LIMIT;
use crate::user_id::UserId;
use crate::wire::{VaultRecord, VaultSeen, VaultUserState};
use vaultfleet::state_machine::RestoreError;

/// The length of a record digest, in bytes.
const RECORD_DIGEST_BYTES: usize = 32;

/// Where a user stands.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Standing {
    /// A record is stored; its `generation` is the user's.
    Registered {
        /// The OPAQUE record, the sealed secret and the attempt counter.
        record: VaultRecord,
    },
    /// The record was erased by the consume of `ticket`, its last
    /// attempt; only that attempt's login can put it back, with the very record
    /// whose digest is `digest`.
    Locked {
        /// The generation that was erased.
        generation: u64,
        /// The erasing consume's ticket.
        ticket: u64,
        /// [`record_digest`] of the erased record.
        digest: [u8; RECORD_DIGEST_BYTES],
    },
    /// No record: deleted by its owner, or never registered (generation 0).
    Deleted {
        /// The last generation registered (the next one gets this plus one).
        generation: u64,
    },
}

impl Default for Standing {
    fn default() -> Self {
        Standing::Deleted { generation: 0 }
    }
}

impl Standing {
    /// The user's current (or last) registration generation.
    pub(super) fn generation(&self) -> u64 {
        match self {
            Standing::Registered { record } => record.generation,
            Standing::Locked { generation, .. } | Standing::Deleted { generation } => *generation,
        }
    }

    /// Erases the record after its last attempt, spent by the consume at
    /// `ticket`, and returns it; `None` (nothing changes) unless registered.
    pub(super) fn erase(&mut self, ticket: u64) -> Option<VaultRecord> {
        let Standing::Registered { record } = self else {
            return None;
        };
        let locked = Standing::Locked {
            generation: record.generation,
            ticket,
            digest: record_digest(record),
        };
        match std::mem::replace(self, locked) {
            Standing::Registered { record } => Some(record),
            Standing::Locked { .. } | Standing::Deleted { .. } => None,
        }
    }
}

/// One user's state.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct UserState {
    /// Registered, locked or deleted.
    pub(super) standing: Standing,
    /// Consumes applied, for de-duplication (bounded by `SEEN_MAX` concluded
    /// ones plus the spent ones).
    pub(super) seen: Vec<VaultSeen>,
    /// SHA-256 of every credential nonce this user registered with.
    pub(super) used_nonces: Vec<Vec<u8>>,
}

/// The digest that ties an erased record to the ticket that may reinstate it.
pub(super) fn record_digest(r: &VaultRecord) -> [u8; RECORD_DIGEST_BYTES] {
    let mut h = Sha256::new();
    h.update(b"vaultfleet/vault/record/v1");
    for field in [&r.opaque_record, &r.sealed_secret, &r.credential_nonce] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field);
    }
    h.update(r.max_attempts.to_be_bytes());
    h.update(r.generation.to_be_bytes());
    h.update(r.registered_at.to_be_bytes());
    // Records of earlier builds have no tag; their digests are unchanged.
    if !r.registration_tag.is_empty() {
        h.update((r.registration_tag.len() as u64).to_be_bytes());
        h.update(&r.registration_tag);
    }
    h.finalize().into()
}

fn malformed(what: &'static str) -> RestoreError {
    RestoreError::Malformed { what }
}

impl UserState {
    /// The snapshot form of this user (the same bytes as before the standing
    /// was an enum: lock fields are zero unless locked).
    pub(super) fn to_wire(&self, user: &UserId) -> VaultUserState {
        let mut w = VaultUserState::new();
        w.user = user.as_bytes().to_vec();
        w.generation = self.standing.generation();
        match &self.standing {
            Standing::Registered { record } => w.record = Some(record.clone()).into(),
            Standing::Locked { ticket, digest, .. } => {
                w.locked = true;
                w.locked_ticket = *ticket;
                w.locked_digest = digest.to_vec();
            }
            Standing::Deleted { .. } => {}
        }
        w.seen = self.seen.clone();
        w.used_nonces = self.used_nonces.clone();
        w
    }

    /// The greatest ticket (or clock value) this user's state holds: spent,
    /// forgiven through, registered at, seen, or the erasing one.
    pub(super) fn greatest_ticket(&self) -> u64 {
        let standing = match &self.standing {
            Standing::Registered { record } => record
                .spent
                .iter()
                .copied()
                .chain([record.registered_at, record.forgiven_through])
                .max()
                .unwrap_or(0),
            Standing::Locked { ticket, .. } => *ticket,
            Standing::Deleted { .. } => 0,
        };
        self.seen
            .iter()
            .map(|s| s.ticket)
            .chain([standing])
            .max()
            .unwrap_or(0)
    }

    /// A user from its snapshot form, checked: the snapshot came from another
    /// replica or from disk.
    pub(super) fn from_wire(w: VaultUserState) -> Result<(UserId, UserState), RestoreError> {
        let user = UserId::new(w.user)
            .map_err(|_| malformed("vault snapshot holds an invalid user id"))?;
        let standing = match (w.record.into_option(), w.locked) {
            (Some(_), true) => {
                return Err(malformed(
                    "vault snapshot holds a locked user with a record",
                ))
            }
            (Some(record), false) => {
                if record.generation != w.generation
                    || record.spent.len() > record.max_attempts as usize
                    || record.max_attempts == 0
                    || record.max_attempts > MAX_ATTEMPTS_LIMIT
                    || record.opaque_record.len() > FIELD_MAX
                    || record.sealed_secret.len() > FIELD_MAX
                    || record.registration_tag.len() > 32
                {
                    return Err(malformed("vault snapshot holds an inconsistent record"));
                }
                Standing::Registered { record }
            }
            (None, true) => Standing::Locked {
                generation: w.generation,
                ticket: w.locked_ticket,
                digest: w.locked_digest.as_slice().try_into().map_err(|_| {
                    malformed("vault snapshot holds a lock digest that is not 32 bytes")
                })?,
            },
            (None, false) => Standing::Deleted {
                generation: w.generation,
            },
        };
        if !w.locked && (w.locked_ticket != 0 || !w.locked_digest.is_empty()) {
            return Err(malformed(
                "vault snapshot holds lock fields for a user that is not locked",
            ));
        }
        if w.seen.len() > SEEN_MAX + MAX_ATTEMPTS_LIMIT as usize + 1
            || w.used_nonces.len() > REGISTRATIONS_MAX
        {
            return Err(malformed("vault snapshot holds oversized tables"));
        }
        let state = UserState {
            standing,
            seen: w.seen,
            used_nonces: w.used_nonces,
        };
        Ok((user, state))
    }
}
