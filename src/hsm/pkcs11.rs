//! `Pkcs11Hsm`: any PKCS#11 module through `cryptoki` (tested against SoftHSM2).
//!
//! Mechanisms used, all inside the token, with keys created non-extractable and
//! sensitive:
//! * sealing: `CKM_AES_GCM` with a 256-bit AES key, a 96-bit IV drawn from the
//!   token's `C_GenerateRandom` for every call, and a 128-bit tag. Random 96-bit
//!   IVs keep the chance of a repeat below 2^-32 for up to 2^32 seals per key
//!   (NIST SP 800-38D). A sealed store seals twice per `sync`, so at a thousand
//!   syncs a second a key reaches 2^32 seals in about 25 days of continuous full
//!   load: rotate the key (re-add the replica under a new id, hence new labels)
//!   well before that. The bound is not enforced here (docs/storage.md);
//! * signing: `CKM_EDDSA` (pure Ed25519) on a `CKM_EC_EDWARDS_KEY_PAIR_GEN` pair;
//! * MACs: `CKM_SHA256_HMAC` with a 256-bit generic secret.
//!
//! **The counter.** PKCS#11 has no standard monotonic counter that software can
//! advance (`CKH_MONOTONIC_COUNTER` is a read-only hardware feature whose
//! increments are vendor-defined). This implementation keeps each counter in a
//! private token data object (`CKO_DATA`, application `vaultfleet-counter`,
//! value: the 8-byte big-endian count and the 32-byte binding) that only a
//! logged-in user can create or destroy. Tokens
//! (SoftHSM2 among them) refuse to modify a data object's value, so an advance
//! creates an object holding `n + 1` and then destroys the older ones; the counter
//! reads the largest value present, so a crash between the two steps never makes
//! it go back. Advances are serialised by this process's lock. What that protects:
//! the counter lives in the token's storage, not beside the log, so restoring an
//! old copy of the replica's data directory alone is caught. What it does not:
//! with SoftHSM2 the token's storage is itself files on the host, so a host that
//! rolls back the token directory together with the data directory defeats it,
//! and two processes advancing the same label race. A production HSM's
//! NVRAM-backed counter (or a counter in the HSM's own firmware) lives in
//! tamper-resistant storage the host cannot roll back, which is what turns this
//! check into protection against an operator with the disk. See
//! `docs/storage.md`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::{AuthPin, Ulong};
use parking_lot::Mutex;
use std::sync::Arc;
use zeroize::Zeroizing;

use super::{Counter, DeviceFault, Hsm, HsmError, KeyHandle, KeyKind, StateCorruption};

/// Algorithm byte that starts every sealed blob of this HSM.
const ALG_AES256_GCM: u8 = 0x02;
const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;
const COUNTER_APPLICATION: &[u8] = b"vaultfleet-counter";
/// DER encoding of the Ed25519 curve OID 1.3.101.112 (RFC 8410).
const ED25519_PARAMS: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

/// Where to find the token and how to log in.
#[derive(Clone)]
pub struct Pkcs11Config {
    /// Path of the PKCS#11 module (for SoftHSM2 on Debian:
    /// `/usr/lib/softhsm/libsofthsm2.so`).
    pub module: PathBuf,
    /// Label of the token to use.
    pub token_label: String,
    /// The user PIN (zeroized on drop, never logged).
    pub user_pin: Zeroizing<String>,
}

impl std::fmt::Debug for Pkcs11Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Config")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("user_pin", &"<redacted>")
            .finish()
    }
}

struct P11Key {
    kind: KeyKind,
    /// The secret or private key.
    private: ObjectHandle,
    /// The public key of a signing pair.
    public: Option<ObjectHandle>,
}

struct Inner {
    session: Session,
    keys: Vec<P11Key>,
    by_label: BTreeMap<(KeyKind, String), u32>,
}

/// An [`Hsm`] on a PKCS#11 token. Clones share one logged-in session.
#[derive(Clone)]
pub struct Pkcs11Hsm {
    inner: Arc<Mutex<Inner>>,
    token_label: String,
    // Kept so the library stays loaded and initialised as long as a clone lives.
    _context: Pkcs11,
}

impl std::fmt::Debug for Pkcs11Hsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Hsm")
            .field("token", &self.token_label)
            .finish()
    }
}

fn device(what: &'static str, e: CkError) -> HsmError {
    match e {
        CkError::Pkcs11(
            RvError::DeviceRemoved
            | RvError::DeviceError
            | RvError::TokenNotPresent
            | RvError::SessionClosed
            | RvError::SessionHandleInvalid
            | RvError::CryptokiNotInitialized,
            _,
        ) => HsmError::Unavailable {
            operation: what,
            cause: Some(Arc::new(e)),
        },
        CkError::LibraryLoading(_) => HsmError::Unavailable {
            operation: what,
            cause: Some(Arc::new(e)),
        },
        other => HsmError::Device {
            operation: what,
            cause: Arc::new(other),
        },
    }
}

impl Pkcs11Hsm {
    /// Loads the module, finds the token labelled `token_label` and logs in as
    /// its user. One process should open one `Pkcs11Hsm` per module and share
    /// clones of it.
    pub fn open(config: &Pkcs11Config) -> Result<Self, HsmError> {
        let context = Pkcs11::new(&config.module).map_err(|e| HsmError::ModuleUnloadable {
            module: config.module.clone(),
            cause: Arc::new(e),
        })?;
        match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(device("C_Initialize", e)),
        }
        let slots = context
            .get_slots_with_token()
            .map_err(|e| device("C_GetSlotList", e))?;
        let mut found = None;
        for slot in slots {
            let info = context
                .get_token_info(slot)
                .map_err(|e| device("C_GetTokenInfo", e))?;
            if info.label().trim_end() == config.token_label {
                found = Some(slot);
                break;
            }
        }
        let slot = found.ok_or_else(|| HsmError::NoToken {
            token: config.token_label.clone(),
            module: config.module.clone(),
        })?;
        let session = context
            .open_rw_session(slot)
            .map_err(|e| device("C_OpenSession", e))?;
        let pin = AuthPin::new(config.user_pin.as_str().into());
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => {
                return Err(HsmError::Unusable(DeviceFault::WrongPin {
                    token: config.token_label.clone(),
                }))
            }
            Err(e) => return Err(device("C_Login", e)),
        }
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner {
                session,
                keys: Vec::new(),
                by_label: BTreeMap::new(),
            })),
            token_label: config.token_label.clone(),
            _context: context,
        })
    }

    fn find(inner: &mut Inner, label: &str, kind: KeyKind) -> Result<Option<u32>, HsmError> {
        if let Some(slot) = inner.by_label.get(&(kind, label.to_string())) {
            return Ok(Some(*slot));
        }
        let class = match kind {
            KeyKind::Signing => ObjectClass::PRIVATE_KEY,
            _ => ObjectClass::SECRET_KEY,
        };
        let key_type = match kind {
            KeyKind::Aead => KeyType::AES,
            KeyKind::Mac => KeyType::GENERIC_SECRET,
            KeyKind::Signing => KeyType::EC_EDWARDS,
        };
        let template = [
            Attribute::Class(class),
            Attribute::KeyType(key_type),
            Attribute::Label(label.as_bytes().to_vec()),
        ];
        let found = inner
            .session
            .find_objects(&template)
            .map_err(|e| device("C_FindObjects", e))?;
        let Some(&private) = found.first() else {
            return Ok(None);
        };
        // A key someone else created under our label must be as locked down as
        // the ones we generate.
        let attrs = inner
            .session
            .get_attributes(
                private,
                &[AttributeType::Sensitive, AttributeType::Extractable],
            )
            .map_err(|e| device("C_GetAttributeValue (key policy)", e))?;
        let locked = attrs.contains(&Attribute::Sensitive(true))
            && attrs.contains(&Attribute::Extractable(false));
        if !locked {
            return Err(HsmError::Unusable(DeviceFault::KeyExtractable {
                label: label.to_string(),
                kind,
            }));
        }
        let public = if kind == KeyKind::Signing {
            let pubs = inner
                .session
                .find_objects(&[
                    Attribute::Class(ObjectClass::PUBLIC_KEY),
                    Attribute::KeyType(KeyType::EC_EDWARDS),
                    Attribute::Label(label.as_bytes().to_vec()),
                ])
                .map_err(|e| device("C_FindObjects", e))?;
            Some(*pubs.first().ok_or_else(|| {
                HsmError::Corrupt(StateCorruption::MissingPublicKey {
                    label: label.to_string(),
                })
            })?)
        } else {
            None
        };
        Ok(Some(Self::remember(inner, label, kind, private, public)))
    }

    fn remember(
        inner: &mut Inner,
        label: &str,
        kind: KeyKind,
        private: ObjectHandle,
        public: Option<ObjectHandle>,
    ) -> u32 {
        let slot = inner.keys.len() as u32;
        inner.keys.push(P11Key {
            kind,
            private,
            public,
        });
        inner.by_label.insert((kind, label.to_string()), slot);
        slot
    }

    fn generate(inner: &mut Inner, label: &str, kind: KeyKind) -> Result<u32, HsmError> {
        let l = Attribute::Label(label.as_bytes().to_vec());
        let secret = |key_type: KeyType, usage: [Attribute; 2]| {
            let [a, b] = usage;
            vec![
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(key_type),
                Attribute::ValueLen(Ulong::new(32)),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                a,
                b,
                l.clone(),
            ]
        };
        let (private, public) = match kind {
            KeyKind::Aead => (
                inner
                    .session
                    .generate_key(
                        &Mechanism::AesKeyGen,
                        &secret(
                            KeyType::AES,
                            [Attribute::Encrypt(true), Attribute::Decrypt(true)],
                        ),
                    )
                    .map_err(|e| device("C_GenerateKey (AES)", e))?,
                None,
            ),
            KeyKind::Mac => (
                inner
                    .session
                    .generate_key(
                        &Mechanism::GenericSecretKeyGen,
                        &secret(
                            KeyType::GENERIC_SECRET,
                            [Attribute::Sign(true), Attribute::Verify(true)],
                        ),
                    )
                    .map_err(|e| device("C_GenerateKey (HMAC)", e))?,
                None,
            ),
            KeyKind::Signing => {
                let (public, private) = inner
                    .session
                    .generate_key_pair(
                        &Mechanism::EccEdwardsKeyPairGen,
                        &[
                            Attribute::Token(true),
                            Attribute::Private(false),
                            Attribute::Verify(true),
                            Attribute::EcParams(ED25519_PARAMS.to_vec()),
                            l.clone(),
                        ],
                        &[
                            Attribute::Token(true),
                            Attribute::Private(true),
                            Attribute::Sensitive(true),
                            Attribute::Extractable(false),
                            Attribute::Sign(true),
                            l.clone(),
                        ],
                    )
                    .map_err(|e| device("C_GenerateKeyPair (Ed25519)", e))?;
                (private, Some(public))
            }
        };
        Ok(Self::remember(inner, label, kind, private, public))
    }

    fn handle(inner: &Inner, key: KeyHandle, expected: KeyKind) -> Result<&P11Key, HsmError> {
        match inner.keys.get(key.slot()) {
            Some(k) if k.kind == expected && key.kind() == expected => Ok(k),
            _ => Err(HsmError::WrongKey { expected }),
        }
    }

    /// Seals and opens a fixed probe under `key`: `Ok` when the token works.
    fn probe(&self, key: KeyHandle) -> Result<(), HsmError> {
        const PROBE: &[u8] = b"vaultfleet known-answer probe";
        let sealed = self.seal(key, PROBE, PROBE)?;
        let inner = self.inner.lock();
        let k = Self::handle(&inner, key, KeyKind::Aead)?;
        let mut iv = [0u8; IV_LEN];
        iv.copy_from_slice(&sealed[1..1 + IV_LEN]);
        let params = GcmParams::new(&mut iv, PROBE, Ulong::new((TAG_LEN * 8) as _))
            .map_err(|e| device("GCM parameters", e))?;
        let plain = inner
            .session
            .decrypt(&Mechanism::AesGcm(params), k.private, &sealed[1 + IV_LEN..])
            .map_err(|e| device("C_Decrypt (probe)", e))?;
        if plain != PROBE {
            return Err(HsmError::Unusable(DeviceFault::KnownAnswerWrong));
        }
        Ok(())
    }

    /// Every token object holding a value of counter `label`, with its value.
    fn counter_objects(
        inner: &Inner,
        label: &str,
    ) -> Result<Vec<(ObjectHandle, Counter)>, HsmError> {
        let found = inner
            .session
            .find_objects(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Application(COUNTER_APPLICATION.to_vec()),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
            .map_err(|e| device("C_FindObjects (counter)", e))?;
        let mut out = Vec::with_capacity(found.len());
        for object in found {
            let attrs = inner
                .session
                .get_attributes(object, &[AttributeType::Value])
                .map_err(|e| device("C_GetAttributeValue (counter)", e))?;
            match attrs.first() {
                Some(Attribute::Value(v)) if v.len() == 40 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&v[..8]);
                    let mut binding = [0u8; 32];
                    binding.copy_from_slice(&v[8..]);
                    out.push((
                        object,
                        Counter {
                            value: u64::from_be_bytes(b),
                            binding,
                        },
                    ));
                }
                _ => {
                    return Err(HsmError::Corrupt(StateCorruption::CounterValue {
                        label: label.to_string(),
                        expected: 40,
                    }))
                }
            }
        }
        Ok(out)
    }
}

impl Hsm for Pkcs11Hsm {
    fn key(&self, label: &str, kind: KeyKind) -> Result<KeyHandle, HsmError> {
        let mut inner = self.inner.lock();
        let slot = match Self::find(&mut inner, label, kind)? {
            Some(slot) => slot,
            None => Self::generate(&mut inner, label, kind)?,
        };
        Ok(KeyHandle::new(kind, slot))
    }

    fn find_key(&self, label: &str, kind: KeyKind) -> Result<Option<KeyHandle>, HsmError> {
        let mut inner = self.inner.lock();
        Ok(Self::find(&mut inner, label, kind)?.map(|slot| KeyHandle::new(kind, slot)))
    }

    fn seal(&self, key: KeyHandle, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, HsmError> {
        let inner = self.inner.lock();
        let k = Self::handle(&inner, key, KeyKind::Aead)?;
        let mut iv = [0u8; IV_LEN];
        inner
            .session
            .generate_random_slice(&mut iv)
            .map_err(|e| device("C_GenerateRandom", e))?;
        let mut iv_param = iv;
        let params = GcmParams::new(&mut iv_param, aad, Ulong::new((TAG_LEN * 8) as _))
            .map_err(|e| device("GCM parameters", e))?;
        let mechanism = Mechanism::AesGcm(params);
        let ct = inner
            .session
            .encrypt(&mechanism, k.private, plaintext)
            .map_err(|e| device("C_Encrypt (AES-GCM)", e))?;
        drop(mechanism);
        // A token may write an IV of its own choosing back into the parameters;
        // then the blob could never be opened. Refuse rather than store it.
        if iv_param != iv {
            return Err(HsmError::Unusable(DeviceFault::IvReplaced));
        }
        Ok(super::frame(ALG_AES256_GCM, &iv, &ct))
    }

    fn unseal(
        &self,
        key: KeyHandle,
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        let inner = self.inner.lock();
        let k = Self::handle(&inner, key, KeyKind::Aead)?;
        let (nonce, ct) = super::unframe(sealed, ALG_AES256_GCM, "AES-256-GCM", IV_LEN, TAG_LEN)?;
        let mut iv = [0u8; IV_LEN];
        iv.copy_from_slice(nonce);
        let params = GcmParams::new(&mut iv, aad, Ulong::new((TAG_LEN * 8) as _))
            .map_err(|e| device("GCM parameters", e))?;
        match inner
            .session
            .decrypt(&Mechanism::AesGcm(params), k.private, ct)
        {
            Ok(plain) => Ok(Zeroizing::new(plain)),
            Err(CkError::Pkcs11(
                RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange,
                _,
            )) => Err(HsmError::Unauthentic),
            // Some tokens (SoftHSM2, from its OpenSSL back end) report a failed tag
            // check only as a generic failure. Tell tampering from a sick device
            // with a known-answer probe under the same key: if the token seals and
            // opens the probe, the input was at fault.
            Err(e @ CkError::Pkcs11(RvError::GeneralError | RvError::FunctionFailed, _)) => {
                drop(inner);
                match self.probe(key) {
                    Ok(()) => Err(HsmError::Unauthentic),
                    Err(_) => Err(device("C_Decrypt (AES-GCM)", e)),
                }
            }
            Err(e) => Err(device("C_Decrypt (AES-GCM)", e)),
        }
    }

    fn sign(&self, key: KeyHandle, message: &[u8]) -> Result<[u8; 64], HsmError> {
        let inner = self.inner.lock();
        let k = Self::handle(&inner, key, KeyKind::Signing)?;
        let sig = inner
            .session
            .sign(
                &Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
                k.private,
                message,
            )
            .map_err(|e| device("C_Sign (EdDSA)", e))?;
        sig.as_slice().try_into().map_err(|_| {
            HsmError::Unusable(DeviceFault::OutputLength {
                what: "an EdDSA signature",
                len: sig.len(),
                expected: 64,
            })
        })
    }

    fn public_key(&self, key: KeyHandle) -> Result<[u8; 32], HsmError> {
        let inner = self.inner.lock();
        let k = Self::handle(&inner, key, KeyKind::Signing)?;
        let public = k.public.ok_or(HsmError::WrongKey {
            expected: KeyKind::Signing,
        })?;
        let attrs = inner
            .session
            .get_attributes(public, &[AttributeType::EcPoint])
            .map_err(|e| device("C_GetAttributeValue (EC point)", e))?;
        let Some(Attribute::EcPoint(point)) = attrs.first() else {
            return Err(HsmError::Unusable(DeviceFault::PublicKeyEncoding {
                len: 0,
            }));
        };
        // Usually a DER OCTET STRING (04 20 || key); some tokens return the raw key.
        let raw = match point.as_slice() {
            [0x04, 0x20, rest @ ..] if rest.len() == 32 => rest,
            raw if raw.len() == 32 => raw,
            other => {
                return Err(HsmError::Unusable(DeviceFault::PublicKeyEncoding {
                    len: other.len(),
                }))
            }
        };
        raw.try_into()
            .map_err(|_| HsmError::Unusable(DeviceFault::PublicKeyEncoding { len: raw.len() }))
    }

    fn mac(&self, key: KeyHandle, data: &[u8]) -> Result<[u8; 32], HsmError> {
        let inner = self.inner.lock();
        let k = Self::handle(&inner, key, KeyKind::Mac)?;
        let tag = inner
            .session
            .sign(&Mechanism::Sha256Hmac, k.private, data)
            .map_err(|e| device("C_Sign (HMAC-SHA256)", e))?;
        tag.as_slice().try_into().map_err(|_| {
            HsmError::Unusable(DeviceFault::OutputLength {
                what: "an HMAC-SHA256 tag",
                len: tag.len(),
                expected: 32,
            })
        })
    }

    fn random(&self, out: &mut [u8]) -> Result<(), HsmError> {
        self.inner
            .lock()
            .session
            .generate_random_slice(out)
            .map_err(|e| device("C_GenerateRandom", e))
    }

    fn counter(&self, label: &str) -> Result<Counter, HsmError> {
        let inner = self.inner.lock();
        Ok(Self::counter_objects(&inner, label)?
            .iter()
            .map(|(_, c)| *c)
            .max_by_key(|c| c.value)
            .unwrap_or_default())
    }

    fn advance_counter(&self, label: &str, binding: &[u8; 32]) -> Result<u64, HsmError> {
        let inner = self.inner.lock();
        let objects = Self::counter_objects(&inner, label)?;
        let old = objects.iter().map(|(_, c)| c.value).max().unwrap_or(0);
        let new = old
            .checked_add(1)
            .ok_or_else(|| HsmError::CounterExhausted {
                label: label.to_string(),
            })?;
        let mut value = new.to_be_bytes().to_vec();
        value.extend_from_slice(binding);
        // Create the new value first, then remove the old ones: a crash in between
        // leaves both, and the counter reads the larger.
        inner
            .session
            .create_object(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Modifiable(false),
                Attribute::Application(COUNTER_APPLICATION.to_vec()),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Value(value),
            ])
            .map_err(|e| device("C_CreateObject (counter)", e))?;
        for (object, _) in objects {
            if let Err(e) = inner.session.destroy_object(object) {
                tracing::warn!(counter = label, error = %e, "could not remove an old counter object; the counter still reads the newest");
            }
        }
        Ok(new)
    }
}

/// Why a throw-away SoftHSM2 token could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SoftHsm2Setup {
    /// No SoftHSM2 module in the usual places.
    #[error("SoftHSM2 is not installed (looked in {looked:?}); install it with `apt-get install -y softhsm2` or set VAULTFLEET_PKCS11_MODULE")]
    NotInstalled {
        /// The paths looked in.
        looked: &'static [&'static str],
    },
    /// `softhsm2-util --init-token` failed; its own words are kept.
    #[error("softhsm2-util --init-token failed: {stderr}")]
    InitToken {
        /// What the tool printed on stderr.
        stderr: String,
    },
}

/// Where Debian, Ubuntu and source builds put SoftHSM2's PKCS#11 module.
pub const SOFTHSM2_MODULES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];

/// The SoftHSM2 module: `VAULTFLEET_PKCS11_MODULE` if set, else the first of
/// [`SOFTHSM2_MODULES`] that exists.
pub fn softhsm2_module() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("VAULTFLEET_PKCS11_MODULE") {
        return Some(PathBuf::from(path));
    }
    SOFTHSM2_MODULES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Creates a throw-away SoftHSM2 token labelled `label` in `dir` and opens it,
/// for tests and benchmarks: it writes `dir/softhsm2.conf` pointing at
/// `dir/tokens`, points this process's `SOFTHSM2_CONF` at it, and runs
/// `softhsm2-util --init-token` (the security officer PIN is set to `user_pin`
/// too), so the machine's own tokens are never touched.
///
/// Call it once per process, before any other thread uses PKCS#11 (SoftHSM2
/// reads its configuration once, and a module is initialised once per process).
pub fn softhsm2_throwaway_token(
    dir: &std::path::Path,
    label: &str,
    user_pin: &str,
) -> Result<Pkcs11Hsm, HsmError> {
    let module = softhsm2_module().ok_or_else(|| HsmError::Unavailable {
        operation: "finding SoftHSM2",
        cause: Some(Arc::new(SoftHsm2Setup::NotInstalled {
            looked: SOFTHSM2_MODULES,
        })),
    })?;
    let io = |what: &'static str, e: std::io::Error| HsmError::Unavailable {
        operation: what,
        cause: Some(Arc::new(e)),
    };
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).map_err(|e| io("creating the token directory", e))?;
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .map_err(|e| io("writing softhsm2.conf", e))?;
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let out = std::process::Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args(["--init-token", "--free", "--label", label, "--so-pin"])
        .arg(user_pin)
        .args(["--pin", user_pin])
        .output()
        .map_err(|e| io("running softhsm2-util (apt-get install -y softhsm2)", e))?;
    if !out.status.success() {
        return Err(HsmError::Unavailable {
            operation: "initialising a SoftHSM2 token",
            cause: Some(Arc::new(SoftHsm2Setup::InitToken {
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })),
        });
    }
    Pkcs11Hsm::open(&Pkcs11Config {
        module,
        token_label: label.to_string(),
        user_pin: Zeroizing::new(user_pin.to_string()),
    })
}
