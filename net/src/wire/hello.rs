//! The handshake payload: the sender's protocol version and the replica ids it
//! claims to host, nothing else. Decoded strictly (sorted, distinct, non-zero
//! ids, no trailing bytes) and only after the sender's static key was found
//! pinned in the directory.
//!
//! ```text
//! u32 protocol version, u32 id count (1..=HELLO_IDS_MAX), u64 id × count
//! ```

use std::collections::BTreeSet;

use vaultfleet::codec::{DecodeError, Reader};
use vaultfleet::ReplicaId;

/// Most replica ids one process claims in a handshake.
pub const HELLO_IDS_MAX: usize = 1024;

/// What a handshake message says about its sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The sender's protocol version.
    pub version: u32,
    /// The replica ids the sender hosts.
    pub ids: BTreeSet<ReplicaId>,
}

impl Hello {
    /// The encoding (ids in ascending order).
    pub fn encode(&self) -> Vec<u8> {
        debug_assert!(!self.ids.is_empty() && self.ids.len() <= HELLO_IDS_MAX);
        let mut out = Vec::with_capacity(8 + 8 * self.ids.len());
        out.extend_from_slice(&self.version.to_be_bytes());
        let count = u32::try_from(self.ids.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&count.to_be_bytes());
        for id in &self.ids {
            out.extend_from_slice(&id.to_be_bytes());
        }
        out
    }

    /// Decodes a payload, refusing anything but one well-formed hello.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let version = r.u32("hello version")?;
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
        r.expect_empty("hello")?;
        Ok(Self { version, ids })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_round_trips_and_anything_else_is_refused() {
        let hello = Hello {
            version: 1,
            ids: [3, 9].into_iter().collect(),
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
        swapped[8..16].copy_from_slice(&9u64.to_be_bytes());
        swapped[16..24].copy_from_slice(&3u64.to_be_bytes());
        assert!(matches!(
            Hello::decode(&swapped),
            Err(DecodeError::Invalid { .. })
        ));
        let none = [0, 0, 0, 1, 0, 0, 0, 0];
        assert!(matches!(
            Hello::decode(&none),
            Err(DecodeError::Invalid { .. })
        ));
        let huge = [0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            Hello::decode(&huge),
            Err(DecodeError::TooLong { .. })
        ));
    }
}
