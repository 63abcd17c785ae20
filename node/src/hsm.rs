//! The node's HSM, a soft key file or a PKCS#11 token whose PIN comes from a
//! file or an environment variable (never from the config), and the node's
//! sealed X25519 transport key.
//!
//! [`NodeHsm`] is either kind behind one [`Hsm`] implementation (it delegates),
//! so the rest of the node is written once. The transport key file is the
//! X25519 secret sealed (AEAD inside the HSM) under the key
//! [`TRANSPORT_SEAL_KEY`], with associated data binding the fleet id and the
//! replica id: a key file copied to another replica or fleet does not open.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use vaultfleet::hsm::{
    Counter, Hsm, HsmError, KeyHandle, KeyKind, Pkcs11Config, Pkcs11Hsm, Pkcs11Limits,
};
use vaultfleet::SoftHsm;
use vaultfleet_net::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::config::HsmConfig;

/// The label of the HSM's AEAD key that seals the transport key.
pub const TRANSPORT_SEAL_KEY: &str = "vaultfleet/transport-seal";
/// The first bytes of a sealed transport key file (format version 1).
const KEY_FILE_MAGIC: &[u8; 16] = b"vaultfleet-tk-v1";
/// Associated data label of the sealed transport key.
const KEY_AD_LABEL: &[u8] = b"vaultfleet/transport-key/v1";
/// The largest key file read (the magic and a sealed 32-byte secret fit
/// easily).
const KEY_FILE_BYTES_MAX: u64 = 4096;
/// The largest PIN file read.
const PIN_FILE_BYTES_MAX: u64 = 1024;

/// The node's HSM: a soft HSM file or a PKCS#11 token.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum NodeHsm {
    /// A soft HSM kept in a file (for trying vaultfleet out).
    Soft(SoftHsm),
    /// A PKCS#11 token.
    Pkcs11(Pkcs11Hsm),
}

/// Why the configured HSM did not open.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HsmOpenError {
    /// The soft HSM file does not open.
    #[error("cannot open the soft HSM file {}", path.display())]
    Soft {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: HsmError,
    },
    /// The soft HSM file is missing or not a regular file (it is never
    /// created by a start: copy the node's soft HSM there, or fix the path).
    #[error("the soft HSM file {} is missing or not a file: fix [hsm] file (a start never creates one)", path.display())]
    SoftMissing {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The soft HSM file (keys in the clear) may be read or written by group
    /// or others: the node refuses to start on it.
    #[error("the soft HSM file {} holds keys in the clear and is open to group or others (mode {mode:o}): chmod 600 it", path.display())]
    SoftFileExposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The PIN could not be read.
    #[error("cannot read the PKCS#11 user PIN")]
    Pin(#[source] PinError),
    /// The token does not open (wrong PIN, no such token, module missing).
    #[error("cannot open PKCS#11 token {token:?} with module {}", module.display())]
    Pkcs11 {
        /// The module.
        module: PathBuf,
        /// The token label.
        token: String,
        /// The cause (a wrong PIN is [`HsmError::Unusable`] with
        /// `DeviceFault::WrongPin`).
        #[source]
        source: HsmError,
    },
}

/// Why the PKCS#11 PIN could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PinError {
    /// The PIN file cannot be read.
    #[error("cannot read the PIN file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The PIN file is readable by group or others.
    #[error("the PIN file {} is readable by group or others (mode {mode:o}): chmod 600 it", path.display())]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// The PIN file is larger than any PIN.
    #[error("the PIN file {} is over {PIN_FILE_BYTES_MAX} bytes: it holds no PIN", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The environment variable is unset or not UTF-8.
    #[error("the environment variable {name} holding the PIN is unset or not UTF-8")]
    Env {
        /// The variable's name.
        name: String,
    },
    /// The PIN is empty.
    #[error("the PIN is empty")]
    Empty,
}

/// Why a transport key could not be made or opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeKeyError {
    /// The key file exists already (creating never overwrites).
    #[error("the transport key file {} exists already; it is never overwritten (remove it yourself only if the replica is being re-created under a new id)", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// The key file cannot be read or written.
    #[error("transport key file {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a sealed transport key.
    #[error("{} is not a vaultfleet sealed transport key (v1)", path.display())]
    Format {
        /// The file.
        path: PathBuf,
    },
    /// The HSM refused (for a key sealed for another replica or fleet, or
    /// under another HSM: [`HsmError::Unauthentic`]).
    #[error("the HSM could not {operation} the transport key (a key file of another replica, fleet or HSM does not open)")]
    Hsm {
        /// What was being done.
        operation: &'static str,
        /// The cause.
        #[source]
        source: HsmError,
    },
    /// The unsealed bytes are not an X25519 key.
    #[error("the transport key is not an X25519 key")]
    Key(#[source] vaultfleet_net::KeyError),
}

/// A public key that is not 64 hex digits.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyHexError {
    /// The wrong number of characters.
    #[error("a public key is 64 hex digits, this one has {len} characters")]
    Length {
        /// How many.
        len: usize,
    },
    /// A character that is not a hex digit.
    #[error("a public key is 64 hex digits; character {at} is not one")]
    Digit {
        /// Its position.
        at: usize,
    },
}

/// The X25519 public key written as 64 hex digits (either case).
pub fn parse_public_key(hex: &str) -> Result<PublicKey, KeyHexError> {
    parse_key_hex(hex).map(PublicKey::from_bytes)
}

/// A 32-byte public key (X25519 or Ed25519) written as 64 hex digits (either
/// case).
pub fn parse_key_hex(hex: &str) -> Result<[u8; 32], KeyHexError> {
    let mut out = [0u8; 32];
    decode_key_hex(hex, &mut out)?;
    Ok(out)
}

/// Decodes 64 hex digits (either case) into `out`, which the caller chooses
/// (wiped memory for a secret key).
pub fn decode_key_hex(hex: &str, out: &mut [u8; 32]) -> Result<(), KeyHexError> {
    let digits = hex.as_bytes();
    if digits.len() != 64 {
        return Err(KeyHexError::Length { len: hex.len() });
    }
    let nibble = |at: usize| {
        digits
            .get(at)
            .and_then(|&c| char::from(c).to_digit(16))
            .and_then(|d| u8::try_from(d).ok())
            .ok_or(KeyHexError::Digit { at })
    };
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = (nibble(2 * i)? << 4) | nibble(2 * i + 1)?;
    }
    Ok(())
}

/// `bytes` as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Reads the user PIN from `pin_file` (which must not be readable by group or
/// others) or from the variable `pin_env`; one trailing newline is dropped.
pub fn read_pin(
    pin_file: Option<&Path>,
    pin_env: Option<&str>,
) -> Result<Zeroizing<String>, PinError> {
    let mut pin = match (pin_file, pin_env) {
        (Some(path), _) => read_pin_file(path)?,
        (None, Some(name)) => Zeroizing::new(std::env::var(name).map_err(|_| PinError::Env {
            name: name.to_string(),
        })?),
        (None, None) => return Err(PinError::Empty),
    };
    if pin.ends_with('\n') {
        pin.pop();
        if pin.ends_with('\r') {
            pin.pop();
        }
    }
    if pin.is_empty() {
        return Err(PinError::Empty);
    }
    Ok(pin)
}

fn read_pin_file(path: &Path) -> Result<Zeroizing<String>, PinError> {
    use std::io::Read as _;
    use std::os::unix::fs::PermissionsExt as _;
    let read = |source| PinError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = crate::files::open_regular(path).map_err(|e| match e {
        crate::files::FileRefusal::Io(source) => read(source),
        other => read(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            other.to_string(),
        )),
    })?;
    let mode = file.metadata().map_err(read)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(PinError::Permissions {
            path: path.to_path_buf(),
            mode: mode & 0o7777,
        });
    }
    // Room for the whole PIN up front: a buffer that grew would leave a copy
    // of its first bytes in freed, unwiped memory.
    let mut bytes = Zeroizing::new(Vec::with_capacity(PIN_FILE_BYTES_MAX as usize + 1));
    file.take(PIN_FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    if bytes.len() as u64 > PIN_FILE_BYTES_MAX {
        return Err(PinError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        read(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the PIN file is not UTF-8",
        ))
    })?;
    Ok(Zeroizing::new(text.to_string()))
}

/// Refuses a soft HSM file that is not there (or cannot be looked at):
/// `SoftHsm::open` would create a new, empty HSM in its place, so a mistyped
/// `[hsm] file` would write before the start is refused.
fn soft_file_present(file: &Path) -> Result<(), HsmOpenError> {
    match std::fs::metadata(file) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => Err(HsmOpenError::SoftMissing {
            path: file.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
        }),
        Err(source) => Err(HsmOpenError::SoftMissing {
            path: file.to_path_buf(),
            source,
        }),
    }
}

/// Refuses a soft HSM file that group or others may read or write (it holds
/// the keys in the clear). A file that cannot be examined is left to the
/// callers' other checks to report.
fn check_soft_file_mode(path: &Path) -> Result<(), HsmOpenError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(metadata) = std::fs::metadata(path) {
            let mode = metadata.permissions().mode();
            if mode & 0o066 != 0 {
                return Err(HsmOpenError::SoftFileExposed {
                    path: path.to_path_buf(),
                    mode: mode & 0o7777,
                });
            }
        }
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod soft_file_mode_tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// R1-M3: a soft HSM file group or others can read or write is refused
    /// at start, naming the file and the fix; one `SoftHsm::open` created
    /// (0600) opens.
    #[test]
    fn r1_m3_open_hsm_refuses_a_soft_hsm_file_open_to_others() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("soft-hsm");
        SoftHsm::open(&file).expect("a new soft HSM file");
        let config = HsmConfig::Soft { file: file.clone() };
        open_hsm(&config).expect("the node's own 0600 file opens");
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = open_hsm(&config).expect_err("a soft HSM file open to others");
            assert!(
                matches!(&err, HsmOpenError::SoftFileExposed { path, mode: m } if *path == file && *m == mode),
                "{err:?}"
            );
            let text = err.to_string();
            assert!(
                text.contains(&file.display().to_string()) && text.contains("chmod 600"),
                "{text}"
            );
        }
    }
}

/// Opens the HSM `config` describes.
pub fn open_hsm(config: &HsmConfig) -> Result<NodeHsm, HsmOpenError> {
    match config {
        HsmConfig::Soft { file } => {
            soft_file_present(file)?;
            check_soft_file_mode(file)?;
            SoftHsm::open(file)
                .map(NodeHsm::Soft)
                .map_err(|source| HsmOpenError::Soft {
                    path: file.clone(),
                    source,
                })
        }
        HsmConfig::Pkcs11 {
            module,
            token_label,
            pin_file,
            pin_env,
        } => {
            let user_pin =
                read_pin(pin_file.as_deref(), pin_env.as_deref()).map_err(HsmOpenError::Pin)?;
            Pkcs11Hsm::open(&Pkcs11Config {
                module: module.clone(),
                token_label: token_label.clone(),
                user_pin,
                limits: Pkcs11Limits::default(),
            })
            .map(NodeHsm::Pkcs11)
            .map_err(|source| HsmOpenError::Pkcs11 {
                module: module.clone(),
                token: token_label.clone(),
                source,
            })
        }
    }
}

/// The associated data of replica `replica`'s transport key in fleet `fleet_id`.
fn key_ad(fleet_id: &str, replica: u64) -> Vec<u8> {
    let mut ad = Vec::with_capacity(KEY_AD_LABEL.len() + 4 + fleet_id.len() + 8);
    ad.extend_from_slice(KEY_AD_LABEL);
    // The fleet id is at most 255 bytes (config validation); its length
    // prefix keeps the encoding unambiguous.
    ad.extend_from_slice(
        &u32::try_from(fleet_id.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    ad.extend_from_slice(fleet_id.as_bytes());
    ad.extend_from_slice(&replica.to_be_bytes());
    ad
}

/// Draws a new X25519 transport key in the HSM, seals it under
/// [`TRANSPORT_SEAL_KEY`] (associated data binding `fleet_id` and `replica`)
/// and writes it to `path` (mode 0600, synced); returns its public key.
/// Refuses to overwrite an existing file.
pub fn create_transport_key<H: Hsm>(
    hsm: &H,
    path: &Path,
    fleet_id: &str,
    replica: u64,
) -> Result<PublicKey, NodeKeyError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |source| NodeKeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    if path.exists() {
        return Err(NodeKeyError::Exists {
            path: path.to_path_buf(),
        });
    }
    let hsm_err = |operation| move |source| NodeKeyError::Hsm { operation, source };
    let seal_key = hsm
        .key(TRANSPORT_SEAL_KEY, KeyKind::Aead)
        .map_err(hsm_err("find or create the sealing key of"))?;
    let mut secret = Zeroizing::new([0u8; 32]);
    hsm.random(secret.as_mut_slice()).map_err(hsm_err("draw"))?;
    let sealed = hsm
        .seal(seal_key, &key_ad(fleet_id, replica), secret.as_slice())
        .map_err(hsm_err("seal"))?;
    let secret = StaticSecret::from_bytes(secret).map_err(NodeKeyError::Key)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                NodeKeyError::Exists {
                    path: path.to_path_buf(),
                }
            } else {
                io(source)
            }
        })?;
    file.write_all(KEY_FILE_MAGIC).map_err(io)?;
    file.write_all(&sealed).map_err(io)?;
    file.sync_all().map_err(io)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    Ok(secret.public_key())
}

/// Opens the transport key `create_transport_key` wrote for `replica` of
/// `fleet_id` under this HSM.
pub fn open_transport_key<H: Hsm>(
    hsm: &H,
    path: &Path,
    fleet_id: &str,
    replica: u64,
) -> Result<StaticSecret, NodeKeyError> {
    use std::io::Read as _;
    let io = |source| NodeKeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(io)?
        .take(KEY_FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    let format = || NodeKeyError::Format {
        path: path.to_path_buf(),
    };
    if bytes.len() as u64 > KEY_FILE_BYTES_MAX {
        return Err(format());
    }
    let sealed = bytes.strip_prefix(KEY_FILE_MAGIC).ok_or_else(format)?;
    let hsm_err = |operation| move |source| NodeKeyError::Hsm { operation, source };
    let seal_key = hsm
        .find_key(TRANSPORT_SEAL_KEY, KeyKind::Aead)
        .map_err(hsm_err("find the sealing key of"))?
        .ok_or_else(|| NodeKeyError::Hsm {
            operation: "find the sealing key of",
            source: HsmError::NoSuchKey {
                label: TRANSPORT_SEAL_KEY.into(),
                kind: KeyKind::Aead,
            },
        })?;
    let plain = hsm
        .unseal(seal_key, &key_ad(fleet_id, replica), sealed)
        .map_err(hsm_err("unseal"))?;
    let mut secret = Zeroizing::new([0u8; 32]);
    if plain.len() != 32 {
        return Err(format());
    }
    secret.copy_from_slice(&plain);
    StaticSecret::from_bytes(secret).map_err(NodeKeyError::Key)
}

macro_rules! delegate {
    ($self:ident, $h:ident => $call:expr) => {
        match $self {
            NodeHsm::Soft($h) => $call,
            NodeHsm::Pkcs11($h) => $call,
        }
    };
}

impl Hsm for NodeHsm {
    fn key(&self, label: &str, kind: KeyKind) -> Result<KeyHandle, HsmError> {
        delegate!(self, h => h.key(label, kind))
    }
    fn find_key(&self, label: &str, kind: KeyKind) -> Result<Option<KeyHandle>, HsmError> {
        delegate!(self, h => h.find_key(label, kind))
    }
    fn seal(&self, key: KeyHandle, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, HsmError> {
        delegate!(self, h => h.seal(key, aad, plaintext))
    }
    fn unseal(
        &self,
        key: KeyHandle,
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, HsmError> {
        delegate!(self, h => h.unseal(key, aad, sealed))
    }
    fn sign(&self, key: KeyHandle, message: &[u8]) -> Result<[u8; 64], HsmError> {
        delegate!(self, h => h.sign(key, message))
    }
    fn public_key(&self, key: KeyHandle) -> Result<[u8; 32], HsmError> {
        delegate!(self, h => h.public_key(key))
    }
    fn mac(&self, key: KeyHandle, data: &[u8]) -> Result<[u8; 32], HsmError> {
        delegate!(self, h => h.mac(key, data))
    }
    fn random(&self, out: &mut [u8]) -> Result<(), HsmError> {
        delegate!(self, h => h.random(out))
    }
    fn counter(&self, label: &str) -> Result<Counter, HsmError> {
        delegate!(self, h => h.counter(label))
    }
    fn advance_counter(&self, label: &str, binding: &[u8; 32]) -> Result<u64, HsmError> {
        delegate!(self, h => h.advance_counter(label, binding))
    }
    fn verify_mac(&self, key: KeyHandle, data: &[u8], tag: &[u8]) -> Result<bool, HsmError> {
        delegate!(self, h => h.verify_mac(key, data, tag))
    }
    fn derive_subkey(
        &self,
        key: KeyHandle,
        context: &[u8],
    ) -> Result<Zeroizing<[u8; 32]>, HsmError> {
        delegate!(self, h => h.derive_subkey(key, context))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transport_key_opens_only_for_its_replica_and_fleet_and_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let hsm = SoftHsm::from_seed(7);
        let path = dir.path().join("transport.key");
        let public = create_transport_key(&hsm, &path, "fleet", 3).unwrap();
        let secret = open_transport_key(&hsm, &path, "fleet", 3).unwrap();
        assert_eq!(secret.public_key(), public);
        assert!(matches!(
            create_transport_key(&hsm, &path, "fleet", 3),
            Err(NodeKeyError::Exists { .. })
        ));
        for (fleet, id) in [("fleet", 4), ("other", 3)] {
            assert!(matches!(
                open_transport_key(&hsm, &path, fleet, id),
                Err(NodeKeyError::Hsm {
                    source: HsmError::Unauthentic,
                    ..
                })
            ));
        }
        assert!(matches!(
            open_transport_key(&SoftHsm::from_seed(8), &path, "fleet", 3),
            Err(NodeKeyError::Hsm { .. })
        ));
        std::fs::write(&path, b"not a key").unwrap();
        assert!(matches!(
            open_transport_key(&hsm, &path, "fleet", 3),
            Err(NodeKeyError::Format { .. })
        ));
    }

    #[test]
    fn public_keys_parse_from_64_hex_digits_only() {
        let hex_key = "0f".repeat(32);
        assert_eq!(parse_public_key(&hex_key).unwrap().as_bytes(), &[0x0f; 32]);
        assert_eq!(
            parse_public_key(&"AB".repeat(32)).unwrap().as_bytes(),
            &[0xab; 32]
        );
        assert_eq!(parse_public_key("abc"), Err(KeyHexError::Length { len: 3 }));
        let mut bad = "00".repeat(32);
        bad.replace_range(5..6, "g");
        assert_eq!(parse_public_key(&bad), Err(KeyHexError::Digit { at: 5 }));
    }

    #[test]
    fn a_pin_file_readable_by_others_is_refused_and_the_newline_dropped() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pin");
        std::fs::write(&path, "1234\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            read_pin(Some(&path), None),
            Err(PinError::Permissions { mode: 0o644, .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_pin(Some(&path), None).unwrap().as_str(), "1234");
        assert!(matches!(
            read_pin(None, Some("VAULTFLEET_NODE_TEST_NO_SUCH_PIN_VARIABLE")),
            Err(PinError::Env { .. })
        ));
    }
}
