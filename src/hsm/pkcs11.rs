//! `Pkcs11Hsm`: any PKCS#11 module through `cryptoki` (tested against SoftHSM2).
//!
//! Mechanisms used, all inside the token, with keys created non-extractable and
//! sensitive:
//! * sealing: `CKM_AES_GCM` with a 256-bit AES key, a 96-bit IV drawn from the
//!   token's `C_GenerateRandom` for every call, and a 128-bit tag. Random 96-bit
//!   IVs keep the chance of a repeat below 2^-32 only up to 2^32 seals per key
//!   (NIST SP 800-38D §8.3), so that bound is enforced: every AEAD key has a
//!   durable seal count on the token (a `CKO_DATA` object, application
//!   `vaultfleet-seal-count`, reserved ahead in blocks so a seal costs no token
//!   write), and a key that reached [`Pkcs11Limits::seals_per_key`] seals no more
//!   ([`HsmError::SealLimitReached`]): rotate it by re-adding the replica under a
//!   new id (hence new labels);
//! * signing: `CKM_EDDSA` (pure Ed25519) on a `CKM_EC_EDWARDS_KEY_PAIR_GEN` pair;
//! * MACs: `CKM_SHA256_HMAC` with a 256-bit generic secret.
//!
//! **The counter.** A counter is kept in private token data objects (`CKO_DATA`,
//! application `vaultfleet-counter`, value: the 8-byte big-endian count and the
//! 32-byte binding), none of them modifiable, and reads as the largest value
//! present. An advance creates an object holding `n + 1`, then destroys the older
//! destroyable ones, so a crash between the two steps never makes it go back.
//! Every [`Pkcs11Limits::counter_floor_every`]-th value is a *floor*: an object
//! created with `CKA_DESTROYABLE = false` (checked after creation; a token that
//! ignores the attribute is refused). Anyone holding the user PIN can destroy the
//! destroyable objects and create one naming an older head, but cannot remove a
//! floor, so the counter never reads below the latest floor: a rollback is caught
//! unless it goes back fewer than `counter_floor_every` syncs (the rollback window,
//! docs/storage.md). Floors are never destroyed, so the token holds one object
//! per `counter_floor_every` advances, plus at most a few destroyable ones: the
//! count grows, slowly, with the number of syncs, and the window and the growth
//! are the trade-off that setting makes.
//!
//! PKCS#11's `CKH_MONOTONIC_COUNTER` is not used: the standard defines it as a
//! read-only hardware feature that increases when read, by a vendor-defined step,
//! so software can neither advance it once per write nor bind a head to it, and a
//! PIN holder can read it as often as it likes. A vendor counter that software
//! advances by one (an NVRAM counter in the HSM's firmware) replaces the floors
//! through [`HardwareCounter`]: the value is the hardware's and token objects
//! keep only its binding. No real device implements it here; its tests use a
//! test double (docs/storage.md).
//!
//! Advances are serialised by this process's lock. What this protects: the
//! counter lives in the token's storage, not beside the log, so restoring an old
//! copy of the replica's data directory alone is caught, and so is destroying
//! and recreating counter objects, beyond the window. What it does not: with
//! SoftHSM2 the token's storage is itself files on the host, so a host that rolls
//! back the token directory together with the data directory defeats it, and two
//! processes advancing the same label race. A production HSM keeps its objects in
//! tamper-resistant storage the host cannot roll back. See `docs/storage.md`.

use std::collections::BTreeMap;
use std::num::NonZeroU64;
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
const SEAL_COUNT_APPLICATION: &[u8] = b"vaultfleet-seal-count";
/// Bytes of a counter object's value: the count and the binding.
const COUNTER_VALUE_LEN: usize = 8 + 32;
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
    /// The counter's rollback window and the AES-GCM seal bound.
    pub limits: Pkcs11Limits,
}

/// The bounds a [`Pkcs11Hsm`] keeps. The defaults suit production; tests lower
/// them to reach a bound quickly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Pkcs11Limits {
    /// Every this-many-th counter value is a non-destroyable floor object. A PIN
    /// holder who destroys and recreates counter objects can roll a store back by
    /// at most `counter_floor_every - 1` syncs; the token keeps one floor object
    /// per this many advances. 1 makes every advance a floor (no window, one
    /// object per sync).
    pub counter_floor_every: NonZeroU64,
    /// The most seals one AES-GCM key makes (random 96-bit IVs: 2^32, NIST SP
    /// 800-38D §8.3). Counted durably on the token.
    pub seals_per_key: u64,
    /// How many seals one durable reservation covers: a token write every this
    /// many seals. After a restart the unused rest of a reservation counts as
    /// spent.
    pub seal_reservation: NonZeroU64,
}

impl Pkcs11Limits {
    /// A floor every 4096 advances: at a hundred syncs a second, a window of
    /// about 40 seconds and some 2,100 floor objects a day.
    pub const DEFAULT_FLOOR_EVERY: u64 = 4096;
    /// 2^32 seals per key.
    pub const DEFAULT_SEALS_PER_KEY: u64 = 1 << 32;
    /// A durable reservation every 65,536 seals.
    pub const DEFAULT_SEAL_RESERVATION: u64 = 1 << 16;
}

impl Default for Pkcs11Limits {
    fn default() -> Self {
        Self {
            counter_floor_every: NonZeroU64::new(Self::DEFAULT_FLOOR_EVERY)
                .unwrap_or(NonZeroU64::MIN),
            seals_per_key: Self::DEFAULT_SEALS_PER_KEY,
            seal_reservation: NonZeroU64::new(Self::DEFAULT_SEAL_RESERVATION)
                .unwrap_or(NonZeroU64::MIN),
        }
    }
}

impl std::fmt::Debug for Pkcs11Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Config")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("user_pin", &"<redacted>")
            .field("limits", &self.limits)
            .finish()
    }
}

struct P11Key {
    kind: KeyKind,
    label: String,
    /// The secret or private key.
    private: ObjectHandle,
    /// The public key of a signing pair.
    public: Option<ObjectHandle>,
    /// Seals made and reserved under an AEAD key, once read from the token.
    seals: Option<SealBudget>,
}

/// An AEAD key's seal count: `used` seals made (or reserved by an earlier
/// process), `reserved` recorded durably on the token; `used <= reserved`.
#[derive(Clone, Copy, Debug)]
struct SealBudget {
    used: u64,
    reserved: u64,
}

/// One counter object on the token.
struct CounterObject {
    handle: ObjectHandle,
    counter: Counter,
    destroyable: bool,
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
    limits: Pkcs11Limits,
    /// The HSM's own counters, where it has some that software advances by one.
    hardware_counter: Option<Arc<dyn HardwareCounter>>,
    // Kept so the library stays loaded and initialised as long as a clone lives.
    _context: Pkcs11,
}

impl std::fmt::Debug for Pkcs11Hsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Hsm")
            .field("token", &self.token_label)
            .field("limits", &self.limits)
            .field("hardware_counter", &self.hardware_counter.is_some())
            .finish()
    }
}

/// Monotonic counters kept by the HSM's firmware or NVRAM, which software
/// advances by exactly one and nobody, the PIN holder included, can set back.
/// PKCS#11 has no standard interface for this (`CKH_MONOTONIC_COUNTER` increases
/// when read, by a vendor-defined step); vendors expose it through extensions,
/// and a TPM's NV counters are one. With one, [`Pkcs11Hsm`] takes a counter's
/// value from the hardware and keeps only the binding in token objects: no
/// rollback window and at most two objects per counter
/// ([`Pkcs11Hsm::with_hardware_counter`]).
///
/// Each label must name its own hardware counter, reading 0 before its first
/// advance.
pub trait HardwareCounter: Send + Sync + 'static {
    /// The value of counter `label` (0 if never advanced).
    fn read(&self, label: &str) -> Result<u64, HsmError>;
    /// Advances counter `label` by one and returns the new value.
    fn increment(&self, label: &str) -> Result<u64, HsmError>;
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
            limits: config.limits,
            hardware_counter: None,
            _context: context,
        })
    }

    /// This handle with other limits (clones made from it share the session,
    /// the keys' seal counts and the counters, and keep their own limits).
    pub fn with_limits(mut self, limits: Pkcs11Limits) -> Self {
        self.limits = limits;
        self
    }

    /// This handle with counters whose values come from the HSM's own hardware
    /// counters (clones made from it keep them). Token objects then carry only
    /// the bindings, and floors are not needed.
    pub fn with_hardware_counter(mut self, counter: Arc<dyn HardwareCounter>) -> Self {
        self.hardware_counter = Some(counter);
        self
    }

    /// The limits this handle keeps.
    pub fn limits(&self) -> Pkcs11Limits {
        self.limits
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
        // Private token objects only: a session that never logged in can create
        // public objects, and one planted under our label must not be picked.
        let template = [
            Attribute::Class(class),
            Attribute::KeyType(key_type),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Token(true),
            Attribute::Private(true),
        ];
        let found = inner
            .session
            .find_objects(&template)
            .map_err(|e| device("C_FindObjects", e))?;
        if found.len() > 1 {
            return Err(HsmError::Corrupt(StateCorruption::Ambiguous {
                label: label.to_string(),
                count: found.len(),
            }));
        }
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
                    Attribute::Token(true),
                ])
                .map_err(|e| device("C_FindObjects", e))?;
            // Public key objects are readable and creatable without the PIN: a
            // second one under our label is a plant, never a choice.
            if pubs.len() > 1 {
                return Err(HsmError::Corrupt(StateCorruption::Ambiguous {
                    label: label.to_string(),
                    count: pubs.len(),
                }));
            }
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
            label: label.to_string(),
            private,
            public,
            seals: None,
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

    /// The private token data objects of `application` labelled `label`. Only
    /// private token objects count: a session without the PIN can create public
    /// ones, and they must not move, exhaust or fork anything of ours.
    fn private_data_objects(
        inner: &Inner,
        application: &[u8],
        label: &str,
        operation: &'static str,
    ) -> Result<Vec<ObjectHandle>, HsmError> {
        inner
            .session
            .find_objects(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Application(application.to_vec()),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Token(true),
                Attribute::Private(true),
            ])
            .map_err(|e| device(operation, e))
    }

    /// Every token object holding a value of counter `label`, with its value and
    /// whether it can be destroyed (a token that does not report
    /// `CKA_DESTROYABLE` is taken to allow it).
    fn counter_objects(inner: &Inner, label: &str) -> Result<Vec<CounterObject>, HsmError> {
        let found = Self::private_data_objects(
            inner,
            COUNTER_APPLICATION,
            label,
            "C_FindObjects (counter)",
        )?;
        let mut out = Vec::with_capacity(found.len());
        for handle in found {
            let attrs = inner
                .session
                .get_attributes(handle, &[AttributeType::Value, AttributeType::Destroyable])
                .map_err(|e| device("C_GetAttributeValue (counter)", e))?;
            let value = attrs.iter().find_map(|a| match a {
                Attribute::Value(v) => Some(v.as_slice()),
                _ => None,
            });
            let destroyable = !attrs.contains(&Attribute::Destroyable(false));
            match value {
                Some(v) if v.len() == COUNTER_VALUE_LEN => {
                    let (count, bound) = v.split_at(8);
                    let mut b = [0u8; 8];
                    b.copy_from_slice(count);
                    let mut binding = [0u8; 32];
                    binding.copy_from_slice(bound);
                    out.push(CounterObject {
                        handle,
                        counter: Counter {
                            value: u64::from_be_bytes(b),
                            binding,
                        },
                        destroyable,
                    });
                }
                _ => {
                    return Err(HsmError::Corrupt(StateCorruption::CounterValue {
                        label: label.to_string(),
                        expected: COUNTER_VALUE_LEN,
                    }))
                }
            }
        }
        Ok(out)
    }

    /// The seal-count reservations recorded for the AEAD key `label`.
    fn seal_count_objects(
        inner: &Inner,
        label: &str,
    ) -> Result<Vec<(ObjectHandle, u64)>, HsmError> {
        let found = Self::private_data_objects(
            inner,
            SEAL_COUNT_APPLICATION,
            label,
            "C_FindObjects (seal count)",
        )?;
        let mut out = Vec::with_capacity(found.len());
        for handle in found {
            let attrs = inner
                .session
                .get_attributes(handle, &[AttributeType::Value])
                .map_err(|e| device("C_GetAttributeValue (seal count)", e))?;
            match attrs.first() {
                Some(Attribute::Value(v)) if v.len() == 8 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(v);
                    out.push((handle, u64::from_be_bytes(b)));
                }
                _ => {
                    return Err(HsmError::Corrupt(StateCorruption::CounterValue {
                        label: label.to_string(),
                        expected: 8,
                    }))
                }
            }
        }
        Ok(out)
    }

    /// The binding the token holds for hardware counter value `value`: exactly
    /// one, or all alike, of the objects carrying that value.
    fn binding_of(objects: &[CounterObject], label: &str, value: u64) -> Result<Counter, HsmError> {
        if value == 0 {
            return Ok(Counter::default());
        }
        let mut found = objects.iter().filter(|o| o.counter.value == value);
        let Some(first) = found.next() else {
            return Err(HsmError::Corrupt(StateCorruption::CounterBindingMissing {
                label: label.to_string(),
                value,
            }));
        };
        if found.any(|o| o.counter.binding != first.counter.binding) {
            return Err(HsmError::Corrupt(
                StateCorruption::CounterBindingAmbiguous {
                    label: label.to_string(),
                    value,
                },
            ));
        }
        Ok(first.counter)
    }

    /// An advance with a hardware counter: the binding for `value + 1` first (a
    /// crash then leaves the counter where it was, its own binding still there),
    /// then the hardware step, then the other objects go.
    fn advance_hardware(
        inner: &Inner,
        hardware: &dyn HardwareCounter,
        objects: &[CounterObject],
        label: &str,
        binding: &[u8; 32],
    ) -> Result<u64, HsmError> {
        let new =
            hardware
                .read(label)?
                .checked_add(1)
                .ok_or_else(|| HsmError::CounterExhausted {
                    label: label.to_string(),
                })?;
        let mut value = new.to_be_bytes().to_vec();
        value.extend_from_slice(binding);
        let created = inner
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
            .map_err(|e| device("C_CreateObject (counter binding)", e))?;
        let now = hardware.increment(label)?;
        if now != new {
            return Err(HsmError::Corrupt(StateCorruption::HardwareCounterStep {
                label: label.to_string(),
                expected: new,
                found: now,
            }));
        }
        for object in objects.iter().filter(|o| o.handle != created) {
            if let Err(e) = inner.session.destroy_object(object.handle) {
                tracing::warn!(counter = label, error = %e, "could not remove an old counter binding; the counter reads the hardware's value");
            }
        }
        Ok(new)
    }

    /// Counts one seal under the AEAD key in `slot`, first recording a new
    /// reservation on the token when the current one is spent. Refuses once the
    /// key made `limits.seals_per_key` seals. A seal is counted before it is
    /// made, so a failed seal still counts (the bound errs on the safe side).
    fn spend_seal(inner: &mut Inner, slot: usize, limits: &Pkcs11Limits) -> Result<(), HsmError> {
        let Some(key) = inner.keys.get(slot) else {
            return Err(HsmError::WrongKey {
                expected: KeyKind::Aead,
            });
        };
        let label = key.label.clone();
        let mut budget = match key.seals {
            Some(b) => b,
            None => {
                // What an earlier process reserved may all have been used.
                let reserved = Self::seal_count_objects(inner, &label)?
                    .iter()
                    .map(|(_, n)| *n)
                    .max()
                    .unwrap_or(0);
                SealBudget {
                    used: reserved,
                    reserved,
                }
            }
        };
        if budget.used >= limits.seals_per_key {
            inner.keys[slot].seals = Some(budget);
            return Err(HsmError::SealLimitReached {
                label,
                limit: limits.seals_per_key,
            });
        }
        if budget.used >= budget.reserved {
            let old = Self::seal_count_objects(inner, &label)?;
            let next = budget
                .used
                .saturating_add(limits.seal_reservation.get())
                .min(limits.seals_per_key);
            inner
                .session
                .create_object(&[
                    Attribute::Class(ObjectClass::DATA),
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Modifiable(false),
                    Attribute::Application(SEAL_COUNT_APPLICATION.to_vec()),
                    Attribute::Label(label.as_bytes().to_vec()),
                    Attribute::Value(next.to_be_bytes().to_vec()),
                ])
                .map_err(|e| device("C_CreateObject (seal count)", e))?;
            for (object, _) in old {
                if let Err(e) = inner.session.destroy_object(object) {
                    tracing::warn!(key = %label, error = %e, "could not remove an old seal-count object; the count still reads the largest");
                }
            }
            budget.reserved = next;
        }
        debug_assert!(budget.used < budget.reserved);
        budget.used += 1;
        inner.keys[slot].seals = Some(budget);
        Ok(())
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
        let mut inner = self.inner.lock();
        Self::handle(&inner, key, KeyKind::Aead)?;
        Self::spend_seal(&mut inner, key.slot(), &self.limits)?;
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
        let objects = Self::counter_objects(&inner, label)?;
        if let Some(hardware) = &self.hardware_counter {
            let value = hardware.read(label)?;
            return Self::binding_of(&objects, label, value);
        }
        Ok(objects
            .iter()
            .map(|o| o.counter)
            .max_by_key(|c| c.value)
            .unwrap_or_default())
    }

    fn advance_counter(&self, label: &str, binding: &[u8; 32]) -> Result<u64, HsmError> {
        let inner = self.inner.lock();
        let objects = Self::counter_objects(&inner, label)?;
        if let Some(hardware) = &self.hardware_counter {
            return Self::advance_hardware(&inner, hardware.as_ref(), &objects, label, binding);
        }
        let old = objects.iter().map(|o| o.counter.value).max().unwrap_or(0);
        let new = old
            .checked_add(1)
            .ok_or_else(|| HsmError::CounterExhausted {
                label: label.to_string(),
            })?;
        let floor = new % self.limits.counter_floor_every.get() == 0;
        let mut value = new.to_be_bytes().to_vec();
        value.extend_from_slice(binding);
        // Create the new value first, then remove the old ones: a crash in between
        // leaves both, and the counter reads the larger.
        let created = inner
            .session
            .create_object(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Modifiable(false),
                Attribute::Destroyable(!floor),
                Attribute::Application(COUNTER_APPLICATION.to_vec()),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Value(value),
            ])
            .map_err(|e| device("C_CreateObject (counter)", e))?;
        if floor {
            // A token that accepts the template but ignores the attribute would
            // leave the window open: refuse it. (The new value stands: it is the
            // counter's true value; only its protection is missing.)
            let attrs = inner
                .session
                .get_attributes(created, &[AttributeType::Destroyable])
                .map_err(|e| device("C_GetAttributeValue (counter floor)", e))?;
            if !attrs.contains(&Attribute::Destroyable(false)) {
                return Err(HsmError::Unusable(DeviceFault::CounterFloorDestroyable {
                    label: label.to_string(),
                }));
            }
        }
        for object in objects.iter().filter(|o| o.destroyable) {
            if let Err(e) = inner.session.destroy_object(object.handle) {
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
        limits: Pkcs11Limits::default(),
    })
}
