//! The [`BackupVault`](super::BackupVault)'s snapshot as a stream: written user
//! by user from the live map or from a frozen [`CowView`] of it, and read back
//! user by user with a bounded reader, never holding the whole encoding.
//!
//! The bytes are those of a `VaultSnapshot` protocol buffer as
//! [`StateMachine::snapshot`](vaultfleet::state_machine::StateMachine::snapshot)
//! encodes it: protobuf writes fields in number order, so field 1
//! (`users`, one length-delimited `VaultUserState` per user, in key order) comes
//! first and field 2 (`last_ticket`) last. A stream under 2 GiB therefore
//! restores with either reader.
//!
//! The reader accepts exactly that shape: tag 1 records while users come, then
//! one tag 2 and the end. It is stricter than the whole-buffer decoder of
//! `restore`: it refuses unknown fields, a stream without the clock (cut at a
//! user boundary; inline snapshots of builds before the clock still go through
//! `restore`) and a record cut between two of its fields (which protobuf reads
//! as a user without them), and it bounds every record by
//! [`USER_STATE_BYTES_MAX`] before buffering a byte of it.

use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};

use super::user::UserState;
use super::{FIELD_MAX, REGISTRATIONS_MAX, REGISTRATION_TAG_MAX, REQUEST_DIGEST_BYTES, SEEN_MAX};
use crate::limits::{MAX_ATTEMPTS_LIMIT, USER_ID_MAX};
use crate::user_id::UserId;
use crate::wire::VaultUserState;
use protobuf::Message;
use vaultfleet::state_machine::{CaptureError, CowMap, CowView, RestoreError, SnapshotView};

/// The tag of `VaultSnapshot.users` (field 1, length-delimited).
const TAG_USERS: u64 = (1 << 3) | 2;
/// The tag of `VaultSnapshot.last_ticket` (field 2, varint).
const TAG_LAST_TICKET: u64 = 2 << 3;
/// A varint is at most this many bytes.
const VARINT_BYTES_MAX: usize = 10;
/// Buffer size of the writer and the reader.
const STREAM_BUFFER_BYTES: usize = 64 * 1024;

/// The largest `VaultUserState` encoding the stream reader accepts. It bounds
/// what one hostile record can make a restoring replica allocate.
pub(super) const USER_STATE_BYTES_MAX: usize = 256 * 1024;

/// A length-delimited field of `n` bytes, with its tag and a maximal length.
const fn bytes(n: usize) -> usize {
    n + 1 + 5
}

/// A generous upper bound on the encoding of any user state `apply` can build
/// (each field counted with a 1-byte tag and a maximal length prefix).
const USER_STATE_REACHABLE_MAX: usize = {
    let varint = VARINT_BYTES_MAX + 1;
    let attempts = MAX_ATTEMPTS_LIMIT as usize;
    let record = bytes(FIELD_MAX) * 2
        + bytes(32)
        + bytes(REGISTRATION_TAG_MAX)
        + 4 * varint
        + bytes(attempts * VARINT_BYTES_MAX);
    let seen = bytes(bytes(2 * varint) + bytes(REQUEST_DIGEST_BYTES) + 2 * varint);
    bytes(USER_ID_MAX)
        + bytes(record)
        + 3 * varint
        + bytes(32)
        + (SEEN_MAX + attempts + 1) * seen
        + REGISTRATIONS_MAX * bytes(32)
};
const _: () = assert!(USER_STATE_REACHABLE_MAX < USER_STATE_BYTES_MAX);

fn malformed(what: &'static str) -> RestoreError {
    RestoreError::Malformed { what }
}

fn put_varint(out: &mut impl Write, mut v: u64) -> io::Result<()> {
    let mut buf = [0u8; VARINT_BYTES_MAX];
    let mut n = 0;
    loop {
        let low = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            buf[n] = low;
            n += 1;
            break;
        }
        buf[n] = low | 0x80;
        n += 1;
    }
    out.write_all(&buf[..n])
}

/// Writes a `VaultSnapshot` of `users` (in key order) and the ticket clock.
pub(super) fn write_snapshot<'a>(
    users: impl Iterator<Item = (&'a UserId, &'a UserState)>,
    last_ticket: u64,
    out: &mut dyn Write,
) -> Result<(), CaptureError> {
    let mut out = BufWriter::with_capacity(STREAM_BUFFER_BYTES, out);
    let mut record = Vec::new();
    for (user, state) in users {
        record.clear();
        state
            .to_wire(user)
            .write_to_vec(&mut record)
            .map_err(|e| CaptureError::Encode(wire_encode_error(e)))?;
        put_varint(&mut out, TAG_USERS).map_err(CaptureError::Io)?;
        put_varint(&mut out, record.len() as u64).map_err(CaptureError::Io)?;
        out.write_all(&record).map_err(CaptureError::Io)?;
    }
    put_varint(&mut out, TAG_LAST_TICKET).map_err(CaptureError::Io)?;
    put_varint(&mut out, last_ticket).map_err(CaptureError::Io)?;
    out.flush().map_err(CaptureError::Io)
}

fn wire_encode_error(e: protobuf::Error) -> vaultfleet::wire::EncodeError {
    vaultfleet::wire::EncodeError {
        what: VaultUserState::NAME,
        source: e.into(),
    }
}

/// A frozen view of a vault, written out later (possibly on another thread).
pub(super) struct VaultView {
    pub(super) users: CowView<UserId, UserState>,
    pub(super) last_ticket: u64,
}

impl SnapshotView for VaultView {
    fn snapshot_to(&self, out: &mut dyn Write) -> Result<(), CaptureError> {
        write_snapshot(self.users.iter(), self.last_ticket, out)
    }
}

/// Reads one varint; `Ok(None)` at a clean end of the stream (before its
/// first byte).
fn read_varint(input: &mut impl BufRead) -> Result<Option<u64>, RestoreError> {
    let mut value = 0u64;
    for i in 0..VARINT_BYTES_MAX {
        let byte = loop {
            match input.fill_buf() {
                Ok([]) if i == 0 => return Ok(None),
                Ok([]) => return Err(malformed("vault snapshot stream ends inside a varint")),
                Ok(buf) => break buf[0],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(RestoreError::Io(e)),
            }
        };
        input.consume(1);
        // The tenth byte may only carry the top bit of a u64.
        if i == VARINT_BYTES_MAX - 1 && byte > 1 {
            return Err(malformed("vault snapshot stream holds an overlong varint"));
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some(value));
        }
    }
    Err(malformed("vault snapshot stream holds an overlong varint"))
}

/// Decodes one user record as the whole-snapshot decoder would: under a limit
/// of its own length, so a field claiming more than the record holds is an
/// error (protobuf reads a message that ends early at its buffer's end as if
/// its remaining fields were absent; the limit turns that into an error).
fn decode_user(record: &[u8]) -> Result<VaultUserState, RestoreError> {
    let error = |e: protobuf::Error| vaultfleet::wire::DecodeError {
        what: "vault snapshot user",
        source: e.into(),
    };
    let mut input = protobuf::CodedInputStream::from_bytes(record);
    let outer = input.push_limit(record.len() as u64).map_err(error)?;
    let mut user = VaultUserState::new();
    user.merge_from(&mut input).map_err(error)?;
    input.pop_limit(outer);
    Ok(user)
}

/// What [`read_snapshot`] parsed: the users and the ticket clock, checked as
/// `restore` checks them.
pub(super) struct Restored {
    pub(super) users: CowMap<UserId, UserState>,
    pub(super) last_ticket: u64,
}

/// Parses a `VaultSnapshot` stream, one bounded record at a time.
pub(super) fn read_snapshot(input: &mut dyn Read) -> Result<Restored, RestoreError> {
    let mut input = BufReader::with_capacity(STREAM_BUFFER_BYTES, input);
    let mut users = CowMap::new();
    let mut greatest = 0;
    let mut clock = None;
    let mut record = Vec::new();
    while let Some(tag) = read_varint(&mut input)? {
        if clock.is_some() {
            return Err(malformed(
                "vault snapshot stream goes on after its ticket clock",
            ));
        }
        match tag {
            TAG_USERS => {
                let len = read_varint(&mut input)?.ok_or(malformed(
                    "vault snapshot stream ends before a user's length",
                ))?;
                if len > USER_STATE_BYTES_MAX as u64 {
                    return Err(malformed("vault snapshot stream holds an oversized user"));
                }
                record.resize(len as usize, 0);
                input.read_exact(&mut record).map_err(|e| {
                    if e.kind() == io::ErrorKind::UnexpectedEof {
                        malformed("vault snapshot stream ends inside a user")
                    } else {
                        RestoreError::Io(e)
                    }
                })?;
                let (user, state) = UserState::from_wire(decode_user(&record)?)?;
                greatest = greatest.max(state.greatest_ticket());
                if users.insert(user, state).is_some() {
                    return Err(malformed("vault snapshot lists a user twice"));
                }
            }
            TAG_LAST_TICKET => {
                clock = Some(read_varint(&mut input)?.ok_or(malformed(
                    "vault snapshot stream ends before its ticket clock",
                ))?);
            }
            _ => return Err(malformed("vault snapshot stream holds an unknown field")),
        }
    }
    // Every stream `write_snapshot` writes ends with the clock: without it the
    // stream was cut (at a user boundary, where nothing else shows it), or it
    // is an inline snapshot of a build before the clock, which `restore` reads.
    let Some(last_ticket) = clock else {
        return Err(malformed(
            "vault snapshot stream ends before its ticket clock",
        ));
    };
    // As in `restore`: the clock must be at or after every ticket the state
    // holds, or it would issue one of them again.
    if last_ticket < greatest {
        return Err(malformed(
            "vault snapshot holds a ticket after its ticket clock",
        ));
    }
    Ok(Restored { users, last_ticket })
}

#[cfg(test)]
mod tests {
    use super::super::BackupVault;
    use super::*;
    use crate::wire::{
        self, vault_command, VaultCommand, VaultConsume, VaultDelete, VaultRegister,
        VaultRequestId, VaultReset, VaultSeen, VaultSnapshot,
    };
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use vaultfleet::state_machine::StateMachine;

    /// A reader that hands out one byte per call: the parser must not depend on
    /// how its input is cut.
    struct OneByte<'a>(&'a [u8]);

    impl Read for OneByte<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match (self.0.split_first(), buf.first_mut()) {
                (Some((b, rest)), Some(slot)) => {
                    *slot = *b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    /// A vault built by random commands over a few users (registered, locked,
    /// deleted; spent, forgiven and seen tickets), plus `bulk` bench users.
    fn random_vault(seed: u64, commands: usize, bulk: u64) -> BackupVault {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut v = BackupVault::new();
        for i in 0..bulk {
            assert!(
                v.insert_user_for_bench(format!("bulk-{:08}", i * 7919 % 100_003).as_bytes(), i)
            );
        }
        let mut tickets: Vec<(String, u64, u64)> = Vec::new();
        for index in 1..=commands as u64 {
            let user = format!("user-{}", rng.gen_range(0..6));
            let op = match rng.gen_range(0..10) {
                0 | 1 if v.user(user.as_bytes()).is_none() || rng.gen_bool(0.1) => {
                    let mut r = VaultRegister::new();
                    r.opaque_record = vec![rng.gen(); rng.gen_range(1..200)];
                    r.sealed_secret = vec![rng.gen(); rng.gen_range(1..80)];
                    r.credential_nonce = (0..32).map(|_| rng.gen()).collect();
                    r.max_attempts = rng.gen_range(1..4);
                    vault_command::Op::Register(r)
                }
                2..=5 => {
                    let mut c = VaultConsume::new();
                    c.request_digest = vec![rng.gen(); 32];
                    vault_command::Op::Consume(c)
                }
                6 if !tickets.is_empty() => {
                    let (u, ticket, generation) = tickets[rng.gen_range(0..tickets.len())].clone();
                    let mut x = VaultReset::new();
                    x.ticket = ticket;
                    x.generation = generation;
                    let mut c = command(&u, index, vault_command::Op::Reset(x));
                    c.request = Some(request(index)).into();
                    v.apply(index, &wire::encode_bounded(&c));
                    continue;
                }
                _ if !tickets.is_empty() => {
                    let (u, ticket, generation) = tickets[rng.gen_range(0..tickets.len())].clone();
                    let mut x = VaultDelete::new();
                    x.ticket = ticket;
                    x.generation = generation;
                    let c = command(&u, index, vault_command::Op::Delete(x));
                    v.apply(index, &wire::encode_bounded(&c));
                    continue;
                }
                _ => continue,
            };
            let consume = matches!(op, vault_command::Op::Consume(_));
            let c = command(&user, index, op);
            let o =
                super::super::decode_outcome(&v.apply(index, &wire::encode_bounded(&c))).unwrap();
            if consume && o.ticket != 0 {
                tickets.push((user, o.ticket, o.generation));
            }
        }
        v
    }

    fn request(sequence: u64) -> VaultRequestId {
        let mut r = VaultRequestId::new();
        r.client = 1;
        r.sequence = sequence;
        r
    }

    fn command(user: &str, sequence: u64, op: vault_command::Op) -> VaultCommand {
        let mut c = VaultCommand::new();
        c.user = user.as_bytes().to_vec();
        c.request = Some(request(sequence)).into();
        c.op = Some(op);
        c
    }

    fn streamed(v: &BackupVault) -> Vec<u8> {
        let mut out = Vec::new();
        v.snapshot_to(&mut out).unwrap();
        out
    }

    fn view_bytes(view: &dyn SnapshotView) -> Vec<u8> {
        let mut out = Vec::new();
        view.snapshot_to(&mut out).unwrap();
        out
    }

    fn restored_from(bytes: &[u8]) -> Result<BackupVault, RestoreError> {
        let mut v = BackupVault::new();
        v.restore_from(&mut OneByte(bytes))?;
        Ok(v)
    }

    #[test]
    fn the_stream_is_the_snapshot_byte_for_byte_and_restores_to_the_same_vault() {
        let mut kinds = [0usize; 3];
        for seed in 0..60 {
            let v = random_vault(seed, 300, seed % 3 * 50);
            let whole = v.snapshot().unwrap();
            assert_eq!(streamed(&v), whole, "seed {seed}");
            assert_eq!(
                view_bytes(&*v.snapshot_view().unwrap()),
                whole,
                "seed {seed}"
            );
            let back = restored_from(&whole).unwrap();
            assert_eq!(back, v, "seed {seed}");
            assert_eq!(back.snapshot().unwrap(), whole, "seed {seed}");
            let mut old_path = BackupVault::new();
            old_path.restore(&streamed(&v)).unwrap();
            assert_eq!(old_path, v, "seed {seed}");
            for (_, u) in v.users.iter() {
                kinds[match u.standing {
                    super::super::Standing::Registered { .. } => 0,
                    super::super::Standing::Locked { .. } => 1,
                    super::super::Standing::Deleted { .. } => 2,
                }] += 1;
            }
        }
        assert!(
            kinds.iter().all(|&k| k > 10),
            "every standing is covered: {kinds:?}"
        );
    }

    // The view is written on another thread: what the test is about.
    #[allow(clippy::disallowed_methods)]
    #[test]
    fn a_view_keeps_the_state_it_was_taken_from() {
        for seed in 0..20 {
            let mut v = random_vault(seed, 200, 300);
            let before = v.snapshot().unwrap();
            let view = v.snapshot_view().unwrap();
            // Change the vault under the view: new commands and new users.
            let more = random_vault(seed + 1000, 200, 0);
            for (user, state) in more.users.iter() {
                v.users.insert(user.clone(), state.clone());
            }
            for i in 0..50u64 {
                v.insert_user_for_bench(format!("late-{i}").as_bytes(), i);
            }
            assert_ne!(v.snapshot().unwrap(), before);
            let bytes = std::thread::spawn(move || view_bytes(&*view))
                .join()
                .unwrap();
            assert_eq!(bytes, before, "seed {seed}: the view changed");
        }
    }

    /// Every strict prefix is refused: the stream always ends with the clock,
    /// so a cut even at a user boundary is caught. (The buffer decoder is more
    /// lenient: protobuf reads a prefix cut between two fields of the last user
    /// as a user without those fields.)
    #[test]
    fn every_prefix_of_a_stream_is_refused() {
        let v = random_vault(7, 200, 20);
        let whole = v.snapshot().unwrap();
        for cut in 0..whole.len() {
            match restored_from(&whole[..cut]) {
                Err(RestoreError::Malformed { .. } | RestoreError::Decode(_)) => {}
                other => panic!("cut {cut} of {}: {other:?}", whole.len()),
            }
        }
        assert_eq!(restored_from(&whole).unwrap(), v);
    }

    #[test]
    fn hostile_streams_get_typed_errors_never_a_panic() {
        let v = random_vault(3, 100, 5);
        let good = v.snapshot().unwrap();
        let why = |bytes: &[u8]| match restored_from(bytes) {
            Err(RestoreError::Malformed { what }) => what,
            other => panic!("expected a malformed stream, got {other:?}"),
        };
        // Oversized records are refused from their length alone.
        let mut huge = Vec::new();
        put_varint(&mut huge, TAG_USERS).unwrap();
        put_varint(&mut huge, USER_STATE_BYTES_MAX as u64 + 1).unwrap();
        assert_eq!(why(&huge), "vault snapshot stream holds an oversized user");
        huge.truncate(1);
        put_varint(&mut huge, u64::MAX).unwrap();
        assert_eq!(why(&huge), "vault snapshot stream holds an oversized user");
        assert_eq!(
            why(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]),
            "vault snapshot stream holds an overlong varint"
        );
        // Unknown fields, and anything after the clock.
        assert_eq!(
            why(&[0x18, 0x01]),
            "vault snapshot stream holds an unknown field"
        );
        let mut after = good.clone();
        after.extend_from_slice(&[0x10, 0x05]);
        assert_eq!(
            why(&after),
            "vault snapshot stream goes on after its ticket clock"
        );
        // A user twice.
        let s: VaultSnapshot = wire::decode(&good, "vault snapshot").unwrap();
        let mut twice = s.clone();
        twice.users.push(s.users[0].clone());
        twice.users.sort_by(|a, b| a.user.cmp(&b.user));
        assert_eq!(
            why(&wire::encode(&twice).unwrap()),
            "vault snapshot lists a user twice"
        );
        // A clock behind a ticket the state holds.
        let mut behind = s.clone();
        let mut seen = VaultSeen::new();
        seen.ticket = s.last_ticket.unwrap() + 1;
        behind.users[0].seen.push(seen);
        assert_eq!(
            why(&wire::encode(&behind).unwrap()),
            "vault snapshot holds a ticket after its ticket clock"
        );
        // A record that is not a VaultUserState.
        assert!(matches!(
            restored_from(&[0x0a, 0x02, 0xff, 0xff]),
            Err(RestoreError::Decode(_))
        ));
        // Garbage: refused with a typed error, or (rarely) a state the buffer
        // decoder also reads the same way. Never a panic.
        let mut rng = ChaCha8Rng::seed_from_u64(99);
        for _ in 0..2_000 {
            let mut bytes = good.clone();
            for _ in 0..rng.gen_range(1..4) {
                let at = rng.gen_range(0..bytes.len());
                bytes[at] = rng.gen();
            }
            if let Ok(streamed) = restored_from(&bytes) {
                let mut by_buffer = BackupVault::new();
                by_buffer.restore(&bytes).unwrap();
                assert_eq!(streamed, by_buffer);
            }
            let noise: Vec<u8> = (0..rng.gen_range(0..64)).map(|_| rng.gen()).collect();
            let _ = restored_from(&noise);
        }
        // A failed restore leaves the vault as it was.
        let mut kept = v.clone();
        assert!(kept.restore_from(&mut &huge[..]).is_err());
        assert_eq!(kept, v);
    }

    #[test]
    fn io_errors_are_typed_on_both_sides() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk gone"))
            }
        }
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk gone"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let v = random_vault(1, 50, 2_000);
        assert!(matches!(
            v.snapshot_to(&mut Broken),
            Err(CaptureError::Io(_))
        ));
        let mut w = BackupVault::new();
        assert!(matches!(
            w.restore_from(&mut Broken),
            Err(RestoreError::Io(_))
        ));
    }

    #[test]
    fn a_user_at_every_limit_fits_the_record_bound_and_streams_back() {
        let mut v = BackupVault::new();
        assert!(v.insert_user_for_bench(&[b'u'; USER_ID_MAX], 1));
        let mut users: Vec<_> = v
            .users
            .iter()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        let (user, state) = &mut users[0];
        if let super::super::Standing::Registered { record } = &mut state.standing {
            record.opaque_record = vec![1; FIELD_MAX];
            record.sealed_secret = vec![2; FIELD_MAX];
            record.max_attempts = MAX_ATTEMPTS_LIMIT;
            record.spent = (u64::MAX - u64::from(MAX_ATTEMPTS_LIMIT)..u64::MAX).collect();
        }
        let mut seen = VaultSeen::new();
        seen.request = Some(request(u64::MAX)).into();
        seen.request_digest = vec![3; REQUEST_DIGEST_BYTES];
        seen.ticket = u64::MAX;
        seen.generation = u64::MAX;
        state.seen = vec![seen; SEEN_MAX + MAX_ATTEMPTS_LIMIT as usize + 1];
        state.used_nonces = vec![vec![4; 32]; REGISTRATIONS_MAX];
        let len = state.to_wire(user).compute_size() as usize;
        assert!(
            len <= USER_STATE_REACHABLE_MAX,
            "{len} > {USER_STATE_REACHABLE_MAX}"
        );
        v.users.insert(user.clone(), state.clone());
        v.last_ticket = u64::MAX;
        let back = restored_from(&streamed(&v)).unwrap();
        assert_eq!(back, v);
        assert_eq!(v.blank(), Some(BackupVault::new()));
    }
}
