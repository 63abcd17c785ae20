//! The witness's log in public, over loopback HTTP: a log server, two
//! cosigners (C2SP tlog-witness) and clients.
//!
//! * epochs are submitted by the operator, witnessed, cosigned by both
//!   cosigners, fetched and verified (by our walk, by `FleetVerifier` with 2
//!   of 2 cosigners, and by independent crates: `signed_note`, `tlog_tiles`);
//! * a submission not signed by the operator is refused with 401 and leaves
//!   no entry;
//! * a cosigner refuses a forked and a rolled-back log with the status codes
//!   tlog-witness fixes, and keeps refusing after a restart;
//! * a client refuses a checkpoint without enough cosignatures;
//! * the split-view check catches a bundle from a forked log.

// A test of servers over real sockets reads the clock and sleeps.
#![allow(clippy::disallowed_methods)]

use crate::common;

use std::time::{Duration, Instant};

use common::{
    now, open_witness, sign_checkpoint, submission, url_of, NS, OPERATOR_KEY, WITNESS_KEY,
};
use signed_note::{Note, StandardVerifier, VerifierList};
use tlog_tiles::{Tile, TileHashReader, TileReader};
use vaultfleet::hsm::{Hsm, KeyKind, SoftHsm};
use vaultfleet_audit::cosigner::{AddCheckpoint, Cosigner, FollowedLog};
use vaultfleet_audit::fleet::FleetArtifact;
use vaultfleet_audit::note::NoteVerifier;
use vaultfleet_audit::submission::Receipt;
use vaultfleet_audit::tiles::TILE_HEIGHT;
use vaultfleet_audit::witness::countersign;
use vaultfleet_audit::{
    Bundle, BundleError, Checkpoint, CosignerKey, FleetVerifier, SignedNote, Witness, WitnessKey,
};
use vaultfleet_tlog::submit::{submit, SubmitError};
use vaultfleet_tlog::walk::{
    block_on, bundle_in_log, extends, fetch_verified_log, fetch_verified_tree, FetchedLog,
    SplitView,
};
use vaultfleet_tlog::{BaseUrl, CosignerEndpoint, CosignerServer, LogConfig, LogServer};

/// The fleet's artifact of `epoch`.
fn artifact(epoch: u64) -> FleetArtifact {
    common::artifact(epoch, epoch as u8)
}

fn local() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

struct Fleet {
    dir: tempfile::TempDir,
    witness_hsm: SoftHsm,
    operator: SoftHsm,
    log_key: NoteVerifier,
    cosigner_hsms: [SoftHsm; 2],
    cosigner_keys: Vec<CosignerKey>,
    cosigners: Vec<Option<CosignerServer>>,
    log: LogServer,
}

fn cosigner_name(i: usize) -> String {
    format!("cosigner-{i}.example")
}

fn open_cosigner(
    hsm: &SoftHsm,
    i: usize,
    dir: &std::path::Path,
    log_key: &NoteVerifier,
) -> Cosigner<SoftHsm> {
    Cosigner::open(
        hsm.clone(),
        "cosigner",
        &cosigner_name(i),
        vec![FollowedLog {
            origin: NS.into(),
            keys: vec![log_key.clone()],
        }],
        dir.join(format!("cosigner-{i}.state")),
    )
    .unwrap()
}

fn start() -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let witness_hsm = SoftHsm::from_seed(0x51);
    let witness = open_witness(witness_hsm.clone(), &dir.path().join("witness.state"));
    let log_key =
        NoteVerifier::ed25519(WITNESS_KEY, witness.public_key(WITNESS_KEY).unwrap()).unwrap();
    let operator = SoftHsm::from_seed(0x52);
    let operator_key = operator
        .public_key(operator.key(OPERATOR_KEY, KeyKind::Signing).unwrap())
        .unwrap();
    let cosigner_hsms = [SoftHsm::from_seed(0x61), SoftHsm::from_seed(0x62)];
    let mut cosigners = Vec::new();
    let mut endpoints = Vec::new();
    let mut cosigner_keys = Vec::new();
    for (i, hsm) in cosigner_hsms.iter().enumerate() {
        let c = open_cosigner(hsm, i, dir.path(), &log_key);
        let key = c.verifier().clone();
        cosigner_keys.push(CosignerKey {
            name: cosigner_name(i),
            public_key: c.public_key(),
        });
        let server = CosignerServer::start(c, local()).unwrap();
        endpoints.push(CosignerEndpoint {
            url: url_of(server.local_addr()),
            key,
        });
        cosigners.push(Some(server));
    }
    let mut config = LogConfig::new(local(), operator_key);
    config.cosigners = endpoints;
    config.checkpoints_dir = Some(dir.path().join("checkpoints"));
    config.cosign_retry = Duration::from_millis(200);
    let log = LogServer::start(witness, config).unwrap();
    Fleet {
        dir,
        witness_hsm,
        operator,
        log_key,
        cosigner_hsms,
        cosigner_keys,
        cosigners,
        log,
    }
}

impl Fleet {
    fn url(&self) -> BaseUrl {
        url_of(self.log.local_addr())
    }

    fn submit(&self, a: &FleetArtifact) -> Result<Receipt, SubmitError> {
        let signed = submission(&self.operator, a.epoch, a.digest().unwrap());
        block_on(submit(
            &self.url(),
            &signed,
            std::slice::from_ref(&self.log_key),
        ))
        .unwrap()
    }

    fn fetch(&self) -> FetchedLog {
        block_on(fetch_verified_log(
            &self.url(),
            NS,
            std::slice::from_ref(&self.log_key),
            1000,
        ))
        .unwrap()
        .unwrap()
    }

    /// Fetches until the served checkpoint has `size` entries and `n`
    /// cosignatures (cosigning runs in the background; bounded wait).
    fn fetch_cosigned(&self, size: u64, n: usize) -> FetchedLog {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = self.fetch();
            let cosigs = log
                .note
                .signatures
                .iter()
                .filter(|s| s.name.starts_with("cosigner-"))
                .count();
            if log.checkpoint.size == size && cosigs >= n {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "the served checkpoint never reached size {size} with {n} cosignatures (has {} with {cosigs})",
                log.checkpoint.size
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The bundle a vault would carry for `a`, built from the served log.
    fn bundle(&self, a: &FleetArtifact, receipt: &Receipt, log: &FetchedLog) -> Vec<u8> {
        let cs = countersign(&self.operator, OPERATOR_KEY, &receipt.witnessed).unwrap();
        let proof = log
            .tree
            .inclusion_proof(receipt.witnessed.leaf_index, log.tree.size())
            .unwrap();
        Bundle::assemble(
            a.encode().unwrap(),
            &receipt.witnessed,
            cs,
            proof,
            &log.note,
        )
        .encode()
        .unwrap()
    }

    fn verifier(&self, need: usize) -> FleetVerifier {
        let w = WitnessKey {
            name: WITNESS_KEY.into(),
            public_key: self.log_key_bytes(),
            not_before: 0,
        };
        let operator_key = self
            .operator
            .public_key(self.operator.key(OPERATOR_KEY, KeyKind::Signing).unwrap())
            .unwrap();
        let v = FleetVerifier::new(NS, vec![w], operator_key);
        if need == 0 {
            return v;
        }
        v.require_cosigners(need, self.cosigner_keys.clone())
            .unwrap()
    }

    fn log_key_bytes(&self) -> [u8; 32] {
        self.witness_hsm
            .public_key(
                self.witness_hsm
                    .key(&format!("witness/{WITNESS_KEY}"), KeyKind::Signing)
                    .unwrap(),
            )
            .unwrap()
    }

    /// A checkpoint of `NS` at (`size`, `root`), signed with the witness's key.
    fn sign_checkpoint(&self, size: u64, root: &[u8; 32]) -> SignedNote {
        sign_checkpoint(&self.witness_hsm, size, root)
    }

    /// A log signed by the witness's key on a history of its own (its
    /// state in `dir`): a fork.
    fn twin(&self, dir: &tempfile::TempDir) -> Witness<SoftHsm> {
        open_witness(self.witness_hsm.clone(), &dir.path().join("witness.state"))
    }

    fn cosigner_url(&self, i: usize) -> BaseUrl {
        let s = self.cosigners[i].as_ref().unwrap();
        url_of(s.local_addr())
    }
}

/// POSTs to the cosigner at `url` an add-checkpoint request (C2SP
/// tlog-witness) of `checkpoint`, claiming `old_size` with `proof`: (the
/// status, the body, its content type).
fn add_checkpoint(
    url: &BaseUrl,
    old_size: u64,
    proof: Vec<[u8; 32]>,
    checkpoint: SignedNote,
) -> (u16, String, Option<String>) {
    let body = AddCheckpoint {
        old_size,
        proof,
        checkpoint,
    }
    .encode();
    let r = block_on(url.post(
        "/add-checkpoint",
        "text/plain",
        body.into_bytes(),
        1 << 16,
        Duration::from_secs(5),
    ))
    .unwrap()
    .unwrap();
    (r.status, r.text().unwrap_or("").to_string(), r.content_type)
}

/// A tlog-tiles reader over HTTP, for the independent `tlog_tiles` crate.
struct HttpTiles {
    url: BaseUrl,
}

impl TileReader for HttpTiles {
    fn height(&self) -> u8 {
        TILE_HEIGHT
    }

    fn read_tiles(&self, tiles: &[Tile]) -> Result<Vec<Vec<u8>>, tlog_tiles::Error> {
        tiles
            .iter()
            .map(|t| {
                // tlog_tiles writes Go's sumdb paths (`tile/8/L/N`, `tile/8/data/N`);
                // C2SP drops the height: `tile/L/N`, `tile/entries/N`.
                let go = t.path();
                let rest = go.strip_prefix("tile/8/").expect("height-8 tiles");
                let path = match rest.strip_prefix("data/") {
                    Some(n) => format!("/{NS}/tile/entries/{n}"),
                    None => format!("/{NS}/tile/{rest}"),
                };
                let r = block_on(self.url.get(&path, 1 << 24, Duration::from_secs(5)))
                    .unwrap()
                    .unwrap();
                assert_eq!(r.status, 200, "{path}");
                Ok(r.body.to_vec())
            })
            .collect()
    }

    fn save_tiles(&self, _tiles: &[Tile], _data: &[Vec<u8>]) {}
}

#[test]
fn epochs_are_witnessed_cosigned_served_and_verified_by_us_and_by_independent_code() {
    let fleet = start();
    let mut receipts = Vec::new();
    for epoch in 1..=3 {
        let a = artifact(epoch);
        let r = fleet.submit(&a).unwrap();
        assert_eq!(r.witnessed.leaf_index, epoch - 1);
        receipts.push((a, r));
    }
    let log = fleet.fetch_cosigned(3, 2);
    assert_eq!(log.entries.len(), 3);
    for (e, (a, _)) in log.entries.iter().zip(&receipts) {
        assert_eq!(e.statement.digest, a.digest().unwrap());
    }
    // Our verifier, pinned to both cosigners and wanting both.
    let (a, r) = &receipts[2];
    let bundle = fleet.bundle(a, r, &log);
    let mut v = fleet.verifier(2);
    v.verify(&bundle, now(), 1).unwrap();
    bundle_in_log(&Bundle::decode(&bundle).unwrap(), &log).unwrap();

    // signed_note (crates.io) verifies the served checkpoint's log signature.
    let served = log.note.encode();
    let note = Note::from_bytes(served.as_bytes()).unwrap();
    let verifier = StandardVerifier::new(&fleet.log_key.vkey()).unwrap();
    note.verify(&VerifierList::new(vec![Box::new(verifier)]))
        .unwrap();
    // tlog_tiles (crates.io) parses the checkpoint and, reading our hash tiles
    // over HTTP, computes the same root and proves our leaves in it.
    let cp = tlog_tiles::Checkpoint::from_bytes(note.text()).unwrap();
    assert_eq!((cp.origin(), cp.size()), (NS, 3));
    assert_eq!(cp.hash().0, log.checkpoint.root);
    let tiles = HttpTiles { url: fleet.url() };
    let reader = TileHashReader::new(cp.size(), *cp.hash(), &tiles);
    assert_eq!(
        tlog_tiles::tree_hash(cp.size(), &reader).unwrap().0,
        log.checkpoint.root
    );
    // ... and consistency: from the tree of size 1 to the served one.
    let old = tlog_tiles::Hash(log.tree.root_at(1).unwrap());
    let proof = tlog_tiles::prove_tree(cp.size(), 1, &reader).unwrap();
    tlog_tiles::check_tree(&proof, cp.size(), *cp.hash(), 1, old).unwrap();
    assert!(
        tlog_tiles::check_tree(&proof, cp.size(), *cp.hash(), 1, tlog_tiles::Hash([7; 32]))
            .is_err()
    );

    // A client that accepted the size-1 checkpoint asks the log (hash tiles
    // only) whether the served one extends it; a forked size-1 root is refused.
    let served = block_on(fetch_verified_tree(
        &fleet.url(),
        NS,
        std::slice::from_ref(&fleet.log_key),
        1000,
    ))
    .unwrap()
    .unwrap();
    assert_eq!(served.tree.root(), log.checkpoint.root);
    let proof = extends(&served, 1, &log.tree.root_at(1).unwrap()).unwrap();
    assert_eq!((proof.from_size, proof.to_size), (1, 3));
    assert!(matches!(
        extends(&served, 1, &[7; 32]),
        Err(SplitView::Forked { size: 1 })
    ));
    assert!(matches!(
        extends(&served, 4, &[7; 32]),
        Err(SplitView::AheadOfLog { .. })
    ));
    for i in 0..3 {
        let proof = tlog_tiles::prove_record(cp.size(), i, &reader).unwrap();
        let leaf = tlog_tiles::Hash(log.tree.leaf_hashes()[i as usize]);
        tlog_tiles::check_record(&proof, cp.size(), *cp.hash(), i, leaf).unwrap();
    }

    // The cosigners' monitoring endpoint serves what they cosigned.
    for i in 0..2 {
        let hash = vaultfleet_audit::cosigner::origin_hash_hex(NS);
        let r = block_on(fleet.cosigner_url(i).get(
            &format!("/{hash}/checkpoint"),
            1 << 16,
            Duration::from_secs(5),
        ))
        .unwrap()
        .unwrap();
        assert_eq!(r.status, 200);
        let n = SignedNote::parse(r.text().unwrap()).unwrap();
        assert_eq!(Checkpoint::parse(&n.text).unwrap().size, 3);
    }
    // The cosigned checkpoint is kept on disk too.
    let kept = std::fs::read_dir(fleet.dir.path().join("checkpoints"))
        .unwrap()
        .count();
    assert!(kept >= 1);
}

#[test]
fn a_submission_not_signed_by_the_operator_is_refused_with_401_and_leaves_no_entry() {
    let fleet = start();
    fleet.submit(&artifact(1)).unwrap();
    let stranger = SoftHsm::from_seed(0x99);
    let a = artifact(2);
    let forged = submission(&stranger, 2, a.digest().unwrap());
    match block_on(submit(
        &fleet.url(),
        &forged,
        std::slice::from_ref(&fleet.log_key),
    ))
    .unwrap()
    {
        Err(SubmitError::Refused { status: 401, .. }) => {}
        other => panic!("a stranger's submission: {other:?}"),
    }
    // Garbage is refused the same way.
    let r = block_on(fleet.url().post(
        "/submit",
        "application/octet-stream",
        b"junk".to_vec(),
        4096,
        Duration::from_secs(5),
    ))
    .unwrap()
    .unwrap();
    assert_eq!(r.status, 401);
    // A replay of the operator's accepted submission is refused by the rules.
    let replay = submission(&fleet.operator, 1, artifact(1).digest().unwrap());
    assert!(matches!(
        block_on(submit(
            &fleet.url(),
            &replay,
            std::slice::from_ref(&fleet.log_key)
        ))
        .unwrap(),
        Err(SubmitError::Refused { status: 409, .. })
    ));
    assert_eq!(fleet.fetch().checkpoint.size, 1);
}

#[test]
fn a_cosigner_refuses_forked_and_rolled_back_logs_with_the_spec_status_codes_and_keeps_refusing_after_a_restart(
) {
    let mut fleet = start();
    for epoch in 1..=3 {
        fleet.submit(&artifact(epoch)).unwrap();
    }
    let genuine = fleet.fetch_cosigned(3, 2);

    // A forked witness: the same key, another history.
    let fork_dir = tempfile::tempdir().unwrap();
    let mut twin = fleet.twin(&fork_dir);
    for epoch in 1..=4 {
        let mut a = artifact(epoch);
        a.fleet_id = "evil-fleet".into();
        twin.sign(NS, epoch, a.digest().unwrap(), now()).unwrap();
    }
    let twin_tree = twin.tree(NS).unwrap().clone();
    let fork4 = twin.checkpoint(NS, now()).unwrap();
    let url = fleet.cosigner_url(0);

    // "If the old size matches the checkpoint size, the witness MUST check that
    // the root hashes are also identical. If they don't match, the witness MUST
    // respond with a "422 Unprocessable Entity" HTTP status code."
    // The fork at size 3: its 3-entry prefix's checkpoint, signed by hand.
    let same_size = fleet.sign_checkpoint(3, &twin_tree.root_at(3).unwrap());
    let (status, _, _) = add_checkpoint(&url, 3, vec![], same_size.clone());
    assert_eq!(status, 422, "a fork at the same size");

    // A forked size-4 checkpoint with the fork's own proof from 3: the proof
    // does not link the cosigned root at 3 → 422.
    let (status, _, _) = add_checkpoint(&url, 3, twin_tree.consistency_proof(3, 4).unwrap(), fork4);
    assert_eq!(status, 422, "a fork that extends the wrong tree");

    // Rollback: a smaller checkpoint. "The old size MUST be equal to or lower
    // than the checkpoint size. Otherwise, the witness MUST respond with a
    // "400 Bad Request" HTTP status code."
    let old2 = fleet.sign_checkpoint(2, &genuine.tree.root_at(2).unwrap());
    let (status, _, _) = add_checkpoint(&url, 3, vec![], old2.clone());
    assert_eq!(status, 400, "old size above the checkpoint's");
    // ... and claiming an old size of 2: "If it doesn't match, the witness MUST
    // respond with a "409 Conflict" HTTP status code. The response body MUST
    // consist of the tree size of the latest cosigned checkpoint in decimal,
    // followed by a newline (U+000A). The response MUST have a `Content-Type`
    // of `text/x.tlog.size`."
    let (status, body, content_type) = add_checkpoint(&url, 2, vec![], old2);
    assert_eq!((status, body.as_str()), (409, "3\n"));
    assert_eq!(content_type.as_deref(), Some("text/x.tlog.size"));

    // "If the checkpoint origin is unknown, the witness MUST respond with a
    // "404 Not Found" HTTP status code."
    let other = twin.checkpoint(NS, now()).unwrap();
    let renamed = SignedNote {
        text: other.text.replacen(NS, "other.log", 1),
        signatures: other.signatures.clone(),
    };
    let (status, _, _) = add_checkpoint(&url, 0, vec![], renamed);
    assert_eq!(status, 404);
    // "The witness MUST respond with a "403 Forbidden" HTTP status code if
    // either no signature from a trusted key for the origin is present, ..."
    let stranger = SoftHsm::from_seed(0x77);
    let sk = stranger.key("log", KeyKind::Signing).unwrap();
    let unsigned = SignedNote {
        signatures: vec![vaultfleet_audit::note::sign_note(
            &stranger,
            sk,
            "stranger",
            &genuine.note.text,
        )
        .unwrap()],
        text: genuine.note.text.clone(),
    };
    let (status, _, _) = add_checkpoint(&url, 3, vec![], unsigned);
    assert_eq!(status, 403);

    // After a restart from its state file, the cosigner still refuses the fork.
    fleet.cosigners[0].take().unwrap().shutdown();
    let reopened = open_cosigner(&fleet.cosigner_hsms[0], 0, fleet.dir.path(), &fleet.log_key);
    assert_eq!(reopened.latest_size(NS), 3);
    let server = CosignerServer::start(reopened, local()).unwrap();
    let url = url_of(server.local_addr());
    let (status, _, _) = add_checkpoint(&url, 3, vec![], same_size);
    assert_eq!(status, 422, "the fork after a restart");
    fleet.cosigners[0] = Some(server);
}

#[test]
fn a_client_refuses_a_checkpoint_without_enough_cosignatures() {
    let mut fleet = start();
    let a1 = artifact(1);
    let r1 = fleet.submit(&a1).unwrap();
    let log = fleet.fetch_cosigned(1, 2);
    let mut v = fleet.verifier(2);
    v.verify(&fleet.bundle(&a1, &r1, &log), now(), 1).unwrap();

    // One cosigner goes away: epoch 2's checkpoint gets one cosignature.
    fleet.cosigners[1].take().unwrap().shutdown();
    let a2 = artifact(2);
    let r2 = fleet.submit(&a2).unwrap();
    let log = fleet.fetch_cosigned(2, 1);
    let bundle = fleet.bundle(&a2, &r2, &log);
    match v.verify(&bundle, now(), 1) {
        Err(BundleError::TooFewCosignatures {
            have: 1,
            need: 2,
            missing,
            ..
        }) => {
            assert_eq!(missing, vec![cosigner_name(1)]);
        }
        other => panic!("a checkpoint with 1 of 2 cosignatures: {other:?}"),
    }
    // A client that wants one of the two accepts it.
    fleet.verifier(1).verify(&bundle, now(), 1).unwrap();
}

#[test]
fn the_split_view_check_catches_a_bundle_from_a_forked_log() {
    let fleet = start();
    let a1 = artifact(1);
    fleet.submit(&a1).unwrap();
    let a2 = artifact(2);
    fleet.submit(&a2).unwrap();
    let log = fleet.fetch_cosigned(2, 2);

    // The witness's key, misused on a second history shown to one client:
    // epoch 2 there is another fleet.
    let fork_dir = tempfile::tempdir().unwrap();
    let mut twin = fleet.twin(&fork_dir);
    twin.sign(NS, 1, a1.digest().unwrap(), now()).unwrap();
    let mut evil = artifact(2);
    evil.fleet_id = "evil-fleet".into();
    let w = twin.sign(NS, 2, evil.digest().unwrap(), now()).unwrap();
    let tree = twin.tree(NS).unwrap();
    let cp = twin.checkpoint(NS, now()).unwrap();
    let cs = countersign(&fleet.operator, OPERATOR_KEY, &w).unwrap();
    let forked = Bundle::assemble(
        evil.encode().unwrap(),
        &w,
        cs,
        tree.inclusion_proof(1, 2).unwrap(),
        &cp,
    );
    // Its signatures all hold (a verifier that wants no cosignature takes it) ...
    fleet
        .verifier(0)
        .verify(&forked.encode().unwrap(), now(), 1)
        .unwrap();
    // ... but it is not in the served log.
    assert!(matches!(
        bundle_in_log(&forked, &log),
        Err(SplitView::Forked { size: 2 })
    ));
    // Nor does a verifier wanting cosignatures take it: no cosigner saw it.
    assert!(matches!(
        fleet
            .verifier(1)
            .verify(&forked.encode().unwrap(), now(), 1),
        Err(BundleError::TooFewCosignatures { .. })
    ));
}
