//! The on-disk encoding of `SledLog`'s records: entries, hard state, snapshots.
//!
//! A small fixed layout of our own (big-endian integers, length-prefixed byte
//! strings, a version byte), parsed strictly: every length is checked against what
//! is left, nothing is trailing, and any defect is a typed [`StorageError::Corrupt`].
//! It replaces protobuf 2 for bytes read back from an untrusted disk, whose decoder
//! has a known stack-overflow advisory (see `docs/architecture.md` §8).

use raft::prelude::{ConfState, Entry, EntryType, HardState, Snapshot};

use super::StorageError;

const VERSION: u8 = 1;

struct Writer(Vec<u8>);

impl Writer {
    fn new(capacity: usize) -> Self {
        let mut v = Vec::with_capacity(capacity + 1);
        v.push(VERSION);
        Self(v)
    }
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn ids(&mut self, ids: &[u64]) {
        self.u64(ids.len() as u64);
        for id in ids {
            self.u64(*id);
        }
    }
}

struct Reader<'a> {
    rest: &'a [u8],
    what: &'a str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], what: &'a str) -> Result<Self, StorageError> {
        let mut r = Self { rest: bytes, what };
        match r.u8()? {
            VERSION => Ok(r),
            v => Err(r.corrupt(format!("unknown record version {v}"))),
        }
    }
    fn corrupt(&self, detail: String) -> StorageError {
        StorageError::Corrupt {
            what: self.what.to_string(),
            detail,
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], StorageError> {
        if self.rest.len() < n {
            return Err(self.corrupt(format!(
                "truncated: {n} more bytes expected, {} left",
                self.rest.len()
            )));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, StorageError> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, StorageError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn len(&mut self, unit: usize) -> Result<usize, StorageError> {
        let n = self.u64()?;
        // A length must fit what is left before anything is allocated for it.
        match usize::try_from(n).ok().and_then(|n| n.checked_mul(unit)) {
            Some(bytes) if bytes <= self.rest.len() => Ok(n as usize),
            _ => Err(self.corrupt(format!(
                "a length of {n} does not fit the {} bytes left",
                self.rest.len()
            ))),
        }
    }
    fn bytes(&mut self) -> Result<&'a [u8], StorageError> {
        let n = self.len(1)?;
        self.take(n)
    }
    fn ids(&mut self) -> Result<Vec<u64>, StorageError> {
        let n = self.len(8)?;
        (0..n).map(|_| self.u64()).collect()
    }
    fn bool(&mut self) -> Result<bool, StorageError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(self.corrupt(format!("{b} is not a boolean"))),
        }
    }
    fn finish(self) -> Result<(), StorageError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(self.corrupt(format!("{} trailing bytes", self.rest.len())))
        }
    }
}

/// Encodes a log entry.
pub fn encode_entry(e: &Entry) -> Vec<u8> {
    let mut w = Writer::new(8 * 4 + 2 + e.data.len() + e.context.len());
    w.u8(e.get_entry_type() as u8);
    w.u64(e.term);
    w.u64(e.index);
    w.bytes(&e.data);
    w.bytes(&e.context);
    w.u8(e.sync_log as u8);
    w.0
}

/// Decodes what [`encode_entry`] wrote.
pub fn decode_entry(bytes: &[u8], what: &str) -> Result<Entry, StorageError> {
    let mut r = Reader::new(bytes, what)?;
    let mut e = Entry::default();
    e.set_entry_type(match r.u8()? {
        0 => EntryType::EntryNormal,
        1 => EntryType::EntryConfChange,
        2 => EntryType::EntryConfChangeV2,
        t => return Err(r.corrupt(format!("unknown entry type {t}"))),
    });
    e.term = r.u64()?;
    e.index = r.u64()?;
    e.data = r.bytes()?.to_vec().into();
    e.context = r.bytes()?.to_vec().into();
    e.sync_log = r.bool()?;
    r.finish()?;
    Ok(e)
}

/// Encodes a hard state.
pub fn encode_hard_state(h: &HardState) -> Vec<u8> {
    let mut w = Writer::new(24);
    w.u64(h.term);
    w.u64(h.vote);
    w.u64(h.commit);
    w.0
}

/// Decodes what [`encode_hard_state`] wrote.
pub fn decode_hard_state(bytes: &[u8]) -> Result<HardState, StorageError> {
    let mut r = Reader::new(bytes, "hard state")?;
    let mut h = HardState::default();
    h.term = r.u64()?;
    h.vote = r.u64()?;
    h.commit = r.u64()?;
    r.finish()?;
    Ok(h)
}

/// Encodes a snapshot (metadata and data).
pub fn encode_snapshot(s: &Snapshot) -> Vec<u8> {
    let meta = s.get_metadata();
    let cs = meta.get_conf_state();
    let ids =
        cs.voters.len() + cs.learners.len() + cs.voters_outgoing.len() + cs.learners_next.len();
    let mut w = Writer::new(8 * (6 + ids) + 1 + s.data.len());
    w.u64(meta.index);
    w.u64(meta.term);
    w.ids(&cs.voters);
    w.ids(&cs.learners);
    w.ids(&cs.voters_outgoing);
    w.ids(&cs.learners_next);
    w.u8(cs.auto_leave as u8);
    w.bytes(&s.data);
    w.0
}

/// Decodes what [`encode_snapshot`] wrote.
pub fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, StorageError> {
    let mut r = Reader::new(bytes, "snapshot")?;
    let mut s = Snapshot::default();
    let index = r.u64()?;
    let term = r.u64()?;
    let mut cs = ConfState::default();
    cs.voters = r.ids()?;
    cs.learners = r.ids()?;
    cs.voters_outgoing = r.ids()?;
    cs.learners_next = r.ids()?;
    cs.auto_leave = r.bool()?;
    let data = r.bytes()?.to_vec();
    r.finish()?;
    let meta = s.mut_metadata();
    meta.index = index;
    meta.term = term;
    meta.set_conf_state(cs);
    s.data = data.into();
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let mut e = Entry::default();
        e.set_entry_type(EntryType::EntryConfChangeV2);
        e.term = 3;
        e.index = 9;
        e.data = b"data".to_vec().into();
        e.context = b"ctx".to_vec().into();
        assert_eq!(decode_entry(&encode_entry(&e), "e").unwrap(), e);
        let mut h = HardState::default();
        h.term = 1;
        h.vote = 2;
        h.commit = 3;
        assert_eq!(decode_hard_state(&encode_hard_state(&h)).unwrap(), h);
        let mut s = Snapshot::default();
        s.mut_metadata().index = 40;
        s.mut_metadata().term = 2;
        s.mut_metadata()
            .set_conf_state(ConfState::from((vec![1, 2, 3], vec![4])));
        s.data = b"state".to_vec().into();
        assert_eq!(decode_snapshot(&encode_snapshot(&s)).unwrap(), s);
    }

    #[test]
    fn every_truncation_and_extension_is_refused_without_panic() {
        let mut e = Entry::default();
        e.term = 3;
        e.index = 9;
        e.data = vec![7; 40].into();
        let bytes = encode_entry(&e);
        for cut in 0..bytes.len() {
            assert!(decode_entry(&bytes[..cut], "e").is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_entry(&longer, "e").is_err());
        // A huge length is refused before anything is allocated for it.
        let mut huge = bytes.clone();
        huge[18..26].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(decode_entry(&huge, "e").is_err());
        let snap = encode_snapshot(&Snapshot::default());
        for cut in 0..snap.len() {
            assert!(decode_snapshot(&snap[..cut]).is_err());
        }
    }
}
