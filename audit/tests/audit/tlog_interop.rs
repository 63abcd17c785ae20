//! Our C2SP tiles, checkpoints, notes and cosignatures checked against code that
//! is not ours: `tlog_tiles` 0.2 (Cloudflare's port of Go's sumdb/tlog) reads our
//! served tiles and proves records and trees against our roots, and `signed_note`
//! 0.2 verifies our notes while we verify its. Where a crate and the C2SP spec
//! differ, the spec's words are quoted and the spec wins.

use std::cell::RefCell;

use ed25519_dalek::{Signer as _, SigningKey};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use signed_note::{Note, StandardSigner, StandardVerifier, Verifier, VerifierList};
use tlog_tiles::{Tile, TileHashReader, TileReader};

use vaultfleet::hsm::{Hsm, KeyKind, SoftHsm};
use vaultfleet_audit::merkle::{self, leaf_hash, Hash, MerkleTree};
use vaultfleet_audit::note::{self, Checkpoint, NoteVerifier, SignedNote, ALG_COSIGNATURE_V1};
use vaultfleet_audit::tiles::{hash_tiles_for, TileError, TilePath, TiledLog, TILE_HEIGHT};
use vaultfleet_audit::witness::{leaf_bytes, Witness, WitnessKeySpec};

fn theirs(h: &Hash) -> tlog_tiles::Hash {
    tlog_tiles::Hash(*h)
}

fn ours(h: &tlog_tiles::Hash) -> Hash {
    h.0
}

/// The C2SP path of a `tlog_tiles` tile. It writes Go sumdb's `tile/<H>/<L>/<N>`
/// and `tile/<H>/data/<N>`; C2SP tlog-tiles fixes the height and drops it:
/// "Tiles are served at `<prefix>/tile/<L>/<N>[.p/<W>]`" and "The log entries are
/// served as a “entry bundles” at `<prefix>/tile/entries/<N>[.p/<W>]`".
fn c2sp_path(t: &Tile) -> String {
    assert_eq!(t.height(), TILE_HEIGHT, "C2SP tiles have height 8");
    let go = t.path();
    let rest = go
        .strip_prefix("tile/8/")
        .unwrap_or_else(|| panic!("{go} is not a height-8 tile"));
    match rest.strip_prefix("data/") {
        Some(n) => format!("tile/entries/{n}"),
        None => format!("tile/{rest}"),
    }
}

/// A tile server over a [`TiledLog`]: every tile `tlog_tiles` asks for goes
/// through its C2SP path, [`TilePath::parse`] and [`TiledLog::tile`], as an
/// HTTP request would.
struct Served<'a> {
    log: &'a TiledLog,
    tree_size: u64,
    /// Flips a byte of every tile served (a lying server).
    tamper: bool,
    fetched: RefCell<Vec<String>>,
}

impl<'a> Served<'a> {
    fn new(log: &'a TiledLog, tree_size: u64) -> Self {
        Self {
            log,
            tree_size,
            tamper: false,
            fetched: RefCell::new(Vec::new()),
        }
    }
}

impl TileReader for Served<'_> {
    fn height(&self) -> u8 {
        TILE_HEIGHT
    }

    fn read_tiles(&self, tiles: &[Tile]) -> Result<Vec<Vec<u8>>, tlog_tiles::Error> {
        tiles
            .iter()
            .map(|t| {
                let path = c2sp_path(t);
                let ours = TilePath::parse(&path).expect("tlog_tiles asks for valid C2SP paths");
                assert_eq!(ours.encode(), path);
                assert_eq!(u32::from(ours.width()), t.width());
                assert_eq!(ours.index(), t.level_index());
                assert_eq!(ours.level(), t.level());
                self.fetched.borrow_mut().push(path);
                let mut bytes = self
                    .log
                    .tile(&ours, self.tree_size)
                    .map_err(|e| tlog_tiles::Error::InvalidInput(e.to_string()))?;
                if self.tamper {
                    if let Some(b) = bytes.last_mut() {
                        *b ^= 1;
                    }
                }
                Ok(bytes)
            })
            .collect()
    }

    fn save_tiles(&self, _tiles: &[Tile], _data: &[Vec<u8>]) {}
}

/// Sizes around the tile boundaries of levels 0, 1 and 2.
const SIZES: [u64; 12] = [
    1, 2, 255, 256, 257, 511, 512, 513, 65_535, 65_536, 65_537, 65_836,
];

fn entry(i: u64) -> Vec<u8> {
    format!("entry {i}").into_bytes()
}

fn interop_log() -> (TiledLog, MerkleTree) {
    let mut log = TiledLog::new();
    let mut tree = MerkleTree::new();
    for i in 0..SIZES[SIZES.len() - 1] {
        log.append(entry(i)).unwrap();
        tree.append(&entry(i));
    }
    (log, tree)
}

/// Leaf indexes worth proving in a tree of `size`.
fn indexes(size: u64) -> Vec<u64> {
    let mut v = vec![0, size / 2, size - 1, 255, 256, 65_535];
    v.retain(|&i| i < size);
    v.sort_unstable();
    v.dedup();
    v
}

#[test]
fn tlog_tiles_paths_are_ours() {
    for (level, index, width) in [
        (0u8, 0u64, 256u32),
        (0, 1_234_067, 256),
        (1, 999, 17),
        (2, 1000, 1),
        (63, u64::MAX, 255),
    ] {
        let t = Tile::new(TILE_HEIGHT, level, index, width, false);
        let p = TilePath::Hashes {
            level,
            index,
            width: width as u16,
        };
        assert_eq!(c2sp_path(&t), p.encode());
        assert_eq!(TilePath::parse(&c2sp_path(&t)).unwrap(), p);
        let mut d = Tile::new(TILE_HEIGHT, 0, index, width, false);
        d.set_is_data();
        let e = TilePath::Entries {
            index,
            width: width as u16,
        };
        assert_eq!(c2sp_path(&d), e.encode());
        // Back through its own parser, with the height put back.
        let go = e.encode().replacen("tile/entries/", "tile/8/data/", 1);
        assert_eq!(Tile::from_path(&go).unwrap(), d);
    }
    // The tiles a log publishes when it grows from 0 (or from an older size) to
    // a size are the tiles of that size, in the same order.
    for &size in &SIZES {
        let theirs: Vec<String> = Tile::new_tiles(TILE_HEIGHT, 0, size)
            .iter()
            .map(c2sp_path)
            .collect();
        let ours: Vec<String> = hash_tiles_for(size).map(|t| t.encode()).collect();
        assert_eq!(theirs, ours, "size {size}");
        for old in [1, size / 2, size - 1] {
            for t in Tile::new_tiles(TILE_HEIGHT, old, size) {
                assert!(ours.contains(&c2sp_path(&t)), "{} of {size}", t.path());
            }
        }
    }
}

#[test]
fn tlog_tiles_reads_our_served_tree_and_proves_against_our_roots() {
    let (log, tree) = interop_log();
    for &size in &SIZES {
        let root = log.root_at(size).unwrap();
        // Once per size: MerkleTree is O(size) per root or proof.
        assert_eq!(root, tree.root_at(size).unwrap());
        let served = Served::new(&log, size);
        let reader = TileHashReader::new(size, theirs(&root), &served);
        // Its tree hash, from our tiles authenticated against our root.
        assert_eq!(
            ours(&tlog_tiles::tree_hash(size, &reader).unwrap()),
            root,
            "size {size}"
        );
        // Records: its proofs check against our root, with its checker and ours,
        // and are the proofs our MerkleTree makes.
        for n in indexes(size) {
            let leaf = leaf_hash(&entry(n));
            assert_eq!(ours(&tlog_tiles::record_hash(&entry(n))), leaf);
            let proof = tlog_tiles::prove_record(size, n, &reader).unwrap();
            tlog_tiles::check_record(&proof, size, theirs(&root), n, theirs(&leaf)).unwrap();
            let proof: Vec<Hash> = proof.iter().map(ours).collect();
            merkle::verify_inclusion(&leaf, n, size, &proof, &root).unwrap();
            if size <= 600 || n == size - 1 {
                let mine = tree.inclusion_proof(n, size).unwrap();
                assert_eq!(mine, proof, "inclusion of {n} in {size}");
                let mine: Vec<_> = mine.iter().map(theirs).collect();
                tlog_tiles::check_record(&mine, size, theirs(&root), n, theirs(&leaf)).unwrap();
            }
            // A wrong leaf is refused by both.
            let wrong = leaf_hash(b"not logged");
            assert!(tlog_tiles::check_record(
                &proof.iter().map(theirs).collect(),
                size,
                theirs(&root),
                n,
                theirs(&wrong)
            )
            .is_err());
            assert!(merkle::verify_inclusion(&wrong, n, size, &proof, &root).is_err());
        }
        // Trees: consistency from every older size worth checking.
        for old in indexes(size).into_iter().map(|i| i + 1) {
            let old_root = log.root_at(old).unwrap();
            let proof = tlog_tiles::prove_tree(size, old, &reader).unwrap();
            tlog_tiles::check_tree(&proof, size, theirs(&root), old, theirs(&old_root)).unwrap();
            let proof: Vec<Hash> = proof.iter().map(ours).collect();
            merkle::verify_consistency(old, size, &proof, &old_root, &root).unwrap();
            if size <= 600 || old == 1 {
                let mine = tree.consistency_proof(old, size).unwrap();
                assert_eq!(mine, proof, "consistency {old} -> {size}");
                let mine: Vec<_> = mine.iter().map(theirs).collect();
                tlog_tiles::check_tree(&mine, size, theirs(&root), old, theirs(&old_root)).unwrap();
            }
            if old < size {
                let mut forked = old_root;
                forked[0] ^= 1;
                assert!(merkle::verify_consistency(old, size, &proof, &forked, &root).is_err());
                assert!(tlog_tiles::check_tree(
                    &proof.iter().map(theirs).collect(),
                    size,
                    theirs(&root),
                    old,
                    theirs(&forked)
                )
                .is_err());
            }
        }
        // It fetched only tiles that exist for this tree, each a C2SP path.
        for p in served.fetched.borrow().iter() {
            let t = TilePath::parse(p).unwrap();
            assert!(hash_tiles_for(size).any(|h| h == t), "{p} for {size}");
        }
    }
}

#[test]
fn tlog_tiles_refuses_tiles_that_do_not_match_the_root() {
    let (log, _) = interop_log();
    let size = 65_836;
    let root = log.root_at(size).unwrap();
    // Our tiles, a wrong root.
    let served = Served::new(&log, size);
    let mut wrong = root;
    wrong[31] ^= 1;
    let reader = TileHashReader::new(size, theirs(&wrong), &served);
    assert!(matches!(
        tlog_tiles::prove_record(size, 7, &reader),
        Err(tlog_tiles::Error::InconsistentTile)
    ));
    // The right root, tampered tiles.
    let mut lying = Served::new(&log, size);
    lying.tamper = true;
    let reader = TileHashReader::new(size, theirs(&root), &lying);
    assert!(tlog_tiles::prove_tree(size, 300, &reader).is_err());
    // A tree the log has not reached: our server answers SizeBeyondLog and the
    // reader passes the failure on.
    let ahead = Served::new(&log, size + 1);
    let reader = TileHashReader::new(size + 1, theirs(&root), &ahead);
    assert!(tlog_tiles::tree_hash(size + 1, &reader).is_err());
    assert!(matches!(
        log.tile(&TilePath::parse("tile/0/000").unwrap(), size + 1),
        Err(TileError::SizeBeyondLog { .. })
    ));
}

/// The seed of the keys `signed_note` generates (printed, so a failure can be
/// replayed; `TLOG_INTEROP_SEED` overrides it).
fn seed() -> u64 {
    let seed = std::env::var("TLOG_INTEROP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x7106_1e5f);
    println!("TLOG_INTEROP_SEED={seed}");
    seed
}

const NAMESPACE: &str = "example.vault/fleet_keys.v1";

/// A witness that signed three epochs: its checkpoint, the entries of its log
/// and the verifier of its key.
fn witnessed() -> (SignedNote, Vec<Vec<u8>>, NoteVerifier, SoftHsm) {
    let dir = tempfile::tempdir().unwrap();
    let hsm = SoftHsm::from_seed(16);
    let keys = vec![WitnessKeySpec {
        name: "witness.example/w1".into(),
        not_before: 0,
    }];
    let mut w = Witness::open(hsm.clone(), keys, dir.path().join("witness.state")).unwrap();
    for epoch in 1..=3u64 {
        w.sign(NAMESPACE, epoch, [epoch as u8; 32], 1_700_000_000 + epoch)
            .unwrap();
    }
    let cp = w.checkpoint(NAMESPACE, 1_700_000_100).unwrap();
    let entries = w
        .entries(NAMESPACE)
        .iter()
        .map(|e| leaf_bytes(&e.statement, &e.key, &e.signature).unwrap())
        .collect();
    let pk = w.public_key("witness.example/w1").unwrap();
    let v = NoteVerifier::ed25519("witness.example/w1", pk).unwrap();
    (cp, entries, v, hsm)
}

#[test]
fn signed_note_verifies_our_checkpoints_and_tlog_tiles_parses_them() {
    let (cp, entries, v, hsm) = witnessed();
    let bytes = cp.encode().into_bytes();
    // Theirs: the note parses, our vkey loads, our signature verifies.
    let note = Note::from_bytes(&bytes).unwrap();
    let verifier = StandardVerifier::new(&v.vkey()).unwrap();
    assert_eq!(verifier.key_id(), u32::from_be_bytes(v.key_hash()));
    let (verified, unverified) = note
        .verify(&VerifierList::new(vec![Box::new(verifier.clone())]))
        .unwrap();
    assert_eq!((verified.len(), unverified.len()), (1, 0));
    assert_eq!(note.to_bytes(), bytes);
    // The checkpoint body, and the tree it commits to, rebuilt from the tiles'
    // view of the log's entries.
    let theirs_cp = tlog_tiles::Checkpoint::from_bytes(note.text()).unwrap();
    let ours_cp = Checkpoint::parse(&cp.text).unwrap();
    assert_eq!(theirs_cp.origin(), NAMESPACE);
    assert_eq!(theirs_cp.size(), ours_cp.size);
    assert_eq!(theirs_cp.hash().0, ours_cp.root);
    assert_eq!(theirs_cp.to_bytes(), cp.text.as_bytes());
    let mut log = TiledLog::new();
    for e in entries {
        log.append(e).unwrap();
    }
    assert_eq!(log.size(), 3);
    assert_eq!(log.root_at(3).unwrap(), ours_cp.root);
    // An edited note fails their verification.
    let edited = String::from_utf8(bytes)
        .unwrap()
        .replacen("\n3\n", "\n2\n", 1);
    let note = Note::from_bytes(edited.as_bytes()).unwrap();
    assert!(note
        .verify(&VerifierList::new(vec![Box::new(verifier)]))
        .is_err());
    // A note signed through the HSM seam directly, too.
    let key = hsm.key("log/interop", KeyKind::Signing).unwrap();
    let text = "example.vault/interop\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n";
    let sig = note::sign_note(&hsm, key, "example.vault/interop", text).unwrap();
    let signed = SignedNote {
        text: text.into(),
        signatures: vec![sig],
    };
    let v = NoteVerifier::ed25519("example.vault/interop", hsm.public_key(key).unwrap()).unwrap();
    let note = Note::from_bytes(signed.encode().as_bytes()).unwrap();
    note.verify(&VerifierList::new(vec![Box::new(
        StandardVerifier::new(&v.vkey()).unwrap(),
    )]))
    .unwrap();
    // The empty tree's root ("SHA-256 of nothing") is the same in both.
    assert_eq!(tlog_tiles::EMPTY_HASH.0, merkle::empty_root());
}

#[test]
fn we_verify_notes_signed_by_signed_note_and_parse_its_checkpoints() {
    let mut rng = ChaCha20Rng::seed_from_u64(seed());
    let (skey, vkey) = signed_note::generate_key(&mut rng, "log.example/interop");
    let signer = StandardSigner::new(&skey).unwrap();
    let hash = tlog_tiles::record_hash(b"interop");
    let cp =
        tlog_tiles::Checkpoint::new("log.example/interop", 70_000, hash, "ext one\nx\n").unwrap();
    let mut note = Note::new(&cp.to_bytes(), &[]).unwrap();
    note.add_sigs(&[&signer]).unwrap();
    let text = String::from_utf8(note.to_bytes()).unwrap();
    // Ours: the note parses, their vkey loads, their signature verifies.
    let parsed = SignedNote::parse(&text).unwrap();
    assert_eq!(parsed.encode(), text);
    let v = NoteVerifier::parse_vkey(&vkey).unwrap();
    assert_eq!(v.vkey(), vkey);
    assert!(matches!(v.verify(&parsed), Ok(None)));
    // Its checkpoint parses with ours, and back.
    let ours = Checkpoint::parse(&parsed.text).unwrap();
    assert_eq!(ours.origin, "log.example/interop");
    assert_eq!(ours.size, 70_000);
    assert_eq!(ours.root, hash.0);
    assert_eq!(ours.extensions, ["ext one", "x"]);
    assert_eq!(ours.body().as_bytes(), cp.to_bytes());
    // A changed body fails our verification.
    let forged = text.replacen("70000", "70001", 1);
    assert!(v.verify(&SignedNote::parse(&forged).unwrap()).is_err());
}

/// A `cosignature/v1` verifier for `signed_note` (which has none), written from
/// C2SP tlog-cosignature:
///
/// * "The key ID for Ed25519 cosignatures MUST be computed as
///   `SHA-256(<name> || "\n" || 0x04 || 32-byte Ed25519 cosigner public key)[:4]`"
/// * "The signature MUST be a `timestamped_signature` structure. `struct { u64
///   timestamp; ... opaque ed25519_signature[64]; }` ... serialized in sequence,
///   with the timestamp encoded in big-endian order."
/// * "`timestamp` ... MUST NOT exceed 2^63 - 1"
/// * "The signed message MUST be two newline (U+000A) terminated lines (one
///   header line and one timestamp line) followed by the whole note body of the
///   cosigned checkpoint (including the final newline, but not including any
///   signature lines). The header line MUST be the fixed string
///   `cosignature/v1` ... The timestamp line MUST consist of the string `time`,
///   a single space (0x20), and `timestamped_signature.timestamp` encoded as an
///   ASCII decimal with no leading zeroes."
struct CosignatureV1 {
    name: String,
    id: u32,
    key: ed25519_dalek::VerifyingKey,
}

impl CosignatureV1 {
    fn new(name: &str, public_key: [u8; 32]) -> Self {
        let mut k = vec![0x04];
        k.extend_from_slice(&public_key);
        Self {
            name: name.into(),
            id: signed_note::key_id(name, &k),
            key: ed25519_dalek::VerifyingKey::from_bytes(&public_key).unwrap(),
        }
    }
}

impl Verifier for CosignatureV1 {
    fn name(&self) -> &str {
        &self.name
    }

    fn key_id(&self) -> u32 {
        self.id
    }

    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        let Ok(sig) = <&[u8; 72]>::try_from(sig) else {
            return false;
        };
        let timestamp = u64::from_be_bytes(sig[..8].try_into().unwrap());
        if timestamp > (1 << 63) - 1 {
            return false;
        }
        let mut m = format!("cosignature/v1\ntime {timestamp}\n").into_bytes();
        m.extend_from_slice(msg);
        let s = ed25519_dalek::Signature::from_bytes(sig[8..].try_into().unwrap());
        self.key.verify_strict(&m, &s).is_ok()
    }
}

/// A cosignature line made by hand with ed25519-dalek, exactly as the spec says.
fn cosign_by_hand(key: &SigningKey, name: &str, body: &str, timestamp: u64) -> note::NoteSignature {
    let msg = format!("cosignature/v1\ntime {timestamp}\n{body}");
    let mut payload = timestamp.to_be_bytes().to_vec();
    payload.extend_from_slice(&key.sign(msg.as_bytes()).to_bytes());
    let v = NoteVerifier::cosignature(name, key.verifying_key().to_bytes()).unwrap();
    note::NoteSignature {
        name: name.into(),
        key_hash: v.key_hash(),
        payload,
    }
}

#[test]
fn cosignatures_agree_with_the_spec_both_ways() {
    let (mut cp, _, log_v, _) = witnessed();
    let cosigners = SoftHsm::from_seed(61);
    let key = cosigners.key("cosigner/a", KeyKind::Signing).unwrap();
    let pk = cosigners.public_key(key).unwrap();
    let name = "witness.example.com/w1";
    let ts = 1_700_000_200;
    cp.signatures
        .push(note::cosign(&cosigners, key, name, &cp.text, ts).unwrap());
    // Ours verifies with the spec's verifier, through signed_note.
    let spec = CosignatureV1::new(name, pk);
    let ours = NoteVerifier::cosignature(name, pk).unwrap();
    assert_eq!(ours.alg, ALG_COSIGNATURE_V1);
    assert_eq!(spec.key_id(), u32::from_be_bytes(ours.key_hash()));
    let text = cp.encode();
    let note = Note::from_bytes(text.as_bytes()).unwrap();
    let verifiers = VerifierList::new(vec![
        Box::new(spec),
        Box::new(StandardVerifier::new(&log_v.vkey()).unwrap()),
    ]);
    let (verified, unverified) = note.verify(&verifiers).unwrap();
    assert_eq!(verified.len(), 2);
    assert!(unverified.is_empty());
    assert_eq!(verified[1].name(), name);
    // Ed25519 vkeys with type 0x04: "Ed25519 public keys MAY be encoded as vkeys
    // with signature type 0x04". signed_note's StandardVerifier knows only 0x01.
    assert!(matches!(
        StandardVerifier::new(&ours.vkey()),
        Err(signed_note::VerifierError::Alg)
    ));
    // The same key as a plain Ed25519 note key has another key ID, so its
    // cosignature is not mistaken for a note signature.
    let plain = NoteVerifier::ed25519(name, pk).unwrap();
    assert_ne!(plain.key_hash(), ours.key_hash());
    assert!(plain.verify(&SignedNote::parse(&text).unwrap()).is_err());

    // A cosignature the spec's verifier accepts, made by another key with
    // ed25519-dalek directly, verifies with ours.
    let mut rng = ChaCha20Rng::seed_from_u64(seed());
    let other = SigningKey::generate(&mut rng);
    let other_name = "witness.other.example/w2";
    let mut cp2 = SignedNote::parse(&text).unwrap();
    cp2.signatures
        .push(cosign_by_hand(&other, other_name, &cp2.text, 1_700_000_300));
    let encoded = cp2.encode();
    let spec = CosignatureV1::new(other_name, other.verifying_key().to_bytes());
    let note = Note::from_bytes(encoded.as_bytes()).unwrap();
    let list = VerifierList::new(vec![Box::new(spec)]);
    let (verified, unverified) = note.verify(&list).unwrap();
    assert_eq!((verified.len(), unverified.len()), (1, 2));
    let ours_other =
        NoteVerifier::cosignature(other_name, other.verifying_key().to_bytes()).unwrap();
    assert!(matches!(
        ours_other.verify(&SignedNote::parse(&encoded).unwrap()),
        Ok(Some(1_700_000_300))
    ));

    // "It MUST NOT exceed 2^63 - 1": a well-signed cosignature at 2^63 is
    // refused by both.
    let mut cp3 = SignedNote::parse(&text).unwrap();
    cp3.signatures.truncate(1);
    cp3.signatures
        .push(cosign_by_hand(&other, other_name, &cp3.text, 1 << 63));
    let encoded = cp3.encode();
    let spec = CosignatureV1::new(other_name, other.verifying_key().to_bytes());
    let note = Note::from_bytes(encoded.as_bytes()).unwrap();
    assert!(note
        .verify(&VerifierList::new(vec![Box::new(spec)]))
        .is_err());
    assert!(ours_other
        .verify(&SignedNote::parse(&encoded).unwrap())
        .is_err());
    assert!(note::cosign(&cosigners, key, name, &cp.text, 1 << 63).is_err());

    // A cosignature over another body (an extension line added) is refused by both.
    let mut cp4 = SignedNote::parse(&text).unwrap();
    cp4.signatures.truncate(1);
    let other_body = format!("{}extension\n", cp4.text);
    cp4.signatures.push(cosign_by_hand(
        &other,
        other_name,
        &other_body,
        1_700_000_400,
    ));
    let encoded = cp4.encode();
    let spec = CosignatureV1::new(other_name, other.verifying_key().to_bytes());
    let note = Note::from_bytes(encoded.as_bytes()).unwrap();
    assert!(note
        .verify(&VerifierList::new(vec![Box::new(spec)]))
        .is_err());
    assert!(ours_other
        .verify(&SignedNote::parse(&encoded).unwrap())
        .is_err());
}
