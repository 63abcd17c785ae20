//! The tlog-witness cosigner against the C2SP spec (<https://c2sp.org/tlog-witness>):
//! each status the spec fixes, with its sentence quoted; rollback and fork
//! refused, also after a reopen; a crash between persist and reply; a tampered
//! state refused at open; cosignatures checked with `NoteVerifier::cosignature`.

use std::path::{Path, PathBuf};

use vaultfleet::hsm::{Hsm, KeyKind};
use vaultfleet::SoftHsm;
use vaultfleet_audit::cosigner::{
    merge_cosignatures, origin_hash_hex, parse_tlog_size, AddCheckpoint, Cosigner, CosignerError,
    FollowedLog, Refusal, CONTENT_TYPE_TLOG_SIZE, PROOF_LINES_MAX,
};
use vaultfleet_audit::merkle::{empty_root, Hash, MerkleTree};
use vaultfleet_audit::note::{cosign, sign_note, Checkpoint, NoteError, NoteVerifier, SignedNote};

const ORIGIN: &str = "example.vault.fleet_keys.v1";
const NAME: &str = "witness.example/w1";
const NOW: u64 = 1_700_000_000;

/// A log: its key, and a tree it can sign checkpoints of at any size.
struct Log {
    hsm: SoftHsm,
    tree: MerkleTree,
    origin: String,
}

impl Log {
    fn new(seed: u64, origin: &str, leaves: u32, salt: u8) -> Self {
        let mut tree = MerkleTree::new();
        for i in 0..leaves {
            let mut leaf = i.to_be_bytes().to_vec();
            leaf.push(salt);
            tree.append(&leaf);
        }
        Self {
            hsm: SoftHsm::from_seed(seed),
            tree,
            origin: origin.to_string(),
        }
    }

    fn verifier(&self) -> NoteVerifier {
        let k = self.hsm.key("log", KeyKind::Signing).unwrap();
        NoteVerifier::ed25519(&self.origin, self.hsm.public_key(k).unwrap()).unwrap()
    }

    fn note_with_root(&self, size: u64, root: Hash) -> SignedNote {
        let text = Checkpoint {
            origin: self.origin.clone(),
            size,
            root,
            extensions: vec![],
        }
        .body();
        let k = self.hsm.key("log", KeyKind::Signing).unwrap();
        SignedNote {
            signatures: vec![sign_note(&self.hsm, k, &self.origin, &text).unwrap()],
            text,
        }
    }

    fn note(&self, size: u64) -> SignedNote {
        self.note_with_root(size, self.tree.root_at(size).unwrap())
    }

    fn request(&self, old: u64, size: u64) -> AddCheckpoint {
        AddCheckpoint {
            old_size: old,
            proof: self.tree.consistency_proof(old, size).unwrap(),
            checkpoint: self.note(size),
        }
    }

    fn body(&self, old: u64, size: u64) -> Vec<u8> {
        self.request(old, size).encode().into_bytes()
    }

    fn followed(&self) -> FollowedLog {
        FollowedLog {
            origin: self.origin.clone(),
            keys: vec![self.verifier()],
        }
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    state: PathBuf,
    hsm: SoftHsm,
    log: Log,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self {
            state: dir.path().join("cosigner.state"),
            _dir: dir,
            hsm: SoftHsm::from_seed(77),
            log: Log::new(1, ORIGIN, 40, 0),
        }
    }

    fn open(&self) -> Result<Cosigner<SoftHsm>, CosignerError> {
        open_at(&self.hsm, &self.state, vec![self.log.followed()])
    }
}

fn open_at(
    hsm: &SoftHsm,
    state: &Path,
    logs: Vec<FollowedLog>,
) -> Result<Cosigner<SoftHsm>, CosignerError> {
    Cosigner::open(hsm.clone(), "cosigner/w1", NAME, logs, state)
}

fn status(r: Result<String, Refusal>) -> u16 {
    match r {
        Ok(_) => 200,
        Err(e) => e.status(),
    }
}

/// Checks a 200 body: one `— name base64` line that verifies as a
/// `cosignature/v1` by the cosigner's key on `note`, dated `now`.
fn check_cosignature(c: &Cosigner<SoftHsm>, note: &SignedNote, body: &str, now: u64) {
    assert!(body.starts_with("\u{2014} witness.example/w1 ") && body.ends_with('\n'));
    assert_eq!(body.matches('\n').count(), 1);
    let key = NoteVerifier::cosignature(NAME, c.public_key()).unwrap();
    assert_eq!(key, *c.verifier());
    assert_eq!(NoteVerifier::parse_vkey(&c.vkey()).unwrap(), key);
    let (merged, added) = merge_cosignatures(note, body, std::slice::from_ref(&key)).unwrap();
    assert_eq!(added, 1);
    assert!(matches!(key.verify(&merged), Ok(Some(t)) if t == now));
}

#[test]
fn cosigns_a_growing_log_and_serves_the_latest_checkpoint() {
    let s = Setup::new();
    let mut c = s.open().unwrap();
    let hash = origin_hash_hex(ORIGIN);
    // "If the witness has never cosigned a checkpoint for that log, it MUST
    // respond with a "404 Not Found" HTTP status code instead."
    assert_eq!(c.checkpoint_for(&hash), None);

    let body = c.add_checkpoint(&s.log.body(0, 3), NOW).unwrap();
    check_cosignature(&c, &s.log.note(3), &body, NOW);
    let body = c.add_checkpoint(&s.log.body(3, 17), NOW + 5).unwrap();
    check_cosignature(&c, &s.log.note(17), &body, NOW + 5);
    assert_eq!(c.latest_size(ORIGIN), 17);

    // "The response body MUST be a checkpoint for the log identified by the
    // origin, and it MUST include the cosignature(s) from the witness's key(s)
    // that were returned from add-checkpoint and the cosignature from the log
    // key(s) that the witness verified."
    let served = SignedNote::parse(&c.checkpoint_for(&hash).unwrap()).unwrap();
    assert_eq!(served.text, s.log.note(17).text);
    assert!(s.log.verifier().verify(&served).is_ok());
    assert!(matches!(c.verifier().verify(&served), Ok(Some(t)) if t == NOW + 5));
    assert!(served.signatures.iter().any(|l| body == l.line()));
    // "The origin hash is the SHA-256 hash of the log's origin, hex encoded, in lowercase."
    assert_eq!(c.checkpoint_for(&hash.to_uppercase()), None);

    // Sizes equal and the same root (a log's retry): the cosignature given
    // before, from the state (R1-6: no new signature, no write).
    let again = c.add_checkpoint(&s.log.body(17, 17), NOW + 6).unwrap();
    assert_eq!(again, body);
    check_cosignature(&c, &s.log.note(17), &again, NOW + 5);
}

/// R1-6 (attacker review of issue 16): anyone can replay a log's public
/// checkpoint with `old` = its size. Each replay cost an HSM signature and a
/// rewrite of the whole state with two fsyncs, serialised with the log's own
/// requests. Now the stored cosignature is the answer and nothing is written.
#[test]
fn r1_6_a_replayed_checkpoint_is_answered_from_the_state_without_a_write() {
    let s = Setup::new();
    let mut c = s.open().unwrap();
    let first = c.add_checkpoint(&s.log.body(0, 9), NOW).unwrap();
    let before = std::fs::read(&s.state).unwrap();
    let modified = std::fs::metadata(&s.state).unwrap().modified().unwrap();
    for i in 1..=20 {
        assert_eq!(c.add_checkpoint(&s.log.body(9, 9), NOW + i).unwrap(), first);
    }
    assert_eq!(std::fs::read(&s.state).unwrap(), before);
    assert_eq!(
        std::fs::metadata(&s.state).unwrap().modified().unwrap(),
        modified
    );
    // A same-size checkpoint with another text (an extension line) is a new
    // cosignature, persisted.
    let mut note = s.log.note(9);
    let mut cp = Checkpoint::parse(&note.text).unwrap();
    cp.extensions.push("extra".into());
    note.text = cp.body();
    let k = s.log.hsm.key("log", KeyKind::Signing).unwrap();
    note.signatures = vec![sign_note(&s.log.hsm, k, ORIGIN, &note.text).unwrap()];
    let body = AddCheckpoint {
        old_size: 9,
        proof: vec![],
        checkpoint: note,
    }
    .encode();
    let other = c.add_checkpoint(body.as_bytes(), NOW + 30).unwrap();
    assert_ne!(other, first);
    assert_ne!(std::fs::read(&s.state).unwrap(), before);
}

/// R1-3 (attacker review of issue 16): a pinned cosigner answering with many
/// cosignatures of its own (each with another timestamp) pushed the served
/// note past the 100 signatures standard tools read. One line per key is kept.
#[test]
fn r1_3_one_cosignature_per_key_is_merged() {
    let s = Setup::new();
    let mut c = s.open().unwrap();
    let note = s.log.note(5);
    let first = c.add_checkpoint(&s.log.body(0, 5), NOW).unwrap();
    let key = c.verifier().clone();
    let k = s.hsm.key("cosigner/w1", KeyKind::Signing).unwrap();
    let mut answer = first.clone();
    for t in 1..=150 {
        answer.push_str(&cosign(&s.hsm, k, NAME, &note.text, NOW + t).unwrap().line());
    }
    let (merged, added) = merge_cosignatures(&note, &answer, std::slice::from_ref(&key)).unwrap();
    assert_eq!((added, merged.signatures.len()), (1, 2));
}

#[test]
fn the_spec_example_request_parses_and_encodes_back() {
    let example = "old 20852014\n\
PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=\n\
jrJZDmY8Y7SyJE0MWLpLozkIVMSMZcD5kvuKxPC3swk=\n\
5+pKlUdi2LeF/BcMHBn+Ku6yhPGNCswZZD1X/6QgPd8=\n\
/6WVhPs2CwSsb5rYBH5cjHV/wSmA79abXAwhXw3Kj/0=\n\
\n\
example.com/behind-the-sofa\n\
20852163\n\
CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\
\n\
\u{2014} example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n\
\u{2014} example.com/behind-the-sofa opLqBQsREYCgu6xQkYQwJr9fo45a62DN9EdmHXnZdXNqlcVGlCum2Wks+49/V6267UEjw6QUXTS5Rovnzv++qbSzm9Q=\n";
    let r = AddCheckpoint::parse(example.as_bytes()).unwrap();
    assert_eq!(r.old_size, 20852014);
    assert_eq!(r.proof.len(), 4);
    assert_eq!(r.checkpoint.signatures.len(), 2);
    assert_eq!(
        Checkpoint::parse(&r.checkpoint.text).unwrap().size,
        20852163
    );
    assert_eq!(r.encode(), example);
}

#[test]
fn unknown_origin_is_404() {
    let s = Setup::new();
    let mut c = s.open().unwrap();
    // "If the checkpoint origin is unknown, the witness MUST respond with a
    // "404 Not Found" HTTP status code."
    let other = Log::new(1, "other.example/log", 5, 0);
    let r = c.add_checkpoint(&other.body(0, 5), NOW);
    assert!(matches!(&r, Err(Refusal::UnknownOrigin(o)) if o == "other.example/log"));
    assert_eq!(status(r), 404);
}

#[test]
fn unsigned_or_badly_signed_checkpoints_are_403_and_unknown_keys_are_ignored() {
    let s = Setup::new();
    let mut c = s.open().unwrap();
    // "The witness MUST respond with a "403 Forbidden" HTTP status code if
    // either no signature from a trusted key for the origin is present, ..."
    let impostor = Log::new(2, ORIGIN, 40, 0);
    let r = c.add_checkpoint(&impostor.body(0, 4), NOW);
    assert!(matches!(r, Err(Refusal::NotSignedByLog(_))));
    assert_eq!(status(c.add_checkpoint(&impostor.body(0, 4), NOW)), 403);

    // "... or a signature line's key name and ID match a trusted key but the
    // signature itself fails to verify"
    let mut req = s.log.request(0, 4);
    let last = req.checkpoint.signatures[0].payload.len() - 1;
    req.checkpoint.signatures[0].payload[last] ^= 1;
    let r = c.add_checkpoint(req.encode().as_bytes(), NOW);
    assert!(matches!(
        r,
        Err(Refusal::BadLogSignature(NoteError::BadSignature(_)))
    ));
    // Even beside a good signature line from the same key.
    let mut both = s.log.request(0, 4);
    both.checkpoint
        .signatures
        .push(req.checkpoint.signatures[0].clone());
    assert_eq!(status(c.add_checkpoint(both.encode().as_bytes(), NOW)), 403);

    // "it MUST ignore signatures from unknown keys"
    let mut extra = s.log.request(0, 4);
    let foreign = impostor.note(4).signatures[0].clone();
    extra.checkpoint.signatures.insert(0, foreign);
    let body = c.add_checkpoint(extra.encode().as_bytes(), NOW).unwrap();
    check_cosignature(&c, &s.log.note(4), &body, NOW);
    // The served checkpoint keeps only the log signature it verified.
    let served = SignedNote::parse(&c.checkpoint_for(&origin_hash_hex(ORIGIN)).unwrap()).unwrap();
    assert_eq!(served.signatures.len(), 2);
    assert!(impostor.verifier().verify(&served).is_err());
}

#[test]
fn old_size_above_the_checkpoint_and_malformed_bodies_are_400() {
    let s = Setup::new();
    let mut c = s.open().unwrap();
    // "The old size MUST be equal to or lower than the checkpoint size.
    // Otherwise, the witness MUST respond with a "400 Bad Request" HTTP status code."
    let mut req = s.log.request(0, 5);
    req.old_size = 6;
    let r = c.add_checkpoint(req.encode().as_bytes(), NOW);
    assert!(matches!(
        r,
        Err(Refusal::OldSizeAfterCheckpoint {
            old_size: 6,
            size: 5
        })
    ));

    let good = String::from_utf8(s.log.body(0, 5)).unwrap();
    let note = s.log.note(5).encode();
    let hash = "PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=\n";
    let too_many = format!("old 1\n{}\n{note}", hash.repeat(PROOF_LINES_MAX + 1));
    let bad_bodies: Vec<(&str, Vec<u8>)> = vec![
        // "an ASCII decimal with no leading zeroes"
        (
            "leading zero",
            good.replacen("old 0", "old 00", 1).into_bytes(),
        ),
        ("no old line", note.clone().into_bytes()),
        (
            "old without space",
            good.replacen("old 0", "old0", 1).into_bytes(),
        ),
        (
            "signed size",
            good.replacen("old 0", "old +0", 1).into_bytes(),
        ),
        // "The client MUST NOT send more than 63 consistency proof lines."
        ("64 proof lines", too_many.into_bytes()),
        // "Each consistency proof line MUST encode a single hash in base64."
        ("short hash", format!("old 1\nAAAA\n\n{note}").into_bytes()),
        ("not base64", format!("old 1\n!!!!\n\n{note}").into_bytes()),
        ("no empty line", format!("old 0\n{note}").into_bytes()),
        // "Each line MUST terminate in a newline character (U+000A)."
        (
            "no final newline",
            good.trim_end_matches('\n').as_bytes().to_vec(),
        ),
        ("not utf-8", vec![b'o', b'l', b'd', b' ', 0xff, b'\n']),
        ("empty", vec![]),
        (
            "not a checkpoint",
            format!("old 0\n\nhello\n\n{}", s.log.note(5).signatures[0].line()).into_bytes(),
        ),
    ];
    for (what, body) in bad_bodies {
        let r = c.add_checkpoint(&body, NOW);
        assert_eq!(status(r), 400, "{what}");
    }
    let huge = vec![b'a'; vaultfleet_audit::cosigner::ADD_CHECKPOINT_BYTES_MAX + 1];
    assert!(matches!(
        c.add_checkpoint(&huge, NOW),
        Err(Refusal::TooLarge { .. })
    ));
    // Nothing was cosigned.
    assert_eq!(c.latest_size(ORIGIN), 0);
}

#[test]
fn a_stale_old_size_is_409_with_the_latest_size_and_the_log_recovers() {
    let s = Setup::new();
    let mut c = s.open().unwrap();
    c.add_checkpoint(&s.log.body(0, 3), NOW).unwrap();
    // "If it doesn't match, the witness MUST respond with a "409 Conflict" HTTP
    // status code. The response body MUST consist of the tree size of the latest
    // cosigned checkpoint in decimal, followed by a newline (U+000A). The
    // response MUST have a Content-Type of text/x.tlog.size."
    for old in [0, 2, 4] {
        let e = c.add_checkpoint(&s.log.body(old, 9), NOW).unwrap_err();
        assert_eq!(e.status(), 409);
        assert!(matches!(e, Refusal::Conflict { latest: 3, .. }));
        assert_eq!(e.body(), (CONTENT_TYPE_TLOG_SIZE, "3\n".to_string()));
        assert_eq!(parse_tlog_size(&e.body().1).unwrap(), 3);
    }
    // "If a client doesn't have information on the latest cosigned checkpoint,
    // it MAY initially make a request with a old size of zero to obtain it."
    let latest = parse_tlog_size(
        &c.add_checkpoint(&s.log.body(0, 9), NOW)
            .unwrap_err()
            .body()
            .1,
    )
    .unwrap();
    let body = c.add_checkpoint(&s.log.body(latest, 9), NOW).unwrap();
    check_cosignature(&c, &s.log.note(9), &body, NOW);

    for bad in [
        "",
        "3",
        "03\n",
        "-3\n",
        "3 \n",
        "x\n",
        "18446744073709551616\n",
    ] {
        assert!(parse_tlog_size(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn inconsistent_checkpoints_are_422() {
    let s = Setup::new();
    let mut c = s.open().unwrap();
    // "A checkpoint of size zero MUST have the root hash of the empty tree ...
    // Otherwise, the witness MUST respond with a "422 Unprocessable Entity"
    // HTTP status code."
    let wrong_empty = AddCheckpoint {
        old_size: 0,
        proof: vec![],
        checkpoint: s.log.note_with_root(0, [9; 32]),
    };
    let r = c.add_checkpoint(wrong_empty.encode().as_bytes(), NOW);
    assert!(matches!(r, Err(Refusal::NotEmptyRoot)));
    let empty = AddCheckpoint {
        old_size: 0,
        proof: vec![],
        checkpoint: s.log.note_with_root(0, empty_root()),
    };
    c.add_checkpoint(empty.encode().as_bytes(), NOW).unwrap();

    // "If the proof is not empty when the old size is zero, ... the witness
    // MUST respond with a "422 Unprocessable Entity" HTTP status code."
    let mut req = s.log.request(0, 8);
    req.proof = s.log.tree.consistency_proof(4, 8).unwrap();
    let r = c.add_checkpoint(req.encode().as_bytes(), NOW);
    assert!(matches!(r, Err(Refusal::ProofForOldSizeZero(_))));

    c.add_checkpoint(&s.log.body(0, 8), NOW).unwrap();
    // "... or if a Merkle Consistency Proof doesn't verify, the witness MUST
    // respond with a "422 Unprocessable Entity" HTTP status code."
    let mut req = s.log.request(8, 13);
    req.proof[0][0] ^= 1;
    let r = c.add_checkpoint(req.encode().as_bytes(), NOW);
    assert!(matches!(r, Err(Refusal::BadProof(_))));
    let mut short = s.log.request(8, 13);
    short.proof.pop();
    assert_eq!(
        status(c.add_checkpoint(short.encode().as_bytes(), NOW)),
        422
    );

    // A fork: a tree that shares no history, with a proof valid inside it.
    let fork = Log {
        hsm: s.log.hsm.clone(),
        ..Log::new(1, ORIGIN, 40, 1)
    };
    let r = c.add_checkpoint(&fork.body(8, 13), NOW);
    assert!(matches!(r, Err(Refusal::BadProof(_))));

    // "If the old size matches the checkpoint size, the witness MUST check that
    // the root hashes are also identical. If they don't match, the witness MUST
    // respond with a "422 Unprocessable Entity" HTTP status code."
    let r = c.add_checkpoint(&fork.body(8, 8), NOW);
    assert!(matches!(r, Err(Refusal::SameSizeDifferentRoot)));
    assert_eq!(status(c.add_checkpoint(&fork.body(8, 8), NOW)), 422);
    assert_eq!(c.latest_size(ORIGIN), 8);
}

#[test]
fn rollback_and_fork_are_refused_also_after_a_reopen() {
    let s = Setup::new();
    let fork = Log {
        hsm: s.log.hsm.clone(),
        ..Log::new(1, ORIGIN, 40, 1)
    };
    {
        let mut c = s.open().unwrap();
        c.add_checkpoint(&s.log.body(0, 10), NOW).unwrap();
        // A second process on the same state is kept out by the lock file.
        assert!(matches!(s.open(), Err(CosignerError::Locked { .. })));
        // Rollback: a smaller checkpoint.
        assert_eq!(status(c.add_checkpoint(&s.log.body(0, 6), NOW)), 409);
        assert_eq!(status(c.add_checkpoint(&s.log.body(6, 6), NOW)), 409);
        let mut back = s.log.request(0, 6);
        back.old_size = 10;
        assert_eq!(status(c.add_checkpoint(back.encode().as_bytes(), NOW)), 400);
    }
    let mut c = s.open().unwrap();
    assert_eq!(c.latest_size(ORIGIN), 10);
    let e = c.add_checkpoint(&s.log.body(0, 6), NOW).unwrap_err();
    assert_eq!(e.body().1, "10\n");
    let mut back = s.log.request(0, 6);
    back.old_size = 10;
    assert_eq!(status(c.add_checkpoint(back.encode().as_bytes(), NOW)), 400);
    assert!(matches!(
        c.add_checkpoint(&fork.body(10, 10), NOW),
        Err(Refusal::SameSizeDifferentRoot)
    ));
    assert!(matches!(
        c.add_checkpoint(&fork.body(10, 20), NOW),
        Err(Refusal::BadProof(_))
    ));
    // The honest log goes on.
    let body = c.add_checkpoint(&s.log.body(10, 20), NOW + 1).unwrap();
    check_cosignature(&c, &s.log.note(20), &body, NOW + 1);
}

#[test]
fn a_crash_between_persist_and_reply_leaves_the_new_size_and_the_log_retries() {
    let s = Setup::new();
    {
        let mut c = s.open().unwrap();
        c.add_checkpoint(&s.log.body(0, 3), NOW).unwrap();
        // "The witness MUST persist the new checkpoint before responding." The
        // cosigner crashes after the write: the reply never reaches the log.
        let _lost = c.add_checkpoint(&s.log.body(3, 7), NOW + 1).unwrap();
    }
    let mut c = s.open().unwrap();
    // The log, not knowing, retries from 3: 409 with the persisted size.
    let e = c.add_checkpoint(&s.log.body(3, 7), NOW + 2).unwrap_err();
    let latest = parse_tlog_size(&e.body().1).unwrap();
    assert_eq!(latest, 7);
    // And retries with it: same size, same root: the cosignature the crash
    // lost, from the state.
    let body = c.add_checkpoint(&s.log.body(latest, 7), NOW + 2).unwrap();
    check_cosignature(&c, &s.log.note(7), &body, NOW + 1);
}

#[test]
fn hsm_failure_and_a_clock_going_back_are_500_and_change_nothing() {
    let s = Setup::new();
    let mut c = s.open().unwrap();
    c.add_checkpoint(&s.log.body(0, 3), NOW).unwrap();
    s.hsm.set_available(false);
    let e = c.add_checkpoint(&s.log.body(3, 5), NOW).unwrap_err();
    assert!(matches!(e, Refusal::Hsm(_)));
    assert_eq!((e.status(), e.body().1.as_str()), (500, "internal error\n"));
    s.hsm.set_available(true);
    assert_eq!(c.latest_size(ORIGIN), 3);
    // "The cosignature MUST NOT omit the timestamp, i.e. the timestamp MUST NOT be zero."
    assert!(matches!(
        c.add_checkpoint(&s.log.body(3, 5), 0),
        Err(Refusal::ClockBehind { now: 0, .. })
    ));
    // A clock before the last cosignature for this log.
    assert!(matches!(
        c.add_checkpoint(&s.log.body(3, 5), NOW - 1),
        Err(Refusal::ClockBehind { last: NOW, .. })
    ));
    assert_eq!(c.latest_size(ORIGIN), 3);
    c.add_checkpoint(&s.log.body(3, 5), NOW).unwrap();
}

#[test]
fn a_tampered_truncated_or_foreign_state_is_refused_at_open() {
    let s = Setup::new();
    let other = Log::new(5, "second.example/log", 10, 0);
    let logs = || vec![s.log.followed(), other.followed()];
    {
        let mut c = open_at(&s.hsm, &s.state, logs()).unwrap();
        c.add_checkpoint(&s.log.body(0, 12), NOW).unwrap();
        c.add_checkpoint(&other.body(0, 10), NOW).unwrap();
    }
    let good = std::fs::read_to_string(&s.state).unwrap();
    open_at(&s.hsm, &s.state, logs()).unwrap();
    let lines: Vec<&str> = good.lines().collect();
    assert_eq!(lines.len(), 4, "header, two entries, MAC");
    let mut cases: Vec<(&str, String)> = vec![
        ("empty", String::new()),
        ("truncated mid-file", good[..good.len() / 2].to_string()),
        ("no final newline", good.trim_end().to_string()),
        (
            "MAC line dropped",
            format!("{}\n{}\n{}\n", lines[0], lines[1], lines[2]),
        ),
        (
            "an entry dropped",
            format!("{}\n{}\n{}\n", lines[0], lines[2], lines[3]),
        ),
        ("header changed", good.replacen("v1", "v2", 1)),
        ("garbage", "hello\n".to_string()),
    ];
    let mut flipped = good.clone().into_bytes();
    flipped[lines[0].len() + 10] ^= 1;
    cases.push(("a byte flipped", String::from_utf8(flipped).unwrap()));
    for (what, text) in cases {
        std::fs::write(&s.state, text).unwrap();
        assert!(open_at(&s.hsm, &s.state, logs()).is_err(), "{what}");
    }
    // The right file, but another cosigner's MAC key (another HSM): refused.
    std::fs::write(&s.state, &good).unwrap();
    let stranger = SoftHsm::from_seed(78);
    assert!(matches!(
        open_at(&stranger, &s.state, logs()),
        Err(CosignerError::Tampered { .. })
    ));
    // The untouched file still opens and keeps both sizes.
    let c = open_at(&s.hsm, &s.state, logs()).unwrap();
    assert_eq!(c.latest_size(ORIGIN), 12);
    assert_eq!(c.latest_size("second.example/log"), 10);
}

#[test]
fn merge_keeps_only_cosignatures_that_verify_from_pinned_keys() {
    let s = Setup::new();
    let second = tempfile::tempdir().unwrap();
    let other_hsm = SoftHsm::from_seed(99);
    let mut a = s.open().unwrap();
    let mut b = Cosigner::open(
        other_hsm,
        "cosigner/w2",
        "witness.example/w2",
        vec![s.log.followed()],
        second.path().join("w2.state"),
    )
    .unwrap();
    let note = s.log.note(6);
    let ra = a.add_checkpoint(&s.log.body(0, 6), NOW).unwrap();
    let rb = b.add_checkpoint(&s.log.body(0, 6), NOW).unwrap();
    // "The client MUST ignore any cosignatures from unknown keys."
    let pinned = [a.verifier().clone()];
    let (merged, added) = merge_cosignatures(&note, &format!("{ra}{rb}"), &pinned).unwrap();
    assert_eq!((added, merged.signatures.len()), (1, 2));
    // Merging again adds nothing.
    let (again, added) = merge_cosignatures(&merged, &ra, &pinned).unwrap();
    assert_eq!((added, again), (0, merged.clone()));
    // Both pinned: both kept.
    let both = [a.verifier().clone(), b.verifier().clone()];
    let (merged, added) = merge_cosignatures(&note, &format!("{ra}{rb}"), &both).unwrap();
    assert_eq!(added, 2);
    assert!(b.verifier().verify(&merged).is_ok());
    // A cosignature of another checkpoint by a pinned key is an error.
    let note7 = s.log.note(7);
    assert!(matches!(
        merge_cosignatures(&note7, &ra, &pinned),
        Err(NoteError::BadSignature(_))
    ));
    // Anything but signature lines is refused.
    for bad in ["", "hello\n", &format!("{ra}\n{rb}"), ra.trim_end()] {
        assert!(merge_cosignatures(&note, bad, &pinned).is_err(), "{bad:?}");
    }
}

#[test]
fn misconfigured_logs_are_refused_at_open() {
    let s = Setup::new();
    let cosigning_key = NoteVerifier::cosignature(ORIGIN, [1; 32]).unwrap();
    for logs in [
        vec![FollowedLog {
            origin: ORIGIN.into(),
            keys: vec![],
        }],
        vec![FollowedLog {
            origin: String::new(),
            keys: vec![s.log.verifier()],
        }],
        vec![FollowedLog {
            origin: ORIGIN.into(),
            keys: vec![cosigning_key],
        }],
        vec![s.log.followed(), s.log.followed()],
    ] {
        assert!(matches!(
            open_at(&s.hsm, &s.state, logs),
            Err(CosignerError::InvalidLog { .. })
        ));
    }
    assert!(matches!(
        Cosigner::open(s.hsm.clone(), "k", "bad name", vec![], &s.state),
        Err(CosignerError::Name(_))
    ));
}
