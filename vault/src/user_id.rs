//! [`UserId`]: a vault user's id, checked against its bounds once, where it is
//! built. Everything past the edges (the server's commands, the replicated
//! machine's table, the client's calls) takes a `UserId` and never re-checks it.

use std::borrow::Borrow;
use std::sync::Arc;

use crate::limits::USER_ID_MAX;

/// A user id was empty or longer than [`USER_ID_MAX`] bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a user id must be 1..={USER_ID_MAX} bytes, this one has {bytes}")]
pub struct InvalidUserId {
    /// The length of the refused id, in bytes.
    pub bytes: usize,
}

/// A vault user's id: 1..=[`USER_ID_MAX`] bytes, chosen by the application
/// (an account id, a phone number). Opaque to the vault.
///
/// The bytes are shared: a clone is a reference-count increment, not an
/// allocation. The replicated table's copy-on-write leaves clone every key of
/// a leaf the first time a write reaches it while a snapshot view holds it
/// (docs/performance.md, "The price of a view").
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserId(Arc<[u8]>);

impl UserId {
    /// The id `bytes`, if it is 1..=[`USER_ID_MAX`] bytes long. This is the one
    /// place the bound is checked.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, InvalidUserId> {
        let bytes = bytes.into();
        if bytes.is_empty() || bytes.len() > USER_ID_MAX {
            return Err(InvalidUserId { bytes: bytes.len() });
        }
        Ok(Self(bytes.into()))
    }

    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        debug_assert!(!self.0.is_empty() && self.0.len() <= USER_ID_MAX);
        &self.0
    }
}

impl std::fmt::Debug for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match std::str::from_utf8(&self.0) {
            Ok(s) => write!(f, "UserId({s:?})"),
            Err(_) => write!(f, "UserId({} bytes)", self.0.len()),
        }
    }
}

impl AsRef<[u8]> for UserId {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// Ordering and equality are those of the bytes, so a map keyed by `UserId`
/// can be searched with a `&[u8]`.
impl Borrow<[u8]> for UserId {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl TryFrom<&[u8]> for UserId {
    type Error = InvalidUserId;

    fn try_from(bytes: &[u8]) -> Result<Self, InvalidUserId> {
        Self::new(bytes)
    }
}

impl TryFrom<Vec<u8>> for UserId {
    type Error = InvalidUserId;

    fn try_from(bytes: Vec<u8>) -> Result<Self, InvalidUserId> {
        Self::new(bytes)
    }
}

impl From<UserId> for Vec<u8> {
    fn from(id: UserId) -> Vec<u8> {
        id.0.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bounds_are_checked_at_construction() {
        assert_eq!(UserId::new(Vec::new()), Err(InvalidUserId { bytes: 0 }));
        assert_eq!(
            UserId::new(vec![1; USER_ID_MAX + 1]),
            Err(InvalidUserId {
                bytes: USER_ID_MAX + 1
            })
        );
        assert_eq!(
            UserId::new(vec![7; USER_ID_MAX]).unwrap().as_bytes().len(),
            USER_ID_MAX
        );
        assert_eq!(UserId::new(&b"a"[..]).unwrap().as_bytes(), b"a");
    }

    #[test]
    fn a_map_of_ids_is_searched_by_bytes() {
        let mut m = std::collections::BTreeMap::new();
        m.insert(UserId::new(&b"bob"[..]).unwrap(), 2);
        m.insert(UserId::new(&b"alice"[..]).unwrap(), 1);
        assert_eq!(m.get(&b"alice"[..]), Some(&1));
        assert_eq!(m.get(&b"carol"[..]), None);
        let order: Vec<&[u8]> = m.keys().map(UserId::as_bytes).collect();
        assert_eq!(order, [&b"alice"[..], &b"bob"[..]]);
    }

    #[test]
    fn a_clone_shares_the_bytes() {
        let id = UserId::new(&b"alice"[..]).unwrap();
        let copy = id.clone();
        assert!(std::ptr::eq(id.as_bytes(), copy.as_bytes()));
    }
}
