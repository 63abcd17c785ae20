//! The auditor's check of deployment evidence: an honest deployment passes every
//! step, and each kind of tampering is named by its own [`Finding`].

use vaultfleet::hsm::{Hsm, KeyKind};
use vaultfleet::SoftHsm;
use vaultfleet_audit::fleet::evidence::{
    attest, audit_deployment, certify_device, AttestationError, AuditPins, Ceremony, Evidence,
    Finding, OfficerProblem, OfficerRefusal, Step,
};
use vaultfleet_audit::fleet::{FleetArtifact, ReplicaKeys};

const FIRMWARE: [u8; 32] = [7; 32];

fn artifact() -> FleetArtifact {
    FleetArtifact {
        fleet_id: "audit-fleet".into(),
        epoch: 1,
        replicas: (1..=3u64)
            .map(|id| ReplicaKeys {
                id,
                datacenter: format!("dc-{id}"),
                response_key: [id as u8; 32],
                transport_key: [0x40 + id as u8; 32],
                opaque_key: [0x80 + id as u8; 32],
            })
            .collect(),
        voters: vec![1, 2, 3],
        learners: vec![],
        not_before: 1,
        not_after: 2,
    }
}

struct Deployment {
    evidence: Evidence,
    pins: AuditPins,
    officers: Vec<SoftHsm>,
}

/// An honest deployment: one device per replica certified by the vendor, and
/// two of three officers signing the ceremony (threshold 2).
fn deployment(a: &FleetArtifact) -> Deployment {
    let vendor = SoftHsm::from_seed(100);
    let root = vendor.key("vendor/root", KeyKind::Signing).unwrap();
    let mut attestations = Vec::new();
    for r in &a.replicas {
        let device = SoftHsm::from_seed(200 + r.id);
        let key = device.key("device", KeyKind::Signing).unwrap();
        let cert = certify_device(
            &vendor,
            root,
            "vendor",
            &format!("hsm-{}", r.id),
            device.public_key(key).unwrap(),
        )
        .unwrap();
        attestations.push(attest(&device, key, cert, a, r.id, FIRMWARE).unwrap());
    }
    let mut ceremony = Ceremony {
        artifact_digest: a.digest().unwrap(),
        firmware: a.replicas.iter().map(|r| (r.id, FIRMWARE)).collect(),
        threshold: 2,
        signatures: vec![],
    };
    let officers: Vec<SoftHsm> = (0..3).map(|i| SoftHsm::from_seed(300 + i)).collect();
    let msg = ceremony.signed_bytes().unwrap();
    for (i, o) in officers.iter().enumerate().take(2) {
        let k = o.key("officer", KeyKind::Signing).unwrap();
        ceremony
            .signatures
            .push((format!("officer-{i}"), o.sign(k, &msg).unwrap()));
    }
    let pins = AuditPins {
        vendor_roots: vec![("vendor".into(), vendor.public_key(root).unwrap())],
        officers: officers
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let k = o.key("officer", KeyKind::Signing).unwrap();
                (format!("officer-{i}"), o.public_key(k).unwrap())
            })
            .collect(),
        threshold: 2,
    };
    Deployment {
        evidence: Evidence {
            bundle: b"bundle".to_vec(),
            attestations,
            ceremony,
        },
        pins,
        officers,
    }
}

fn failures(steps: &[Step]) -> Vec<Finding> {
    steps
        .iter()
        .filter_map(|s| s.outcome.clone().err())
        .collect()
}

#[test]
fn an_honest_deployment_passes_every_step() {
    let a = artifact();
    let d = deployment(&a);
    let steps = audit_deployment(&d.evidence, &a, &d.pins);
    // The list, one step per replica, the ceremony.
    assert_eq!(steps.len(), 5);
    assert_eq!(failures(&steps), vec![]);
    // And the evidence survives its encoding.
    let bytes = d.evidence.encode().unwrap();
    assert_eq!(Evidence::decode(&bytes).unwrap(), d.evidence);
}

#[test]
fn each_kind_of_tampering_has_its_own_finding() {
    let a = artifact();
    let honest = deployment(&a);
    let check = |e: &Evidence, pins: &AuditPins| failures(&audit_deployment(e, &a, pins));

    let mut e = honest.evidence.clone();
    e.attestations.remove(1);
    assert_eq!(check(&e, &honest.pins), vec![Finding::NoAttestation]);

    let mut e = honest.evidence.clone();
    e.attestations[1].replica = 9;
    assert_eq!(
        check(&e, &honest.pins),
        vec![
            Finding::AttestationList {
                not_in_fleet: 1,
                duplicated: false
            },
            Finding::NoAttestation
        ]
    );

    let mut pins = honest.pins.clone();
    pins.vendor_roots[0].0 = "another vendor".into();
    assert_eq!(
        check(&honest.evidence, &pins),
        vec![Finding::VendorNotPinned("vendor".into()); 3]
    );

    let mut e = honest.evidence.clone();
    e.attestations[0].certificate.device = "hsm-forged".into();
    assert_eq!(
        check(&e, &honest.pins),
        vec![Finding::CertificateNotSigned("vendor".into())]
    );

    // Replica 2's keys attested by replica 1's device.
    let mut e = honest.evidence.clone();
    e.attestations[1].certificate = e.attestations[0].certificate.clone();
    e.attestations[1].signature = e.attestations[0].signature;
    assert_eq!(check(&e, &honest.pins), vec![Finding::StatementNotBound]);

    // Replica 1's device attests replica 2 too: one HSM would hold two shares.
    let device = SoftHsm::from_seed(201);
    let key = device.key("device", KeyKind::Signing).unwrap();
    let cert = honest.evidence.attestations[0].certificate.clone();
    let mut e = honest.evidence.clone();
    e.attestations[1] = attest(&device, key, cert, &a, 2, FIRMWARE).unwrap();
    assert_eq!(check(&e, &honest.pins), vec![Finding::DeviceReused]);

    let mut e = honest.evidence.clone();
    e.ceremony.firmware[2].1 = [8; 32];
    let found = check(&e, &honest.pins);
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(found[0], Finding::FirmwareMismatch);
    assert!(matches!(
        &found[1],
        Finding::OfficersRefused { refused } if refused.iter().all(|r| r.problem == OfficerProblem::BadSignature)
    ));

    let mut e = honest.evidence.clone();
    e.ceremony.firmware.push((1, FIRMWARE));
    assert!(check(&e, &honest.pins).contains(&Finding::FirmwareListedTwice));

    let mut e = honest.evidence.clone();
    e.ceremony.artifact_digest = [0; 32];
    assert_eq!(
        check(&e, &honest.pins),
        vec![Finding::CeremonyOtherArtifact]
    );

    let mut e = honest.evidence.clone();
    e.ceremony.signatures[1].1[0] ^= 1;
    assert_eq!(
        check(&e, &honest.pins),
        vec![Finding::OfficersRefused {
            refused: vec![OfficerRefusal {
                name: "officer-1".into(),
                problem: OfficerProblem::BadSignature
            }]
        }]
    );

    let mut e = honest.evidence.clone();
    e.ceremony.signatures.push(e.ceremony.signatures[0].clone());
    assert_eq!(
        check(&e, &honest.pins),
        vec![Finding::OfficersRefused {
            refused: vec![OfficerRefusal {
                name: "officer-0".into(),
                problem: OfficerProblem::SignedTwice
            }]
        }]
    );

    let mut e = honest.evidence.clone();
    e.ceremony.signatures.truncate(1);
    assert_eq!(
        check(&e, &honest.pins),
        vec![Finding::TooFewOfficers {
            valid: 1,
            needed: 2
        }]
    );

    // Two names pinned to one officer's key count once.
    let mut pins = honest.pins.clone();
    pins.officers[1].1 = pins.officers[0].1;
    let mut e = honest.evidence.clone();
    let k = honest.officers[0].key("officer", KeyKind::Signing).unwrap();
    e.ceremony.signatures[1].1 = honest.officers[0]
        .sign(k, &e.ceremony.signed_bytes().unwrap())
        .unwrap();
    assert_eq!(
        check(&e, &pins),
        vec![Finding::OfficersRefused {
            refused: vec![OfficerRefusal {
                name: "officer-1".into(),
                problem: OfficerProblem::SharedKey
            }]
        }]
    );
}

#[test]
fn attesting_a_replica_outside_the_artifact_is_refused() {
    let a = artifact();
    let device = SoftHsm::from_seed(9);
    let key = device.key("device", KeyKind::Signing).unwrap();
    let honest = deployment(&a);
    let cert = honest.evidence.attestations[0].certificate.clone();
    assert!(matches!(
        attest(&device, key, cert, &a, 4, FIRMWARE),
        Err(AttestationError::NotInArtifact(4))
    ));
}
