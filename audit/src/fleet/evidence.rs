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

use super::FleetArtifact;
use vaultfleet::hsm::{verify_signature, Hsm, HsmError, KeyHandle};
use vaultfleet::wire::bytes::{put, ByteReader};
use vaultfleet::ReplicaId;

const MAGIC: &[u8] = b"vaultfleet/evidence/v1";
const FIELD_MAX: usize = 1 << 20;
const LIST_MAX: usize = 4096;

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
    /// What the vendor root signs.
    pub fn signed_bytes(vendor: &str, device: &str, device_key: &[u8; 32]) -> Vec<u8> {
        let mut m = b"vaultfleet/device-certificate/v1\n".to_vec();
        put(&mut m, vendor.as_bytes());
        put(&mut m, device.as_bytes());
        m.extend_from_slice(device_key);
        m
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
    /// datacenter and keys.
    pub fn signed_bytes(
        artifact_digest: &[u8; 32],
        replica: &super::ReplicaKeys,
        firmware: &[u8; 32],
    ) -> Vec<u8> {
        let mut m = b"vaultfleet/hsm-attestation/v1\n".to_vec();
        m.extend_from_slice(artifact_digest);
        m.extend_from_slice(&replica.id.to_be_bytes());
        m.extend_from_slice(&(replica.datacenter.len() as u32).to_be_bytes());
        m.extend_from_slice(replica.datacenter.as_bytes());
        m.extend_from_slice(&replica.response_key);
        m.extend_from_slice(&replica.transport_key);
        m.extend_from_slice(&replica.opaque_key);
        m.extend_from_slice(firmware);
        m
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
    /// What each officer signs.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut m = b"vaultfleet/key-ceremony/v1\n".to_vec();
        m.extend_from_slice(&self.artifact_digest);
        m.push(self.threshold);
        m.extend_from_slice(&(self.firmware.len() as u32).to_be_bytes());
        for (id, fw) in &self.firmware {
            m.extend_from_slice(&id.to_be_bytes());
            m.extend_from_slice(fw);
        }
        m
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
#[error("malformed evidence: {0}")]
pub struct EvidenceError(pub String);

impl Evidence {
    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        put(&mut out, &self.bundle);
        out.extend_from_slice(&(self.attestations.len() as u32).to_be_bytes());
        for a in &self.attestations {
            out.extend_from_slice(&a.replica.to_be_bytes());
            out.extend_from_slice(&a.firmware);
            put(&mut out, a.certificate.vendor.as_bytes());
            put(&mut out, a.certificate.device.as_bytes());
            out.extend_from_slice(&a.certificate.device_key);
            out.extend_from_slice(&a.certificate.signature);
            out.extend_from_slice(&a.signature);
        }
        let c = &self.ceremony;
        out.extend_from_slice(&c.artifact_digest);
        out.push(c.threshold);
        out.extend_from_slice(&(c.firmware.len() as u32).to_be_bytes());
        for (id, fw) in &c.firmware {
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(fw);
        }
        out.extend_from_slice(&(c.signatures.len() as u32).to_be_bytes());
        for (name, sig) in &c.signatures {
            put(&mut out, name.as_bytes());
            out.extend_from_slice(sig);
        }
        out
    }

    /// Decodes [`Evidence::encode`]'s output.
    pub fn decode(bytes: &[u8]) -> Result<Self, EvidenceError> {
        let mut r = ByteReader::new(bytes);
        if r.take(MAGIC.len()).map_err(EvidenceError)? != MAGIC {
            return Err(EvidenceError(
                "not vaultfleet deployment evidence (v1)".into(),
            ));
        }
        let bundle = r.bytes(FIELD_MAX).map_err(EvidenceError)?.to_vec();
        let n = r.count(LIST_MAX).map_err(EvidenceError)?;
        let mut attestations = Vec::with_capacity(n);
        for _ in 0..n {
            attestations.push(Attestation {
                replica: r.u64().map_err(EvidenceError)?,
                firmware: r.array().map_err(EvidenceError)?,
                certificate: DeviceCertificate {
                    vendor: r.text(FIELD_MAX).map_err(EvidenceError)?,
                    device: r.text(FIELD_MAX).map_err(EvidenceError)?,
                    device_key: r.array().map_err(EvidenceError)?,
                    signature: r.array().map_err(EvidenceError)?,
                },
                signature: r.array().map_err(EvidenceError)?,
            });
        }
        let artifact_digest = r.array().map_err(EvidenceError)?;
        let threshold = r.array::<1>().map_err(EvidenceError)?[0];
        let n = r.count(LIST_MAX).map_err(EvidenceError)?;
        let mut firmware = Vec::with_capacity(n);
        for _ in 0..n {
            firmware.push((
                r.u64().map_err(EvidenceError)?,
                r.array().map_err(EvidenceError)?,
            ));
        }
        let n = r.count(LIST_MAX).map_err(EvidenceError)?;
        let mut signatures = Vec::with_capacity(n);
        for _ in 0..n {
            signatures.push((
                r.text(FIELD_MAX).map_err(EvidenceError)?,
                r.array().map_err(EvidenceError)?,
            ));
        }
        if !r.is_empty() {
            return Err(EvidenceError("trailing bytes".into()));
        }
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
) -> Result<DeviceCertificate, HsmError> {
    let signature = hsm.sign(
        root,
        &DeviceCertificate::signed_bytes(vendor, device, &device_key),
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
) -> Result<Attestation, HsmError> {
    let digest = artifact
        .digest()
        .map_err(|e| HsmError::Device(e.to_string()))?;
    let keys = artifact
        .replica(replica)
        .ok_or_else(|| HsmError::Device(format!("replica {replica} is not in the artifact")))?;
    let signature = hsm.sign(
        device_key,
        &Attestation::signed_bytes(&digest, keys, &firmware),
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
    /// `Ok(detail)` when it held, `Err(why)` when not.
    pub outcome: Result<String, String>,
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
                outcome: Err(e.to_string()),
            });
            return steps;
        }
    };
    // One attestation per replica, from distinct devices: one HSM holding
    // several replicas' keys would hold a quorum.
    let mut devices: Vec<[u8; 32]> = Vec::new();
    let extra = evidence
        .attestations
        .iter()
        .filter(|a| artifact.replica(a.replica).is_none())
        .count();
    let mut ids: Vec<u64> = evidence.attestations.iter().map(|a| a.replica).collect();
    ids.sort_unstable();
    let duplicated = ids.windows(2).any(|w| w[0] == w[1]);
    steps.push(Step {
        what: "attestation list".into(),
        outcome: if extra > 0 || duplicated {
            Err(format!(
                "{extra} attestations for replicas not in the fleet, duplicates: {duplicated}"
            ))
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
            outcome: Err("a replica's firmware is listed twice".into()),
        });
    }
    for r in &artifact.replicas {
        let what = format!("attestation of replica {} ({})", r.id, r.datacenter);
        let outcome = (|| {
            let a = evidence
                .attestations
                .iter()
                .find(|a| a.replica == r.id)
                .ok_or("no attestation for this replica")?;
            let root = pins
                .vendor_roots
                .iter()
                .find(|(n, _)| *n == a.certificate.vendor)
                .map(|(_, k)| k)
                .ok_or_else(|| format!("vendor root {:?} is not pinned", a.certificate.vendor))?;
            let cert = DeviceCertificate::signed_bytes(
                &a.certificate.vendor,
                &a.certificate.device,
                &a.certificate.device_key,
            );
            if !verify_signature(root, &cert, &a.certificate.signature) {
                return Err(format!(
                    "device certificate not signed by vendor root {:?}",
                    a.certificate.vendor
                ));
            }
            if !verify_signature(
                &a.certificate.device_key,
                &Attestation::signed_bytes(&digest, r, &a.firmware),
                &a.signature,
            ) {
                return Err(
                    "the device's statement does not bind these keys to this artifact".into(),
                );
            }
            let ceremony_fw = evidence
                .ceremony
                .firmware
                .iter()
                .find(|(id, _)| *id == r.id)
                .map(|(_, f)| f);
            if devices.contains(&a.certificate.device_key) {
                return Err("this device already attested another replica".into());
            }
            devices.push(a.certificate.device_key);
            if ceremony_fw != Some(&a.firmware) {
                return Err("firmware hash differs from the ceremony record".into());
            }
            Ok(format!(
                "device {:?} certified by {:?}, firmware {}",
                a.certificate.device,
                a.certificate.vendor,
                &hex(&a.firmware)[..16]
            ))
        })();
        steps.push(Step { what, outcome });
    }
    let c = &evidence.ceremony;
    let outcome = if c.artifact_digest != digest {
        Err("the ceremony record names another artifact".to_string())
    } else {
        let msg = c.signed_bytes();
        let mut good: Vec<&str> = Vec::new();
        let mut bad: Vec<String> = Vec::new();
        let mut keys_used: Vec<[u8; 32]> = Vec::new();
        for (name, sig) in &c.signatures {
            match pins.officers.iter().find(|(n, _)| n == name) {
                _ if good.contains(&name.as_str()) => bad.push(format!("{name} signed twice")),
                None => bad.push(format!("{name} is not a pinned officer")),
                // Two names pinned to one key are one officer.
                Some((_, key)) if keys_used.contains(key) => {
                    bad.push(format!("{name} shares a key with another officer"))
                }
                Some((_, key)) if verify_signature(key, &msg, sig) => {
                    keys_used.push(*key);
                    good.push(name)
                }
                Some(_) => bad.push(format!("{name}'s signature does not verify")),
            }
        }
        let need = usize::from(c.threshold).max(pins.threshold).max(1);
        if !bad.is_empty() {
            // A record carrying a bad or foreign signature was altered: refuse it,
            // even when enough good ones remain.
            Err(bad.join("; "))
        } else if good.len() >= need {
            Ok(format!(
                "{} of {} pinned officers signed ({} needed): {}",
                good.len(),
                pins.officers.len(),
                need,
                good.join(", ")
            ))
        } else {
            Err(format!(
                "{} valid officer signatures, {} needed",
                good.len(),
                need
            ))
        }
    };
    steps.push(Step {
        what: "key ceremony record".into(),
        outcome,
    });
    steps
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// SHA-256, for firmware images.
pub fn firmware_hash(image: &[u8]) -> [u8; 32] {
    Sha256::digest(image).into()
}
