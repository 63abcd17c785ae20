//! Unit tests of the codec: round trips, truncation at every byte, bounded
//! sub-readers, trailing bytes and maximum lengths.

use super::*;

#[derive(Debug, PartialEq)]
struct Sample {
    version: u8,
    flag: bool,
    small: u16,
    id: u32,
    epoch: u64,
    digest: [u8; 4],
    name: String,
    label: String,
    items: Vec<u64>,
    inner: Vec<u8>,
}

const FIELD_MAX: usize = 64;

impl<'a> Codec<'a> for Sample {
    const WHAT: &'static str = "sample";

    fn encode(&self, w: &mut Writer) -> Result<(), EncodeError> {
        w.u8(self.version)
            .bool(self.flag)
            .u16(self.small)
            .u32(self.id)
            .u64(self.epoch)
            .raw(&self.digest);
        w.text(FIELD_MAX, &self.name, "name")?;
        w.short_text(&self.label, "label")?;
        w.count(8, self.items.len(), "items")?;
        for i in &self.items {
            w.u64(*i);
        }
        w.nested(FIELD_MAX, "inner", |w| {
            w.bytes(FIELD_MAX, &self.inner, "inner bytes")?;
            Ok(())
        })?;
        Ok(())
    }

    fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let version = r.u8("version")?;
        let flag = r.bool("flag")?;
        let small = r.u16("small")?;
        let id = r.u32("id")?;
        let epoch = r.u64("epoch")?;
        let digest = r.array("digest")?;
        let name = r.text(FIELD_MAX, "name")?.to_owned();
        let label = r.short_text("label")?.to_owned();
        let n = r.count(8, "items")?;
        let mut items = Vec::with_capacity(n.min(r.left()));
        for _ in 0..n {
            items.push(r.u64("item")?);
        }
        let mut sub = r.sub_prefixed(FIELD_MAX, "inner")?;
        let inner = sub.bytes(FIELD_MAX, "inner bytes")?.to_vec();
        sub.expect_empty("inner")?;
        Ok(Self {
            version,
            flag,
            small,
            id,
            epoch,
            digest,
            name,
            label,
            items,
            inner,
        })
    }
}

fn sample() -> Sample {
    Sample {
        version: 2,
        flag: true,
        small: 0x0102,
        id: 0x0304_0506,
        epoch: u64::MAX - 1,
        digest: [9, 8, 7, 6],
        name: "replica-1".into(),
        label: "dc-a".into(),
        items: vec![1, 2, 3],
        inner: b"nested".to_vec(),
    }
}

#[test]
fn round_trips() {
    let s = sample();
    let bytes = s.to_bytes().unwrap();
    assert_eq!(Sample::from_bytes(&bytes).unwrap(), s);
    // Big-endian, fixed width, in order.
    assert_eq!(&bytes[..8], &[2, 1, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06]);
    let empty = Sample {
        name: String::new(),
        label: String::new(),
        items: Vec::new(),
        inner: Vec::new(),
        ..sample()
    };
    assert_eq!(
        Sample::from_bytes(&empty.to_bytes().unwrap()).unwrap(),
        empty
    );
}

#[test]
fn truncation_at_every_byte_is_refused() {
    let bytes = sample().to_bytes().unwrap();
    for cut in 0..bytes.len() {
        match Sample::from_bytes(&bytes[..cut]) {
            Err(DecodeError::Truncated { wanted, left, .. }) => assert!(left < wanted, "{cut}"),
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
}

#[test]
fn trailing_bytes_are_refused() {
    let mut bytes = sample().to_bytes().unwrap();
    bytes.push(0);
    assert_eq!(
        Sample::from_bytes(&bytes),
        Err(DecodeError::TrailingBytes {
            what: "sample",
            left: 1
        })
    );
}

#[test]
fn a_sub_reader_cannot_read_past_its_length() {
    let mut w = Writer::new();
    w.bytes(16, b"abcd", "outer").unwrap();
    w.u64(42);
    let bytes = w.into_vec();
    let mut r = Reader::new(&bytes);
    let mut sub = r.sub_prefixed(16, "outer").unwrap();
    // The parent still holds 8 bytes, but the sub-reader sees only its 4.
    assert_eq!(
        sub.u64("inner"),
        Err(DecodeError::Truncated {
            what: "inner",
            wanted: 8,
            left: 4
        })
    );
    assert_eq!(sub.u32("inner").unwrap(), u32::from_be_bytes(*b"abcd"));
    sub.expect_empty("outer").unwrap();
    assert_eq!(r.u64("after").unwrap(), 42);
    r.expect_empty("all").unwrap();

    let mut r = Reader::new(&bytes);
    let mut sub = r.sub(2, "two").unwrap();
    assert_eq!(sub.rest().len(), 2);
    assert!(sub.is_empty());
    assert_eq!(r.left(), bytes.len() - 2);
    assert!(r.sub(bytes.len(), "too long").is_err());
}

#[test]
fn a_nested_record_that_overruns_its_length_is_refused() {
    // The inner length prefix claims more than the outer one gave it.
    let mut w = Writer::new();
    w.u32(6).u32(10).raw(b"ab").raw(b"cdefghij");
    let bytes = w.into_vec();
    let mut r = Reader::new(&bytes);
    let mut sub = r.sub_prefixed(64, "outer").unwrap();
    assert_eq!(
        sub.bytes(64, "inner"),
        Err(DecodeError::Truncated {
            what: "inner",
            wanted: 10,
            left: 2
        })
    );
}

#[test]
fn maximum_lengths_are_enforced_both_ways() {
    let mut w = Writer::new();
    assert_eq!(
        w.bytes(3, b"abcd", "field").unwrap_err(),
        EncodeError::TooLong {
            what: "field",
            len: 4,
            max: 3
        }
    );
    assert_eq!(
        w.short_text(&"x".repeat(256), "label").unwrap_err(),
        EncodeError::TooLong {
            what: "label",
            len: 256,
            max: 255
        }
    );
    assert!(w
        .nested(2, "nested", |w| {
            w.raw(b"abc");
            Ok(())
        })
        .is_err());
    assert!(w.is_empty(), "a refused write leaves nothing behind");
    // A nested field whose own writer fails leaves nothing behind either: not
    // the length prefix, not the half of the field written before the failure.
    w.u8(7);
    assert!(w
        .nested(64, "nested", |w| {
            w.raw(b"half");
            w.bytes(1, b"too long", "inner").map(|_| ())
        })
        .is_err());
    assert_eq!(
        w.take_vec(),
        vec![7],
        "a failed nested write is rolled back"
    );
    w.bytes(4, b"abcd", "field").unwrap();
    let bytes = w.into_vec();
    assert_eq!(
        Reader::new(&bytes).bytes(3, "field"),
        Err(DecodeError::TooLong {
            what: "field",
            len: 4,
            max: 3
        })
    );
    // A huge prefix is refused before anything is read or allocated for it.
    let huge = u32::MAX.to_be_bytes();
    assert!(matches!(
        Reader::new(&huge).bytes(usize::MAX, "huge"),
        Err(DecodeError::Truncated { .. })
    ));
    assert!(matches!(
        Reader::new(&huge).count(10, "items"),
        Err(DecodeError::TooLong {
            len: 4_294_967_295,
            max: 10,
            ..
        })
    ));
}

#[test]
fn bad_values_are_typed_errors() {
    assert_eq!(
        Reader::new(&[2]).bool("flag"),
        Err(DecodeError::UnknownValue {
            what: "flag",
            found: 2
        })
    );
    assert_eq!(
        Reader::new(&[1, 0xff]).short_text("label"),
        Err(DecodeError::Invalid { what: "label" })
    );
    assert_eq!(
        Reader::new(&[3]).version(2, "record"),
        Err(DecodeError::Version {
            what: "record",
            found: 3,
            expected: 2
        })
    );
    assert_eq!(
        Reader::new(b"nope").magic(b"yes!", "magic"),
        Err(DecodeError::Invalid { what: "magic" })
    );
    Reader::new(b"yes!").magic(b"yes!", "magic").unwrap();
    let mut w = Writer::new();
    w.prefixed(Prefix::U16, 10, b"hi", "two").unwrap();
    assert_eq!(w.as_slice(), &[0, 2, b'h', b'i']);
    assert_eq!(
        Reader::new(w.as_slice())
            .prefixed(Prefix::U16, 10, "two")
            .unwrap(),
        b"hi"
    );
}

#[test]
fn labeled_inputs_are_unambiguous() {
    let a = labeled(b"l", &[b"ab", b"c"]);
    let b = labeled(b"l", &[b"a", b"bc"]);
    let c = labeled(b"m", &[b"ab", b"c"]);
    let d = labeled(b"l", &[b"ab", b"c", b""]);
    assert_ne!(a, b);
    assert_ne!(a, c);
    assert_ne!(a, d);
    let mut expected = Vec::new();
    expected.extend_from_slice(&1u64.to_be_bytes());
    expected.push(b'l');
    expected.extend_from_slice(&2u64.to_be_bytes());
    expected.extend_from_slice(&2u64.to_be_bytes());
    expected.extend_from_slice(b"ab");
    expected.extend_from_slice(&1u64.to_be_bytes());
    expected.push(b'c');
    assert_eq!(a, expected);
}

#[test]
fn a_writer_held_in_zeroizing_is_wiped() {
    use zeroize::Zeroize;
    let mut w = Writer::with_capacity(16);
    w.raw(b"secret plaintext");
    w.zeroize();
    assert!(w.is_empty(), "zeroize empties the writer after wiping it");
}
