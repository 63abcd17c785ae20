//! The handshake payload: the sender's protocol version, its role (a peer
//! process hosting replicas, or a client process) and, for a peer, the replica
//! ids it claims to host; nothing else. Decoded strictly (known role, sorted,
//! distinct, non-zero ids, no trailing bytes) and only after the sender's static
//! key was found pinned in the directory, which also says which role that key
//! may take (`docs/network.md`, "Remote clients").
//!
//! ```text
//! u32 protocol version, u8 role
//!   role 1, peer:   u32 id count (1..=HELLO_IDS_MAX), u64 id × count
//!   role 2, client: nothing
//! ```

use std::collections::BTreeSet;

use vaultfleet::codec::{DecodeError, Reader};
use vaultfleet::ReplicaId;

/// Most replica ids one process claims in a handshake.
pub const HELLO_IDS_MAX: usize = 1024;

const ROLE_PEER: u8 = 1;
const ROLE_CLIENT: u8 = 2;

/// What the sender of a handshake message is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloRole {
    /// A process hosting replicas: it exchanges raft messages.
    Peer {
        /// The replica ids the sender hosts.
        ids: BTreeSet<ReplicaId>,
    },
    /// A client process: it sends client requests and hosts no replica.
    Client,
}

/// What a handshake message says about its sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The sender's protocol version.
    pub version: u32,
    /// The sender's role.
    pub role: HelloRole,
}

impl Hello {
    /// The encoding (ids in ascending order).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9);
        out.extend_from_slice(&self.version.to_be_bytes());
        match &self.role {
            HelloRole::Peer { ids } => {
                debug_assert!(!ids.is_empty() && ids.len() <= HELLO_IDS_MAX);
                out.reserve(4 + 8 * ids.len());
                out.push(ROLE_PEER);
                let count = u32::try_from(ids.len()).unwrap_or(u32::MAX);
                out.extend_from_slice(&count.to_be_bytes());
                for id in ids {
                    out.extend_from_slice(&id.to_be_bytes());
                }
            }
            HelloRole::Client => out.push(ROLE_CLIENT),
        }
        out
    }

    /// Decodes a payload, refusing anything but one well-formed hello.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let version = r.u32("hello version")?;
        let role = match r.u8("hello role")? {
            ROLE_PEER => {
                let count = r.count(HELLO_IDS_MAX, "hello id count")?;
                if count == 0 {
                    return Err(DecodeError::Invalid {
                        what: "hello claims no replica",
                    });
                }
                let mut ids = BTreeSet::new();
                let mut last = 0;
                for _ in 0..count {
                    let id = r.u64("hello replica id")?;
                    if id <= last {
                        return Err(DecodeError::Invalid {
                            what: "hello replica ids not ascending, distinct and non-zero",
                        });
                    }
                    last = id;
                    ids.insert(id);
                }
                HelloRole::Peer { ids }
            }
            ROLE_CLIENT => HelloRole::Client,
            other => {
                return Err(DecodeError::UnknownValue {
                    what: "hello role",
                    found: other.into(),
                })
            }
        };
        r.expect_empty("hello")?;
        Ok(Self { version, role })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_round_trips_and_anything_else_is_refused() {
        let hello = Hello {
            version: 1,
            role: HelloRole::Peer {
                ids: [3, 9].into_iter().collect(),
            },
        };
        let bytes = hello.encode();
        assert_eq!(Hello::decode(&bytes), Ok(hello));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            Hello::decode(&longer),
            Err(DecodeError::TrailingBytes { .. })
        ));
        let mut swapped = bytes.clone();
        swapped[9..17].copy_from_slice(&9u64.to_be_bytes());
        swapped[17..25].copy_from_slice(&3u64.to_be_bytes());
        assert!(matches!(
            Hello::decode(&swapped),
            Err(DecodeError::Invalid { .. })
        ));
        let none = [0, 0, 0, 1, ROLE_PEER, 0, 0, 0, 0];
        assert!(matches!(
            Hello::decode(&none),
            Err(DecodeError::Invalid { .. })
        ));
        let huge = [0, 0, 0, 1, ROLE_PEER, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            Hello::decode(&huge),
            Err(DecodeError::TooLong { .. })
        ));
        let client = Hello {
            version: 1,
            role: HelloRole::Client,
        };
        let bytes = client.encode();
        assert_eq!(bytes, [0, 0, 0, 1, ROLE_CLIENT]);
        assert_eq!(Hello::decode(&bytes), Ok(client));
        assert!(matches!(
            Hello::decode(&[0, 0, 0, 1, ROLE_CLIENT, 0]),
            Err(DecodeError::TrailingBytes { .. })
        ));
        assert!(matches!(
            Hello::decode(&[0, 0, 0, 1, 7]),
            Err(DecodeError::UnknownValue { found: 7, .. })
        ));
    }
}
