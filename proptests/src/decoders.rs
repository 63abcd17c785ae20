//! The bodies of the fuzz targets: one function per decoder of bytes from
//! outside, each taking `&[u8]`.
//!
//! The same functions run under libFuzzer (`fuzz/fuzz_targets/<name>.rs`, one
//! line each, `cargo +nightly fuzz`) and on stable in CI
//! (`tests/props/fuzz_corpus.rs` replays every file of `fuzz/seeds/<name>/` and
//! `fuzz/regressions/<name>/`). A function returns normally when the input was
//! handled as the decoder's contract says and panics (a libFuzzer crash, a
//! failed test) when it was not. Beyond "does not panic", each checks the
//! property its format promises:
//!
//! * **canonical encodings** (every binary format of the engine and the audit
//!   crate, the C2SP text formats): decode, and if it succeeds, encode again
//!   gives the very same bytes;
//! * **round trips** (protobuf messages, which admit several encodings of one
//!   value): decode, encode, decode gives an equal value;
//! * **limits and semantics**: a sealed store opens only over the bytes it
//!   wrote; a soft HSM file that loads can be rewritten and loads again; a node
//!   configuration that validates yields its derived configurations; pins that
//!   parse are complete and their text parses back to equal pins; the vault
//!   state machine keeps its invariants under any command sequence
//!   ([`vault_machine`]).
//!
//! [`TARGETS`] lists them all, by the name their fuzz target and corpus folder
//! carry.

use std::sync::OnceLock;

use raft::prelude::{ConfState, Entry, EntryType, HardState, Snapshot};
use vaultfleet::bytes::Bytes;
use vaultfleet::hsm::{Hsm, KeyKind, SoftHsm};
use vaultfleet::replica::decode_message;
use vaultfleet::storage::codec::{decode_record, encode_record};
use vaultfleet::storage::WrapperRecord;
use vaultfleet::wire::{self as engine_wire, entry_payload, EntryPayload};
use vaultfleet::{LogStore, MemLog, Sealed, SealedConfig};
use vaultfleet_audit::bundle::Bundle;
use vaultfleet_audit::cosigner::parse_tlog_size;
use vaultfleet_audit::fleet::evidence::Evidence;
use vaultfleet_audit::pins::Pins;
use vaultfleet_audit::submission::{Receipt, SignedSubmission};
use vaultfleet_audit::tiles::{parse_entry_bundle, parse_hash_tile, TilePath};
use vaultfleet_audit::witness::{leaf_bytes, parse_leaf, parse_log};
use vaultfleet_audit::{
    AddCheckpoint, Checkpoint, ConsistencyProof, EpochRetirement, FleetArtifact, NoteVerifier,
    SignedNote,
};
use vaultfleet_net::wire::client::{encode_reply, encode_request, ClientFrame};
use vaultfleet_net::wire::frame::{
    encode_chunk, encode_keepalive, encode_raft, encode_stream_credit, encode_stream_data,
    encode_stream_delivered, encode_stream_end, encode_stream_open, encode_stream_refused, Frame,
    FrameAssembler, RefusalReason, FRAME_LENGTH_BYTES,
};
use vaultfleet_net::wire::hello::Hello;
use vaultfleet_vault::wire as vwire;

mod vault_model;

pub use vault_model::vault_machine;

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target, by name (the fuzz target's and the corpus folder's).
pub const TARGETS: &[(&str, Target)] = &[
    ("raft_frame", raft_frame),
    ("raft_message", raft_message),
    ("entry_payload", entry_payload),
    ("net_hello", net_hello),
    ("net_client_frame", net_client_frame),
    ("vault_message", vault_message),
    ("fleet_artifact", fleet_artifact),
    ("bundle", bundle),
    ("evidence", evidence),
    ("epoch_retirement", epoch_retirement),
    ("consistency_proof", consistency_proof),
    ("signed_note", signed_note),
    ("tlog_tiles", tlog_tiles),
    ("add_checkpoint", add_checkpoint),
    ("submission", submission),
    ("witness_log", witness_log),
    ("storage_record", storage_record),
    ("sealed_store", sealed_store),
    ("soft_hsm_file", soft_hsm_file),
    ("node_config", node_config),
    ("pins", pins),
    ("vault_machine", vault_machine),
];

/// The largest frame the transport targets accept (the transport's default
/// limit is smaller; this keeps a fuzz input's frames whole).
const FUZZ_FRAME_BYTES_MAX: usize = 1 << 20;

/// Splits off the first byte as a selector (`0` for an empty input).
fn selector(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((&b, rest)) => (b, rest),
        None => (0, data),
    }
}

/// Asserts that `encoded` (a whole frame, length prefix included) is the
/// prefix for `body` followed by `body`.
fn assert_framed(encoded: &[u8], body: &[u8], what: &str) {
    assert_eq!(
        encoded.get(..FRAME_LENGTH_BYTES),
        Some(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes()[..]),
        "{what}: the re-encoded length prefix differs"
    );
    assert_eq!(
        &encoded[FRAME_LENGTH_BYTES..],
        body,
        "{what}: not canonical (re-encoding differs)"
    );
}

/// A raft message as the transport decodes it (protobuf 2): if it decodes,
/// its re-encoding decodes to a message with the same entries and an
/// encoding of the same length. (Not `==` on whole messages: protobuf 2 tells
/// an empty unknown-field set it touched from one it never made; not the same
/// bytes: it writes unknown fields in a `HashMap`'s order. See
/// `fuzz/regressions/raft_message/`.)
fn check_raft_message(payload: &[u8]) {
    let Ok(m) = decode_message(payload) else {
        return;
    };
    let again = match protobuf2::Message::write_to_bytes(&m) {
        Ok(b) => b,
        Err(e) => panic!("a decoded raft message does not re-encode: {e}"),
    };
    let m2 = match decode_message(&again) {
        Ok(m2) => m2,
        Err(e) => panic!("a re-encoded raft message does not decode: {e}"),
    };
    assert_eq!(m.entries, m2.entries, "raft message entries round trip");
    // Same length, not same bytes: protobuf 2 keeps unknown fields in a
    // `HashMap` and writes them in its (random) order.
    match protobuf2::Message::write_to_bytes(&m2) {
        Ok(third) => assert_eq!(again.len(), third.len(), "raft message round trip"),
        Err(e) => panic!("a re-decoded raft message does not re-encode: {e}"),
    }
}

/// The peer transport's receive path: decrypted bytes (the input, pushed in
/// pieces whose sizes the first byte picks) through the frame assembler, each
/// frame's header, then the raft message (protobuf 2) of raft frames and of a
/// snapshot sent as one chunk. Frames must re-encode to their bytes.
pub fn raft_frame(data: &[u8]) {
    let (piece, data) = selector(data);
    let piece = usize::from(piece).max(1);
    let mut assembler = FrameAssembler::new(FUZZ_FRAME_BYTES_MAX);
    for chunk in data.chunks(piece) {
        assembler.push(chunk);
        loop {
            let body = match assembler.next_frame() {
                Ok(Some(body)) => body,
                Ok(None) => break,
                // The connection closes: nothing more is read.
                Err(_) => return,
            };
            assert!(!body.is_empty() && body.len() <= FUZZ_FRAME_BYTES_MAX);
            let Ok(frame) = Frame::decode(&body) else {
                continue;
            };
            match frame {
                Frame::Raft { header, payload } => {
                    assert_framed(&encode_raft(header, payload), &body, "raft frame");
                    check_raft_message(payload);
                }
                Frame::Keepalive => assert_framed(&encode_keepalive(), &body, "keepalive"),
                Frame::SnapshotChunk { header, data } => {
                    assert_framed(&encode_chunk(header, data), &body, "snapshot chunk");
                    if header.offset == 0 && header.total == data.len() as u64 {
                        check_raft_message(data);
                    }
                }
                Frame::StreamOpen {
                    header,
                    descriptor,
                    message,
                } => {
                    assert_framed(
                        &encode_stream_open(header, descriptor, message),
                        &body,
                        "stream open",
                    );
                    check_raft_message(message);
                }
                Frame::StreamData { header, seq, data } => {
                    assert_framed(&encode_stream_data(header, seq, data), &body, "stream data");
                }
                Frame::StreamEnd { header } => {
                    assert_framed(&encode_stream_end(header), &body, "stream end");
                }
                Frame::StreamRefused { stream, reason } => {
                    // An unknown reason byte reads as Other (forward
                    // compatible): only a known one re-encodes as it came.
                    let byte = body.last().copied().unwrap_or(0);
                    if RefusalReason::from_byte(byte).to_byte() == byte {
                        assert_framed(
                            &encode_stream_refused(stream, reason),
                            &body,
                            "stream refused",
                        );
                    } else {
                        assert_eq!(
                            reason,
                            RefusalReason::Other,
                            "an unknown reason reads as Other"
                        );
                    }
                }
                Frame::StreamCredit { stream, granted } => {
                    assert_framed(
                        &encode_stream_credit(stream, granted),
                        &body,
                        "stream credit",
                    );
                }
                Frame::StreamDelivered { stream } => {
                    assert_framed(&encode_stream_delivered(stream), &body, "stream delivered");
                }
            }
        }
    }
    assert!(assembler.buffered() <= data.len());
}

/// The raft message decoder alone ([`decode_message`], protobuf 2 behind an
/// entry count bound): if it decodes, it round-trips.
pub fn raft_message(data: &[u8]) {
    check_raft_message(data);
}

/// A normal log entry's payload (`EntryPayload`, protobuf 3), which a leader
/// wrote and every replica decodes when it applies the entry, with its
/// commands as slices of the entry ([`engine_wire::decode_shared`]). That
/// decoder accepts exactly what the copying one ([`engine_wire::decode`])
/// accepts, with an equal value (a replica never skips an entry another
/// applies); a batch's commands lie inside the entry; a payload that decodes
/// round-trips. The in-place reader of canonical batches
/// (`wire::canonical_batch`) reads exactly what protobuf reads where it reads
/// at all, and reads every batch protobuf encodes.
pub fn entry_payload(data: &[u8]) {
    fn views(requests: &[engine_wire::Request]) -> Vec<engine_wire::RequestView<'_>> {
        requests.iter().map(Into::into).collect()
    }
    fn read_in_place(entry: &[u8]) -> Option<Vec<engine_wire::RequestView<'_>>> {
        let mut read = Vec::new();
        engine_wire::canonical_batch(entry, &mut read)
            .then(|| read.iter().map(|r| r.view(entry)).collect())
    }
    let entry = Bytes::copy_from_slice(data);
    let copied = engine_wire::decode::<EntryPayload>(data, "log entry payload");
    let sliced = engine_wire::decode_shared::<EntryPayload>(&entry, "log entry payload");
    let payload = match (copied, sliced) {
        (Ok(copied), Ok(sliced)) => {
            assert_eq!(copied, sliced, "the two decoders read different payloads");
            sliced
        }
        // What protobuf refuses (every older build skips it) the in-place
        // reader must refuse too, or this build applies what they skip.
        (Err(e), Err(_)) => {
            assert!(
                read_in_place(data).is_none(),
                "the in-place reader read a batch protobuf refuses ({e})"
            );
            return;
        }
        (copied, sliced) => panic!(
            "one decoder refused what the other accepted: copying {:?}, slicing {:?}",
            copied.err(),
            sliced.err()
        ),
    };
    // The in-place reader of canonical batches (what every replica applies
    // first) reads what protobuf reads, or leaves the entry to protobuf.
    if let Some(read) = read_in_place(data) {
        match &payload.kind {
            Some(entry_payload::Kind::Batch(batch)) => assert_eq!(
                read,
                views(&batch.requests),
                "the in-place reader read another batch than protobuf"
            ),
            other => panic!("the in-place reader read a batch where protobuf read {other:?}"),
        }
    }
    if let Some(entry_payload::Kind::Batch(batch)) = &payload.kind {
        let inside = entry.as_ptr_range();
        for r in batch.requests.iter().filter(|r| !r.command.is_empty()) {
            assert!(inside.contains(&r.command.as_ptr()), "a command was copied");
        }
    }
    let again = engine_wire::encode_bounded(&payload);
    let decoded: EntryPayload =
        engine_wire::decode(&again, "log entry payload").expect("a re-encoded payload decodes");
    assert_eq!(decoded, payload, "the payload does not round-trip");
    // protobuf's own encoding of a batch is canonical, read in place alike,
    // unless it carries fields unknown to this build (protobuf keeps them and
    // writes them back; the reader leaves such a batch to protobuf).
    let unknown =
        |fields: &protobuf::SpecialFields| fields.unknown_fields().iter().next().is_some();
    if let Some(entry_payload::Kind::Batch(batch)) = &payload.kind {
        if unknown(&payload.special_fields)
            || unknown(&batch.special_fields)
            || batch.requests.iter().any(|r| unknown(&r.special_fields))
        {
            return;
        }
        assert_eq!(
            read_in_place(&again),
            Some(views(&batch.requests)),
            "the in-place reader refused or misread protobuf's encoding of a batch"
        );
    }
}

/// A handshake's hello payload: canonical.
pub fn net_hello(data: &[u8]) {
    if let Ok(h) = Hello::decode(data) {
        assert_eq!(h.encode(), data, "hello not canonical");
    }
}

/// A client connection's frame body (requests and replies): canonical.
pub fn net_client_frame(data: &[u8]) {
    let Ok(frame) = ClientFrame::decode(data) else {
        return;
    };
    let encoded = match &frame {
        ClientFrame::Keepalive => encode_keepalive().to_vec(),
        ClientFrame::Request(r) => match encode_request(r) {
            Ok(b) => b,
            Err(e) => panic!("a decoded client request does not encode: {e}"),
        },
        ClientFrame::Reply(r) => match encode_reply(r) {
            Ok(b) => b,
            Err(e) => panic!("a decoded client reply does not encode: {e}"),
        },
    };
    assert_framed(&encoded, data, "client frame");
}

/// Decodes `data` as `M`; if it decodes, its re-encoding decodes to an equal
/// message. Returns the message.
fn proto_round_trip<M: protobuf::Message + PartialEq + std::fmt::Debug>(
    data: &[u8],
    what: &'static str,
) -> Option<M> {
    let m: M = vwire::decode(data, what).ok()?;
    let again = match vwire::encode(&m) {
        Ok(b) => b,
        Err(e) => panic!("a decoded {what} does not re-encode: {e}"),
    };
    match vwire::decode::<M>(&again, what) {
        Ok(m2) => assert_eq!(m, m2, "{what} round trip"),
        Err(e) => panic!("a re-encoded {what} does not decode: {e}"),
    }
    Some(m)
}

/// The vault's protocol messages (protobuf 3; the first byte picks which):
/// client requests, replies and their signed bodies, the replicated commands
/// and outcomes, snapshots. Each round-trips; a command is also applied to a
/// vault, and a snapshot restored (a restored vault snapshots to a message
/// that restores to the same vault).
pub fn vault_message(data: &[u8]) {
    use vaultfleet::StateMachine;
    use vaultfleet_vault::BackupVault;
    let (which, data) = selector(data);
    match which % 6 {
        0 => {
            proto_round_trip::<vwire::VaultClientRequest>(data, "vault client request");
        }
        1 => {
            proto_round_trip::<vwire::VaultReply>(data, "vault reply");
        }
        2 => {
            proto_round_trip::<vwire::VaultReplyBody>(data, "vault reply body");
        }
        3 => {
            proto_round_trip::<vwire::VaultOutcome>(data, "vault outcome");
        }
        4 => {
            // Any bytes may be proposed: the vault answers an outcome, always.
            let mut vault = BackupVault::new();
            let before = vault.clone();
            let answer = vault.apply(1, data);
            let outcome = proto_round_trip::<vwire::VaultOutcome>(&answer, "vault outcome");
            let Some(outcome) = outcome else {
                panic!("the vault answered bytes that are not an outcome");
            };
            assert_eq!(outcome.applied_at, 1);
            if outcome.status != vwire::VaultStatus::VAULT_OK.into() {
                assert_eq!(vault, before, "a refused command changed the vault");
            }
        }
        _ => {
            let mut vault = BackupVault::new();
            if vault.restore(data).is_err() {
                assert_eq!(
                    vault,
                    BackupVault::new(),
                    "a refused restore changed the vault"
                );
                return;
            }
            let snapshot = match vault.snapshot() {
                Ok(s) => s,
                Err(e) => panic!("a restored vault does not snapshot: {e}"),
            };
            let mut again = BackupVault::new();
            if let Err(e) = again.restore(&snapshot) {
                panic!("a restored vault's snapshot does not restore: {e}");
            }
            assert_eq!(vault, again, "vault snapshot round trip");
        }
    }
}

/// A fleet artifact: canonical (its digest is what witnesses sign).
pub fn fleet_artifact(data: &[u8]) {
    if let Ok(a) = FleetArtifact::decode(data) {
        match a.encode() {
            Ok(b) => assert_eq!(b, data, "fleet artifact not canonical"),
            Err(e) => panic!("a decoded fleet artifact does not encode: {e}"),
        }
    }
}

/// A validation bundle: canonical.
pub fn bundle(data: &[u8]) {
    if let Ok(b) = Bundle::decode(data) {
        match b.encode() {
            Ok(e) => assert_eq!(e, data, "bundle not canonical"),
            Err(e) => panic!("a decoded bundle does not encode: {e}"),
        }
    }
}

/// Deployment evidence: canonical.
pub fn evidence(data: &[u8]) {
    if let Ok(v) = Evidence::decode(data) {
        match v.encode() {
            Ok(e) => assert_eq!(e, data, "evidence not canonical"),
            Err(e) => panic!("decoded evidence does not encode: {e}"),
        }
    }
}

/// An epoch retirement: canonical.
pub fn epoch_retirement(data: &[u8]) {
    if let Ok(r) = EpochRetirement::decode(data) {
        match r.encode() {
            Ok(e) => assert_eq!(e, data, "epoch retirement not canonical"),
            Err(e) => panic!("a decoded retirement does not encode: {e}"),
        }
    }
}

/// A consistency proof: canonical, and never longer than a proof can be.
pub fn consistency_proof(data: &[u8]) {
    if let Ok(p) = ConsistencyProof::decode(data) {
        match p.encode() {
            Ok(e) => assert_eq!(e, data, "consistency proof not canonical"),
            Err(e) => panic!("a decoded consistency proof does not encode: {e}"),
        }
    }
}

/// Signed notes, checkpoints and verifier keys (C2SP signed-note,
/// tlog-checkpoint); the first byte picks which. Notes and checkpoints are
/// canonical: "the note text ... MUST be followed by a blank line and the
/// signature lines"; a checkpoint's size has no leading zeroes and its root is
/// standard base64.
pub fn signed_note(data: &[u8]) {
    let (which, data) = selector(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match which % 3 {
        0 => {
            if let Ok(note) = SignedNote::parse(text) {
                assert_eq!(note.encode(), text, "signed note not canonical");
                if let Ok(c) = Checkpoint::parse(&note.text) {
                    assert_eq!(c.body(), note.text, "checkpoint not canonical");
                }
            }
        }
        1 => {
            if let Ok(c) = Checkpoint::parse(text) {
                assert_eq!(c.body(), text, "checkpoint not canonical");
            }
        }
        _ => {
            if let Ok(v) = NoteVerifier::parse_vkey(text) {
                match NoteVerifier::parse_vkey(&v.vkey()) {
                    Ok(again) => assert_eq!(v, again, "verifier key round trip"),
                    Err(e) => panic!("a verifier key's own vkey does not parse: {e}"),
                }
            }
        }
    }
}

/// C2SP tlog-tiles: tile paths, entry bundles, hash tiles (the first byte
/// picks which; bundles and tiles take their width from the next two bytes).
/// All canonical: "`<N>` ... MUST be encoded as zero-padded 3-digit path
/// elements"; an entry bundle is exactly `width` length-prefixed entries.
pub fn tlog_tiles(data: &[u8]) {
    let (which, data) = selector(data);
    match which % 3 {
        0 => {
            let Ok(path) = std::str::from_utf8(data) else {
                return;
            };
            if let Ok(t) = TilePath::parse(path) {
                assert_eq!(t.encode(), path, "tile path not canonical");
                assert!((1..=256).contains(&t.width()));
            }
        }
        1 | 2 => {
            let Some((w, body)) = data.split_first_chunk::<2>() else {
                return;
            };
            let width = u16::from_be_bytes(*w);
            if which % 3 == 1 {
                if let Ok(entries) = parse_entry_bundle(body, width) {
                    assert_eq!(entries.len(), usize::from(width));
                    let mut again = Vec::with_capacity(body.len());
                    for e in &entries {
                        let len = u16::try_from(e.len()).unwrap_or(u16::MAX);
                        again.extend_from_slice(&len.to_be_bytes());
                        again.extend_from_slice(e);
                    }
                    assert_eq!(again, body, "entry bundle not canonical");
                }
            } else if let Ok(hashes) = parse_hash_tile(body, width) {
                assert_eq!(hashes.len(), usize::from(width));
                assert_eq!(hashes.concat(), body, "hash tile");
            }
        }
        _ => unreachable!(),
    }
}

/// A tlog-witness `add-checkpoint` body, and a `text/x.tlog.size` 409 body (the
/// first byte picks): canonical.
pub fn add_checkpoint(data: &[u8]) {
    let (which, data) = selector(data);
    if which % 2 == 0 {
        if let Ok(a) = AddCheckpoint::parse(data) {
            assert_eq!(a.encode().as_bytes(), data, "add-checkpoint not canonical");
            assert!(
                a.proof.len() <= 63,
                "more proof lines than tlog-witness allows"
            );
        }
    } else if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(n) = parse_tlog_size(text) {
            assert_eq!(format!("{n}\n"), text, "tlog size not canonical");
        }
    }
}

/// Operator submissions (binary, canonical) and the witness's receipts (text:
/// they round-trip; the first byte picks).
pub fn submission(data: &[u8]) {
    let (which, data) = selector(data);
    if which % 2 == 0 {
        if let Ok(s) = SignedSubmission::decode(data) {
            match s.encode() {
                Ok(e) => assert_eq!(e, data, "submission not canonical"),
                Err(e) => panic!("a decoded submission does not encode: {e}"),
            }
        }
    } else if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(r) = Receipt::parse(text) {
            match Receipt::parse(&r.encode()) {
                Ok(again) => assert_eq!(r, again, "receipt round trip"),
                Err(e) => panic!("a receipt's own encoding does not parse: {e}"),
            }
        }
    }
}

/// The witness's log: one leaf as its tlog-tiles entry (binary, canonical) or
/// the log's text form (each statement's line re-parses to the same
/// statement; the first byte picks).
pub fn witness_log(data: &[u8]) {
    let (which, data) = selector(data);
    if which % 2 == 0 {
        if let Ok(w) = parse_leaf(data, 7) {
            assert_eq!(w.leaf_index, 7);
            match leaf_bytes(&w.statement, &w.key, &w.signature) {
                Ok(b) => assert_eq!(b, data, "log leaf not canonical"),
                Err(e) => panic!("a parsed leaf does not encode: {e}"),
            }
        }
    } else if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(log) = parse_log(text) {
            let rendered: String = log
                .iter()
                .map(|w| {
                    let receipt = Receipt {
                        witnessed: w.clone(),
                    }
                    .encode();
                    let line = receipt.split('\n').next().unwrap_or_default();
                    format!("{line}\n")
                })
                .collect();
            match parse_log(&rendered) {
                Ok(again) => assert_eq!(log, again, "witness log round trip"),
                Err(e) => panic!("a rendered witness log does not parse: {e}"),
            }
        }
    }
}

/// The stored records of the sled log and the plaintext of sealed records
/// (entries, hard states, snapshots, behind a version byte; the first byte
/// picks which): canonical.
pub fn storage_record(data: &[u8]) {
    let (which, data) = selector(data);
    let again = match which % 3 {
        0 => decode_record::<Entry>(data).map(|v| encode_record(&v)),
        1 => decode_record::<HardState>(data).map(|v| encode_record(&v)),
        _ => decode_record::<Snapshot>(data).map(|v| encode_record(&v)),
    };
    match again {
        Ok(Ok(bytes)) => assert_eq!(bytes, data, "stored record not canonical"),
        Ok(Err(e)) => panic!("a decoded stored record does not encode: {e}"),
        Err(_) => {}
    }
}

fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
    let mut e = Entry::default();
    e.set_entry_type(EntryType::EntryNormal);
    e.index = index;
    e.term = term;
    e.data = data.to_vec().into();
    e
}

/// A sealed store's inner log as [`Sealed`] left it (three batches, a kept
/// snapshot, a head), and the HSM that sealed it. Built once: a deterministic
/// soft HSM makes it the same bytes every time.
fn sealed_fixture() -> &'static (MemLog, SoftHsm, SealedConfig, MemLog) {
    static FIXTURE: OnceLock<(MemLog, SoftHsm, SealedConfig, MemLog)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let hsm = SoftHsm::from_seed(17);
        let cfg = SealedConfig::new(1, 1);
        let mut s = match Sealed::open(MemLog::new(), hsm.clone(), cfg.clone()) {
            Ok(s) => s,
            Err(e) => panic!("a fresh sealed store does not open: {e}"),
        };
        let steps = (|| {
            s.append(&[entry(1, 1, b"one"), entry(2, 1, b"two"), entry(3, 1, b"")])?;
            let mut hs = HardState::default();
            hs.term = 1;
            hs.vote = 1;
            hs.commit = 3;
            s.set_hard_state(&hs)?;
            s.sync()?;
            let mut snap = Snapshot::default();
            snap.mut_metadata().index = 2;
            snap.mut_metadata().term = 1;
            snap.mut_metadata()
                .set_conf_state(ConfState::from((vec![1, 2, 3], vec![])));
            snap.data = b"state at 2".to_vec().into();
            s.save_snapshot(&snap)?;
            s.append(&[entry(4, 2, b"four")])?;
            s.sync()?;
            s.append(&[entry(5, 2, b"five"), entry(6, 2, b"six")])?;
            s.sync()
        })();
        if let Err(e) = steps {
            panic!("building the sealed fixture: {e}");
        }
        (s.inner().clone(), hsm, cfg, s.cached().clone())
    })
}

/// Sealed records as an untrusted disk hands them back: the input replaces
/// one record of a sealed store (the first byte picks: the head, one entry's
/// data or context, the snapshot's data). [`Sealed::open`] must refuse every
/// change of a record it reads, open the unchanged store, and whenever it
/// opens, serve exactly what was sealed.
///
/// The inner entries' `context` is the one field `Sealed` never reads (the
/// sealed batch in the first entry's data carries every entry whole): a store
/// whose inner contexts were changed opens, and serves the sealed entries.
pub fn sealed_store(data: &[u8]) {
    use raft::Storage as _;
    let (fixture, hsm, cfg, sealed_view) = sealed_fixture();
    let (which, data) = selector(data);
    let mut inner = fixture.clone();
    let (first, last) = (inner.first(), inner.last());
    let slots = last - first + 1;
    let changed = match u64::from(which) % (2 * slots + 2) {
        0 => {
            let changed = inner.wrapper_record() != data;
            if let Err(e) = inner.set_wrapper_record(data) {
                panic!("MemLog refused a record: {e}");
            }
            changed
        }
        1 => {
            let mut snap = inner.latest_snapshot().clone();
            let changed = snap.data[..] != *data;
            snap.data = data.to_vec().into();
            if let Err(e) = inner.save_snapshot(&snap) {
                panic!("MemLog refused a snapshot: {e}");
            }
            changed
        }
        k => {
            let k = k - 2;
            let index = first + k / 2;
            let ctx = raft::GetEntriesContext::empty(false);
            let mut entries = match inner.entries(index, last + 1, None, ctx) {
                Ok(e) => e,
                Err(e) => panic!("MemLog lost its entries: {e}"),
            };
            let e = &mut entries[0];
            let field = if k % 2 == 0 {
                &mut e.data
            } else {
                &mut e.context
            };
            // Sealed never reads the inner context (see above).
            let changed = k % 2 == 0 && field[..] != *data;
            *field = data.to_vec().into();
            if let Err(e) = inner.append(&entries) {
                panic!("MemLog refused an append: {e}");
            }
            changed
        }
    };
    match Sealed::open(inner, hsm.clone(), cfg.clone()) {
        Ok(s) => {
            assert!(
                !changed,
                "a sealed store opened over a record the disk changed"
            );
            assert_eq!(s.hard_state(), sealed_view.hard_state());
            assert_eq!(s.latest_snapshot(), sealed_view.latest_snapshot());
            let (first, last) = (sealed_view.first(), sealed_view.last());
            assert_eq!((s.cached().first(), s.cached().last()), (first, last));
            for i in first..=last {
                assert_eq!(
                    s.cached().entry(i),
                    sealed_view.entry(i),
                    "entry {i} served"
                );
            }
        }
        Err(e) => assert!(changed, "the unchanged sealed store does not open: {e}"),
    }
}

/// The soft HSM's file. The input is the file (odd first byte), or its body
/// after the marker with the marker and a correct checksum added (even first
/// byte, so the decoder behind the checksum is reached). A file that loads is
/// rewritten by the next key creation, and the rewritten file loads again with
/// that key.
pub fn soft_hsm_file(data: &[u8]) {
    use sha2::{Digest as _, Sha256};
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    const MAGIC: &[u8] = b"vaultfleet-softhsm-v1\n";
    let dir = DIR.get_or_init(|| match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("no temporary directory: {e}"),
    });
    let (which, data) = selector(data);
    let file = if which % 2 == 0 {
        let mut f = MAGIC.to_vec();
        f.extend_from_slice(data);
        let sum = Sha256::digest(&f);
        f.extend_from_slice(&sum);
        f
    } else {
        data.to_vec()
    };
    // One file per call: tests replay in parallel in one process.
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.path().join(format!("softhsm-{call}.bin"));
    if let Err(e) = std::fs::write(&path, &file) {
        panic!("writing the soft HSM file: {e}");
    }
    let Ok(hsm) = SoftHsm::open(&path) else {
        return;
    };
    let label = "vaultfleet-fuzz/round-trip";
    let existed = matches!(hsm.find_key(label, KeyKind::Mac), Ok(Some(_)));
    let key = match hsm.key(label, KeyKind::Mac) {
        Ok(k) => k,
        Err(e) => panic!("a loaded soft HSM does not create a key: {e}"),
    };
    let tag = hsm.mac(key, b"fuzz");
    let again = match SoftHsm::open(&path) {
        Ok(h) => h,
        Err(e) => panic!("a soft HSM file rewritten by the HSM does not load: {e}"),
    };
    let key2 = match again.find_key(label, KeyKind::Mac) {
        Ok(Some(k)) => k,
        other => panic!("the key is not in the rewritten file (existed: {existed}): {other:?}"),
    };
    assert_eq!(
        tag.ok(),
        again.mac(key2, b"fuzz").ok(),
        "the rewritten file holds another key"
    );
    let _ = std::fs::remove_file(&path);
}

/// The node daemon's configuration file (TOML, then its validation): a
/// configuration that validates yields its derived configurations without
/// panicking.
pub fn node_config(data: &[u8]) {
    use vaultfleet_node::config::NodeConfig;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = toml::from_str::<NodeConfig>(text) else {
        return;
    };
    if config.validate().is_err() {
        return;
    }
    let fleet = config.fleet_config();
    assert!(!fleet.members.is_empty(), "a valid config without members");
    let _ = config.replica_config();
    let _ = config.node_config();
    let _ = config.fleet_verifier();
}

/// The auditor's pins file (`vaultfleet_audit::pins`, read by `vaultfleet
/// audit verify|log|bundle`): any text gives pins or a typed error. Pins that
/// parse are complete (a namespace, a witness key, a threshold of at least
/// one; cosigners only with a number required), and their text
/// ([`Pins::to_text`]) parses back to equal pins.
pub fn pins(data: &[u8]) {
    // The command reads the file as UTF-8 text and refuses anything else.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(p) = Pins::parse(text) else {
        return;
    };
    assert!(
        !p.namespace.is_empty() && !p.witness.is_empty() && p.audit.threshold > 0,
        "incomplete pins accepted: {p:?}"
    );
    assert!(
        p.cosigners.is_empty() || p.cosigners_required > 0,
        "cosigners pinned with none required: {p:?}"
    );
    match Pins::parse(&p.to_text()) {
        Ok(again) => assert_eq!(again, p, "pins text round trip"),
        Err(e) => panic!("the text of parsed pins does not parse: {e}"),
    }
}
