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
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{Counter, Hsm, HsmError, KeyHandle, KeyKind};

/// Algorithm byte that starts every sealed blob of this HSM.
const ALG_XCHACHA20_POLY1305: u8 = 0x01;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const FILE_MAGIC: &[u8] = b"vaultfleet-softhsm-v1\n";

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
    /// protects in anything but a test.
    #[allow(clippy::disallowed_methods)] // seeded from the OS on purpose; from_seed is the deterministic one
    pub fn open(path: impl AsRef<Path>) -> Result<Self, HsmError> {
        let path = path.as_ref().to_path_buf();
        let hsm = Self::with_rng(ChaCha20Rng::from_entropy(), Some(path.clone()));
        match std::fs::read(&path) {
            Ok(bytes) => hsm.load(&Zeroizing::new(bytes))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => hsm.persist(&hsm.state.lock())?,
            Err(e) => {
                return Err(HsmError::Unavailable(format!(
                    "cannot read {}: {e}",
                    path.display()
                )))
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
            return Err(HsmError::Unavailable("soft HSM switched off".into()));
        }
        Ok(s)
    }

    fn load(&self, bytes: &[u8]) -> Result<(), HsmError> {
        let corrupt = |what: &str| HsmError::Corrupt(format!("soft HSM file: {what}"));
        if bytes.len() < FILE_MAGIC.len() + 32 || !bytes.starts_with(FILE_MAGIC) {
            return Err(corrupt("not a soft HSM file"));
        }
        let (body, sum) = bytes.split_at(bytes.len() - 32);
        if Sha256::digest(body).as_slice() != sum {
            return Err(corrupt("checksum mismatch (torn or edited)"));
        }
        let mut r = Reader(&body[FILE_MAGIC.len()..]);
        let mut s = self.state.lock();
        let keys = r.u32().ok_or_else(|| corrupt("truncated key count"))?;
        for _ in 0..keys {
            let kind = match r.u8() {
                Some(0) => KeyKind::Aead,
                Some(1) => KeyKind::Signing,
                Some(2) => KeyKind::Mac,
                _ => return Err(corrupt("bad key kind")),
            };
            let label = r.string().ok_or_else(|| corrupt("bad key label"))?;
            let mut secret = Zeroizing::new([0u8; 32]);
            secret.copy_from_slice(r.take(32).ok_or_else(|| corrupt("truncated key"))?);
            insert_key(&mut s, label, kind, secret);
        }
        let counters = r.u32().ok_or_else(|| corrupt("truncated counter count"))?;
        for _ in 0..counters {
            let label = r.string().ok_or_else(|| corrupt("bad counter label"))?;
            let value = r.u64().ok_or_else(|| corrupt("truncated counter"))?;
            let binding = r
                .take(32)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| corrupt("truncated counter binding"))?;
            s.counters.insert(label, Counter { value, binding });
        }
        if !r.0.is_empty() {
            return Err(corrupt("trailing bytes"));
        }
        Ok(())
    }

    fn persist(&self, s: &State) -> Result<(), HsmError> {
        let Some(path) = &s.file else {
            return Ok(());
        };
        // Sized up front: a reallocation would leave a copy of the keys behind.
        let size = FILE_MAGIC.len()
            + 8
            + s.keys.iter().map(|k| 3 + k.label.len() + 32).sum::<usize>()
            + s.counters.keys().map(|l| 2 + l.len() + 40).sum::<usize>()
            + 32;
        let mut body = Zeroizing::new(Vec::with_capacity(size));
        body.extend_from_slice(FILE_MAGIC);
        body.extend_from_slice(&(s.keys.len() as u32).to_be_bytes());
        for k in &s.keys {
            body.push(match k.kind {
                KeyKind::Aead => 0,
                KeyKind::Signing => 1,
                KeyKind::Mac => 2,
            });
            body.extend_from_slice(&(k.label.len() as u16).to_be_bytes());
            body.extend_from_slice(k.label.as_bytes());
            body.extend_from_slice(&k.secret[..]);
        }
        body.extend_from_slice(&(s.counters.len() as u32).to_be_bytes());
        for (label, c) in &s.counters {
            body.extend_from_slice(&(label.len() as u16).to_be_bytes());
            body.extend_from_slice(label.as_bytes());
            body.extend_from_slice(&c.value.to_be_bytes());
            body.extend_from_slice(&c.binding);
        }
        let sum = Sha256::digest(&body[..]);
        body.extend_from_slice(&sum);
        write_atomically(path, &body)
            .map_err(|e| HsmError::Unavailable(format!("cannot write {}: {e}", path.display())))
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

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes(b.try_into().unwrap_or_default()))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default()))
    }
    fn string(&mut self) -> Option<String> {
        let len = self
            .take(2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)?;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
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
            .map_err(|_| HsmError::Device("XChaCha20-Poly1305 encryption failed".into()))?;
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
            .map_err(|_| HsmError::Device("HMAC key of bad length".into()))?;
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
            .ok_or_else(|| HsmError::CounterExhausted(label.to_string()))?;
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
        assert!(matches!(SoftHsm::open(&path), Err(HsmError::Corrupt(_))));
    }

    #[test]
    fn a_switched_off_hsm_answers_nothing() {
        let hsm = SoftHsm::from_seed(3);
        hsm.set_available(false);
        assert!(matches!(
            hsm.advance_counter("c", &[0; 32]),
            Err(HsmError::Unavailable(_))
        ));
        hsm.set_available(true);
        assert_eq!(hsm.advance_counter("c", &[0; 32]).unwrap(), 1);
    }
}
