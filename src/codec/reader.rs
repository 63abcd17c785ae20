//! [`Reader`]: reads fields off the front of a byte slice, strictly.
//!
//! Every read checks what is left before touching it, so a short or hostile input
//! is a [`DecodeError`], never a panic or an over-read; a length prefix is checked
//! against the field's maximum *and* against what is left before anything is
//! allocated for it. [`Reader::sub`] hands out a bounded sub-reader, so a nested
//! record can never read past the length its parent gave it.

use super::{DecodeError, Prefix};

/// Reads big-endian integers, fixed arrays and length-prefixed fields off the
/// front of a byte slice. A decoder ends with [`Reader::expect_empty`].
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { buf: bytes }
    }

    /// Bytes not read yet.
    pub fn left(&self) -> usize {
        self.buf.len()
    }

    /// True once every byte was read.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Refuses bytes left after the last field of `what`.
    pub fn expect_empty(&self, what: &'static str) -> Result<(), DecodeError> {
        match self.buf.len() {
            0 => Ok(()),
            left => Err(DecodeError::TrailingBytes { what, left }),
        }
    }

    /// Everything not read yet (the reader is then empty).
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// The next `n` bytes of field `what`.
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                what,
                wanted: n,
                left: self.buf.len(),
            });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        debug_assert_eq!(head.len(), n);
        Ok(head)
    }

    /// A sub-reader over the next `len` bytes (which this reader skips). The
    /// sub-reader cannot read past them; end it with [`Reader::expect_empty`].
    pub fn sub(&mut self, len: usize, what: &'static str) -> Result<Reader<'a>, DecodeError> {
        self.take(len, what).map(Reader::new)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    /// One byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    /// A big-endian `u16`.
    pub fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    /// A big-endian `u32`.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    /// A big-endian `u64`.
    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    /// A boolean: exactly `0` or `1`.
    pub fn bool(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            found => Err(DecodeError::UnknownValue {
                what,
                found: found.into(),
            }),
        }
    }

    /// Checks that the next bytes are exactly `magic` (a file or record marker).
    pub fn magic(&mut self, magic: &[u8], what: &'static str) -> Result<(), DecodeError> {
        if self.take(magic.len(), what)? == magic {
            Ok(())
        } else {
            Err(DecodeError::Invalid { what })
        }
    }

    /// A format version byte that must be `expected`.
    pub fn version(&mut self, expected: u8, what: &'static str) -> Result<(), DecodeError> {
        match self.u8(what)? {
            v if v == expected => Ok(()),
            found => Err(DecodeError::Version {
                what,
                found,
                expected,
            }),
        }
    }

    /// A length prefix of width `prefix`, at most `max` and at most what is left.
    pub fn length(
        &mut self,
        prefix: Prefix,
        max: usize,
        what: &'static str,
    ) -> Result<usize, DecodeError> {
        let len = self.prefix_value(prefix, what)?;
        match usize::try_from(len) {
            Ok(n) if n <= max => {
                if n > self.buf.len() {
                    return Err(DecodeError::Truncated {
                        what,
                        wanted: n,
                        left: self.buf.len(),
                    });
                }
                Ok(n)
            }
            _ => Err(DecodeError::TooLong { what, len, max }),
        }
    }

    /// A field with a length prefix of width `prefix`, of at most `max` bytes.
    pub fn prefixed(
        &mut self,
        prefix: Prefix,
        max: usize,
        what: &'static str,
    ) -> Result<&'a [u8], DecodeError> {
        let n = self.length(prefix, max, what)?;
        self.take(n, what)
    }

    /// A `u32`-length-prefixed field of at most `max` bytes.
    pub fn bytes(&mut self, max: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        self.prefixed(Prefix::U32, max, what)
    }

    /// A sub-reader over a `u32`-length-prefixed field of at most `max` bytes.
    pub fn sub_prefixed(
        &mut self,
        max: usize,
        what: &'static str,
    ) -> Result<Reader<'a>, DecodeError> {
        self.bytes(max, what).map(Reader::new)
    }

    /// A `u32`-length-prefixed UTF-8 string of at most `max` bytes.
    pub fn text(&mut self, max: usize, what: &'static str) -> Result<&'a str, DecodeError> {
        utf8(self.bytes(max, what)?, what)
    }

    /// A `u8`-length-prefixed UTF-8 string (at most 255 bytes).
    pub fn short_text(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        utf8(self.prefixed(Prefix::U8, Prefix::U8.max(), what)?, what)
    }

    /// A `u32` item count of at most `max` (the caller then reads the items;
    /// size a `Vec` for them with `n.min(reader.left())`, not `n`).
    pub fn count(&mut self, max: usize, what: &'static str) -> Result<usize, DecodeError> {
        let n = self.u32(what)?;
        match usize::try_from(n) {
            Ok(n) if n <= max => Ok(n),
            _ => Err(DecodeError::TooLong {
                what,
                len: n.into(),
                max,
            }),
        }
    }

    fn prefix_value(&mut self, prefix: Prefix, what: &'static str) -> Result<u64, DecodeError> {
        Ok(match prefix {
            Prefix::U8 => self.u8(what)?.into(),
            Prefix::U16 => self.u16(what)?.into(),
            Prefix::U32 => self.u32(what)?.into(),
        })
    }
}

fn utf8<'a>(bytes: &'a [u8], what: &'static str) -> Result<&'a str, DecodeError> {
    std::str::from_utf8(bytes).map_err(|_| DecodeError::Invalid { what })
}
