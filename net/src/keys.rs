//! The static X25519 keys that identify a process on the fleet's network: the
//! [`PublicKey`] every peer pins, and the [`StaticSecret`] this process proves it
//! holds in each handshake.
//!
//! Invariants: a [`StaticSecret`] is never printed (its `Debug` shows only the
//! public key's fingerprint), and its bytes live in [`Zeroizing`] memory, wiped
//! when it drops. The Noise library (`snow` 0.9) copies the key into its own
//! handshake state for the length of one handshake and does not wipe that copy;
//! `docs/network.md` says what this means for a host compromise.

use snow::params::DHChoice;
use snow::resolvers::{CryptoResolver, DefaultResolver};
use zeroize::{Zeroize, Zeroizing};

use crate::error::KeyError;
use crate::handshake::NOISE_PARAMS;

/// Length of an X25519 key, public or private.
pub const KEY_BYTES: usize = 32;

/// A process's static X25519 public key, as pinned in a
/// [`PeerDirectory`](crate::PeerDirectory).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey([u8; KEY_BYTES]);

impl PublicKey {
    /// The key with these bytes.
    pub const fn from_bytes(bytes: [u8; KEY_BYTES]) -> Self {
        Self(bytes)
    }

    /// The key's bytes.
    pub const fn as_bytes(&self) -> &[u8; KEY_BYTES] {
        &self.0
    }

    /// The key from a slice, if it has exactly [`KEY_BYTES`] bytes.
    pub(crate) fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; KEY_BYTES]>::try_from(bytes).ok().map(Self)
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// The first eight bytes in hex: enough to tell keys apart in logs.
impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("…")
    }
}

/// This process's static X25519 private key, with its public key.
///
/// Held in [`Zeroizing`] memory and wiped on drop; never printed.
pub struct StaticSecret {
    bytes: Zeroizing<[u8; KEY_BYTES]>,
    public: PublicKey,
}

impl StaticSecret {
    /// A fresh key drawn from the operating system's random source.
    pub fn generate() -> Result<Self, KeyError> {
        let params = NOISE_PARAMS.parse().map_err(KeyError::Noise)?;
        let mut pair = snow::Builder::new(params)
            .generate_keypair()
            .map_err(KeyError::Noise)?;
        let bytes = <[u8; KEY_BYTES]>::try_from(pair.private.as_slice())
            .map(Zeroizing::new)
            .map_err(|_| KeyError::Length);
        pair.private.zeroize();
        Self::from_bytes(bytes?)
    }

    /// The key with these private bytes (an X25519 scalar; any 32 bytes are one).
    pub fn from_bytes(bytes: Zeroizing<[u8; KEY_BYTES]>) -> Result<Self, KeyError> {
        let mut dh = DefaultResolver
            .resolve_dh(&DHChoice::Curve25519)
            .ok_or(KeyError::Unsupported)?;
        dh.set(bytes.as_slice());
        let public = PublicKey::from_slice(dh.pubkey()).ok_or(KeyError::Length)?;
        // Overwrite the resolver's copy before it drops (snow 0.9 does not wipe it).
        dh.set(&[0u8; KEY_BYTES]);
        Ok(Self { bytes, public })
    }

    /// The matching public key (what peers pin).
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// The private bytes, for the handshake only.
    pub(crate) fn expose(&self) -> &[u8; KEY_BYTES] {
        &self.bytes
    }
}

impl Clone for StaticSecret {
    fn clone(&self) -> Self {
        Self {
            bytes: self.bytes.clone(),
            public: self.public,
        }
    }
}

impl std::fmt::Debug for StaticSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticSecret")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_derives_its_public_key_and_never_prints_its_bytes() {
        let secret = StaticSecret::from_bytes(Zeroizing::new([7u8; KEY_BYTES])).unwrap();
        let again = StaticSecret::from_bytes(Zeroizing::new([7u8; KEY_BYTES])).unwrap();
        let other = StaticSecret::generate().unwrap();
        assert_eq!(secret.public_key(), again.public_key());
        assert_ne!(secret.public_key(), other.public_key());
        assert_ne!(secret.public_key().as_bytes(), &[7u8; KEY_BYTES]);
        let shown = format!("{secret:?}");
        assert!(!shown.contains("7, 7"), "{shown}");
        assert!(shown.contains(&secret.public_key().to_string()), "{shown}");
    }
}
