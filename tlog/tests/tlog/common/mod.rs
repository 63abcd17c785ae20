//! What the tlog crate's integration tests share: the namespace, the
//! clock, fleet artifacts to log, the witness (its key `witness-1` in a
//! seeded soft HSM), operator submissions and checkpoints signed by hand.
// Each test file uses its own part of it; the clock is the real one (servers
// over real sockets date their checkpoints).
#![allow(dead_code, clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::path::Path;

use vaultfleet::hsm::{Hsm, KeyKind, SoftHsm};
use vaultfleet_audit::fleet::{FleetArtifact, ReplicaKeys};
use vaultfleet_audit::note::sign_note;
use vaultfleet_audit::submission::{SignedSubmission, Submission};
use vaultfleet_audit::{Checkpoint, SignedNote, Witness, WitnessKeySpec};
use vaultfleet_tlog::BaseUrl;

/// The log's origin (the fleet's namespace).
pub const NS: &str = "example.vault.fleet_keys.v1";
/// The witness's key name.
pub const WITNESS_KEY: &str = "witness-1";
/// The HSM label of the operator's countersigning (and submitting) key.
pub const OPERATOR_KEY: &str = "operator/countersign";

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A three-replica artifact of `epoch` whose keys are made from `k` (two
/// values of `k` give two fleets), valid from an hour ago for a year.
pub fn artifact(epoch: u64, k: u8) -> FleetArtifact {
    let t = now();
    FleetArtifact {
        fleet_id: "example-fleet".into(),
        epoch,
        replicas: (1..=3u64)
            .map(|id| ReplicaKeys {
                id,
                datacenter: ["dc-a", "dc-b", "dc-c"][id as usize - 1].into(),
                response_key: [k.wrapping_add(id as u8); 32],
                transport_key: [0x40u8.wrapping_add(k).wrapping_add(id as u8); 32],
                opaque_key: [0x80u8.wrapping_add(k); 32],
            })
            .collect(),
        voters: vec![1, 2, 3],
        learners: vec![],
        not_before: t - 3600,
        not_after: t + 365 * 86_400,
    }
}

/// The witness with the key [`WITNESS_KEY`] in `hsm`, its log in `state`.
pub fn open_witness(hsm: SoftHsm, state: &Path) -> Witness<SoftHsm> {
    Witness::open(
        hsm,
        vec![WitnessKeySpec {
            name: WITNESS_KEY.into(),
            not_before: 0,
        }],
        state,
    )
    .unwrap()
}

/// A submission of `digest` for `epoch`, sent now, signed with the key
/// [`OPERATOR_KEY`] in `hsm`.
pub fn submission(hsm: &SoftHsm, epoch: u64, digest: [u8; 32]) -> SignedSubmission {
    Submission {
        namespace: NS.into(),
        epoch,
        digest,
        sent_at: now(),
    }
    .sign(hsm, OPERATOR_KEY)
    .unwrap()
}

/// A checkpoint of [`NS`] at (`size`, `root`), signed with the witness's
/// key in `hsm`.
pub fn sign_checkpoint(hsm: &SoftHsm, size: u64, root: &[u8; 32]) -> SignedNote {
    let body = Checkpoint {
        origin: NS.into(),
        size,
        root: *root,
        extensions: vec![],
    }
    .body();
    let key = hsm
        .key(&format!("witness/{WITNESS_KEY}"), KeyKind::Signing)
        .unwrap();
    let sig = sign_note(hsm, key, WITNESS_KEY, &body).unwrap();
    SignedNote {
        text: body,
        signatures: vec![sig],
    }
}

/// The base URL of a server listening at `addr`.
pub fn url_of(addr: SocketAddr) -> BaseUrl {
    BaseUrl::parse(&format!("http://{addr}")).unwrap()
}
