//! A borrowed reading of the log entry every replica decodes for every client
//! command: an `EntryPayload` holding a `RequestBatch`. Each request is read
//! as a [`RequestView`] whose command and owner are slices of the entry: no
//! `Request` is built, no `Bytes` handle is cloned or dropped per command, and
//! a replica reuses one vector of [`RequestAt`] (where each request lies) for
//! every entry: one pass, no allocation.
//!
//! Only the canonical encoding is read this way, the one protobuf writes for
//! these messages (fields in number order, each at most once, no unknown
//! field, every length inside its parent and of at most 5 bytes, varints of at
//! most 10 bytes whose value fits 64 bits; a varint written longer than it
//! needs, within those widths, is read as protobuf reads it, and a 10-byte one
//! only with a last byte of `0x01`). [`canonical_batch`] answers `false` for
//! anything else, and the caller decodes with protobuf instead, so a payload
//! reads the same on every replica whichever path it takes: this reader
//! accepts a subset of what protobuf accepts, with equal values (checked by
//! the fuzz target `entry_payload` and its proptests).

use std::ops::Range;

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

/// Where one request of a canonical batch lies in its entry: its integer
/// fields, and its command and owner as ranges of the entry's bytes. It
/// borrows nothing, so a replica keeps one vector of them for every entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestAt {
    /// `Request.client_id`.
    pub client_id: u64,
    /// `Request.sequence`.
    pub sequence: u64,
    /// `Request.acked_below`.
    pub acked_below: u64,
    /// Where `Request.command` lies in the entry.
    pub command: Range<usize>,
    /// Where `Request.owner` lies in the entry.
    pub owner: Range<usize>,
}

impl RequestAt {
    /// The request as a view of `entry`, which must be the bytes it was read
    /// from: given another entry it reads whatever lies at the same ranges
    /// (empty where they fall outside it), without error.
    pub fn view<'a>(&self, entry: &'a [u8]) -> RequestView<'a> {
        RequestView {
            client_id: self.client_id,
            sequence: self.sequence,
            acked_below: self.acked_below,
            command: entry.get(self.command.clone()).unwrap_or_default(),
            owner: entry.get(self.owner.clone()).unwrap_or_default(),
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

/// Reads the requests of `entry` into `out` (cleared first) if it is a batch
/// in canonical encoding, and answers `true`. Answers `false`, with `out`
/// empty, if it is anything else (another kind of payload, or a batch encoded
/// in another way): the caller must then decode it with protobuf.
pub fn canonical_batch(entry: &[u8], out: &mut Vec<RequestAt>) -> bool {
    out.clear();
    let read = read_batch(entry, out).is_some();
    if !read {
        out.clear();
    }
    read
}

fn read_batch(entry: &[u8], out: &mut Vec<RequestAt>) -> Option<()> {
    // The EntryPayload holds field 1 (the batch) only, and nothing after it.
    if *entry.first()? != TAG_BATCH {
        return None;
    }
    let mut at = 1;
    let batch = delimited(entry, &mut at)?;
    if batch.end != entry.len() {
        return None;
    }
    // The batch holds field 1 (a request) only, any number of times.
    let mut at = batch.start;
    while at < entry.len() {
        if entry[at] != TAG_BATCH {
            return None;
        }
        at += 1;
        let request = delimited(entry, &mut at)?;
        out.push(read_request(entry, request)?);
    }
    Some(())
}

/// The canonical `Request` at `range` of `entry`: known fields only, in
/// number order, each at most once.
fn read_request(entry: &[u8], range: Range<usize>) -> Option<RequestAt> {
    let end = range.end;
    // The request's bytes, from the entry's start: offsets stay the entry's.
    let bytes = entry.get(..end)?;
    let mut at = range.start;
    let mut r = RequestAt::default();
    if bytes.get(at) == Some(&TAG_CLIENT_ID) {
        at += 1;
        r.client_id = varint(bytes, &mut at)?;
    }
    if bytes.get(at) == Some(&TAG_SEQUENCE) {
        at += 1;
        r.sequence = varint(bytes, &mut at)?;
    }
    if bytes.get(at) == Some(&TAG_ACKED_BELOW) {
        at += 1;
        r.acked_below = varint(bytes, &mut at)?;
    }
    if bytes.get(at) == Some(&TAG_COMMAND) {
        at += 1;
        r.command = delimited(bytes, &mut at)?;
    }
    if bytes.get(at) == Some(&TAG_OWNER) {
        at += 1;
        r.owner = delimited(bytes, &mut at)?;
    }
    // Anything left is a field out of order, repeated or unknown.
    (at == end).then_some(r)
}

/// A varint at `*at`, advancing past it.
#[inline]
fn varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    // One byte, the common case for tags' neighbours: lengths and small ids.
    let b = *bytes.get(*at)?;
    if b < 0x80 {
        *at += 1;
        return Some(u64::from(b));
    }
    long_varint(bytes, at)
}

/// A varint of two bytes or more: at most 10 bytes, and a tenth byte only as
/// protobuf writes it for a value of 2^63 or more (`0x01`).
#[inline(never)]
fn long_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
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

/// Where a length-delimited field's bytes lie, the field's length at `*at`,
/// advancing past them; `None` if they run past the end of `bytes`, or if the
/// length is not one protobuf reads for a `bytes` field: it reads those as a
/// varint32 (at most 5 bytes, a value of at most `u32::MAX`) and refuses a
/// longer one, so a 6-byte length would have this build apply a request
/// that every protobuf decoder (older builds) skips. Every canonical length
/// fits, for messages too.
#[inline]
fn delimited(bytes: &[u8], at: &mut usize) -> Option<Range<usize>> {
    let from = *at;
    let len = varint(bytes, at)?;
    if *at - from > 5 || len > u64::from(u32::MAX) {
        return None;
    }
    let len = usize::try_from(len).ok()?;
    let start = *at;
    let end = start.checked_add(len)?;
    if end > bytes.len() {
        return None;
    }
    *at = end;
    Some(start..end)
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

    /// The requests `canonical_batch` reads in `entry`, as views.
    fn views(entry: &[u8]) -> Option<Vec<RequestView<'_>>> {
        let mut read = vec![RequestAt::default(); 3];
        if !canonical_batch(entry, &mut read) {
            assert!(read.is_empty(), "a refused entry leaves nothing read");
            return None;
        }
        Some(read.iter().map(|r| r.view(entry)).collect())
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
        let views = views(&entry).expect("protobuf's own encoding is canonical");
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
        assert_eq!(views(&batch_entry(Vec::new())), Some(Vec::new()));
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
            views(&e).is_some()
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
        assert_eq!(views(&[]), None);
        // A varint past 64 bits.
        assert!(!reads(&|e| {
            e.splice(5..6, [0xff; 9].into_iter().chain([0x02]));
            e[1] += 9;
            e[3] += 9;
        }));
        // The same entry unchanged reads.
        assert!(reads(&|_| {}));
    }

    /// protobuf reads a `bytes` length as a varint32: at most 5 bytes
    /// (`decode_varint32`). A command or owner whose length is a 6-byte
    /// varint (`81 80 80 80 80 00` = 1) must not be read here, or a replica
    /// of this build applies what protobuf skips (review 9's CRITICAL).
    #[test]
    fn a_bytes_length_protobuf_refuses_is_not_read() {
        for field in [TAG_COMMAND, TAG_OWNER] {
            // 0a 0e | 0a 0c | 08 01 10 01 <field> 81 80 80 80 80 00 78
            let entry = [
                0x0a, 0x0e, 0x0a, 0x0c, 0x08, 0x01, 0x10, 0x01, field, 0x81, 0x80, 0x80, 0x80,
                0x80, 0x00, b'x',
            ];
            let protobuf = crate::wire::decode_shared::<EntryPayload>(
                &Bytes::copy_from_slice(&entry),
                "log entry payload",
            );
            assert!(protobuf.is_err(), "protobuf reads {protobuf:?}");
            assert_eq!(views(&entry), None, "field tag {field:#x}");
            // The same length in 5 bytes is read, by both.
            let mut five = entry.to_vec();
            five.remove(13);
            five[1] -= 1;
            five[3] -= 1;
            assert!(crate::wire::decode_shared::<EntryPayload>(
                &Bytes::copy_from_slice(&five),
                "log entry payload"
            )
            .is_ok());
            assert!(views(&five).is_some(), "field tag {field:#x}");
        }
    }
}

/// Review 10: every varint of a batch (the entry's and each request's length,
/// the three integers, the command's and owner's lengths) written 1 to 11
/// bytes wide, with several final bytes: wherever the in-place reader reads,
/// both protobuf decoders read a batch with equal values.
#[cfg(test)]
mod review10 {
    use super::*;
    use crate::wire::{decode, decode_shared, entry_payload, EntryPayload};
    use bytes::Bytes;

    /// `v` as a varint at least `width` bytes wide, its last byte replaced by
    /// `last` if given.
    fn varint(out: &mut Vec<u8>, mut v: u64, width: usize, last: Option<u8>) {
        let mut bytes = Vec::new();
        loop {
            bytes.push((v & 0x7f) as u8 | 0x80);
            v >>= 7;
            if v == 0 && bytes.len() >= width {
                break;
            }
        }
        *bytes.last_mut().unwrap() &= 0x7f;
        if let Some(b) = last {
            *bytes.last_mut().unwrap() = b;
        }
        out.extend(bytes);
    }

    type Enc = (usize, Option<u8>);

    /// Slots: 0 entry length, 1 request length, 2..5 integers, 5 command
    /// length, 6 owner length.
    fn entry(slot: usize, enc: Enc, ints: [u64; 3]) -> Vec<u8> {
        let e = |s: usize| if s == slot { enc } else { (1, None) };
        let mut request = Vec::new();
        for (k, tag) in [TAG_CLIENT_ID, TAG_SEQUENCE, TAG_ACKED_BELOW]
            .into_iter()
            .enumerate()
        {
            request.push(tag);
            let (w, l) = e(2 + k);
            varint(&mut request, ints[k], w, l);
        }
        for (k, (tag, body)) in [(TAG_COMMAND, &b"cmd"[..]), (TAG_OWNER, &b"ow"[..])]
            .into_iter()
            .enumerate()
        {
            request.push(tag);
            let (w, l) = e(5 + k);
            varint(&mut request, body.len() as u64, w, l);
            request.extend_from_slice(body);
        }
        let mut batch = vec![TAG_BATCH];
        let (w, l) = e(1);
        varint(&mut batch, request.len() as u64, w, l);
        batch.extend(request);
        let mut out = vec![TAG_BATCH];
        let (w, l) = e(0);
        varint(&mut out, batch.len() as u64, w, l);
        out.extend(batch);
        out
    }

    fn check(data: &[u8]) -> bool {
        let mut read = Vec::new();
        if !canonical_batch(data, &mut read) {
            return false;
        }
        let views: Vec<RequestView> = read.iter().map(|r| r.view(data)).collect();
        let shared = decode_shared::<EntryPayload>(&Bytes::copy_from_slice(data), "e");
        let copied = decode::<EntryPayload>(data, "e");
        for p in [shared, copied] {
            match p {
                Ok(EntryPayload {
                    kind: Some(entry_payload::Kind::Batch(b)),
                    ..
                }) => {
                    let theirs: Vec<RequestView> =
                        b.requests.iter().map(RequestView::from).collect();
                    assert_eq!(views, theirs, "{data:02x?}");
                }
                other => panic!("reader read {data:02x?}, protobuf: {other:?}"),
            }
        }
        true
    }

    /// Every string of up to 6 bytes over the bytes that matter here (tags,
    /// small lengths, continuation and last-byte values), behind a batch
    /// prefix or alone: where the reader reads, protobuf reads alike.
    #[test]
    fn every_short_string_over_a_small_alphabet_reads_as_protobuf_reads() {
        const ALPHABET: [u8; 14] = [
            0x00, 0x01, 0x02, 0x04, 0x08, 0x0a, 0x10, 0x18, 0x22, 0x2a, 0x7f, 0x80, 0x81, 0xff,
        ];
        let (mut read, mut tried) = (0u64, 0u64);
        for len in 0..=6u32 {
            for n in 0..ALPHABET.len().pow(len) {
                let mut tail = Vec::new();
                let mut k = n;
                for _ in 0..len {
                    tail.push(ALPHABET[k % ALPHABET.len()]);
                    k /= ALPHABET.len();
                }
                // Alone, and as the body of a batch and of one request.
                let mut batch = vec![TAG_BATCH, tail.len() as u8];
                batch.extend(&tail);
                let mut request =
                    vec![TAG_BATCH, tail.len() as u8 + 2, TAG_BATCH, tail.len() as u8];
                request.extend(&tail);
                for data in [&tail, &batch, &request] {
                    tried += 1;
                    read += u64::from(check(data));
                }
            }
        }
        eprintln!("{read} of {tried} read in place");
        assert!(read > 0);
    }

    #[test]
    fn every_varint_slot_padded_or_broken_reads_as_protobuf_reads() {
        let lasts = [
            None,
            Some(0x00),
            Some(0x01),
            Some(0x02),
            Some(0x0f),
            Some(0x10),
            Some(0x7f),
            Some(0x80),
            Some(0x81),
        ];
        let ints_set = [[0, 0, 0], [1, 127, 128], [u64::MAX, 1 << 63, (1 << 63) - 1]];
        let (mut read, mut tried) = (0, 0);
        for slot in 0..7 {
            for width in 1..=11 {
                for last in lasts {
                    for ints in ints_set {
                        tried += 1;
                        if check(&entry(slot, (width, last), ints)) {
                            read += 1;
                        }
                    }
                }
            }
        }
        eprintln!("{read} of {tried} read in place");
        assert!(read > 0);
    }
}
