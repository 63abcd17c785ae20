//! [`Writer`]: appends fields in the layout [`Reader`](super::Reader) reads.
//!
//! Fixed-width writes cannot fail. A length-prefixed write takes the same maximum
//! the reader enforces and refuses a longer field with an [`EncodeError`], so the
//! writer never produces bytes its own reader would reject, and a length is never
//! silently cut to fit its prefix.

use super::{EncodeError, Prefix};

/// Appends big-endian integers, fixed arrays and length-prefixed fields to a
/// buffer it owns.
///
/// To keep secrets from being copied by reallocation, size the buffer up front
/// ([`Writer::with_capacity`]) and wrap [`Writer::into_vec`]'s result in
/// `zeroize::Zeroizing`.
#[derive(Clone, Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty writer with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: Vec::with_capacity(capacity),
        }
    }

    /// A writer that appends to `buf`.
    pub fn from_vec(buf: Vec<u8>) -> Self {
        Self { buf }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True if nothing was written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// What was written so far.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf
    }

    /// The bytes written.
    pub fn into_vec(self) -> Vec<u8> {
        self.buf
    }

    /// Takes the bytes written so far, leaving the writer empty. With a writer held
    /// in [`Zeroizing`](zeroize::Zeroizing) this hands secret bytes out while an
    /// early return (a failed field) still wipes what was written.
    pub fn take_vec(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// Bytes as they are (a fixed-width field, a magic string, an array).
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self
    }

    /// One byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    /// A big-endian `u16`.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.raw(&v.to_be_bytes())
    }

    /// A big-endian `u32`.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.raw(&v.to_be_bytes())
    }

    /// A big-endian `u64`.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.raw(&v.to_be_bytes())
    }

    /// A boolean as `0` or `1`.
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(u8::from(v))
    }

    /// A length prefix of width `prefix` for `len` bytes (or items), refused above
    /// `max` or above what the prefix can state.
    pub fn length(
        &mut self,
        prefix: Prefix,
        max: usize,
        len: usize,
        what: &'static str,
    ) -> Result<&mut Self, EncodeError> {
        let max = max.min(prefix.max());
        if len > max {
            return Err(EncodeError::TooLong { what, len, max });
        }
        // In range of the prefix: checked just above.
        let len = len as u64;
        match prefix {
            Prefix::U8 => self.raw(&len.to_be_bytes()[7..]),
            Prefix::U16 => self.raw(&len.to_be_bytes()[6..]),
            Prefix::U32 => self.raw(&len.to_be_bytes()[4..]),
        };
        Ok(self)
    }

    /// `bytes` after a length prefix of width `prefix`; at most `max` bytes.
    pub fn prefixed(
        &mut self,
        prefix: Prefix,
        max: usize,
        bytes: &[u8],
        what: &'static str,
    ) -> Result<&mut Self, EncodeError> {
        self.length(prefix, max, bytes.len(), what)?;
        Ok(self.raw(bytes))
    }

    /// `bytes` after a `u32` length; at most `max` bytes.
    pub fn bytes(
        &mut self,
        max: usize,
        bytes: &[u8],
        what: &'static str,
    ) -> Result<&mut Self, EncodeError> {
        self.prefixed(Prefix::U32, max, bytes, what)
    }

    /// A UTF-8 string after a `u32` length; at most `max` bytes.
    pub fn text(
        &mut self,
        max: usize,
        text: &str,
        what: &'static str,
    ) -> Result<&mut Self, EncodeError> {
        self.bytes(max, text.as_bytes(), what)
    }

    /// A UTF-8 string after a `u8` length (at most 255 bytes).
    pub fn short_text(&mut self, text: &str, what: &'static str) -> Result<&mut Self, EncodeError> {
        self.prefixed(Prefix::U8, Prefix::U8.max(), text.as_bytes(), what)
    }

    /// A `u32` item count, at most `max`.
    pub fn count(
        &mut self,
        max: usize,
        count: usize,
        what: &'static str,
    ) -> Result<&mut Self, EncodeError> {
        self.length(Prefix::U32, max, count, what)
    }

    /// A nested field: `write` appends it, and a `u32` length prefix of at most
    /// `max` bytes is put in front of it (what [`Reader::sub_prefixed`] reads).
    ///
    /// [`Reader::sub_prefixed`]: super::Reader::sub_prefixed
    pub fn nested(
        &mut self,
        max: usize,
        what: &'static str,
        write: impl FnOnce(&mut Writer) -> Result<(), EncodeError>,
    ) -> Result<&mut Self, EncodeError> {
        let at = self.buf.len();
        self.u32(0);
        if let Err(e) = write(self) {
            // A refused write leaves nothing behind, not a prefix and half a field.
            self.buf.truncate(at);
            return Err(e);
        }
        let len = self.buf.len() - at - 4;
        let max = max.min(Prefix::U32.max());
        if len > max {
            self.buf.truncate(at);
            return Err(EncodeError::TooLong { what, len, max });
        }
        // In range of u32: checked just above.
        self.buf[at..at + 4].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(self)
    }
}

/// Wipes everything written, the spare capacity included, so a writer of secret
/// plaintext can be held in [`Zeroizing`](zeroize::Zeroizing).
impl zeroize::Zeroize for Writer {
    fn zeroize(&mut self) {
        self.buf.zeroize();
    }
}
