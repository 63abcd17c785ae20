//! `SoftHsm`: an in-process HSM for tests, benchmarks and the simulator.
//!
//! Keys live in this process's memory (zeroized on drop), and optionally in a file
//! so a test can restart a host. It is deterministic when built with
//! [`SoftHsm::from_seed`]: keys and nonces come from one ChaCha20 generator.
//!
//! It protects nothing against the host that runs it — the keys and the counter
//! are on that host — so it exists to exercise the code paths a real HSM takes:
//! * sealing is XChaCha20-Poly1305 with a 192-bit random nonce (no nonce-reuse
//!   bound worth counting);
//! * signing is Ed25519 (`ed25519-dalek`), MACs are HMAC-SHA256;
//! * the counter file is replaced atomically (write, fsync, rename, fsync the
//!   directory) before [`Hsm::advance_counter`] returns.
//!
//! The file is written and read with the engine's [`codec`](crate::codec):
//! the marker `vaultfleet-softhsm-v1\n`, a `u32` key count, each key (kind byte,
//! `u16`-length-prefixed label, 32-byte secret), a `u32` counter count, each
//! counter (`u16`-length-prefixed label, `u64` value, 32-byte binding), and the
//! SHA-256 of everything before it. The layout is the one earlier builds wrote,
//! so their files still open.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ed25519_dalek::{Signer, SigningKey};
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use sha2::digest::typenum::Unsigned as _;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{Counter, DeviceFault, Hsm, HsmError, KeyHandle, KeyKind};
use crate::codec::{DecodeError, EncodeError, Prefix, Reader, Writer};

/// Algorithm byte that starts every sealed blob of this HSM.
const ALG_XCHACHA20_POLY1305: u8 = 0x01;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const FILE_MAGIC: &[u8] = b"vaultfleet-softhsm-v1\n";
const SECRET_LEN: usize = 32;
const CHECKSUM_LEN: usize = 32;
const BINDING_LEN: usize = 32;
/// The most keys, and the most counters, one soft HSM file holds.
const FILE_ENTRIES_MAX: usize = 1 << 20;
/// The longest key or counter label (its prefix is a `u16`).
const LABEL_BYTES_MAX: usize = Prefix::U16.max();
const _: () = assert!(<Sha256 as sha2::digest::OutputSizeUser>::OutputSize::USIZE == CHECKSUM_LEN);
const _: () = assert!(FILE_ENTRIES_MAX <= Prefix::U32.max());

struct SoftKey {
    label: String,
    kind: KeyKind,
    secret: Zeroizing<[u8; 32]>,
    /// The expanded key, for signing keys (zeroized on drop by ed25519-dalek).
    signing: Option<SigningKey>,
}

struct State {
    rng: ChaCha20Rng,
    keys: Vec<SoftKey>,
    by_label: BTreeMap<(KeyKind, String), u32>,
    counters: BTreeMap<String, Counter>,
    file: Option<PathBuf>,
    available: bool,
}

/// An in-process [`Hsm`]. Clones share one HSM (its keys, counters and
/// generator), as several services of one host share one device.
#[derive(Clone)]
pub struct SoftHsm {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for SoftHsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.state.lock();
        f.debug_struct("SoftHsm")
            .field("keys", &s.keys.len())
            .field("counters", &s.counters.len())
            .field("file", &s.file)
            .finish()
    }
}

impl SoftHsm {
    /// An empty HSM in memory, its generator seeded from the operating system.
    #[allow(clippy::disallowed_methods)] // seeded from the OS on purpose; from_seed is the deterministic one
    pub fn new() -> Self {
        Self::with_rng(ChaCha20Rng::from_entropy(), None)
    }

    /// An empty HSM in memory whose keys and nonces all follow from `seed`: the
    /// same seed and the same calls give the same bytes.
    pub fn from_seed(seed: u64) -> Self {
        Self::with_rng(ChaCha20Rng::seed_from_u64(seed), None)
    }

    /// An HSM kept in the file `path` (created if missing): keys and counters
    /// survive a restart of the process. The file holds the keys in the clear; it
    /// stands in for the HSM's own storage and must not sit beside the data it
    /// protects in anything but a test. It is written (through a temporary)
    /// with mode 0600 on Unix.
    #[allow(clippy::disallowed_methods)] // seeded from the OS on purpose; from_seed is the deterministic one
    pub fn open(path: impl AsRef<Path>) -> Result<Self, HsmError> {
        let path = path.as_ref().to_path_buf();
        let hsm = Self::with_rng(ChaCha20Rng::from_entropy(), Some(path.clone()));
        match std::fs::read(&path) {
            Ok(bytes) => hsm.load(&Zeroizing::new(bytes))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => hsm.persist(&hsm.state.lock())?,
            Err(e) => {
                return Err(HsmError::Unavailable {
                    operation: "reading the soft HSM file",
                    cause: Some(Arc::new(e)),
                })
            }
        }
        Ok(hsm)
    }

    fn with_rng(rng: ChaCha20Rng, file: Option<PathBuf>) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                rng,
                keys: Vec::new(),
                by_label: BTreeMap::new(),
                counters: BTreeMap::new(),
                file,
                available: true,
            })),
        }
    }

    /// Makes every operation fail with [`HsmError::Unavailable`] (`false`) or
    /// answer again (`true`): an HSM that stops answering, for fault injection.
    pub fn set_available(&self, available: bool) {
        self.state.lock().available = available;
    }

    fn lock(&self) -> Result<parking_lot::MutexGuard<'_, State>, HsmError> {
        let s = self.state.lock();
        if !s.available {
            return Err(HsmError::Unavailable {
                operation: "the soft HSM is switched off",
                cause: None,
            });
        }
        Ok(s)
    }

    fn load(&self, bytes: &[u8]) -> Result<(), HsmError> {
        let (keys, counters) = decode_file(bytes).map_err(HsmError::StateUnreadable)?;
        let mut s = self.state.lock();
        for (label, kind, secret) in keys {
            insert_key(&mut s, label, kind, secret);
        }
        s.counters.extend(counters);
        Ok(())
    }

    fn persist(&self, s: &State) -> Result<(), HsmError> {
        let Some(path) = &s.file else {
            return Ok(());
        };
        let body = encode_file(s)?;
        write_atomically(path, &body).map_err(|e| HsmError::Unavailable {
            operation: "writing the soft HSM file",
            cause: Some(Arc::new(e)),
        })
    }

    fn material(s: &State, key: KeyHandle, expected: KeyKind) -> Result<&SoftKey, HsmError> {
        match s.keys.get(key.slot()) {
            Some(k) if k.kind == expected && key.kind() == expected => Ok(k),
            _ => Err(HsmError::WrongKey { expected }),
        }
    }
}

impl Default for SoftHsm {
    fn default() -> Self {
        Self::new()
    }
}

fn insert_key(s: &mut State, label: String, kind: KeyKind, secret: Zeroizing<[u8; 32]>) -> u32 {
    let signing = (kind == KeyKind::Signing).then(|| SigningKey::from_bytes(&secret));
    let slot = s.keys.len() as u32;
    s.by_label.insert((kind, label.clone()), slot);
    s.keys.push(SoftKey {
        label,
        kind,
        secret,
        signing,
    });
    slot
}

/// Writes `bytes` to `path` through a temporary beside it. Both are created
/// readable and writable by the owner only (mode 0600 on Unix): the file
/// holds the keys in the clear.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    // A temporary left by a crash keeps the mode it was created with: start
    // afresh so the one written now has 0600.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn kind_byte(kind: KeyKind) -> u8 {
    match kind {
        KeyKind::Aead => 0,
        KeyKind::Signing => 1,
        KeyKind::Mac => 2,
    }
}

/// The file's bytes: body then its checksum. The buffer is sized up front (a
/// reallocation would leave a copy of the keys behind) and zeroized on drop,
/// on the error path too.
fn encode_file(s: &State) -> Result<Zeroizing<Vec<u8>>, HsmError> {
    let size = FILE_MAGIC.len()
        + 4
        + s.keys
            .iter()
            .map(|k| 1 + 2 + k.label.len() + SECRET_LEN)
            .sum::<usize>()
        + 4
        + s.counters
            .keys()
            .map(|l| 2 + l.len() + 8 + BINDING_LEN)
            .sum::<usize>()
        + CHECKSUM_LEN;
    let mut w = Writer::with_capacity(size);
    let written = write_body(&mut w, s);
    let mut body = Zeroizing::new(w.into_vec());
    written.map_err(HsmError::StateUnwritable)?;
    let sum = Sha256::digest(&body[..]);
    body.extend_from_slice(&sum);
    debug_assert_eq!(body.len(), size, "the file was sized exactly");
    Ok(body)
}

fn write_body(w: &mut Writer, s: &State) -> Result<(), EncodeError> {
    w.raw(FILE_MAGIC);
    w.count(FILE_ENTRIES_MAX, s.keys.len(), "soft HSM key count")?;
    for k in &s.keys {
        w.u8(kind_byte(k.kind));
        w.prefixed(
            Prefix::U16,
            LABEL_BYTES_MAX,
            k.label.as_bytes(),
            "soft HSM key label",
        )?;
        w.raw(&k.secret[..]);
    }
    w.count(FILE_ENTRIES_MAX, s.counters.len(), "soft HSM counter count")?;
    for (label, c) in &s.counters {
        w.prefixed(
            Prefix::U16,
            LABEL_BYTES_MAX,
            label.as_bytes(),
            "soft HSM counter label",
        )?;
        w.u64(c.value).raw(&c.binding);
    }
    Ok(())
}

type FileKeys = Vec<(String, KeyKind, Zeroizing<[u8; SECRET_LEN]>)>;

/// Reads what [`encode_file`] wrote: the checksum first, then the body strictly.
fn decode_file(bytes: &[u8]) -> Result<(FileKeys, BTreeMap<String, Counter>), DecodeError> {
    let mut r = Reader::new(bytes);
    r.magic(FILE_MAGIC, "soft HSM file marker")?;
    // The marker, then at least the checksum: checked before any slicing, so no
    // length is trusted to the checksum's say-so.
    let Some(body_len) = bytes
        .len()
        .checked_sub(CHECKSUM_LEN)
        .filter(|&n| n >= FILE_MAGIC.len())
    else {
        return Err(DecodeError::Truncated {
            what: "soft HSM file checksum",
            wanted: FILE_MAGIC.len() + CHECKSUM_LEN,
            left: bytes.len(),
        });
    };
    let (body, sum) = bytes.split_at(body_len);
    if Sha256::digest(body).as_slice() != sum {
        return Err(DecodeError::Invalid {
            what: "soft HSM file checksum (the file is torn or was edited)",
        });
    }
    let mut r = Reader::new(&body[FILE_MAGIC.len()..]);
    let n = r.count(FILE_ENTRIES_MAX, "soft HSM key count")?;
    let mut keys = Vec::with_capacity(n.min(r.left()));
    for _ in 0..n {
        let kind = match r.u8("soft HSM key kind")? {
            0 => KeyKind::Aead,
            1 => KeyKind::Signing,
            2 => KeyKind::Mac,
            found => {
                return Err(DecodeError::UnknownValue {
                    what: "soft HSM key kind",
                    found: found.into(),
                })
            }
        };
        let label = label(&mut r, "soft HSM key label")?;
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        secret.copy_from_slice(r.take(SECRET_LEN, "soft HSM key secret")?);
        keys.push((label, kind, secret));
    }
    let n = r.count(FILE_ENTRIES_MAX, "soft HSM counter count")?;
    let mut counters = BTreeMap::new();
    for _ in 0..n {
        let label = label(&mut r, "soft HSM counter label")?;
        let value = r.u64("soft HSM counter value")?;
        let binding = r.array("soft HSM counter binding")?;
        counters.insert(label, Counter { value, binding });
    }
    r.expect_empty("soft HSM file")?;
    Ok((keys, counters))
}

fn label(r: &mut Reader<'_>, what: &'static str) -> Result<String, DecodeError> {
    let bytes = r.prefixed(Prefix::U16, LABEL_BYTES_MAX, what)?;
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| DecodeError::Invalid { what })
}

impl Hsm for SoftHsm {
    fn key(&self, label: &str, kind: KeyKind) -> Result<KeyHandle, HsmError> {
        let mut s = self.lock()?;
        if let Some(slot) = s.by_label.get(&(kind, label.to_string())) {
            return Ok(KeyHandle::new(kind, *slot));
        }
        let mut secret = Zeroizing::new([0u8; 32]);
        s.rng.fill_bytes(&mut secret[..]);
        let slot = insert_key(&mut s, label.to_string(), kind, secret);
        if let Err(e) = self.persist(&s) {
            s.keys.pop();
            s.by_label.remove(&(kind, label.to_string()));
            return Err(e);
        }
        Ok(KeyHandle::new(kind, slot))
    }

    fn find_key(&self, label: &str, kind: KeyKind) -> Result<Option<KeyHandle>, HsmError> {
        let s = self.lock()?;
        Ok(s.by_label
            .get(&(kind, label.to_string()))
            .map(|slot| KeyHandle::new(kind, *slot)))
    }

    fn seal(&self, key: KeyHandle, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, HsmError> {
        let mut s = self.lock()?;
        let mut nonce = [0u8; NONCE_LEN];
        s.rng.fill_bytes(&mut nonce);
        let k = Self::material(&s, key, KeyKind::Aead)?;
        let cipher = XChaCha20Poly1305::new((&*k.secret).into());
        let ct = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| {
                HsmError::Unusable(DeviceFault::Primitive("XChaCha20-Poly1305 encryption"))
            })?;
        Ok(super::frame(ALG_XCHACHA20_POLY1305, &nonce, &ct))
    }

    fn unseal(
        &self,
        key: KeyHandle,
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        let s = self.lock()?;
        let k = Self::material(&s, key, KeyKind::Aead)?;
        let (nonce, ct) = super::unframe(
            sealed,
            ALG_XCHACHA20_POLY1305,
            "XChaCha20-Poly1305",
            NONCE_LEN,
            TAG_LEN,
        )?;
        let cipher = XChaCha20Poly1305::new((&*k.secret).into());
        cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
            .map(Zeroizing::new)
            .map_err(|_| HsmError::Unauthentic)
    }

    fn sign(&self, key: KeyHandle, message: &[u8]) -> Result<[u8; 64], HsmError> {
        let s = self.lock()?;
        let k = Self::material(&s, key, KeyKind::Signing)?;
        let signing = k.signing.as_ref().ok_or(HsmError::WrongKey {
            expected: KeyKind::Signing,
        })?;
        Ok(signing.sign(message).to_bytes())
    }

    fn public_key(&self, key: KeyHandle) -> Result<[u8; 32], HsmError> {
        let s = self.lock()?;
        let k = Self::material(&s, key, KeyKind::Signing)?;
        k.signing
            .as_ref()
            .map(|sk| sk.verifying_key().to_bytes())
            .ok_or(HsmError::WrongKey {
                expected: KeyKind::Signing,
            })
    }

    fn mac(&self, key: KeyHandle, data: &[u8]) -> Result<[u8; 32], HsmError> {
        let s = self.lock()?;
        let k = Self::material(&s, key, KeyKind::Mac)?;
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&k.secret[..])
            .map_err(|_| HsmError::Unusable(DeviceFault::Primitive("HMAC-SHA256 keying")))?;
        m.update(data);
        Ok(m.finalize().into_bytes().into())
    }

    fn random(&self, out: &mut [u8]) -> Result<(), HsmError> {
        self.lock()?.rng.fill_bytes(out);
        Ok(())
    }

    fn counter(&self, label: &str) -> Result<Counter, HsmError> {
        Ok(self
            .lock()?
            .counters
            .get(label)
            .copied()
            .unwrap_or_default())
    }

    fn advance_counter(&self, label: &str, binding: &[u8; 32]) -> Result<u64, HsmError> {
        let mut s = self.lock()?;
        let old = s.counters.get(label).copied().unwrap_or_default();
        let value = old
            .value
            .checked_add(1)
            .ok_or_else(|| HsmError::CounterExhausted {
                label: label.to_string(),
            })?;
        s.counters.insert(
            label.to_string(),
            Counter {
                value,
                binding: *binding,
            },
        );
        if let Err(e) = self.persist(&s) {
            s.counters.insert(label.to_string(), old);
            return Err(e);
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hsm::verify_signature;

    #[test]
    fn seal_binds_key_and_associated_data() {
        let hsm = SoftHsm::from_seed(7);
        let a = hsm.key("a", KeyKind::Aead).unwrap();
        let b = hsm.key("b", KeyKind::Aead).unwrap();
        let sealed = hsm.seal(a, b"ad", b"secret").unwrap();
        assert_eq!(&hsm.unseal(a, b"ad", &sealed).unwrap()[..], b"secret");
        assert!(matches!(
            hsm.unseal(a, b"other", &sealed),
            Err(HsmError::Unauthentic)
        ));
        assert!(matches!(
            hsm.unseal(b, b"ad", &sealed),
            Err(HsmError::Unauthentic)
        ));
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(
            hsm.unseal(a, b"ad", &flipped),
            Err(HsmError::Unauthentic)
        ));
        assert!(matches!(
            hsm.unseal(a, b"ad", &sealed[..10]),
            Err(HsmError::Malformed(_))
        ));
    }

    #[test]
    fn the_same_seed_gives_the_same_bytes() {
        let run = |seed| {
            let hsm = SoftHsm::from_seed(seed);
            let k = hsm.key("k", KeyKind::Aead).unwrap();
            let s = hsm.key("s", KeyKind::Signing).unwrap();
            (hsm.seal(k, b"", b"x").unwrap(), hsm.public_key(s).unwrap())
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn signatures_verify_and_keys_are_typed() {
        let hsm = SoftHsm::from_seed(1);
        let s = hsm.key("sig", KeyKind::Signing).unwrap();
        let sig = hsm.sign(s, b"msg").unwrap();
        let pk = hsm.public_key(s).unwrap();
        assert!(verify_signature(&pk, b"msg", &sig));
        assert!(!verify_signature(&pk, b"other", &sig));
        let m = hsm.key("sig", KeyKind::Mac).unwrap();
        assert!(matches!(hsm.sign(m, b"x"), Err(HsmError::WrongKey { .. })));
        let tag = hsm.mac(m, b"data").unwrap();
        assert!(hsm.verify_mac(m, b"data", &tag).unwrap());
        assert!(!hsm.verify_mac(m, b"data", &tag[..31]).unwrap());
    }

    #[test]
    fn keys_and_counters_survive_a_restart_from_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hsm");
        let (sealed, pk) = {
            let hsm = SoftHsm::open(&path).unwrap();
            let k = hsm.key("k", KeyKind::Aead).unwrap();
            let s = hsm.key("s", KeyKind::Signing).unwrap();
            assert_eq!(hsm.advance_counter("c", &[1; 32]).unwrap(), 1);
            assert_eq!(hsm.advance_counter("c", &[2; 32]).unwrap(), 2);
            (
                hsm.seal(k, b"ad", b"v").unwrap(),
                hsm.public_key(s).unwrap(),
            )
        };
        let hsm = SoftHsm::open(&path).unwrap();
        let k = hsm.find_key("k", KeyKind::Aead).unwrap().unwrap();
        assert_eq!(&hsm.unseal(k, b"ad", &sealed).unwrap()[..], b"v");
        let s = hsm.find_key("s", KeyKind::Signing).unwrap().unwrap();
        assert_eq!(hsm.public_key(s).unwrap(), pk);
        assert_eq!(
            hsm.counter("c").unwrap(),
            Counter {
                value: 2,
                binding: [2; 32]
            }
        );
        assert_eq!(hsm.counter("never").unwrap(), Counter::default());

        let mut bytes = std::fs::read(&path).unwrap();
        bytes[FILE_MAGIC.len() + 5] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            SoftHsm::open(&path),
            Err(HsmError::StateUnreadable(DecodeError::Invalid { .. }))
        ));
    }

    #[test]
    fn the_file_is_read_strictly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hsm");
        {
            let hsm = SoftHsm::open(&path).unwrap();
            hsm.key("k", KeyKind::Mac).unwrap();
            hsm.advance_counter("c", &[3; 32]).unwrap();
        }
        let bytes = std::fs::read(&path).unwrap();
        // Same layout as earlier builds: marker, one key, one counter, checksum.
        assert_eq!(
            bytes.len(),
            FILE_MAGIC.len() + 4 + (1 + 2 + 1 + 32) + 4 + (2 + 1 + 8 + 32) + 32
        );
        // Every cut is refused, never a panic (the checksum, then the layout).
        for cut in 0..bytes.len() {
            assert!(decode_file(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        // A body that breaks the layout under a valid checksum is refused by field.
        let mut body = bytes[..bytes.len() - 32].to_vec();
        body[FILE_MAGIC.len() + 4] = 9;
        let sum = Sha256::digest(&body);
        body.extend_from_slice(&sum);
        assert!(matches!(
            decode_file(&body),
            Err(DecodeError::UnknownValue {
                what: "soft HSM key kind",
                found: 9
            })
        ));
        let mut trailing = bytes[..bytes.len() - 32].to_vec();
        trailing.push(0);
        let sum = Sha256::digest(&trailing);
        trailing.extend_from_slice(&sum);
        assert!(matches!(
            decode_file(&trailing),
            Err(DecodeError::TrailingBytes { left: 1, .. })
        ));
    }

    #[test]
    fn a_label_too_long_for_the_file_is_refused_not_cut() {
        let dir = tempfile::tempdir().unwrap();
        let hsm = SoftHsm::open(dir.path().join("hsm")).unwrap();
        let long = "x".repeat(LABEL_BYTES_MAX + 1);
        assert!(matches!(
            hsm.key(&long, KeyKind::Aead),
            Err(HsmError::StateUnwritable(EncodeError::TooLong { .. }))
        ));
        assert_eq!(hsm.find_key(&long, KeyKind::Aead).unwrap(), None);
    }

    #[test]
    fn a_switched_off_hsm_answers_nothing() {
        let hsm = SoftHsm::from_seed(3);
        hsm.set_available(false);
        assert!(matches!(
            hsm.advance_counter("c", &[0; 32]),
            Err(HsmError::Unavailable { .. })
        ));
        hsm.set_available(true);
        assert_eq!(hsm.advance_counter("c", &[0; 32]).unwrap(), 1);
    }

    /// R1-M3: the file holds keys in the clear; it and its temporary are
    /// created owner-only whatever the umask (the default one gives 0644),
    /// and a temporary left behind with a wider mode is not reused.
    #[cfg(unix)]
    #[test]
    fn r1_m3_the_soft_hsm_file_and_its_temporary_are_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hsm");
        let hsm = SoftHsm::open(&path).unwrap();
        assert_eq!(mode(&path), 0o600, "a new soft HSM file");

        // A temporary left by a crash, readable by all: the next write
        // neither reuses its mode nor leaves it behind.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, b"stale").unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
        hsm.key("k", KeyKind::Aead).unwrap();
        assert_eq!(mode(&path), 0o600, "the file after a key was added");
        assert!(!tmp.exists(), "the temporary was renamed over the file");

        // A file an earlier build wrote 0644 is narrowed on its next write.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let reopened = SoftHsm::open(&path).unwrap();
        reopened.advance_counter("c", &[0; 32]).unwrap();
        assert_eq!(mode(&path), 0o600, "the file after a counter advanced");
    }
}
