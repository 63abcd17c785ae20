//! The encodings of raft's records (entries, hard state, snapshots) on the
//! engine's [`codec`](crate::codec), for [`SledLog`](super::SledLog)'s values and
//! the plaintext of [`Sealed`](super::Sealed)'s records.
//!
//! Big-endian integers, `u32`-length-prefixed byte strings with a maximum per
//! field, read strictly: every length is checked against what is left, nothing
//! is trailing, and any defect is a typed [`DecodeError`]. It replaces protobuf 2
//! for bytes read back from an untrusted disk, whose decoder has a known
//! stack-overflow advisory (see `docs/architecture.md` §8).
//!
//! A stored record is [`RECORD_VERSION`] followed by the record's encoding
//! ([`encode_record`], [`decode_record`]). Version 1 (before the one codec)
//! used `u64` length prefixes; it is not read.

use raft::prelude::{ConfState, Entry, EntryType, HardState, Snapshot};

use crate::codec::{Codec, DecodeError, EncodeError, Prefix, Reader, Writer};

/// The version byte in front of every stored record.
pub const RECORD_VERSION: u8 = 2;

/// The most bytes of an entry's data, or of its context.
pub const ENTRY_FIELD_BYTES_MAX: usize = Prefix::U32.max();

/// The most bytes of a snapshot's data.
pub const SNAPSHOT_BYTES_MAX: usize = Prefix::U32.max();

/// The most replica ids in one list of a membership (voters, learners, ...).
pub const CONF_IDS_MAX: usize = 1 << 16;

/// The fixed part of an encoded entry: type, term, index, two length prefixes
/// and the `sync_log` flag.
const ENTRY_FIXED_BYTES: usize = 1 + 8 + 8 + 4 + 4 + 1;
const _: () = assert!(ENTRY_FIXED_BYTES == 26);
const _: () = assert!(CONF_IDS_MAX <= Prefix::U32.max());

/// The exact length of `e`'s encoding (without a record version byte), so a
/// buffer holding secrets can be sized once and never reallocated.
pub fn entry_len(e: &Entry) -> usize {
    ENTRY_FIXED_BYTES + e.data.len() + e.context.len()
}

/// The exact length of `s`'s encoding (without a record version byte).
pub fn snapshot_len(s: &Snapshot) -> usize {
    let cs = s.get_metadata().get_conf_state();
    let ids =
        cs.voters.len() + cs.learners.len() + cs.voters_outgoing.len() + cs.learners_next.len();
    8 + 8 + 4 * 4 + 8 * ids + 1 + 4 + s.data.len()
}

impl Codec<'_> for Entry {
    const WHAT: &'static str = "entry";

    fn encode(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.u8(self.get_entry_type() as u8)
            .u64(self.term)
            .u64(self.index);
        w.bytes(ENTRY_FIELD_BYTES_MAX, &self.data, "entry data")?;
        w.bytes(ENTRY_FIELD_BYTES_MAX, &self.context, "entry context")?;
        w.bool(self.sync_log);
        Ok(())
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let mut e = Entry::default();
        e.set_entry_type(match r.u8("entry type")? {
            0 => EntryType::EntryNormal,
            1 => EntryType::EntryConfChange,
            2 => EntryType::EntryConfChangeV2,
            found => {
                return Err(DecodeError::UnknownValue {
                    what: "entry type",
                    found: found.into(),
                })
            }
        });
        e.term = r.u64("entry term")?;
        e.index = r.u64("entry index")?;
        e.data = r
            .bytes(ENTRY_FIELD_BYTES_MAX, "entry data")?
            .to_vec()
            .into();
        e.context = r
            .bytes(ENTRY_FIELD_BYTES_MAX, "entry context")?
            .to_vec()
            .into();
        e.sync_log = r.bool("entry sync_log flag")?;
        Ok(e)
    }
}

impl Codec<'_> for HardState {
    const WHAT: &'static str = "hard state";

    fn encode(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.u64(self.term).u64(self.vote).u64(self.commit);
        Ok(())
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let mut h = HardState::default();
        h.term = r.u64("hard state term")?;
        h.vote = r.u64("hard state vote")?;
        h.commit = r.u64("hard state commit")?;
        Ok(h)
    }
}

fn write_ids(w: &mut Writer, ids: &[u64], what: &'static str) -> Result<(), EncodeError> {
    w.count(CONF_IDS_MAX, ids.len(), what)?;
    for id in ids {
        w.u64(*id);
    }
    Ok(())
}

fn read_ids(r: &mut Reader<'_>, what: &'static str) -> Result<Vec<u64>, DecodeError> {
    let n = r.count(CONF_IDS_MAX, what)?;
    let mut ids = Vec::with_capacity(n.min(r.left() / 8));
    for _ in 0..n {
        ids.push(r.u64(what)?);
    }
    Ok(ids)
}

impl Codec<'_> for Snapshot {
    const WHAT: &'static str = "snapshot";

    fn encode(&self, w: &mut Writer) -> Result<(), EncodeError> {
        let meta = self.get_metadata();
        let cs = meta.get_conf_state();
        w.u64(meta.index).u64(meta.term);
        write_ids(w, &cs.voters, "snapshot voters")?;
        write_ids(w, &cs.learners, "snapshot learners")?;
        write_ids(w, &cs.voters_outgoing, "snapshot outgoing voters")?;
        write_ids(w, &cs.learners_next, "snapshot next learners")?;
        w.bool(cs.auto_leave);
        w.bytes(SNAPSHOT_BYTES_MAX, &self.data, "snapshot data")?;
        Ok(())
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let index = r.u64("snapshot index")?;
        let term = r.u64("snapshot term")?;
        let mut cs = ConfState::default();
        cs.voters = read_ids(r, "snapshot voters")?;
        cs.learners = read_ids(r, "snapshot learners")?;
        cs.voters_outgoing = read_ids(r, "snapshot outgoing voters")?;
        cs.learners_next = read_ids(r, "snapshot next learners")?;
        cs.auto_leave = r.bool("snapshot auto_leave flag")?;
        let data = r.bytes(SNAPSHOT_BYTES_MAX, "snapshot data")?.to_vec();
        let mut s = Snapshot::default();
        let meta = s.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(cs);
        s.data = data.into();
        Ok(s)
    }
}

/// [`RECORD_VERSION`] followed by `value`'s encoding.
pub fn encode_record<'a, T: Codec<'a>>(value: &T) -> Result<Vec<u8>, EncodeError> {
    let mut w = Writer::new();
    w.u8(RECORD_VERSION);
    value.encode(&mut w)?;
    Ok(w.into_vec())
}

/// Decodes what [`encode_record`] wrote, refusing another version and trailing
/// bytes.
pub fn decode_record<'a, T: Codec<'a>>(bytes: &'a [u8]) -> Result<T, DecodeError> {
    let mut r = Reader::new(bytes);
    r.version(RECORD_VERSION, T::WHAT)?;
    let value = T::read(&mut r)?;
    r.expect_empty(T::WHAT)?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        let mut e = Entry::default();
        e.set_entry_type(EntryType::EntryConfChangeV2);
        e.term = 3;
        e.index = 9;
        e.data = b"data".to_vec().into();
        e.context = b"ctx".to_vec().into();
        e.sync_log = true;
        e
    }

    fn snapshot() -> Snapshot {
        let mut s = Snapshot::default();
        s.mut_metadata().index = 40;
        s.mut_metadata().term = 2;
        s.mut_metadata()
            .set_conf_state(ConfState::from((vec![1, 2, 3], vec![4])));
        s.data = b"state".to_vec().into();
        s
    }

    #[test]
    fn records_round_trip() {
        let e = entry();
        let bytes = encode_record(&e).unwrap();
        assert_eq!(bytes.len(), 1 + entry_len(&e));
        assert_eq!(decode_record::<Entry>(&bytes).unwrap(), e);
        let mut h = HardState::default();
        h.term = 1;
        h.vote = 2;
        h.commit = 3;
        assert_eq!(
            decode_record::<HardState>(&encode_record(&h).unwrap()).unwrap(),
            h
        );
        let s = snapshot();
        assert_eq!(encode_record(&s).unwrap().len(), 1 + snapshot_len(&s));
        assert_eq!(
            decode_record::<Snapshot>(&encode_record(&s).unwrap()).unwrap(),
            s
        );
    }

    #[test]
    fn every_truncation_and_extension_is_refused_without_panic() {
        let mut e = entry();
        e.data = vec![7; 40].into();
        let bytes = encode_record(&e).unwrap();
        for cut in 0..bytes.len() {
            assert!(
                decode_record::<Entry>(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        for s in [snapshot(), Snapshot::default()] {
            let bytes = encode_record(&s).unwrap();
            for cut in 0..bytes.len() {
                assert!(
                    decode_record::<Snapshot>(&bytes[..cut]).is_err(),
                    "cut at {cut}"
                );
            }
        }
        let bytes = encode_record(&e).unwrap();
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            decode_record::<Entry>(&longer),
            Err(DecodeError::TrailingBytes {
                what: "entry",
                left: 1
            })
        );
        // A huge length is refused before anything is allocated for it.
        let mut huge = bytes.clone();
        huge[18..22].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            decode_record::<Entry>(&huge),
            Err(DecodeError::Truncated {
                what: "entry data",
                ..
            })
        ));
    }

    #[test]
    fn the_old_record_version_is_refused() {
        let mut bytes = encode_record(&entry()).unwrap();
        bytes[0] = 1;
        assert_eq!(
            decode_record::<Entry>(&bytes),
            Err(DecodeError::Version {
                what: "entry",
                found: 1,
                expected: RECORD_VERSION
            })
        );
        bytes[0] = RECORD_VERSION;
        bytes[1] = 9;
        assert_eq!(
            decode_record::<Entry>(&bytes),
            Err(DecodeError::UnknownValue {
                what: "entry type",
                found: 9
            })
        );
    }
}
