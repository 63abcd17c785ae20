//! Replays the committed corpus of every fuzz target on stable: each file of
//! `fuzz/seeds/<target>/` and `fuzz/regressions/<target>/` goes through the
//! target's body (`vaultfleet_proptests::decoders`), which checks its
//! decoder's properties (canonical re-encoding, round trips, the vault's
//! invariants) and panics on a violation.
//!
//! `cargo test -p vaultfleet-proptests --all-features --test props -- --ignored write_seeds`
//! regenerates the seeds from valid encodings (the golden vectors' values and
//! the documented examples); `scripts/fuzz.sh` runs the campaign.

use std::path::{Path, PathBuf};

use vaultfleet_proptests::decoders::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = read
        .map(|e| e.expect("a corpus directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

#[test]
fn every_target_replays_its_seeds_and_regressions() {
    let mut replayed = 0;
    for (name, target) in TARGETS {
        let seeds = files(&fuzz_dir().join("seeds").join(name));
        assert!(
            !seeds.is_empty(),
            "fuzz/seeds/{name}/ is empty: run the write_seeds generator"
        );
        let regressions = files(&fuzz_dir().join("regressions").join(name));
        for path in seeds.iter().chain(&regressions) {
            let bytes = std::fs::read(path).expect("a corpus file");
            let outcome = std::panic::catch_unwind(|| target(&bytes));
            assert!(
                outcome.is_ok(),
                "{name}: {} fails its checks (replay: cargo +nightly fuzz run {name} {})",
                path.display(),
                path.display()
            );
            replayed += 1;
        }
    }
    assert!(replayed >= TARGETS.len());
}

#[test]
fn the_targets_match_the_fuzz_crate() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for (name, _) in TARGETS {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no target {name}"
        );
        let body = std::fs::read_to_string(fuzz_dir().join(format!("fuzz_targets/{name}.rs")))
            .expect("the target's file");
        assert!(
            body.contains(&format!("decoders::{name}(")),
            "{name}.rs calls another body"
        );
    }
}

/// Every seed with its last byte flipped, and with a byte appended, still
/// passes its target's checks (mostly as a refused input).
#[test]
fn changed_seeds_pass_their_targets() {
    for (name, target) in TARGETS {
        for path in files(&fuzz_dir().join("seeds").join(name)) {
            let mut bytes = std::fs::read(&path).expect("a seed");
            if let Some(last) = bytes.last_mut() {
                *last ^= 0x5a;
            }
            target(&bytes);
            bytes.push(0);
            target(&bytes);
        }
    }
}

mod seeds {
    use std::collections::BTreeSet;

    use raft::prelude::{Entry, HardState, Message, MessageType, Snapshot};
    use vaultfleet::storage::codec::encode_record;
    use vaultfleet::StateMachine;
    use vaultfleet_audit::bundle::Bundle;
    use vaultfleet_audit::fleet::evidence::{Attestation, Ceremony, DeviceCertificate, Evidence};
    use vaultfleet_audit::fleet::ReplicaKeys;
    use vaultfleet_audit::note::NoteSignature;
    use vaultfleet_audit::submission::{Receipt, SignedSubmission, Submission};
    use vaultfleet_audit::tiles::TilePath;
    use vaultfleet_audit::witness::{leaf_bytes, Statement, Witnessed};
    use vaultfleet_audit::{
        AddCheckpoint, Checkpoint, ConsistencyProof, EpochRetirement, FleetArtifact, NoteVerifier,
        SignedNote,
    };
    use vaultfleet_net::wire::client::{
        encode_reply, encode_request, ClientOp, ClientOutcome, ClientReply, ClientRequest,
    };
    use vaultfleet_net::wire::frame::{
        encode_chunk, encode_keepalive, encode_raft, ChunkHeader, RaftHeader,
    };
    use vaultfleet_net::wire::hello::{Hello, HelloRole};
    use vaultfleet_vault::wire as vwire;

    const NS: &str = "example.vault.fleet_keys.v1";
    const T0: u64 = 1_800_000_000;

    fn with(which: u8, bytes: &[u8]) -> Vec<u8> {
        let mut v = vec![which];
        v.extend_from_slice(bytes);
        v
    }

    fn raft_message() -> Vec<u8> {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.from = 1;
        m.to = 2;
        m.term = 3;
        m.index = 4;
        m.log_term = 3;
        m.commit = 4;
        let mut e = Entry::default();
        e.index = 5;
        e.term = 3;
        e.data = b"command".to_vec().into();
        m.entries = vec![e.clone(), e].into();
        protobuf2::Message::write_to_bytes(&m).unwrap()
    }

    fn artifact() -> FleetArtifact {
        FleetArtifact {
            fleet_id: "example-fleet".into(),
            epoch: 2,
            replicas: (1..=3u64)
                .map(|id| ReplicaKeys {
                    id,
                    datacenter: ["dc-a", "dc-b", "dc-c"][(id as usize - 1) % 3].into(),
                    response_key: [id as u8; 32],
                    transport_key: [0x40 + id as u8; 32],
                    opaque_key: [0x80; 32],
                })
                .collect(),
            voters: vec![1, 2, 3],
            learners: vec![],
            not_before: T0,
            not_after: T0 + 86_400,
        }
    }

    fn statement() -> Statement {
        Statement {
            namespace: NS.into(),
            timestamp: T0,
            epoch: 3,
            digest: [0x11; 32],
        }
    }

    fn checkpoint_note() -> SignedNote {
        let cp = Checkpoint {
            origin: "example.com/log".into(),
            size: 7,
            root: [0x42; 32],
            extensions: vec![],
        };
        SignedNote {
            text: cp.body(),
            signatures: vec![NoteSignature {
                name: "example.com/log".into(),
                key_hash: [1, 2, 3, 4],
                payload: vec![9; 64],
            }],
        }
    }

    /// Every seed, by target.
    fn all() -> Vec<(&'static str, Vec<Vec<u8>>)> {
        let raft = raft_message();
        let header = RaftHeader {
            group: 1,
            from: 1,
            to: 2,
        };
        let chunk = ChunkHeader {
            raft: header,
            index: 9,
            term: 3,
            offset: 0,
            total: raft.len() as u64,
        };
        let mut stream = encode_raft(header, &raft).to_vec();
        stream.extend_from_slice(&encode_keepalive());
        stream.extend_from_slice(&encode_chunk(chunk, &raft));

        let request = |op| ClientRequest {
            correlation: 7,
            group: 1,
            replica: 2,
            op,
        };
        let body = |framed: Vec<u8>| framed[4..].to_vec();
        let propose = vaultfleet::wire::Request {
            client_id: 3,
            sequence: 4,
            acked_below: 2,
            command: b"set x 1".to_vec().into(),
            ..Default::default()
        };

        let mut vault = vaultfleet_vault::BackupVault::new();
        let mut reg = vwire::VaultRegister::new();
        reg.opaque_record = vec![1; 64];
        reg.sealed_secret = vec![2; 48];
        reg.credential_nonce = vec![3; 32];
        reg.max_attempts = 5;
        let mut cmd = vwire::VaultCommand::new();
        cmd.user = b"alice".to_vec();
        let mut rid = vwire::VaultRequestId::new();
        rid.client = 1;
        rid.sequence = 1;
        cmd.request = Some(rid).into();
        cmd.op = Some(vwire::vault_command::Op::Register(reg));
        let cmd = vwire::encode(&cmd).unwrap();
        let outcome = vault.apply(1, &cmd);
        let snapshot = vault.snapshot().unwrap();
        let mut start = vwire::VaultLoginStart::new();
        start.user = b"alice".to_vec();
        start.credential_request = vec![5; 96];
        let mut creq = vwire::VaultClientRequest::new();
        creq.op = Some(vwire::vault_client_request::Op::LoginStart(start));
        let mut reply_body = vwire::VaultReplyBody::new();
        reply_body.detail = "ok".into();
        reply_body.attempts_left = 4;
        let mut reply = vwire::VaultReply::new();
        reply.body = vwire::encode(&reply_body).unwrap();
        reply.signature = vec![7; 64];

        let evidence = Evidence {
            bundle: b"bundle bytes".to_vec(),
            attestations: vec![Attestation {
                replica: 2,
                firmware: [0x55; 32],
                certificate: DeviceCertificate {
                    vendor: "example-vendor".into(),
                    device: "hsm-1".into(),
                    device_key: [0x33; 32],
                    signature: [0x99; 64],
                },
                signature: [0xab; 64],
            }],
            ceremony: Ceremony {
                artifact_digest: [0x44; 32],
                firmware: vec![(1, [0x55; 32]), (2, [0x66; 32])],
                threshold: 2,
                signatures: vec![("officer-1".into(), [0x77; 64])],
            },
        };
        let bundle = Bundle {
            artifact: artifact().encode().unwrap(),
            digest: [0x11; 32],
            namespace: NS.into(),
            timestamp: T0,
            epoch: 3,
            witness_key: "witness-2026".into(),
            witness_signature: [0x22; 64],
            countersignature: [0x88; 64],
            leaf_index: 5,
            inclusion: vec![[0xaa; 32], [0xbb; 32]],
            checkpoint: checkpoint_note().encode(),
        };
        let retirement = EpochRetirement {
            namespace: NS.into(),
            timestamp: T0,
            retired_through: 2,
            witness_key: "witness-2026".into(),
            witness_signature: [0x22; 64],
            countersignature: [0x33; 64],
        };
        let proof = ConsistencyProof {
            from_size: 3,
            to_size: 7,
            hashes: vec![[1; 32], [2; 32], [3; 32]],
        };
        let verifier = NoteVerifier::ed25519("example.com/log", [0x21; 32]).unwrap();
        let add = AddCheckpoint {
            old_size: 3,
            proof: vec![[5; 32], [6; 32]],
            checkpoint: checkpoint_note(),
        };
        let submission = SignedSubmission {
            submission: Submission {
                namespace: NS.into(),
                epoch: 3,
                digest: [0x11; 32],
                sent_at: T0,
            },
            signature: [0x12; 64],
        };
        let witnessed = Witnessed {
            statement: statement(),
            key: "witness-2026".into(),
            signature: [0x22; 64],
            leaf_index: 4,
        };
        let receipt = Receipt {
            witnessed: witnessed.clone(),
        }
        .encode();
        let log_line = receipt.split('\n').next().unwrap().to_string() + "\n";
        let leaf = leaf_bytes(&statement(), "witness-2026", &[0x22; 64]).unwrap();
        let mut bundle_bytes = vec![0, 2];
        for e in [&b"first"[..], b"second"] {
            bundle_bytes.extend_from_slice(&(e.len() as u16).to_be_bytes());
            bundle_bytes.extend_from_slice(e);
        }
        let mut hash_tile = vec![0, 2];
        hash_tile.extend_from_slice(&[7; 64]);

        let mut entry = Entry::default();
        entry.index = 3;
        entry.term = 2;
        entry.data = b"data".to_vec().into();
        let mut hs = HardState::default();
        hs.term = 2;
        hs.vote = 1;
        hs.commit = 3;
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 9;
        snap.mut_metadata().term = 2;
        snap.data = b"state".to_vec().into();

        let node_example = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/node.toml.example"),
        )
        .unwrap();

        // The vault machine: register, logins right and wrong, a snapshot,
        // replays. Bytes as `arbitrary` reads them (a u32 variant index then
        // the fields).
        let step = |variant: u32, fields: &[u8]| {
            let mut v = variant.to_le_bytes().to_vec();
            v.extend_from_slice(fields);
            v
        };
        let machine: Vec<u8> = [
            step(0, &[0, 2]),
            step(0, &[1, 0]),
            step(1, &[0]),
            step(1, &[0]),
            step(2, &[0, 0, 0]),
            step(2, &[0, 1, 0]),
            step(4, &[]),
            step(1, &[1]),
            step(1, &[0]),
            step(1, &[0]),
            step(3, &[3]),
            step(2, &[1, 1, 0]),
            step(2, &[0, 1, 1]),
        ]
        .concat();

        vec![
            (
                "raft_frame",
                vec![
                    with(255, &stream),
                    with(3, &stream),
                    with(1, &encode_keepalive()),
                ],
            ),
            ("raft_message", vec![raft]),
            ("entry_payload", entry_payloads()),
            (
                "net_hello",
                vec![
                    Hello {
                        version: 1,
                        frame_bytes_max: 1 << 20,
                        role: HelloRole::Peer {
                            ids: BTreeSet::from([1, 2]),
                        },
                    }
                    .encode(),
                    Hello {
                        version: 1,
                        frame_bytes_max: 1 << 16,
                        role: HelloRole::Client,
                    }
                    .encode(),
                ],
            ),
            (
                "net_client_frame",
                vec![
                    body(encode_request(&request(ClientOp::Propose(propose))).unwrap()),
                    body(encode_request(&request(ClientOp::Read(b"k".to_vec()))).unwrap()),
                    body(encode_request(&request(ClientOp::Status)).unwrap()),
                    body(encode_request(&request(ClientOp::TransferLeader(3))).unwrap()),
                    body(
                        encode_reply(&ClientReply {
                            correlation: 7,
                            status: None,
                            outcome: ClientOutcome::Done,
                        })
                        .unwrap(),
                    ),
                    body(encode_keepalive().to_vec()),
                ],
            ),
            (
                "vault_message",
                vec![
                    with(0, &vwire::encode(&creq).unwrap()),
                    with(1, &vwire::encode(&reply).unwrap()),
                    with(2, &reply.body),
                    with(3, &outcome),
                    with(4, &cmd),
                    with(5, &snapshot),
                ],
            ),
            ("fleet_artifact", vec![artifact().encode().unwrap()]),
            ("bundle", vec![bundle.encode().unwrap()]),
            ("evidence", vec![evidence.encode().unwrap()]),
            ("epoch_retirement", vec![retirement.encode().unwrap()]),
            ("consistency_proof", vec![proof.encode().unwrap()]),
            (
                "signed_note",
                vec![
                    with(0, checkpoint_note().encode().as_bytes()),
                    with(1, checkpoint_note().text.as_bytes()),
                    with(2, verifier.vkey().as_bytes()),
                ],
            ),
            (
                "tlog_tiles",
                vec![
                    with(0, b"tile/0/x001/234.p/7"),
                    with(
                        0,
                        TilePath::parse("tile/entries/000")
                            .unwrap()
                            .encode()
                            .as_bytes(),
                    ),
                    with(1, &bundle_bytes),
                    with(2, &hash_tile),
                ],
            ),
            (
                "add_checkpoint",
                vec![with(0, add.encode().as_bytes()), with(1, b"12\n")],
            ),
            (
                "submission",
                vec![
                    with(0, &submission.encode().unwrap()),
                    with(1, receipt.as_bytes()),
                ],
            ),
            (
                "witness_log",
                vec![with(0, &leaf), with(1, log_line.repeat(2).as_bytes())],
            ),
            (
                "storage_record",
                vec![
                    with(0, &encode_record(&entry).unwrap()),
                    with(1, &encode_record(&hs).unwrap()),
                    with(2, &encode_record(&snap).unwrap()),
                ],
            ),
            ("sealed_store", (0u8..8).map(|k| vec![k]).collect()),
            ("soft_hsm_file", soft_hsm_files()),
            ("node_config", vec![node_example]),
            ("pins", pins_files()),
            ("vault_machine", vec![machine]),
        ]
    }

    /// Log entry payloads as a leader writes them: a batch of two commands
    /// (one of another owner), a session registration, a state digest marker.
    fn entry_payloads() -> Vec<Vec<u8>> {
        use vaultfleet::wire::{
            entry_payload, EntryPayload, RegisterSession, Request, RequestBatch, StateDigestMarker,
        };
        let mut batch = RequestBatch::new();
        for (sequence, owner) in [(1u64, &[][..]), (2, &[7u8; 32][..])] {
            let mut r = Request::new();
            r.client_id = 3;
            r.sequence = sequence;
            r.acked_below = 1;
            r.command = vaultfleet::KvStore::put("k", "v").into();
            r.owner = owner.to_vec().into();
            batch.requests.push(r);
        }
        let mut register = RegisterSession::new();
        register.owner = vec![7; 32];
        [
            entry_payload::Kind::Batch(batch),
            entry_payload::Kind::RegisterSession(register),
            entry_payload::Kind::StateDigestMarker(StateDigestMarker::new()),
        ]
        .into_iter()
        .map(|kind| {
            let mut payload = EntryPayload::new();
            payload.kind = Some(kind);
            vaultfleet::wire::encode_bounded(&payload)
        })
        .collect()
    }

    /// Pins files as `vaultfleet audit pins` writes them (the cli tests'
    /// flow, `cli/tests/flow.rs` and `cli/tests/public_log.rs`): without
    /// cosigners, and with two of three required.
    fn pins_files() -> Vec<Vec<u8>> {
        let key = |b: u8| format!("{b:02x}").repeat(32);
        let mut plain = format!("namespace {NS}\n");
        plain.push_str(&format!("witness witness-1 {T0} {}\n", key(0x11)));
        plain.push_str(&format!(
            "witness witness-2 {} {}\n",
            T0 + 86_400,
            key(0x12)
        ));
        plain.push_str(&format!("operator {}\n", key(0x20)));
        plain.push_str(&format!("vendor example-hsm-vendor {}\n", key(0x30)));
        for i in 1..=3u8 {
            plain.push_str(&format!("officer officer-{i} {}\n", key(0x40 + i)));
        }
        plain.push_str("threshold 2\n");
        let mut cosigned = plain.clone();
        for i in 1..=3u8 {
            let name = format!("witness.example.com/w{i}");
            cosigned.push_str(&format!("cosigner {name} {}\n", key(0x50 + i)));
        }
        cosigned.push_str("cosigners 2\n");
        vec![plain.into_bytes(), cosigned.into_bytes()]
    }

    fn soft_hsm_files() -> Vec<Vec<u8>> {
        use vaultfleet::hsm::{Hsm, KeyKind, SoftHsm};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hsm.bin");
        let hsm = SoftHsm::open(&path).unwrap();
        hsm.key("seal", KeyKind::Aead).unwrap();
        hsm.key("sign", KeyKind::Signing).unwrap();
        hsm.advance_counter("counter", &[9; 32]).unwrap();
        let file = std::fs::read(&path).unwrap();
        let magic = b"vaultfleet-softhsm-v1\n".len();
        vec![with(1, &file), with(0, &file[magic..file.len() - 32])]
    }

    /// Writes `fuzz/seeds/<target>/seed-<n>` (run with `--ignored`); with
    /// `FUZZ_SEEDS_ONLY=<target>` only that target's (the others' seeds hold
    /// fresh keys and signatures, which would change every committed file).
    #[test]
    #[ignore = "regenerates the committed seeds"]
    fn write_seeds() {
        let only = std::env::var("FUZZ_SEEDS_ONLY").ok();
        for (name, seeds) in all() {
            if only.as_deref().is_some_and(|o| o != name) {
                continue;
            }
            let dir = super::fuzz_dir().join("seeds").join(name);
            std::fs::create_dir_all(&dir).unwrap();
            for (n, seed) in seeds.iter().enumerate() {
                std::fs::write(dir.join(format!("seed-{n}")), seed).unwrap();
            }
        }
    }

    /// The generated seeds are valid inputs (each decodes), so the corpus
    /// starts past the decoders' first checks.
    #[test]
    fn the_seeds_pass_their_targets() {
        for (name, seeds) in all() {
            let (_, target) = super::TARGETS
                .iter()
                .find(|(n, _)| *n == name)
                .expect("a target");
            for seed in seeds {
                target(&seed);
            }
        }
    }

    /// The pins seeds parse (the target's checks then run past the parser).
    #[test]
    fn the_pins_seeds_parse() {
        let (_, seeds) = all().into_iter().find(|(n, _)| *n == "pins").unwrap();
        for seed in seeds {
            let text = String::from_utf8(seed).unwrap();
            let pins = vaultfleet_audit::pins::Pins::parse(&text).unwrap();
            assert_eq!(pins.audit.threshold, 2);
        }
    }
}

/// The pins parser, under proptest: no input makes it panic, and every input
/// passes the `pins` target's checks.
mod pins_parser {
    use proptest::prelude::*;
    use vaultfleet_audit::pins::Pins;
    use vaultfleet_proptests::decoders;

    /// A line near the grammar: a known or unknown keyword, then 0 to 4 fields
    /// that are names, numbers, hex keys (some of the wrong length or with
    /// non-ASCII characters) or noise.
    fn line() -> impl Strategy<Value = String> {
        let keyword = prop::sample::select(vec![
            "namespace",
            "witness",
            "operator",
            "vendor",
            "officer",
            "threshold",
            "cosigner",
            "cosigners",
            "Namespace",
            "",
        ]);
        let field = prop_oneof![
            "[a-z0-9./-]{1,12}",
            any::<u64>().prop_map(|n| n.to_string()),
            "[0-9]{1,30}",
            "-?[0-9]{1,3}",
            "[0-9a-fA-F]{64}",
            "[0-9a-f]{62,66}",
            "[0-9a-fé+ ]{60,66}",
            any::<String>(),
        ];
        (keyword, prop::collection::vec(field, 0..5), "[ \t]{1,3}").prop_map(|(k, fields, sep)| {
            std::iter::once(k.to_string())
                .chain(fields)
                .collect::<Vec<_>>()
                .join(&sep)
        })
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn any_text_is_parsed_or_refused(text in any::<String>()) {
            let _ = Pins::parse(&text);
            decoders::pins(text.as_bytes());
        }

        #[test]
        fn any_bytes_pass_the_target(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            decoders::pins(&bytes);
        }

        #[test]
        fn pins_written_then_read_are_equal(
            namespace in "[a-z0-9._-]{1,20}",
            witness in prop::collection::vec(("[a-z0-9-]{1,10}", any::<u64>(), any::<[u8; 32]>()), 1..4),
            operator in any::<[u8; 32]>(),
            officers in prop::collection::vec(("[a-z0-9-]{1,10}", any::<[u8; 32]>()), 0..4),
            threshold in 1usize..5,
            // Unique names (the parser refuses a name pinned twice).
            cosigners in prop::collection::btree_map("[a-z0-9./]{1,16}", any::<[u8; 32]>(), 0..4),
        ) {
            let required = cosigners.len().min(2);
            let mut text = format!("namespace {namespace}\n");
            for (name, nb, k) in &witness {
                text.push_str(&format!("witness {name} {nb} {}\n", hex(k)));
            }
            text.push_str(&format!("operator {}\n", hex(&operator)));
            for (name, k) in &officers {
                text.push_str(&format!("officer {name} {}\n", hex(k)));
            }
            text.push_str(&format!("threshold {threshold}\n"));
            for (name, k) in &cosigners {
                text.push_str(&format!("cosigner {name} {}\n", hex(k)));
            }
            if required > 0 {
                text.push_str(&format!("cosigners {required}\n"));
            }
            let p = Pins::parse(&text).expect("well-formed pins parse");
            prop_assert_eq!(p.witness.len(), witness.len());
            prop_assert_eq!(p.operator, operator);
            prop_assert_eq!(p.audit.officers.len(), officers.len());
            prop_assert_eq!(p.cosigners_required, required);
            prop_assert_eq!(p.to_text(), text.clone());
            decoders::pins(text.as_bytes());
        }

        #[test]
        fn lines_near_the_grammar_pass_the_target(
            lines in prop::collection::vec(line(), 0..14),
            ending in prop::sample::select(vec!["\n", "\r\n"]),
        ) {
            let text = lines.join(ending);
            decoders::pins(text.as_bytes());
        }
    }
}

/// The entry payload target on stable beyond its seeds: random bytes, and the
/// seeds with random bytes overwritten, truncated or appended (the slicing and
/// the copying decoders must agree on every one).
mod entry_payload_decoders {
    use proptest::prelude::*;
    use vaultfleet_proptests::decoders;

    fn seeds() -> Vec<Vec<u8>> {
        super::files(&super::fuzz_dir().join("seeds").join("entry_payload"))
            .iter()
            .map(|p| std::fs::read(p).expect("a seed"))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn any_bytes_pass_the_target(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            decoders::entry_payload(&bytes);
        }

        /// Batches as any leader could write them, with any field values
        /// (ids and sequences of 2^63 and more take a tenth varint byte):
        /// the in-place reader reads each alike.
        #[test]
        fn encoded_batches_pass_the_target(
            requests in prop::collection::vec(
                (
                    any::<u64>(),
                    any::<u64>(),
                    prop_oneof![Just(0u64), any::<u64>()],
                    prop::collection::vec(any::<u8>(), 0..200),
                    prop_oneof![Just(Vec::new()), prop::collection::vec(any::<u8>(), 1..40)],
                ),
                0..20,
            ),
        ) {
            use vaultfleet::wire::{EntryPayload, Request, RequestBatch};
            let mut batch = RequestBatch::new();
            for (client_id, sequence, acked_below, command, owner) in requests {
                let mut r = Request::new();
                r.client_id = client_id;
                r.sequence = sequence;
                r.acked_below = acked_below;
                r.command = command.into();
                r.owner = owner.into();
                batch.requests.push(r);
            }
            let mut payload = EntryPayload::new();
            payload.set_batch(batch);
            let bytes = vaultfleet::wire::encode_bounded(&payload);
            prop_assert!(vaultfleet::wire::canonical_batch(&bytes, &mut Vec::new()));
            decoders::entry_payload(&bytes);
        }

        /// Requests written field by field, as no leader of this build would:
        /// fields out of order, repeated, unknown, or of another wire type,
        /// with every length right. The in-place reader must refuse each
        /// such request or read it as protobuf does.
        #[test]
        fn hand_written_batches_pass_the_target(
            requests in prop::collection::vec(
                prop::collection::vec((1u8..8, any::<bool>(), any::<u64>(), prop::collection::vec(any::<u8>(), 0..6)), 0..7),
                0..4,
            ),
        ) {
            fn varint(out: &mut Vec<u8>, mut v: u64) {
                while v >= 0x80 {
                    out.push(v as u8 | 0x80);
                    v >>= 7;
                }
                out.push(v as u8);
            }
            fn delimited(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
                out.push(field << 3 | 2);
                varint(out, bytes.len() as u64);
                out.extend_from_slice(bytes);
            }
            let mut batch = Vec::new();
            for fields in requests {
                let mut request = Vec::new();
                for (field, as_bytes, number, bytes) in fields {
                    if as_bytes {
                        delimited(&mut request, field, &bytes);
                    } else {
                        request.push(field << 3);
                        varint(&mut request, number);
                    }
                }
                delimited(&mut batch, 1, &request);
            }
            let mut entry = Vec::new();
            delimited(&mut entry, 1, &batch);
            decoders::entry_payload(&entry);
        }

        #[test]
        fn changed_seeds_pass_the_target(
            pick in any::<prop::sample::Index>(),
            writes in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            cut in any::<prop::sample::Index>(),
            tail in prop::collection::vec(any::<u8>(), 0..8),
        ) {
            let seeds = seeds();
            prop_assume!(!seeds.is_empty());
            let mut bytes = pick.get(&seeds).clone();
            for (at, b) in writes {
                let n = bytes.len();
                bytes[at.index(n)] = b;
            }
            bytes.truncate(cut.index(bytes.len() + 1));
            bytes.extend(tail);
            decoders::entry_payload(&bytes);
        }
    }

    /// A `Request` whose `command` (tag 0x22) or `owner` (0x2a) has a length
    /// written as a varint padded to `width` bytes: protobuf reads a bytes
    /// length as a varint32 (at most 5 bytes), so widths 6 to 10 are refused
    /// by protobuf and must be by the in-place reader.
    fn padded_length_entry(tag: u8, width: usize, body: &[u8]) -> Vec<u8> {
        let mut len = body.len() as u64;
        let mut varint = Vec::new();
        for i in 0..width {
            let last = i + 1 == width;
            varint.push((len & 0x7f) as u8 | if last { 0 } else { 0x80 });
            len >>= 7;
        }
        let mut request = vec![0x08, 0x01, 0x10, 0x01, tag];
        request.extend(varint);
        request.extend(body);
        let mut batch = vec![0x0a, request.len() as u8];
        batch.extend(request);
        let mut entry = vec![0x0a, batch.len() as u8];
        entry.extend(batch);
        entry
    }

    #[test]
    fn a_six_byte_command_length_passes_the_target() {
        // 0a0e0a0c0801100122818080808000 78
        let entry = padded_length_entry(0x22, 6, b"x");
        assert_eq!(
            entry,
            [
                0x0a, 0x0e, 0x0a, 0x0c, 0x08, 0x01, 0x10, 0x01, 0x22, 0x81, 0x80, 0x80, 0x80, 0x80,
                0x00, b'x'
            ]
        );
        decoders::entry_payload(&entry);
    }

    proptest! {
        #[test]
        fn padded_bytes_lengths_pass_the_target(
            tag in prop_oneof![Just(0x22u8), Just(0x2a)],
            width in 1usize..=10,
            body in prop::collection::vec(any::<u8>(), 0..=1),
        ) {
            decoders::entry_payload(&padded_length_entry(tag, width, &body));
        }
    }
}
