//! Deployment evidence for a new fleet: its validation bundle, an attestation
//! per HSM binding the replica's keys to a device, and the key ceremony record
//! signed by M of N ceremony officers.
//!
//! **Attestations.** SoftHSM2 has no vendor attestation. It is modelled as a
//! statement signed by a *device key*, where the device key is certified by a
//! *vendor root* that the evidence names. A production HSM replaces both parts
//! with the vendor's own chain: a Thales/Entrust "key attestation" or a
//! Marvell/Cavium certificate. Its root is the vendor's published CA, and its
//! statement says the key was generated inside that device and cannot leave it.
//! The auditor pins the vendor roots; the evidence only names them.
//!
//! **Ceremony.** The record binds the artifact digest to the firmware hash of
//! every HSM. At least `threshold` of the listed officers must sign it. The
//! officers' keys are pinned by the auditor too.

use sha2::{Digest, Sha256};

use super::{ArtifactError, FleetArtifact, TEXT_BYTES_MAX};
use vaultfleet::codec::{DecodeError, EncodeError, Reader, Writer};
use vaultfleet::hsm::{verify_signature, Hsm, HsmError, KeyHandle};
use vaultfleet::ReplicaId;

const MAGIC: &[u8] = b"vaultfleet/evidence/v1";
/// Longest byte field of the evidence (the bundle, a vendor or device name, an
/// officer's name).
pub const FIELD_BYTES_MAX: usize = 1 << 20;
/// Most attestations, firmware entries or officer signatures in the evidence.
pub const LIST_MAX: usize = 4096;

// The signed inputs below are built with the codec's `Writer`, not with
// `vaultfleet::codec::labeled`: they predate that helper and are signed already
// (vendor certificates, HSM attestations, ceremony records on file), so their
// bytes stay exactly as they were: a newline-terminated label, `u32`-length
// prefixed text, fixed-width fields as they are.
const DEVICE_CERTIFICATE_LABEL: &[u8] = b"vaultfleet/device-certificate/v1\n";
const ATTESTATION_LABEL: &[u8] = b"vaultfleet/hsm-attestation/v1\n";
const CEREMONY_LABEL: &[u8] = b"vaultfleet/key-ceremony/v1\n";

/// A vendor root's certificate of a device key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCertificate {
    /// The vendor root's name (the auditor pins its key under this name).
    pub vendor: String,
    /// The device's model and serial, as the vendor certifies them.
    pub device: String,
    /// The device's attestation key.
    pub device_key: [u8; 32],
    /// The vendor root's signature over [`DeviceCertificate::signed_bytes`].
    pub signature: [u8; 64],
}

impl DeviceCertificate {
    /// What the vendor root signs. Names longer than [`FIELD_BYTES_MAX`] do not
    /// encode.
    pub fn signed_bytes(
        vendor: &str,
        device: &str,
        device_key: &[u8; 32],
    ) -> Result<Vec<u8>, EncodeError> {
        let mut w = Writer::from_vec(DEVICE_CERTIFICATE_LABEL.to_vec());
        w.text(FIELD_BYTES_MAX, vendor, "vendor")?
            .text(FIELD_BYTES_MAX, device, "device")?
            .raw(device_key);
        Ok(w.into_vec())
    }
}

/// One HSM's attestation that it holds a replica's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attestation {
    /// The replica.
    pub replica: ReplicaId,
    /// The HSM's firmware hash.
    pub firmware: [u8; 32],
    /// The device's certificate.
    pub certificate: DeviceCertificate,
    /// The device key's signature over [`Attestation::signed_bytes`].
    pub signature: [u8; 64],
}

impl Attestation {
    /// What the device key signs: the artifact digest and this replica's id,
    /// datacenter and keys. A datacenter label longer than an artifact allows
    /// does not encode.
    pub fn signed_bytes(
        artifact_digest: &[u8; 32],
        replica: &super::ReplicaKeys,
        firmware: &[u8; 32],
    ) -> Result<Vec<u8>, EncodeError> {
        let mut w = Writer::from_vec(ATTESTATION_LABEL.to_vec());
        w.raw(artifact_digest).u64(replica.id);
        w.text(TEXT_BYTES_MAX, &replica.datacenter, "datacenter")?
            .raw(&replica.response_key)
            .raw(&replica.transport_key)
            .raw(&replica.opaque_key)
            .raw(firmware);
        Ok(w.into_vec())
    }
}

/// The key ceremony record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ceremony {
    /// The artifact's digest.
    pub artifact_digest: [u8; 32],
    /// Each replica's HSM firmware hash.
    pub firmware: Vec<(ReplicaId, [u8; 32])>,
    /// Signatures needed.
    pub threshold: u8,
    /// (officer name, signature) pairs.
    pub signatures: Vec<(String, [u8; 64])>,
}

impl Ceremony {
    /// What each officer signs. More than [`LIST_MAX`] firmware entries do not
    /// encode.
    pub fn signed_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        let mut w = Writer::from_vec(CEREMONY_LABEL.to_vec());
        w.raw(&self.artifact_digest).u8(self.threshold);
        self.write_firmware(&mut w)?;
        Ok(w.into_vec())
    }

    /// The firmware list: a `u32` count, then (replica id, hash) pairs.
    fn write_firmware(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.count(LIST_MAX, self.firmware.len(), "ceremony firmware list")?;
        for (id, fw) in &self.firmware {
            w.u64(*id).raw(fw);
        }
        Ok(())
    }
}

/// A fleet's deployment evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// The validation bundle (`audit::Bundle` encoding).
    pub bundle: Vec<u8>,
    /// One attestation per replica.
    pub attestations: Vec<Attestation>,
    /// The ceremony record.
    pub ceremony: Ceremony,
}

/// Evidence that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EvidenceError {
    /// The bytes do not start with the evidence's magic string.
    #[error("not vaultfleet deployment evidence (v1): its magic bytes differ")]
    NotEvidence,
    /// The bytes do not decode (cut short, a list or field over its maximum,
    /// text that is not UTF-8, trailing bytes).
    #[error("malformed evidence: {0}")]
    Decode(#[from] DecodeError),
}

/// A device certificate or an attestation could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestationError {
    /// The artifact to attest does not encode, so it has no digest.
    #[error("the artifact to attest: {0}")]
    Artifact(#[from] ArtifactError),
    /// The replica to attest is not in the artifact.
    #[error("replica {0} is not in the artifact")]
    NotInArtifact(ReplicaId),
    /// A name or label is too long to be signed.
    #[error("the statement to sign does not encode: {0}")]
    Encode(#[from] EncodeError),
    /// The HSM failed to sign.
    #[error("the HSM failed to sign: {0}")]
    Hsm(#[from] HsmError),
}

impl Evidence {
    /// The canonical encoding: the magic string, the bundle (`u32` length), a
    /// `u32` count of attestations (replica id, firmware, vendor and device as
    /// `u32`-length text, device key, vendor signature, device signature), the
    /// ceremony's artifact digest, threshold and firmware list, and a `u32` count
    /// of officer signatures (name as `u32`-length text, signature).
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut w = Writer::from_vec(MAGIC.to_vec());
        w.bytes(FIELD_BYTES_MAX, &self.bundle, "evidence bundle")?;
        w.count(LIST_MAX, self.attestations.len(), "attestations")?;
        for a in &self.attestations {
            w.u64(a.replica).raw(&a.firmware);
            w.text(FIELD_BYTES_MAX, &a.certificate.vendor, "vendor")?
                .text(FIELD_BYTES_MAX, &a.certificate.device, "device")?
                .raw(&a.certificate.device_key)
                .raw(&a.certificate.signature)
                .raw(&a.signature);
        }
        let c = &self.ceremony;
        w.raw(&c.artifact_digest).u8(c.threshold);
        c.write_firmware(&mut w)?;
        w.count(LIST_MAX, c.signatures.len(), "officer signatures")?;
        for (name, sig) in &c.signatures {
            w.text(FIELD_BYTES_MAX, name, "officer name")?.raw(sig);
        }
        Ok(w.into_vec())
    }

    /// Decodes [`Evidence::encode`]'s output.
    pub fn decode(bytes: &[u8]) -> Result<Self, EvidenceError> {
        let mut r = Reader::new(bytes);
        if r.take(MAGIC.len(), "evidence magic")? != MAGIC {
            return Err(EvidenceError::NotEvidence);
        }
        let bundle = r.bytes(FIELD_BYTES_MAX, "evidence bundle")?.to_vec();
        let n = r.count(LIST_MAX, "attestations")?;
        let mut attestations = Vec::with_capacity(n.min(r.left()));
        for _ in 0..n {
            attestations.push(Attestation {
                replica: r.u64("attested replica")?,
                firmware: r.array("attested firmware")?,
                certificate: DeviceCertificate {
                    vendor: r.text(FIELD_BYTES_MAX, "vendor")?.to_owned(),
                    device: r.text(FIELD_BYTES_MAX, "device")?.to_owned(),
                    device_key: r.array("device key")?,
                    signature: r.array("vendor signature")?,
                },
                signature: r.array("device signature")?,
            });
        }
        let artifact_digest = r.array("ceremony artifact digest")?;
        let threshold = r.u8("ceremony threshold")?;
        let n = r.count(LIST_MAX, "ceremony firmware list")?;
        let mut firmware = Vec::with_capacity(n.min(r.left()));
        for _ in 0..n {
            firmware.push((
                r.u64("ceremony firmware replica")?,
                r.array("ceremony firmware hash")?,
            ));
        }
        let n = r.count(LIST_MAX, "officer signatures")?;
        let mut signatures = Vec::with_capacity(n.min(r.left()));
        for _ in 0..n {
            signatures.push((
                r.text(FIELD_BYTES_MAX, "officer name")?.to_owned(),
                r.array("officer signature")?,
            ));
        }
        r.expect_empty("evidence")?;
        Ok(Self {
            bundle,
            attestations,
            ceremony: Ceremony {
                artifact_digest,
                firmware,
                threshold,
                signatures,
            },
        })
    }
}

/// Certifies a device key with a vendor root held in `hsm`.
pub fn certify_device<H: Hsm>(
    hsm: &H,
    root: KeyHandle,
    vendor: &str,
    device: &str,
    device_key: [u8; 32],
) -> Result<DeviceCertificate, AttestationError> {
    let signature = hsm.sign(
        root,
        &DeviceCertificate::signed_bytes(vendor, device, &device_key)?,
    )?;
    Ok(DeviceCertificate {
        vendor: vendor.to_string(),
        device: device.to_string(),
        device_key,
        signature,
    })
}

/// The device (its attestation key in `hsm`) attests `replica`'s keys in `artifact`.
pub fn attest<H: Hsm>(
    hsm: &H,
    device_key: KeyHandle,
    certificate: DeviceCertificate,
    artifact: &FleetArtifact,
    replica: ReplicaId,
    firmware: [u8; 32],
) -> Result<Attestation, AttestationError> {
    let digest = artifact.digest()?;
    let keys = artifact
        .replica(replica)
        .ok_or(AttestationError::NotInArtifact(replica))?;
    let signature = hsm.sign(
        device_key,
        &Attestation::signed_bytes(&digest, keys, &firmware)?,
    )?;
    Ok(Attestation {
        replica,
        firmware,
        certificate,
        signature,
    })
}

/// One step of an audit: what was checked, and whether it held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// What was checked.
    pub what: String,
    /// `Ok(detail)` when it held, `Err(finding)` when not.
    pub outcome: Result<String, Finding>,
}

/// What an audit step found wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Finding {
    /// The artifact has no digest (it does not encode).
    #[error("the artifact does not encode: {0}")]
    Artifact(#[source] ArtifactError),
    /// Attestations for replicas outside the fleet, or two for one replica.
    #[error("{not_in_fleet} attestations for replicas not in the fleet, duplicates: {duplicated}")]
    AttestationList {
        /// Attestations naming a replica the artifact does not list.
        not_in_fleet: usize,
        /// Whether some replica is attested twice.
        duplicated: bool,
    },
    /// The ceremony lists a replica's firmware twice.
    #[error("a replica's firmware is listed twice")]
    FirmwareListedTwice,
    /// A replica of the fleet has no attestation.
    #[error("no attestation for this replica")]
    NoAttestation,
    /// The attestation's vendor root is not pinned.
    #[error("vendor root {0:?} is not pinned")]
    VendorNotPinned(String),
    /// The device certificate is not signed by the pinned vendor root.
    #[error("device certificate not signed by vendor root {0:?}")]
    CertificateNotSigned(String),
    /// The device's signature is not over these keys and this artifact.
    #[error("the device's statement does not bind these keys to this artifact")]
    StatementNotBound,
    /// One device attested two replicas (one HSM would hold a quorum's keys).
    #[error("this device already attested another replica")]
    DeviceReused,
    /// The attested firmware is not the ceremony's.
    #[error("firmware hash differs from the ceremony record")]
    FirmwareMismatch,
    /// The ceremony record is for another artifact.
    #[error("the ceremony record names another artifact")]
    CeremonyOtherArtifact,
    /// The ceremony record does not encode, so nobody signed it.
    #[error("the ceremony record does not encode: {0}")]
    CeremonyEncode(#[source] EncodeError),
    /// A signature on the ceremony record is refused: the record was altered,
    /// even when enough good signatures remain.
    #[error("{}", refused.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    OfficersRefused {
        /// Each refused signature.
        refused: Vec<OfficerRefusal>,
    },
    /// Too few valid officer signatures.
    #[error("{valid} valid officer signatures, {needed} needed")]
    TooFewOfficers {
        /// Valid signatures.
        valid: usize,
        /// Signatures needed (the larger of the record's and the pins' thresholds).
        needed: usize,
    },
}

/// One refused officer signature on a ceremony record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name} {problem}")]
pub struct OfficerRefusal {
    /// The officer's name in the record.
    pub name: String,
    /// Why the signature is refused.
    pub problem: OfficerProblem,
}

/// Why an officer signature is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OfficerProblem {
    /// The officer signed twice.
    #[error("signed twice")]
    SignedTwice,
    /// The name is not pinned.
    #[error("is not a pinned officer")]
    NotPinned,
    /// The name is pinned to the key of an officer who signed already.
    #[error("shares a key with another officer")]
    SharedKey,
    /// The signature does not verify under the pinned key.
    #[error("signature does not verify")]
    BadSignature,
}

/// What an auditor pins: vendor roots and ceremony officers, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditPins {
    /// Vendor roots' public keys.
    pub vendor_roots: Vec<(String, [u8; 32])>,
    /// Ceremony officers' public keys.
    pub officers: Vec<(String, [u8; 32])>,
    /// Officer signatures the auditor requires (the evidence may ask for more,
    /// never for fewer).
    pub threshold: usize,
}

/// Checks the attestations and the ceremony of `evidence` for `artifact` (whose
/// bundle the caller verified), step by step.
pub fn audit_deployment(
    evidence: &Evidence,
    artifact: &FleetArtifact,
    pins: &AuditPins,
) -> Vec<Step> {
    let mut steps = Vec::new();
    let digest = match artifact.digest() {
        Ok(d) => d,
        Err(e) => {
            steps.push(Step {
                what: "artifact digest".into(),
                outcome: Err(Finding::Artifact(e)),
            });
            return steps;
        }
    };
    let not_in_fleet = evidence
        .attestations
        .iter()
        .filter(|a| artifact.replica(a.replica).is_none())
        .count();
    let mut ids: Vec<u64> = evidence.attestations.iter().map(|a| a.replica).collect();
    ids.sort_unstable();
    let duplicated = ids.windows(2).any(|w| w[0] == w[1]);
    steps.push(Step {
        what: "attestation list".into(),
        outcome: if not_in_fleet > 0 || duplicated {
            Err(Finding::AttestationList {
                not_in_fleet,
                duplicated,
            })
        } else {
            Ok(format!(
                "{} attestations, one per replica",
                evidence.attestations.len()
            ))
        },
    });
    let mut fw_ids: Vec<u64> = evidence
        .ceremony
        .firmware
        .iter()
        .map(|(id, _)| *id)
        .collect();
    fw_ids.sort_unstable();
    if fw_ids.windows(2).any(|w| w[0] == w[1]) {
        steps.push(Step {
            what: "ceremony firmware list".into(),
            outcome: Err(Finding::FirmwareListedTwice),
        });
    }
    // One attestation per replica, from distinct devices: one HSM holding
    // several replicas' keys would hold a quorum.
    let mut devices: Vec<[u8; 32]> = Vec::new();
    for r in &artifact.replicas {
        steps.push(Step {
            what: format!("attestation of replica {} ({})", r.id, r.datacenter),
            outcome: check_attestation(evidence, r, &digest, pins, &mut devices),
        });
    }
    let c = &evidence.ceremony;
    let outcome = match c.signed_bytes() {
        _ if c.artifact_digest != digest => Err(Finding::CeremonyOtherArtifact),
        Err(e) => Err(Finding::CeremonyEncode(e)),
        Ok(msg) => ceremony_signatures(c, &msg, pins),
    };
    steps.push(Step {
        what: "key ceremony record".into(),
        outcome,
    });
    steps
}

/// Checks replica `r`'s attestation: a pinned vendor certified the device, the
/// device signed these keys for this artifact, no other replica used the device
/// (`devices` collects those seen), and the firmware is the ceremony's.
fn check_attestation(
    evidence: &Evidence,
    r: &super::ReplicaKeys,
    digest: &[u8; 32],
    pins: &AuditPins,
    devices: &mut Vec<[u8; 32]>,
) -> Result<String, Finding> {
    let a = evidence
        .attestations
        .iter()
        .find(|a| a.replica == r.id)
        .ok_or(Finding::NoAttestation)?;
    let vendor = &a.certificate.vendor;
    let root = pins
        .vendor_roots
        .iter()
        .find(|(n, _)| n == vendor)
        .map(|(_, k)| k)
        .ok_or_else(|| Finding::VendorNotPinned(vendor.clone()))?;
    // A certificate that does not encode was never signed.
    let cert =
        DeviceCertificate::signed_bytes(vendor, &a.certificate.device, &a.certificate.device_key);
    if !cert.is_ok_and(|cert| verify_signature(root, &cert, &a.certificate.signature)) {
        return Err(Finding::CertificateNotSigned(vendor.clone()));
    }
    let statement = Attestation::signed_bytes(digest, r, &a.firmware);
    if !statement.is_ok_and(|m| verify_signature(&a.certificate.device_key, &m, &a.signature)) {
        return Err(Finding::StatementNotBound);
    }
    if devices.contains(&a.certificate.device_key) {
        return Err(Finding::DeviceReused);
    }
    devices.push(a.certificate.device_key);
    let ceremony_fw = evidence
        .ceremony
        .firmware
        .iter()
        .find(|(id, _)| *id == r.id)
        .map(|(_, f)| f);
    if ceremony_fw != Some(&a.firmware) {
        return Err(Finding::FirmwareMismatch);
    }
    Ok(format!(
        "device {:?} certified by {:?}, firmware {}",
        a.certificate.device,
        vendor,
        &hex(&a.firmware)[..16]
    ))
}

/// Checks the officers' signatures on the ceremony record `msg`.
fn ceremony_signatures(c: &Ceremony, msg: &[u8], pins: &AuditPins) -> Result<String, Finding> {
    let mut good: Vec<&str> = Vec::new();
    let mut refused: Vec<OfficerRefusal> = Vec::new();
    let mut keys_used: Vec<[u8; 32]> = Vec::new();
    for (name, sig) in &c.signatures {
        let problem = match pins.officers.iter().find(|(n, _)| n == name) {
            _ if good.contains(&name.as_str()) => OfficerProblem::SignedTwice,
            None => OfficerProblem::NotPinned,
            // Two names pinned to one key are one officer.
            Some((_, key)) if keys_used.contains(key) => OfficerProblem::SharedKey,
            Some((_, key)) if verify_signature(key, msg, sig) => {
                keys_used.push(*key);
                good.push(name);
                continue;
            }
            Some(_) => OfficerProblem::BadSignature,
        };
        refused.push(OfficerRefusal {
            name: name.clone(),
            problem,
        });
    }
    let needed = usize::from(c.threshold).max(pins.threshold).max(1);
    if !refused.is_empty() {
        // A record carrying a bad or foreign signature was altered: refuse it,
        // even when enough good ones remain.
        Err(Finding::OfficersRefused { refused })
    } else if good.len() >= needed {
        Ok(format!(
            "{} of {} pinned officers signed ({} needed): {}",
            good.len(),
            pins.officers.len(),
            needed,
            good.join(", ")
        ))
    } else {
        Err(Finding::TooFewOfficers {
            valid: good.len(),
            needed,
        })
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// SHA-256, for firmware images.
pub fn firmware_hash(image: &[u8]) -> [u8; 32] {
    Sha256::digest(image).into()
}
