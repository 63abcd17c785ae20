//! A borrowed reading of the log entry every replica decodes for every client
//! command: an `EntryPayload` holding a `RequestBatch`. Each request is read
//! as a [`RequestView`] whose command and owner are slices of the entry: no
//! `Request` is built, no `Bytes` handle is cloned or dropped per command.
//!
//! Only the canonical encoding is read this way, the one protobuf writes for
//! these messages (fields in number order, each at most once, no unknown
//! field, every length inside its parent, varints of at most 10 bytes whose
//! value fits 64 bits). [`canonical_batch`] answers `None` for anything else,
//! and the caller decodes with protobuf instead, so a payload reads the same
//! on every replica whichever path it takes: this reader accepts a subset of
//! what protobuf accepts, with equal values (checked by the fuzz target
//! `entry_payload` and its proptest).

use super::Request;

/// One client request of a batch, borrowed from the entry (or from a decoded
/// [`Request`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestView<'a> {
    /// `Request.client_id`: the session.
    pub client_id: u64,
    /// `Request.sequence`.
    pub sequence: u64,
    /// `Request.acked_below`.
    pub acked_below: u64,
    /// `Request.command`, opaque to the replication layer.
    pub command: &'a [u8],
    /// `Request.owner`: whom the session belongs to.
    pub owner: &'a [u8],
}

impl<'a> From<&'a Request> for RequestView<'a> {
    fn from(r: &'a Request) -> Self {
        Self {
            client_id: r.client_id,
            sequence: r.sequence,
            acked_below: r.acked_below,
            command: &r.command,
            owner: &r.owner,
        }
    }
}

/// `EntryPayload.batch` and `RequestBatch.requests`: field 1, length-delimited.
const TAG_BATCH: u8 = 1 << 3 | 2;
/// `Request`'s fields, each tag one byte.
const TAG_CLIENT_ID: u8 = 1 << 3;
const TAG_SEQUENCE: u8 = 2 << 3;
const TAG_ACKED_BELOW: u8 = 3 << 3;
const TAG_COMMAND: u8 = 4 << 3 | 2;
const TAG_OWNER: u8 = 5 << 3 | 2;

/// The requests of `entry` if it is a batch in canonical encoding; `None` if
/// it is anything else (another kind of payload, or a batch encoded in
/// another way), which the caller must decode with protobuf. Reads the entry
/// twice, once to count and once to fill a vector of that size.
pub fn canonical_batch(entry: &[u8]) -> Option<Vec<RequestView<'_>>> {
    let batch = whole_batch(entry)?;
    let mut count = 0usize;
    for_each_request(batch, |_| count += 1)?;
    let mut requests = Vec::with_capacity(count);
    for_each_request(batch, |r| requests.push(r))?;
    debug_assert_eq!(requests.len(), count);
    Some(requests)
}

/// The `RequestBatch` bytes of an `EntryPayload` that holds only field 1.
fn whole_batch(entry: &[u8]) -> Option<&[u8]> {
    let mut at = 0;
    if *entry.first()? != TAG_BATCH {
        return None;
    }
    at += 1;
    let batch = delimited(entry, &mut at)?;
    (at == entry.len()).then_some(batch)
}

/// Calls `f` on each request of a canonical `RequestBatch`; `None` (after
/// some calls, perhaps) if the batch is not canonical.
fn for_each_request<'a>(batch: &'a [u8], mut f: impl FnMut(RequestView<'a>)) -> Option<()> {
    let mut at = 0;
    while at < batch.len() {
        if batch[at] != TAG_BATCH {
            return None;
        }
        at += 1;
        f(request(delimited(batch, &mut at)?)?);
    }
    Some(())
}

/// A canonical `Request`: known fields only, in number order, each once.
fn request(bytes: &[u8]) -> Option<RequestView<'_>> {
    let mut r = RequestView::default();
    let mut at = 0;
    let mut last = 0u8;
    while let Some(&tag) = bytes.get(at) {
        // Increasing tags: in number order, none repeated.
        if tag <= last {
            return None;
        }
        last = tag;
        at += 1;
        match tag {
            TAG_CLIENT_ID => r.client_id = varint(bytes, &mut at)?,
            TAG_SEQUENCE => r.sequence = varint(bytes, &mut at)?,
            TAG_ACKED_BELOW => r.acked_below = varint(bytes, &mut at)?,
            TAG_COMMAND => r.command = delimited(bytes, &mut at)?,
            TAG_OWNER => r.owner = delimited(bytes, &mut at)?,
            _ => return None,
        }
    }
    Some(r)
}

/// A varint at `*at`, advancing past it: at most 10 bytes, and a tenth byte
/// only as protobuf writes it for a value of 2^63 or more (`0x01`).
fn varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for i in 0..10 {
        let b = *bytes.get(*at + i)?;
        if i == 9 && b != 1 {
            return None;
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            *at += i + 1;
            return Some(value);
        }
    }
    None
}

/// A length-delimited field's bytes at `*at`, advancing past them; `None` if
/// they run past the end of `bytes`.
fn delimited<'a>(bytes: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    let len = usize::try_from(varint(bytes, at)?).ok()?;
    let end = at.checked_add(len)?;
    let field = bytes.get(*at..end)?;
    *at = end;
    Some(field)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{encode_bounded, EntryPayload, RequestBatch};
    use bytes::Bytes;

    fn request(client_id: u64, sequence: u64, acked_below: u64, command: &[u8]) -> Request {
        let mut r = Request::new();
        r.client_id = client_id;
        r.sequence = sequence;
        r.acked_below = acked_below;
        r.command = Bytes::copy_from_slice(command);
        r
    }

    fn batch_entry(requests: Vec<Request>) -> Vec<u8> {
        let mut batch = RequestBatch::new();
        batch.requests = requests;
        let mut payload = EntryPayload::new();
        payload.set_batch(batch);
        encode_bounded(&payload)
    }

    #[test]
    fn a_batch_protobuf_wrote_reads_with_equal_values() {
        let mut owned = request(u64::MAX, 1 << 63, 0, b"put k v");
        owned.owner = Bytes::from_static(b"alice");
        let requests = vec![
            request(7, 1, 1, b"x"),
            request(0, 0, 0, b""),
            owned,
            request(3, 127, 128, &[0u8; 300]),
        ];
        let entry = batch_entry(requests.clone());
        let views = canonical_batch(&entry).expect("protobuf's own encoding is canonical");
        let expected: Vec<RequestView> = requests.iter().map(RequestView::from).collect();
        assert_eq!(views, expected);
        // The commands are slices of the entry.
        let inside = entry.as_ptr_range();
        assert!(views
            .iter()
            .filter(|v| !v.command.is_empty())
            .all(|v| inside.contains(&v.command.as_ptr())));
    }

    #[test]
    fn an_empty_batch_reads_as_no_requests() {
        assert_eq!(canonical_batch(&batch_entry(Vec::new())), Some(Vec::new()));
    }

    #[test]
    fn other_encodings_are_left_to_protobuf() {
        let entry = batch_entry(vec![request(7, 1, 1, b"x")]);
        // [0x0a, len, 0x0a, len, 0x08, 7, 0x10, 1, 0x18, 1, 0x22, 1, b'x']
        assert_eq!(entry[4..10], [0x08, 7, 0x10, 1, 0x18, 1]);
        // Whether the entry, changed by `f`, is read here.
        let reads = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut e = entry.clone();
            f(&mut e);
            canonical_batch(&e).is_some()
        };
        // Fields out of order, repeated, or unknown.
        assert!(!reads(&|e| e.swap(4, 6)));
        assert!(!reads(&|e| e[6] = 0x08));
        assert!(!reads(&|e| {
            e.extend([0x30, 1]);
            e[1] += 2;
            e[3] += 2;
        }));
        // A length past the end, a trailing byte, a cut.
        assert!(!reads(&|e| e[3] += 1));
        assert!(!reads(&|e| e.push(0)));
        assert!(!reads(&|e| e.truncate(e.len() - 1)));
        // Another kind of payload (a registration), and nothing.
        assert!(!reads(&|e| e[0] = 2 << 3 | 2));
        assert_eq!(canonical_batch(&[]), None);
        // A varint past 64 bits.
        assert!(!reads(&|e| {
            e.splice(5..6, [0xff; 9].into_iter().chain([0x02]));
            e[1] += 9;
            e[3] += 9;
        }));
        // The same entry unchanged reads.
        assert!(reads(&|_| {}));
    }
}
