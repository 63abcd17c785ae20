//! The vault's cryptographic constructions, shared by the keys, the server and
//! the client: the HSM-seeded RNG, the exact bytes each MAC, AEAD and signature
//! covers, and the transport of a recovered secret under the OPAQUE session key.
//!
//! Every byte layout here is fixed: sealed secrets, registration tags and reply
//! signatures made by earlier builds must keep verifying.

use chacha20::cipher::{KeyIvInit, StreamCipher};
use chacha20::ChaCha20;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use crate::error::ProtocolFailure;
use crate::user_id::UserId;
use crate::wire::{self, vault_client_request, VaultClientRequest};
use vaultfleet::codec::labeled;
use vaultfleet::hsm::{Hsm, HsmError};

/// The nonce length of the secret in transit (XChaCha20-Poly1305), in bytes.
pub(crate) const TRANSPORT_NONCE_BYTES: usize = 24;

/// SHA-256, the digest of requests and credential requests.
pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// A cryptographic RNG over the ChaCha20 keystream with fast key erasure: each
/// call draws the next key before the output, so the state never lets anyone
/// recompute output already given, and the state (a key) is wiped on drop.
/// Seeded only from the HSM ([`hsm_rng`]) or the operating system
/// ([`KeyErasingRng::from_os`]); it has no way to be seeded from a number.
pub(crate) struct KeyErasingRng {
    key: Zeroizing<[u8; 32]>,
}

/// Output per key: far below ChaCha20's 256 GiB keystream, so `apply_keystream`
/// never reaches its end.
const RNG_CHUNK: usize = 64 * 1024;

impl KeyErasingRng {
    fn from_key(key: Zeroizing<[u8; 32]>) -> Self {
        Self { key }
    }

    /// Seeded with 32 bytes from the operating system; its failure is an error.
    #[allow(clippy::disallowed_types)] // the client's one source of randomness
    pub(crate) fn from_os() -> Result<Self, rand::Error> {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::RngCore::try_fill_bytes(&mut rand::rngs::OsRng, key.as_mut())?;
        Ok(Self::from_key(key))
    }

    /// A child RNG keyed with the next 32 bytes of this one's output. This
    /// one's key moves on as it does for any output, so neither can recompute
    /// the other's: a caller holding a shared RNG's lock forks and lets go,
    /// instead of holding the lock through a slow step (the client's Argon2id).
    pub(crate) fn fork(&mut self) -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::RngCore::fill_bytes(self, key.as_mut());
        Self::from_key(key)
    }
}

impl rand::RngCore for KeyErasingRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        let mut chunks = dest.chunks_mut(RNG_CHUNK).peekable();
        // At least one step even for an empty `dest`: every call moves the key on.
        let mut first = true;
        while first || chunks.peek().is_some() {
            first = false;
            let mut cipher = ChaCha20::new(self.key.as_ref().into(), &[0u8; 12].into());
            let mut next = Zeroizing::new([0u8; 32]);
            cipher.apply_keystream(next.as_mut());
            if let Some(chunk) = chunks.next() {
                chunk.fill(0);
                cipher.apply_keystream(chunk);
            }
            self.key = next;
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl rand::CryptoRng for KeyErasingRng {}

/// A key-erasing RNG seeded with 32 bytes from the HSM: every random value the
/// vault draws (OPAQUE nonces and ephemerals, credential nonces) comes from the HSM.
pub(crate) fn hsm_rng<H: Hsm>(hsm: &H) -> Result<KeyErasingRng, HsmError> {
    let mut seed = Zeroizing::new([0u8; 32]);
    hsm.random(seed.as_mut())?;
    Ok(KeyErasingRng::from_key(seed))
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

/// The digest of a secret a registration will store, as `VaultRegisterStart`
/// announces it and the registration tag covers it.
pub fn registration_secret_digest(user: &UserId, secret: &[u8]) -> [u8; 32] {
    sha256(&labeled(
        b"vaultfleet/vault/secret-digest/v1",
        &[user.as_bytes(), secret],
    ))
}

/// What a registration is, as its nonce tag binds it: a first registration (or
/// one after a delete), or the re-registration authorised by the login whose
/// attempt is `ticket`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RegistrationKind {
    /// A registration for a user with no record (never registered, or deleted).
    First,
    /// A re-registration authorised by the proven login of attempt `ticket`.
    Replace {
        /// The authorising login's ticket (its consume's, from the vault's ticket clock).
        ticket: u64,
    },
}

impl RegistrationKind {
    fn encode(self) -> [u8; 9] {
        let (kind, ticket) = match self {
            RegistrationKind::First => (0u8, 0u64),
            RegistrationKind::Replace { ticket } => (1, ticket),
        };
        let mut b = [0u8; 9];
        b[0] = kind;
        b[1..].copy_from_slice(&ticket.to_be_bytes());
        b
    }
}

/// Everything the registration MAC (the nonce tag, by the HSM's
/// `vault/registration` key) binds a credential nonce to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NonceBinding<'a> {
    pub(crate) group: u64,
    pub(crate) user: &'a UserId,
    pub(crate) nonce: &'a [u8],
    pub(crate) max_attempts: u32,
    pub(crate) secret_digest: &'a [u8],
    pub(crate) kind: RegistrationKind,
    /// The user's generation when the fleet issued the nonce: the registration
    /// applies only while the user is still at it (a delete or replace since
    /// makes it stale, so a withheld registration cannot be replayed later).
    pub(crate) issued_generation: u64,
}

/// What the registration MAC covers: the fleet, the user, the nonce, what the
/// registration will store (its limit and its secret's digest), its kind (first
/// registration, or re-registration by which login) and the generation it was
/// issued at. Tags of earlier layouts lived only between a `RegisterStart` and
/// its finish; stored ones are only compared, never re-verified.
pub(crate) fn nonce_mac_input(b: &NonceBinding<'_>) -> Vec<u8> {
    labeled(
        b"vaultfleet/vault/credential-nonce/v3",
        &[
            &b.group.to_be_bytes(),
            b.user.as_bytes(),
            b.nonce,
            &b.max_attempts.to_be_bytes(),
            b.secret_digest,
            &b.kind.encode(),
            &b.issued_generation.to_be_bytes(),
        ],
    )
}

/// HMAC-SHA256 of `input` under `key`, in a buffer wiped on drop.
///
/// `hmac` 0.12 and `sha2` 0.10 have no `zeroize` feature: the hash cores' own
/// states (the keyed inner and outer chaining values) are dropped unwiped on
/// the stack. Every buffer this crate owns (keys, PRKs, outputs) is wiped.
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Zeroizing<[u8; 32]> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    for p in parts {
        mac.update(p);
    }
    let mut out = mac.finalize().into_bytes();
    let tag = Zeroizing::new(<[u8; 32]>::from(out));
    out.as_mut_slice().zeroize();
    tag
}

/// HKDF-SHA256 (RFC 5869) with no salt and one 32-byte output block, the PRK
/// and the output held in wiped buffers: `T(1) = HMAC(PRK, info || 0x01)`.
fn hkdf_sha256_32(ikm: &[u8], info: &[u8]) -> Zeroizing<[u8; 32]> {
    let (mut prk_array, _) = Hkdf::<Sha256>::extract(None, ikm);
    let prk = Zeroizing::new(<[u8; 32]>::from(prk_array));
    prk_array.as_mut_slice().zeroize();
    hmac_sha256(prk.as_ref(), &[info, &[1u8]])
}

/// The key that authenticates a login's requests (what they ask the fleet to
/// do), from the OPAQUE session key: HKDF-SHA256, no salt, its own label, so it
/// is independent of the secret-transport key.
fn intent_key(session_key: &[u8]) -> Zeroizing<[u8; 32]> {
    hkdf_sha256_32(session_key, b"vaultfleet/vault/login-intent/v1")
}

/// The digest of `request` with its intent tag left empty: what the tag covers.
/// Every field is covered, the request id and any field added later included.
fn unsigned_request_digest(request: &VaultClientRequest) -> [u8; 32] {
    let mut unsigned = request.clone();
    match unsigned.op.as_mut() {
        Some(vault_client_request::Op::LoginFinish(f)) => f.intent_tag.clear(),
        Some(vault_client_request::Op::RegisterFinish(f)) => f.intent_tag.clear(),
        Some(vault_client_request::Op::RegisterStart(_))
        | Some(vault_client_request::Op::LoginStart(_))
        | None => {}
    }
    let bytes = Zeroizing::new(wire::encode_bounded(&unsigned));
    if let Some(vault_client_request::Op::RegisterFinish(f)) = unsigned.op.as_mut() {
        f.secret.zeroize();
    }
    sha256(&bytes)
}

/// The intent tag of `request`, for `user` of fleet `group`, under the session
/// key of the login it acts for: HMAC-SHA256 under the intent key over
/// (label, group, user, SHA-256 of the request encoded with an empty tag).
fn request_tag(
    group: u64,
    user: &UserId,
    session_key: &[u8],
    request: &VaultClientRequest,
) -> Zeroizing<[u8; 32]> {
    let input = labeled(
        b"vaultfleet/vault/request-intent/v2",
        &[
            &group.to_be_bytes(),
            user.as_bytes(),
            &unsigned_request_digest(request),
        ],
    );
    hmac_sha256(intent_key(session_key).as_ref(), &[&input])
}

/// Authenticates a `LoginFinish` or a re-registration's `RegisterFinish` to the
/// login session of `session_key`: sets its `intent_tag` over every other byte
/// of the request (the request id included). Any other request is left as it is.
pub fn authenticate_request(
    group: u64,
    user: &UserId,
    session_key: &[u8],
    request: &mut VaultClientRequest,
) {
    let tag = request_tag(group, user, session_key, request);
    match request.op.as_mut() {
        Some(vault_client_request::Op::LoginFinish(f)) => f.intent_tag = tag.to_vec(),
        Some(vault_client_request::Op::RegisterFinish(f)) => f.intent_tag = tag.to_vec(),
        Some(vault_client_request::Op::RegisterStart(_))
        | Some(vault_client_request::Op::LoginStart(_))
        | None => {}
    }
}

/// True when `request` carries the intent tag of the login session of
/// `session_key` over exactly its bytes, compared in constant time.
pub(crate) fn request_is_authentic(
    group: u64,
    user: &UserId,
    session_key: &[u8],
    request: &VaultClientRequest,
) -> bool {
    let carried: &[u8] = match request.op.as_ref() {
        Some(vault_client_request::Op::LoginFinish(f)) => &f.intent_tag,
        Some(vault_client_request::Op::RegisterFinish(f)) => &f.intent_tag,
        Some(vault_client_request::Op::RegisterStart(_))
        | Some(vault_client_request::Op::LoginStart(_))
        | None => return false,
    };
    let expected = request_tag(group, user, session_key, request);
    expected.as_ref().ct_eq(carried).into()
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
    hmac_sha256(session_key, &[b"vaultfleet/vault/secret-transport/v1"])
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

/// Opens the secret a recovery's reply carries (`encrypted_secret` under
/// `secret_nonce`), sealed for the client by the service that ran the login
/// of `session_key`, for the request whose SHA-256 is `request_digest`, of
/// `user`. Sans-IO: what [`VaultClient::recover`](crate::VaultClient::recover)
/// does with a verified reply, usable by any driver of the client flows (the
/// simulator's devices). Fails if any of the four differs from the sealing.
pub fn open_recovered_secret(
    session_key: &[u8],
    request_digest: &[u8],
    user: &UserId,
    nonce: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, ProtocolFailure> {
    open_from_fleet(session_key, request_digest, user, nonce, ciphertext)
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
    fn finding_low_the_rng_state_is_a_key_that_moves_on_every_call() {
        use rand::RngCore;
        let mut a = KeyErasingRng::from_key(Zeroizing::new([1; 32]));
        let mut b = KeyErasingRng::from_key(Zeroizing::new([1; 32]));
        let (x, y) = (a.next_u64(), a.next_u64());
        assert_ne!(x, y);
        assert_eq!(b.next_u64(), x, "the same key gives the same stream");
        let mut big = vec![0u8; RNG_CHUNK * 2 + 3];
        a.fill_bytes(&mut big);
        assert_ne!(big[..RNG_CHUNK], big[RNG_CHUNK..RNG_CHUNK * 2]);
        let before = *a.key;
        a.fill_bytes(&mut []);
        assert_ne!(*a.key, before);
        assert_ne!(KeyErasingRng::from_os().unwrap().next_u64(), 0);
    }

    #[test]
    fn a_fork_is_keyed_by_output_and_the_parent_moves_on() {
        use rand::RngCore;
        let mut parent = KeyErasingRng::from_key(Zeroizing::new([3; 32]));
        let mut twin = KeyErasingRng::from_key(Zeroizing::new([3; 32]));
        let before = *parent.key;
        let mut child = parent.fork();
        assert_ne!(*parent.key, before, "forking moves the parent's key on");
        assert_ne!(*child.key, *parent.key);
        assert_ne!(*child.key, before);
        // The child's key is exactly the parent's next 32 bytes of output.
        let mut drawn = Zeroizing::new([0u8; 32]);
        twin.fill_bytes(drawn.as_mut());
        assert_eq!(*child.key, *drawn);
        assert_eq!(*twin.key, *parent.key);
        assert_ne!(child.next_u64(), parent.next_u64());
    }

    fn login_finish_request() -> VaultClientRequest {
        let mut f = crate::wire::VaultLoginFinish::new();
        f.login = 7;
        f.credential_finalization = b"finalization".to_vec();
        f.purpose = crate::wire::VaultLoginPurpose::VAULT_DELETE.into();
        f.registration_request = b"req".to_vec();
        f.max_attempts = 10;
        f.secret_digest = vec![3; 32];
        let mut r = VaultClientRequest::new();
        let mut id = crate::wire::VaultRequestId::new();
        id.client = 5;
        id.sequence = 9;
        r.request = Some(id).into();
        r.op = Some(vault_client_request::Op::LoginFinish(f));
        r
    }

    fn register_finish_request() -> VaultClientRequest {
        let mut f = crate::wire::VaultRegisterFinish::new();
        f.user = b"alice".to_vec();
        f.registration_upload = b"upload".to_vec();
        f.credential_nonce = vec![1; 32];
        f.secret = b"secret".to_vec();
        f.max_attempts = 10;
        f.nonce_tag = vec![2; 32];
        f.login = 7;
        f.issued_generation = 3;
        let mut r = VaultClientRequest::new();
        let mut id = crate::wire::VaultRequestId::new();
        id.client = 5;
        id.sequence = 10;
        r.request = Some(id).into();
        r.op = Some(vault_client_request::Op::RegisterFinish(f));
        r
    }

    /// Every field of `m` (found by reflection, so a field added later is
    /// covered too), each changed in turn to a value unlike its current one.
    fn each_field_altered(
        m: &dyn protobuf::MessageDyn,
    ) -> Vec<(String, Box<dyn protobuf::MessageDyn>)> {
        use protobuf::reflect::{ReflectValueBox, RuntimeFieldType, RuntimeType};
        let d = m.descriptor_dyn();
        let mut out = Vec::new();
        for field in d.fields() {
            if field.name() == "intent_tag" {
                continue;
            }
            let RuntimeFieldType::Singular(t) = field.runtime_field_type() else {
                panic!("a request field is repeated or a map: {}", field.name());
            };
            let mut copy = m.clone_box();
            let v = match t {
                RuntimeType::U64 => ReflectValueBox::U64(
                    field.get_singular_field_or_default(m).to_u64().unwrap_or(0) ^ 1,
                ),
                RuntimeType::U32 => ReflectValueBox::U32(
                    field.get_singular_field_or_default(m).to_u32().unwrap_or(0) ^ 1,
                ),
                RuntimeType::VecU8 => {
                    let mut b = field
                        .get_singular_field_or_default(m)
                        .to_bytes()
                        .unwrap_or_default()
                        .to_vec();
                    b.push(0x55);
                    ReflectValueBox::Bytes(b)
                }
                RuntimeType::Enum(e) => {
                    let now = field
                        .get_singular_field_or_default(m)
                        .to_enum_value()
                        .unwrap_or(0);
                    let other = e
                        .values()
                        .map(|v| v.value())
                        .find(|v| *v != now)
                        .unwrap_or(now + 1);
                    ReflectValueBox::Enum(e, other)
                }
                other => panic!("no alteration for a {other:?} field ({})", field.name()),
            };
            field.set_singular_field(copy.as_mut(), v);
            out.push((field.name().to_string(), copy));
        }
        out
    }

    fn with_op(r: &VaultClientRequest, op: Box<dyn protobuf::MessageDyn>) -> VaultClientRequest {
        let mut r = r.clone();
        r.op = Some(match r.op.take() {
            Some(vault_client_request::Op::LoginFinish(_)) => {
                vault_client_request::Op::LoginFinish(
                    *op.downcast_box()
                        .unwrap_or_else(|_| panic!("a login finish")),
                )
            }
            Some(vault_client_request::Op::RegisterFinish(_)) => {
                vault_client_request::Op::RegisterFinish(
                    *op.downcast_box()
                        .unwrap_or_else(|_| panic!("a register finish")),
                )
            }
            _ => panic!("a finish request"),
        });
        r
    }

    #[test]
    fn review_f3_the_intent_tag_covers_every_field_and_the_request_id() {
        let alice = UserId::new(&b"alice"[..]).unwrap();
        let bob = UserId::new(&b"bob"[..]).unwrap();
        for mut base in [login_finish_request(), register_finish_request()] {
            authenticate_request(1, &alice, b"session", &mut base);
            assert!(request_is_authentic(1, &alice, b"session", &base));
            assert!(!request_is_authentic(1, &alice, b"other session", &base));
            assert!(!request_is_authentic(2, &alice, b"session", &base));
            assert!(!request_is_authentic(1, &bob, b"session", &base));
            // The request id, which says which request the reply answers.
            for (client, sequence) in [(6, 9), (5, 11)] {
                let mut r = base.clone();
                let id = r.request.as_mut().unwrap();
                id.client = client;
                id.sequence = sequence + (id.sequence - 9);
                assert!(
                    !request_is_authentic(1, &alice, b"session", &r),
                    "request id"
                );
            }
            let op: Box<dyn protobuf::MessageDyn> = match base.op.clone() {
                Some(vault_client_request::Op::LoginFinish(f)) => Box::new(f),
                Some(vault_client_request::Op::RegisterFinish(f)) => Box::new(f),
                _ => unreachable!(),
            };
            let altered = each_field_altered(op.as_ref());
            assert!(altered.len() >= 6, "{}", altered.len());
            for (name, changed) in altered {
                let r = with_op(&base, changed);
                assert!(
                    !request_is_authentic(1, &alice, b"session", &r),
                    "field {name} altered and still authentic"
                );
            }
        }
    }

    #[test]
    fn review_f6_derived_keys_are_hkdf_and_hmac_in_wiped_buffers() {
        // The hand-written HKDF (PRK and output in wiped buffers) is RFC 5869's.
        let reference = Hkdf::<Sha256>::new(None, b"session key");
        let mut okm = [0u8; 32];
        reference
            .expand(b"vaultfleet/vault/login-intent/v1", &mut okm)
            .unwrap();
        let key: Zeroizing<[u8; 32]> = intent_key(b"session key");
        assert_eq!(*key, okm);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(b"session key").unwrap();
        mac.update(b"vaultfleet/vault/secret-transport/v1");
        let t: Zeroizing<[u8; 32]> = transport_key(b"session key");
        assert_eq!(t.as_slice(), mac.finalize().into_bytes().as_slice());
    }

    #[test]
    fn the_signed_layouts_are_unchanged() {
        // Pinned: replies and tags from earlier builds must keep verifying.
        let user = UserId::new(&b"u"[..]).unwrap();
        let binding = NonceBinding {
            group: 1,
            user: &user,
            nonce: &[9],
            max_attempts: 10,
            secret_digest: &[7],
            kind: RegistrationKind::Replace { ticket: 4 },
            issued_generation: 3,
        };
        assert_eq!(
            nonce_mac_input(&binding),
            labeled(
                b"vaultfleet/vault/credential-nonce/v3",
                &[
                    &1u64.to_be_bytes(),
                    b"u",
                    &[9],
                    &10u32.to_be_bytes(),
                    &[7],
                    &[1, 0, 0, 0, 0, 0, 0, 0, 4],
                    &3u64.to_be_bytes()
                ]
            )
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
