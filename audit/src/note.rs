//! C2SP signed notes (<https://c2sp.org/signed-note>) and transparency-log
//! checkpoints (<https://c2sp.org/tlog-checkpoint>), with Ed25519 signatures and
//! `cosignature/v1` witness cosignatures (<https://c2sp.org/tlog-cosignature>), so
//! third-party witnesses that speak the C2SP protocols can cosign our log.
//!
//! A note is UTF-8 text ending in a newline, a blank line, then one line per
//! signature: `— <name> <base64(key hash || signature)>`. The key hash is the
//! first four bytes of SHA-256(name || "\n" || algorithm byte || public key).
//! Parsing never panics and refuses anything outside the grammar.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::merkle::Hash;
use vaultfleet::hsm::{verify_signature, Hsm, HsmError, KeyHandle};

/// The signature algorithm byte of Ed25519 note signatures.
pub const ALG_ED25519: u8 = 0x01;
/// The algorithm byte of `cosignature/v1` (Ed25519 over a timestamped checkpoint).
pub const ALG_COSIGNATURE_V1: u8 = 0x04;
const DASH: &str = "\u{2014} ";
/// Largest note accepted, in bytes.
pub const NOTE_MAX: usize = 64 * 1024;

/// A malformed or unverifiable note or checkpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NoteError {
    /// The text breaks the signed-note or checkpoint grammar; the context names
    /// the rule it breaks.
    #[error("malformed note: {0}")]
    Malformed(&'static str),
    /// The note is longer than [`NOTE_MAX`].
    #[error("note of {len} bytes, at most {max} are accepted")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The most accepted.
        max: usize,
    },
    /// A key name is empty or holds whitespace, a control character or `+`.
    #[error("invalid key name {0:?}: key names have no whitespace, control characters or '+'")]
    InvalidKeyName(String),
    /// No signature line from the expected key.
    #[error("no signature by {0:?} on the note")]
    Unsigned(String),
    /// A signature line from the expected key does not verify.
    #[error("the signature by {0:?} does not verify")]
    BadSignature(String),
    /// The signer's HSM failed.
    #[error("signing failed: {0}")]
    Hsm(#[from] HsmError),
}

fn malformed(what: &'static str) -> NoteError {
    NoteError::Malformed(what)
}

/// A log's checkpoint: its origin, size and root hash (plus extension lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's origin line (unique name, e.g. `example.vault.fleet_keys.v1`).
    pub origin: String,
    /// Number of leaves.
    pub size: u64,
    /// The RFC 6962 root over those leaves.
    pub root: Hash,
    /// Optional extension lines.
    pub extensions: Vec<String>,
}

/// A decimal number as C2SP writes it: digits only, no sign, no leading zero.
pub(crate) fn canonical_decimal(l: &str) -> bool {
    !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()) && (l == "0" || !l.starts_with('0'))
}

fn valid_line(l: &str) -> bool {
    !l.is_empty() && !l.contains('\n') && l.chars().all(|c| !c.is_control())
}

impl Checkpoint {
    /// The checkpoint's text (the note body).
    pub fn body(&self) -> String {
        let mut s = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        );
        for e in &self.extensions {
            s.push_str(e);
            s.push('\n');
        }
        s
    }

    /// Parses a checkpoint body.
    pub fn parse(body: &str) -> Result<Self, NoteError> {
        let text = body
            .strip_suffix('\n')
            .ok_or_else(|| malformed("a checkpoint ends with a newline"))?;
        let mut lines = text.split('\n');
        let origin = lines
            .next()
            .filter(|l| valid_line(l))
            .ok_or_else(|| malformed("missing origin"))?;
        let size = lines
            .next()
            .filter(|l| canonical_decimal(l))
            .and_then(|l| l.parse::<u64>().ok())
            .ok_or_else(|| malformed("tree size must be a decimal number without leading zeros"))?;
        let root = lines
            .next()
            .and_then(|l| B64.decode(l).ok())
            .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
            .ok_or_else(|| malformed("root hash must be 32 bytes of base64"))?;
        let extensions = lines.map(str::to_string).collect::<Vec<_>>();
        if extensions.iter().any(|l| !valid_line(l)) {
            return Err(malformed(
                "empty or control characters in an extension line",
            ));
        }
        Ok(Self {
            origin: origin.to_string(),
            size,
            root,
            extensions,
        })
    }
}

/// One signature line of a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    /// The signer's key name.
    pub name: String,
    /// The key hash (4 bytes).
    pub key_hash: [u8; 4],
    /// The rest of the line's bytes (signature, and for cosignatures the time).
    pub payload: Vec<u8>,
}

/// A note: its text and its signature lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedNote {
    /// The signed text, ending with a newline.
    pub text: String,
    /// Signature lines, in order.
    pub signatures: Vec<NoteSignature>,
}

impl NoteSignature {
    /// The signature line, `— <name> <base64(key hash || payload)>` and a
    /// newline, as a note carries it (and as a tlog-witness response body holds it).
    pub fn line(&self) -> String {
        let mut bytes = self.key_hash.to_vec();
        bytes.extend_from_slice(&self.payload);
        format!("{DASH}{} {}\n", self.name, B64.encode(bytes))
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && c != '+')
}

/// The 4-byte key hash of a key named `name` with algorithm byte `alg`.
pub fn key_hash(name: &str, alg: u8, public_key: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([alg]);
    h.update(public_key);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

impl SignedNote {
    /// The note in its text form.
    pub fn encode(&self) -> String {
        let mut s = self.text.clone();
        s.push('\n');
        for sig in &self.signatures {
            let mut bytes = sig.key_hash.to_vec();
            bytes.extend_from_slice(&sig.payload);
            s.push_str(&format!("{DASH}{} {}\n", sig.name, B64.encode(bytes)));
        }
        s
    }

    /// Parses a note's text form.
    pub fn parse(note: &str) -> Result<Self, NoteError> {
        if note.len() > NOTE_MAX {
            return Err(NoteError::TooLong {
                len: note.len(),
                max: NOTE_MAX,
            });
        }
        // C2SP signed-note: no ASCII control characters other than newline.
        if note.chars().any(|c| c.is_ascii_control() && c != '\n') {
            return Err(malformed("control characters other than newline"));
        }
        let split = note
            .rfind("\n\n")
            .ok_or_else(|| malformed("no blank line before the signatures"))?;
        let text = &note[..split + 1];
        let sigs = &note[split + 2..];
        let sigs = sigs
            .strip_suffix('\n')
            .ok_or_else(|| malformed("a note ends with a newline"))?;
        let mut signatures = Vec::new();
        for line in sigs.split('\n') {
            let rest = line
                .strip_prefix(DASH)
                .ok_or_else(|| malformed("a signature line starts with an em dash and a space"))?;
            let (name, b64) = rest
                .split_once(' ')
                .ok_or_else(|| malformed("a signature line is `— name signature`"))?;
            if !valid_name(name) {
                return Err(NoteError::InvalidKeyName(name.to_string()));
            }
            let bytes = B64
                .decode(b64)
                .map_err(|_| malformed("signature is not base64"))?;
            if bytes.len() < 5 {
                return Err(malformed("signature shorter than a key hash"));
            }
            signatures.push(NoteSignature {
                name: name.to_string(),
                key_hash: [bytes[0], bytes[1], bytes[2], bytes[3]],
                payload: bytes[4..].to_vec(),
            });
        }
        if signatures.is_empty() {
            return Err(malformed("a note carries at least one signature"));
        }
        Ok(Self {
            text: text.to_string(),
            signatures,
        })
    }
}

fn cosigned_message(timestamp: u64, text: &str) -> Vec<u8> {
    format!("cosignature/v1\ntime {timestamp}\n{text}").into_bytes()
}

/// A key that signs notes: Ed25519 note signatures, or `cosignature/v1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    /// The key's name.
    pub name: String,
    /// Its algorithm byte ([`ALG_ED25519`] or [`ALG_COSIGNATURE_V1`]).
    pub alg: u8,
    /// Its Ed25519 public key.
    pub public_key: [u8; 32],
}

impl NoteVerifier {
    /// An Ed25519 note key.
    pub fn ed25519(name: &str, public_key: [u8; 32]) -> Result<Self, NoteError> {
        Self::new(name, ALG_ED25519, public_key)
    }

    /// A `cosignature/v1` witness key.
    pub fn cosignature(name: &str, public_key: [u8; 32]) -> Result<Self, NoteError> {
        Self::new(name, ALG_COSIGNATURE_V1, public_key)
    }

    fn new(name: &str, alg: u8, public_key: [u8; 32]) -> Result<Self, NoteError> {
        if !valid_name(name) {
            return Err(NoteError::InvalidKeyName(name.to_string()));
        }
        Ok(Self {
            name: name.to_string(),
            alg,
            public_key,
        })
    }

    /// The key hash in signature lines.
    pub fn key_hash(&self) -> [u8; 4] {
        key_hash(&self.name, self.alg, &self.public_key)
    }

    /// The verifier key string `name+hash+base64(alg || key)` (the form C2SP
    /// tools exchange).
    pub fn vkey(&self) -> String {
        let mut k = vec![self.alg];
        k.extend_from_slice(&self.public_key);
        format!("{}+{}+{}", self.name, hex(&self.key_hash()), B64.encode(k))
    }

    /// Parses a verifier key string.
    pub fn parse_vkey(vkey: &str) -> Result<Self, NoteError> {
        // The key's base64 may itself contain '+': split off name and hash only.
        let mut parts = vkey.splitn(3, '+');
        let (Some(name), Some(hash), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(malformed("a verifier key is name+hash+key"));
        };
        let key = B64
            .decode(key)
            .map_err(|_| malformed("verifier key is not base64"))?;
        if key.len() != 33 {
            return Err(malformed("verifier key is an algorithm byte and 32 bytes"));
        }
        let mut pk = [0u8; 32];
        pk.copy_from_slice(&key[1..]);
        let v = Self::new(name, key[0], pk)?;
        if !hex(&v.key_hash()).eq_ignore_ascii_case(hash) {
            return Err(malformed("verifier key hash does not match the key"));
        }
        if v.alg != ALG_ED25519 && v.alg != ALG_COSIGNATURE_V1 {
            return Err(malformed("unsupported signature algorithm"));
        }
        Ok(v)
    }

    /// Verifies this key's signature on `note`. Returns the cosignature's
    /// timestamp for `cosignature/v1` keys, `None` for plain Ed25519.
    pub fn verify(&self, note: &SignedNote) -> Result<Option<u64>, NoteError> {
        let hash = self.key_hash();
        let mut found = false;
        for sig in note
            .signatures
            .iter()
            .filter(|s| s.name == self.name && s.key_hash == hash)
        {
            found = true;
            let ok = match self.alg {
                ALG_COSIGNATURE_V1 if sig.payload.len() == 72 => {
                    let mut t = [0u8; 8];
                    t.copy_from_slice(&sig.payload[..8]);
                    let timestamp = u64::from_be_bytes(t);
                    // C2SP tlog-cosignature: timestamps above 2^63-1 are invalid.
                    if timestamp > i64::MAX as u64 {
                        return Err(NoteError::BadSignature(self.name.clone()));
                    }
                    let mut s = [0u8; 64];
                    s.copy_from_slice(&sig.payload[8..]);
                    if verify_signature(
                        &self.public_key,
                        &cosigned_message(timestamp, &note.text),
                        &s,
                    ) {
                        return Ok(Some(timestamp));
                    }
                    false
                }
                ALG_ED25519 if sig.payload.len() == 64 => {
                    let mut s = [0u8; 64];
                    s.copy_from_slice(&sig.payload);
                    verify_signature(&self.public_key, note.text.as_bytes(), &s)
                }
                _ => false,
            };
            if ok {
                return Ok(None);
            }
        }
        if found {
            Err(NoteError::BadSignature(self.name.clone()))
        } else {
            Err(NoteError::Unsigned(self.name.clone()))
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Signs `text` as key `name` held in `hsm` (Ed25519 note signature).
pub fn sign_note<H: Hsm>(
    hsm: &H,
    key: KeyHandle,
    name: &str,
    text: &str,
) -> Result<NoteSignature, NoteError> {
    if !text.ends_with('\n') {
        return Err(malformed("note text ends with a newline"));
    }
    let public_key = hsm.public_key(key)?;
    let v = NoteVerifier::ed25519(name, public_key)?;
    let signature = hsm.sign(key, text.as_bytes())?;
    Ok(NoteSignature {
        name: name.to_string(),
        key_hash: v.key_hash(),
        payload: signature.to_vec(),
    })
}

/// Cosigns a checkpoint (`cosignature/v1`) at `timestamp` (seconds since the Unix epoch).
pub fn cosign<H: Hsm>(
    hsm: &H,
    key: KeyHandle,
    name: &str,
    checkpoint_text: &str,
    timestamp: u64,
) -> Result<NoteSignature, NoteError> {
    if timestamp > i64::MAX as u64 {
        return Err(malformed("cosignature timestamps are at most 2^63-1"));
    }
    let public_key = hsm.public_key(key)?;
    let v = NoteVerifier::cosignature(name, public_key)?;
    let signature = hsm.sign(key, &cosigned_message(timestamp, checkpoint_text))?;
    let mut payload = timestamp.to_be_bytes().to_vec();
    payload.extend_from_slice(&signature);
    Ok(NoteSignature {
        name: name.to_string(),
        key_hash: v.key_hash(),
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vaultfleet::hsm::{KeyKind, SoftHsm};

    #[test]
    fn a_checkpoint_is_signed_cosigned_and_verified_and_edits_are_caught() {
        let hsm = SoftHsm::from_seed(3);
        let log_key = hsm.key("log", KeyKind::Signing).unwrap();
        let witness_key = hsm.key("witness", KeyKind::Signing).unwrap();
        let cp = Checkpoint {
            origin: "example.vault.fleet_keys.v1".into(),
            size: 3,
            root: [7; 32],
            extensions: vec![],
        };
        let text = cp.body();
        assert_eq!(Checkpoint::parse(&text).unwrap(), cp);
        let mut note = SignedNote {
            text: text.clone(),
            signatures: vec![
                sign_note(&hsm, log_key, "example.vault.fleet_keys.v1", &text).unwrap(),
            ],
        };
        note.signatures
            .push(cosign(&hsm, witness_key, "witness.example", &text, 1_700_000_000).unwrap());
        let encoded = note.encode();
        let parsed = SignedNote::parse(&encoded).unwrap();
        assert_eq!(parsed, note);
        let log = NoteVerifier::ed25519(
            "example.vault.fleet_keys.v1",
            hsm.public_key(log_key).unwrap(),
        )
        .unwrap();
        let witness =
            NoteVerifier::cosignature("witness.example", hsm.public_key(witness_key).unwrap())
                .unwrap();
        assert!(matches!(log.verify(&parsed), Ok(None)));
        assert!(matches!(witness.verify(&parsed), Ok(Some(1_700_000_000))));
        assert_eq!(NoteVerifier::parse_vkey(&log.vkey()).unwrap(), log);
        // An edited size is caught by both.
        let edited = encoded.replacen("\n3\n", "\n4\n", 1);
        let parsed = SignedNote::parse(&edited).unwrap();
        assert!(matches!(
            log.verify(&parsed),
            Err(NoteError::BadSignature(_))
        ));
        assert!(matches!(
            witness.verify(&parsed),
            Err(NoteError::BadSignature(_))
        ));
        // A key that did not sign.
        let other = NoteVerifier::ed25519("other", [9; 32]).unwrap();
        assert!(matches!(other.verify(&note), Err(NoteError::Unsigned(_))));
    }

    #[test]
    fn malformed_notes_and_checkpoints_are_refused() {
        for bad in [
            "",
            "\n\n",
            "text\n\n",
            "text\n\nno dash\n",
            "text\n\n\u{2014} name !!!\n",
            "text\n\n\u{2014} name AAAA\n",
        ] {
            assert!(
                matches!(SignedNote::parse(bad), Err(NoteError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            SignedNote::parse("text\u{7}\n\n\u{2014} name AAAAAAA=\n"),
            Err(NoteError::Malformed(_))
        ));
        assert!(matches!(
            SignedNote::parse("text\n\n\u{2014} na+me AAAAAAA=\n"),
            Err(NoteError::InvalidKeyName(name)) if name == "na+me"
        ));
        let long = format!("{}\n\n\u{2014} name AAAAAAA=\n", "x".repeat(NOTE_MAX));
        assert!(matches!(
            SignedNote::parse(&long),
            Err(NoteError::TooLong { max: NOTE_MAX, .. })
        ));
        for bad in [
            "o\n01\nAAAA\n",
            "o\n1\nnot base64\n",
            "o\n-1\n",
            "o\n1\n",
            "\n1\nAA==\n",
        ] {
            assert!(
                matches!(Checkpoint::parse(bad), Err(NoteError::Malformed(_))),
                "{bad:?}"
            );
        }
    }
}
