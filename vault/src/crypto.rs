//! The vault's cryptographic constructions, shared by the keys, the server and
//! the client: the HSM-seeded RNG, the exact bytes each MAC, AEAD and signature
//! covers, and the transport of a recovered secret under the OPAQUE session key.
//!
//! Every byte layout here is fixed: sealed secrets, registration tags and reply
//! signatures made by earlier builds must keep verifying.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::ProtocolFailure;
use crate::user_id::UserId;
use vaultfleet::hsm::{Hsm, HsmError};

/// The nonce length of the secret in transit (XChaCha20-Poly1305), in bytes.
pub(crate) const TRANSPORT_NONCE_BYTES: usize = 24;

/// SHA-256, the digest of requests and credential requests.
pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// A ChaCha20 RNG seeded with 32 bytes from the HSM: every random value the vault
/// draws (OPAQUE nonces and ephemerals, credential nonces) comes from the HSM.
pub(crate) fn hsm_rng<H: Hsm>(hsm: &H) -> Result<ChaCha20Rng, HsmError> {
    let mut seed = Zeroizing::new([0u8; 32]);
    hsm.random(seed.as_mut())?;
    Ok(ChaCha20Rng::from_seed(*seed))
}

/// The user id's length as the u16 the layouts below write.
fn user_len(user: &UserId) -> [u8; 2] {
    // UserId holds at most USER_ID_MAX bytes, which fits in a u16 (asserted in `limits`).
    (user.as_bytes().len() as u16).to_be_bytes()
}

/// The OPAQUE credential identifier of one registration: the user id and the
/// registration's random nonce, so the OPRF key differs per registration.
pub(crate) fn credential_identifier(user: &UserId, nonce: &[u8]) -> Vec<u8> {
    let user_bytes = user.as_bytes();
    let mut id = Vec::with_capacity(16 + user_bytes.len() + nonce.len());
    id.extend_from_slice(b"vaultfleet/v1");
    id.extend_from_slice(&user_len(user));
    id.extend_from_slice(user_bytes);
    id.extend_from_slice(nonce);
    id
}

/// The associated data of a user's secret sealed under the fleet's record key.
pub(crate) fn secret_aad(group: u64, user: &UserId, opaque_record: &[u8], nonce: &[u8]) -> Vec<u8> {
    let user_bytes = user.as_bytes();
    let mut aad = Vec::with_capacity(96 + user_bytes.len());
    aad.extend_from_slice(b"vaultfleet/vault/secret/v1");
    aad.extend_from_slice(&group.to_be_bytes());
    aad.extend_from_slice(&user_len(user));
    aad.extend_from_slice(user_bytes);
    aad.extend_from_slice(&Sha256::digest(opaque_record));
    aad.extend_from_slice(nonce);
    aad
}

/// What the registration MAC covers: the fleet, the user and the nonce.
pub(crate) fn nonce_mac_input(group: u64, user: &UserId, nonce: &[u8]) -> Vec<u8> {
    let user_bytes = user.as_bytes();
    let mut m = Vec::with_capacity(64 + user_bytes.len());
    m.extend_from_slice(b"vaultfleet/vault/credential-nonce/v1");
    m.extend_from_slice(&group.to_be_bytes());
    m.extend_from_slice(&user_len(user));
    m.extend_from_slice(user_bytes);
    m.extend_from_slice(nonce);
    m
}

/// What a reply signature covers.
pub(crate) fn reply_signed_bytes(group: u64, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(40 + body.len());
    m.extend_from_slice(b"vaultfleet/vault/reply/v1");
    m.extend_from_slice(&group.to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// The key that carries a recovered secret to the client, derived from the OPAQUE
/// session key (which only the client and this server know).
fn transport_key(session_key: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(session_key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(b"vaultfleet/vault/secret-transport/v1");
    Zeroizing::new(mac.finalize().into_bytes().into())
}

/// The associated data of a secret in transit: the request it answers and the user.
fn transport_aad(request_digest: &[u8], user: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(64 + user.len());
    aad.extend_from_slice(b"vaultfleet/vault/secret-transport/v1");
    aad.extend_from_slice(request_digest);
    aad.extend_from_slice(user);
    aad
}

/// Encrypts `secret` for the client that ran the login of `session_key`, under
/// `nonce`; `None` if the AEAD refuses (it does not for a secret of bounded size).
pub(crate) fn seal_for_client(
    session_key: &[u8],
    request_digest: &[u8],
    user: &UserId,
    nonce: &[u8; TRANSPORT_NONCE_BYTES],
    secret: &[u8],
) -> Option<Vec<u8>> {
    let key = transport_key(session_key);
    let aead = XChaCha20Poly1305::new(key.as_ref().into());
    let aad = transport_aad(request_digest, user.as_bytes());
    aead.encrypt(
        XNonce::from_slice(nonce),
        Payload {
            msg: secret,
            aad: &aad,
        },
    )
    .ok()
}

/// Decrypts a secret the fleet sent under the OPAQUE session key.
pub(crate) fn open_from_fleet(
    session_key: &[u8],
    request_digest: &[u8],
    user: &UserId,
    nonce: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, ProtocolFailure> {
    if nonce.len() != TRANSPORT_NONCE_BYTES {
        return Err(ProtocolFailure::SecretNonceLength { bytes: nonce.len() });
    }
    let key = transport_key(session_key);
    let aead = XChaCha20Poly1305::new(key.as_ref().into());
    let aad = transport_aad(request_digest, user.as_bytes());
    aead.decrypt(
        XNonce::from_slice(nonce),
        Payload {
            msg: ciphertext,
            aad: &aad,
        },
    )
    .map(Zeroizing::new)
    .map_err(|_| ProtocolFailure::SecretDecrypt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_opens_only_for_its_request_and_user() {
        let alice = UserId::new(&b"alice"[..]).unwrap();
        let bob = UserId::new(&b"bob"[..]).unwrap();
        let nonce = [7u8; TRANSPORT_NONCE_BYTES];
        let ct = seal_for_client(b"session", &[1; 32], &alice, &nonce, b"secret").unwrap();
        let opened = open_from_fleet(b"session", &[1; 32], &alice, &nonce, &ct).unwrap();
        assert_eq!(opened.as_slice(), b"secret");
        for (key, digest, user) in [
            (&b"other"[..], [1u8; 32], &alice),
            (&b"session"[..], [2u8; 32], &alice),
            (&b"session"[..], [1u8; 32], &bob),
        ] {
            assert_eq!(
                open_from_fleet(key, &digest, user, &nonce, &ct).err(),
                Some(ProtocolFailure::SecretDecrypt)
            );
        }
        assert_eq!(
            open_from_fleet(b"session", &[1; 32], &alice, &nonce[..12], &ct).err(),
            Some(ProtocolFailure::SecretNonceLength { bytes: 12 })
        );
    }

    #[test]
    fn the_signed_layouts_are_unchanged() {
        // Pinned: replies and tags from earlier builds must keep verifying.
        let user = UserId::new(&b"u"[..]).unwrap();
        assert_eq!(
            nonce_mac_input(1, &user, &[9]),
            [
                &b"vaultfleet/vault/credential-nonce/v1"[..],
                &1u64.to_be_bytes(),
                &[0, 1],
                b"u",
                &[9]
            ]
            .concat()
        );
        assert_eq!(
            credential_identifier(&user, &[9]),
            [&b"vaultfleet/v1"[..], &[0, 1], b"u", &[9]].concat()
        );
        assert_eq!(
            reply_signed_bytes(2, b"body"),
            [
                &b"vaultfleet/vault/reply/v1"[..],
                &2u64.to_be_bytes(),
                b"body"
            ]
            .concat()
        );
    }
}
