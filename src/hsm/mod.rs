//! The HSM seam: keys that never leave the hardware, and a monotonic counter.
//!
//! Everything vaultfleet trusts a host's HSM with goes through the [`Hsm`] trait:
//! sealing (AEAD with associated data) of what the host writes to its untrusted
//! disk, Ed25519 signatures, HMAC-SHA256 (also the sub-key KDF), random bytes, and
//! monotonic counters that let a replica notice that its disk was rolled back. A
//! counter carries a 32-byte binding, replaced atomically with each advance, so a
//! counter value names one particular write, not just "some write numbered n".
//!
//! Keys are addressed by label and used through a [`KeyHandle`]; no method returns
//! a private key. Implementations:
//!
//! * [`SoftHsm`]: in-process, for tests and the simulator; deterministic when
//!   built from a seed, optionally kept in a file across restarts. It protects
//!   nothing against the host it runs on.
//! * `Pkcs11Hsm` (cargo feature `pkcs11`): any PKCS#11 module through `cryptoki`,
//!   tested against SoftHSM2.
//!
//! Sealed bytes are self-describing for the implementation that made them (an
//! algorithm byte, the nonce, the ciphertext and the tag); a store sealed by one
//! implementation is opened with the same one.

mod soft;
pub use soft::SoftHsm;

#[cfg(feature = "pkcs11")]
mod pkcs11;
#[cfg(feature = "pkcs11")]
pub use pkcs11::{
    softhsm2_module, softhsm2_throwaway_token, HardwareCounter, Pkcs11Config, Pkcs11Hsm,
    Pkcs11Limits, SoftHsm2Setup, SOFTHSM2_MODULES,
};

use std::sync::Arc;

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// What a key is for. One label may name one key of each kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyKind {
    /// A 256-bit AEAD key for [`Hsm::seal`] / [`Hsm::unseal`].
    Aead,
    /// An Ed25519 key pair for [`Hsm::sign`] / [`Hsm::public_key`].
    Signing,
    /// A 256-bit HMAC-SHA256 key for [`Hsm::mac`] / [`Hsm::derive_subkey`].
    Mac,
}

impl std::fmt::Display for KeyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyKind::Aead => "AEAD",
            KeyKind::Signing => "Ed25519 signing",
            KeyKind::Mac => "HMAC",
        })
    }
}

/// A monotonic counter's value and the binding stored with it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// How many times the counter was advanced (0: never).
    pub value: u64,
    /// The binding given to the advance that reached `value` (zeros at 0).
    pub binding: [u8; 32],
}

/// A reference to a key held by one [`Hsm`]; meaningless to any other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyHandle {
    kind: KeyKind,
    slot: u32,
}

impl KeyHandle {
    pub(crate) fn new(kind: KeyKind, slot: u32) -> Self {
        Self { kind, slot }
    }

    /// What the key is for.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    pub(crate) fn slot(&self) -> usize {
        self.slot as usize
    }
}

/// The failure a device or its library reported (a PKCS#11 return value, an I/O
/// error), kept as a typed source so a caller can inspect it.
pub type DeviceCause = Arc<dyn std::error::Error + Send + Sync>;

/// What went wrong in an HSM. Every variant says what the operator can do; the
/// device's own error, where there is one, is the [`source`](std::error::Error::source).
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HsmError {
    /// Sealed bytes failed authentication: they were altered, belong to another key,
    /// or were sealed with other associated data.
    #[error("sealed data failed authentication (altered, sealed under another key, or bound to other associated data)")]
    Unauthentic,
    /// Sealed bytes do not have the shape this HSM produces.
    #[error("sealed data is malformed: {0}")]
    Malformed(SealShape),
    /// No key of this kind carries this label.
    #[error("the HSM holds no {kind} key labelled {label:?}; provision it, or point at the HSM that holds it")]
    NoSuchKey {
        /// The label looked up.
        label: String,
        /// The kind looked up.
        kind: KeyKind,
    },
    /// A handle used with an operation its key does not support, or from another HSM.
    #[error("key handle is not a {expected} key of this HSM")]
    WrongKey {
        /// The kind the operation needs.
        expected: KeyKind,
    },
    /// The HSM does not answer (unplugged, session lost, module missing, or
    /// switched off by a test).
    #[error("the HSM is unavailable ({operation}); check the device, its module and its session")]
    Unavailable {
        /// What was being done.
        operation: &'static str,
        /// The device's or the system's own error, if it gave one.
        #[source]
        cause: Option<DeviceCause>,
    },
    /// The HSM answered an operation with an error.
    #[error("the HSM failed ({operation})")]
    Device {
        /// The operation that failed (a PKCS#11 function, say).
        operation: &'static str,
        /// The device's own error.
        #[source]
        cause: DeviceCause,
    },
    /// The PKCS#11 module cannot be loaded.
    #[error("cannot load the PKCS#11 module {}; check the path and that the vendor's library is installed", module.display())]
    ModuleUnloadable {
        /// The module's path.
        module: std::path::PathBuf,
        /// The loader's error.
        #[source]
        cause: DeviceCause,
    },
    /// The PKCS#11 module has no token with this label.
    #[error("no token labelled {token:?} in {}; initialise it first (softhsm2-util --init-token, or the vendor's tool)", module.display())]
    NoToken {
        /// The label looked for.
        token: String,
        /// The module searched.
        module: std::path::PathBuf,
    },
    /// The HSM answered, but with something vaultfleet must not use.
    #[error("the HSM cannot be used: {0}")]
    Unusable(DeviceFault),
    /// The HSM's own persistent state (a token object) is not what vaultfleet wrote.
    #[error("the HSM's state is corrupt: {0}; restore the HSM's state, its keys cannot be recovered otherwise")]
    Corrupt(StateCorruption),
    /// The HSM's own persistent state (a [`SoftHsm`] file) does not decode: torn,
    /// edited, or not the HSM's state at all.
    #[error("the HSM's state does not decode: {0}; restore the HSM's state, its keys cannot be recovered otherwise")]
    StateUnreadable(#[source] crate::codec::DecodeError),
    /// The HSM's state cannot be recorded (a label or a count beyond the limits of
    /// its persistent format).
    #[error("the HSM cannot record its state: {0}")]
    StateUnwritable(#[source] crate::codec::EncodeError),
    /// A monotonic counter cannot advance further.
    #[error(
        "counter {label:?} is exhausted; provision a new counter and rejoin as a fresh member"
    )]
    CounterExhausted {
        /// The counter's label.
        label: String,
    },
    /// An AEAD key made as many seals as its nonces allow (random 96-bit IVs:
    /// 2^32 per key); sealing more would risk a repeated nonce.
    #[error("AEAD key {label:?} made its {limit} seals, the most its random nonces allow; rotate it: re-add the replica under a new id, hence new key labels")]
    SealLimitReached {
        /// The key's label.
        label: String,
        /// The bound it reached.
        limit: u64,
    },
}

/// How sealed bytes differ from what this HSM produces.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealShape {
    /// Shorter than the algorithm byte, the nonce and the tag together.
    #[error("{len} bytes is shorter than the {min} bytes of algorithm, nonce and tag")]
    Short {
        /// The length given.
        len: usize,
        /// The least a sealed value of this HSM can be.
        min: usize,
    },
    /// The algorithm byte names another algorithm.
    #[error("algorithm byte {found:#04x} is not this HSM's {expected}")]
    Algorithm {
        /// The byte found.
        found: u8,
        /// The algorithm this HSM seals with.
        expected: &'static str,
    },
}

/// An answer of the HSM that vaultfleet refuses to work with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceFault {
    /// The token refused the user PIN.
    #[error("the user PIN of token {token:?} is wrong; check the PIN file or variable")]
    WrongPin {
        /// The token's label.
        token: String,
    },
    /// A secret key on the token could leave it.
    #[error("the token's {kind} key {label:?} is extractable or not sensitive; replace it with a sensitive, non-extractable key")]
    KeyExtractable {
        /// The key's label.
        label: String,
        /// The key's kind.
        kind: KeyKind,
    },
    /// Sealing a fixed value and opening it again did not give the value back.
    #[error("a known-answer probe came back wrong; the token's AES-GCM is not usable")]
    KnownAnswerWrong,
    /// The token replaced the GCM IV it was given.
    #[error("the token replaced the GCM IV it was given; it cannot be used for sealing")]
    IvReplaced,
    /// An output of the wrong length.
    #[error("the token returned {len} bytes for {what}, {expected} expected")]
    OutputLength {
        /// Which output.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The length it must have.
        expected: usize,
    },
    /// A signing key's public half is missing or unreadable.
    #[error("the token returned no usable Ed25519 public key (EC point of {len} bytes)")]
    PublicKeyEncoding {
        /// The length of the EC point the token returned (0 if none).
        len: usize,
    },
    /// A software primitive refused its input (a key of the wrong length, say).
    #[error("{0} failed")]
    Primitive(&'static str),
    /// The token did not keep a counter floor object non-destroyable
    /// (`CKA_DESTROYABLE = false` ignored), so the counter would not stop a
    /// holder of the user PIN from rolling it back.
    #[error("the token ignored CKA_DESTROYABLE=false on a floor object of counter {label:?}; it cannot protect the counter (SoftHSM2 needs 2.5 or later)")]
    CounterFloorDestroyable {
        /// The counter's label.
        label: String,
    },
}

/// Persistent HSM state that is not what vaultfleet wrote.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StateCorruption {
    /// A signing key has no public-key object beside it.
    #[error("signing key {label:?} has no public key object on the token")]
    MissingPublicKey {
        /// The key's label.
        label: String,
    },
    /// A hardware counter reads a value for which the token holds no binding
    /// (its object was destroyed).
    #[error(
        "hardware counter {label:?} reads {value}, and the token holds no binding for that value"
    )]
    CounterBindingMissing {
        /// The counter's label.
        label: String,
        /// The hardware counter's value.
        value: u64,
    },
    /// The token holds two different bindings for a hardware counter's value
    /// (one was forged).
    #[error("the token holds different bindings for value {value} of hardware counter {label:?}")]
    CounterBindingAmbiguous {
        /// The counter's label.
        label: String,
        /// The hardware counter's value.
        value: u64,
    },
    /// A hardware counter did not step by exactly one (another writer, or a
    /// counter that is not what `HardwareCounter` requires).
    #[error("hardware counter {label:?} stepped to {found}, {expected} expected")]
    HardwareCounterStep {
        /// The counter's label.
        label: String,
        /// The value one step on.
        expected: u64,
        /// The value it reported.
        found: u64,
    },
    /// More than one object answers to a label that must name one: a plant.
    #[error("{count} objects carry the label {label:?}, which must name one; remove the ones vaultfleet did not create")]
    Ambiguous {
        /// The label.
        label: String,
        /// How many objects carry it.
        count: usize,
    },
    /// A counter object holds a value of the wrong shape.
    #[error("counter object {label:?} does not hold a {expected}-byte value")]
    CounterValue {
        /// The counter's label.
        label: String,
        /// The length a counter value has.
        expected: usize,
    },
}

/// A hardware security module as vaultfleet uses it: labelled keys that never
/// leave it, and monotonic counters.
///
/// All methods take `&self`; implementations serialise access themselves, so one
/// HSM can serve several stores and services of a host.
pub trait Hsm: Send + Sync + 'static {
    /// The key of `kind` labelled `label`, generated inside the HSM if it does not
    /// exist yet.
    fn key(&self, label: &str, kind: KeyKind) -> Result<KeyHandle, HsmError>;

    /// The key of `kind` labelled `label`, if the HSM holds one.
    fn find_key(&self, label: &str, kind: KeyKind) -> Result<Option<KeyHandle>, HsmError>;

    /// Encrypts and authenticates `plaintext`, binding `aad`. Each call draws a
    /// fresh nonce inside the HSM. The result is opened by [`Hsm::unseal`].
    fn seal(&self, key: KeyHandle, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, HsmError>;

    /// Opens what [`Hsm::seal`] produced with the same key and `aad`; any other
    /// input is [`HsmError::Unauthentic`] or [`HsmError::Malformed`].
    fn unseal(
        &self,
        key: KeyHandle,
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, HsmError>;

    /// An Ed25519 signature (RFC 8032, pure) of `message`.
    fn sign(&self, key: KeyHandle, message: &[u8]) -> Result<[u8; 64], HsmError>;

    /// The Ed25519 public key of a signing key.
    fn public_key(&self, key: KeyHandle) -> Result<[u8; 32], HsmError>;

    /// HMAC-SHA256 of `data`.
    fn mac(&self, key: KeyHandle, data: &[u8]) -> Result<[u8; 32], HsmError>;

    /// Fills `out` with random bytes from the HSM's generator.
    fn random(&self, out: &mut [u8]) -> Result<(), HsmError>;

    /// The monotonic counter `label` and its binding (value 0 and a zero binding
    /// if it was never advanced).
    fn counter(&self, label: &str) -> Result<Counter, HsmError>;

    /// Advances the monotonic counter `label` by one, replacing its binding with
    /// `binding` in the same atomic step, and returns the new value. Once this
    /// returns, the counter never reads an older value again, as long as the
    /// HSM's own storage is not rolled back (see each implementation for what
    /// that storage is).
    fn advance_counter(&self, label: &str, binding: &[u8; 32]) -> Result<u64, HsmError>;

    /// Checks an HMAC-SHA256 tag in constant time.
    fn verify_mac(&self, key: KeyHandle, data: &[u8], tag: &[u8]) -> Result<bool, HsmError> {
        let expected = self.mac(key, data)?;
        Ok(expected.ct_eq(tag).into())
    }

    /// A 256-bit sub-key for `context`: HMAC-SHA256(key, context), as HKDF-Expand
    /// with one block. The sub-key leaves the HSM, so use it only where a key in
    /// host memory is acceptable.
    fn derive_subkey(
        &self,
        key: KeyHandle,
        context: &[u8],
    ) -> Result<Zeroizing<[u8; 32]>, HsmError> {
        let mut info = Vec::with_capacity(context.len() + 1);
        info.extend_from_slice(context);
        info.push(1);
        Ok(Zeroizing::new(self.mac(key, &info)?))
    }
}

impl<T: Hsm + ?Sized> Hsm for Arc<T> {
    fn key(&self, label: &str, kind: KeyKind) -> Result<KeyHandle, HsmError> {
        (**self).key(label, kind)
    }
    fn find_key(&self, label: &str, kind: KeyKind) -> Result<Option<KeyHandle>, HsmError> {
        (**self).find_key(label, kind)
    }
    fn seal(&self, key: KeyHandle, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, HsmError> {
        (**self).seal(key, aad, plaintext)
    }
    fn unseal(
        &self,
        key: KeyHandle,
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        (**self).unseal(key, aad, sealed)
    }
    fn sign(&self, key: KeyHandle, message: &[u8]) -> Result<[u8; 64], HsmError> {
        (**self).sign(key, message)
    }
    fn public_key(&self, key: KeyHandle) -> Result<[u8; 32], HsmError> {
        (**self).public_key(key)
    }
    fn mac(&self, key: KeyHandle, data: &[u8]) -> Result<[u8; 32], HsmError> {
        (**self).mac(key, data)
    }
    fn random(&self, out: &mut [u8]) -> Result<(), HsmError> {
        (**self).random(out)
    }
    fn counter(&self, label: &str) -> Result<Counter, HsmError> {
        (**self).counter(label)
    }
    fn advance_counter(&self, label: &str, binding: &[u8; 32]) -> Result<u64, HsmError> {
        (**self).advance_counter(label, binding)
    }
    // The provided methods too: an HSM that overrides one (a device's own
    // constant-time check, its own derivation) must give the same answer
    // behind an `Arc`, or keys derived through one and the other would differ.
    fn verify_mac(&self, key: KeyHandle, data: &[u8], tag: &[u8]) -> Result<bool, HsmError> {
        (**self).verify_mac(key, data, tag)
    }
    fn derive_subkey(
        &self,
        key: KeyHandle,
        context: &[u8],
    ) -> Result<Zeroizing<[u8; 32]>, HsmError> {
        (**self).derive_subkey(key, context)
    }
}

/// Frames sealed bytes: algorithm byte, nonce, ciphertext with its tag.
pub(crate) fn frame(algorithm: u8, nonce: &[u8], ciphertext: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + nonce.len() + ciphertext.len());
    out.push(algorithm);
    out.extend_from_slice(nonce);
    out.extend_from_slice(ciphertext);
    out
}

/// Splits what [`frame`] made into nonce and ciphertext, checking the algorithm
/// byte (`name` says which algorithm it stands for) and the minimal length.
pub(crate) fn unframe<'a>(
    sealed: &'a [u8],
    algorithm: u8,
    name: &'static str,
    nonce_len: usize,
    tag_len: usize,
) -> Result<(&'a [u8], &'a [u8]), HsmError> {
    if sealed.len() < 1 + nonce_len + tag_len {
        return Err(HsmError::Malformed(SealShape::Short {
            len: sealed.len(),
            min: 1 + nonce_len + tag_len,
        }));
    }
    if sealed[0] != algorithm {
        return Err(HsmError::Malformed(SealShape::Algorithm {
            found: sealed[0],
            expected: name,
        }));
    }
    Ok(sealed[1..].split_at(nonce_len))
}

/// Checks an Ed25519 signature made by [`Hsm::sign`] against a public key, outside
/// any HSM (this is what clients do).
pub fn verify_signature(public_key: &[u8; 32], message: &[u8], signature: &[u8; 64]) -> bool {
    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(public_key) else {
        return false;
    };
    key.verify_strict(message, &ed25519_dalek::Signature::from_bytes(signature))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HSM that derives sub-keys its own way (as a device with a native
    /// derivation would).
    struct OwnDerivation(SoftHsm);

    impl Hsm for OwnDerivation {
        fn key(&self, label: &str, kind: KeyKind) -> Result<KeyHandle, HsmError> {
            self.0.key(label, kind)
        }
        fn find_key(&self, label: &str, kind: KeyKind) -> Result<Option<KeyHandle>, HsmError> {
            self.0.find_key(label, kind)
        }
        fn seal(&self, key: KeyHandle, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, HsmError> {
            self.0.seal(key, aad, plaintext)
        }
        fn unseal(
            &self,
            key: KeyHandle,
            aad: &[u8],
            sealed: &[u8],
        ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
            self.0.unseal(key, aad, sealed)
        }
        fn sign(&self, key: KeyHandle, message: &[u8]) -> Result<[u8; 64], HsmError> {
            self.0.sign(key, message)
        }
        fn public_key(&self, key: KeyHandle) -> Result<[u8; 32], HsmError> {
            self.0.public_key(key)
        }
        fn mac(&self, key: KeyHandle, data: &[u8]) -> Result<[u8; 32], HsmError> {
            self.0.mac(key, data)
        }
        fn random(&self, out: &mut [u8]) -> Result<(), HsmError> {
            self.0.random(out)
        }
        fn counter(&self, label: &str) -> Result<Counter, HsmError> {
            self.0.counter(label)
        }
        fn advance_counter(&self, label: &str, binding: &[u8; 32]) -> Result<u64, HsmError> {
            self.0.advance_counter(label, binding)
        }
        fn verify_mac(&self, _: KeyHandle, _: &[u8], _: &[u8]) -> Result<bool, HsmError> {
            Ok(true)
        }
        fn derive_subkey(&self, _: KeyHandle, _: &[u8]) -> Result<Zeroizing<[u8; 32]>, HsmError> {
            Ok(Zeroizing::new([7; 32]))
        }
    }

    #[test]
    fn an_arc_keeps_an_hsms_own_derivation_and_mac_check() {
        let hsm = Arc::new(OwnDerivation(SoftHsm::from_seed(1)));
        let key = hsm.key("k", KeyKind::Mac).unwrap();
        assert_eq!(*hsm.derive_subkey(key, b"context").unwrap(), [7; 32]);
        assert!(hsm.verify_mac(key, b"data", b"not a tag").unwrap());
    }
}
