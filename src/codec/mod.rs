//! The engine's one binary codec, modelled on rustls's `Codec` and `Reader`.
//!
//! Every hand-written encoding of vaultfleet (storage records, sealed records and
//! the sealed head, the soft HSM's file; in `vaultfleet-audit` the fleet
//! artifacts, bundles and evidence) is read by one strict [`Reader`] and written
//! by one [`Writer`]:
//!
//! * integers are big-endian and fixed-width;
//! * a variable field carries a length prefix (normally `u32`, see [`Prefix`])
//!   and an explicit maximum that both the reader and the writer enforce;
//! * [`Reader::sub`] hands out a bounded sub-reader, so a length prefix can never
//!   let a nested record read past its parent;
//! * a decoder ends with [`Reader::expect_empty`]: trailing bytes are an error;
//! * every failure is a typed [`DecodeError`] with `&'static str` context, never a
//!   panic and never a formatted `String`.
//!
//! Inputs to MACs, AEAD associated data and signatures are built by one helper,
//! [`labeled`], which length-prefixes every field under a domain-separation label.
//!
//! ```
//! use vaultfleet::codec::{Codec, DecodeError, EncodeError, Reader, Writer};
//!
//! struct Note { epoch: u64, text: String }
//!
//! impl Codec<'_> for Note {
//!     const WHAT: &'static str = "note";
//!     fn encode(&self, w: &mut Writer) -> Result<(), EncodeError> {
//!         w.u64(self.epoch).text(1024, &self.text, "note text")?;
//!         Ok(())
//!     }
//!     fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
//!         Ok(Note { epoch: r.u64("note epoch")?, text: r.text(1024, "note text")?.to_owned() })
//!     }
//! }
//!
//! let bytes = Note { epoch: 7, text: "hi".into() }.to_bytes().unwrap();
//! assert_eq!(Note::from_bytes(&bytes).unwrap().epoch, 7);
//! assert!(matches!(
//!     Note::from_bytes(&bytes[..5]),
//!     Err(DecodeError::Truncated { what: "note epoch", .. })
//! ));
//! ```

mod error;
mod labeled;
mod reader;
mod writer;

pub use error::{DecodeError, EncodeError};
pub use labeled::labeled;
pub use reader::Reader;
pub use writer::Writer;

/// The width of a length (or count) prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Prefix {
    /// One byte: at most 255.
    U8,
    /// Two bytes, big-endian: at most 65,535.
    U16,
    /// Four bytes, big-endian: at most 4 GiB - 1. The default of every engine
    /// encoding.
    U32,
}

impl Prefix {
    /// The largest length this prefix can state.
    pub const fn max(self) -> usize {
        match self {
            Prefix::U8 => u8::MAX as usize,
            Prefix::U16 => u16::MAX as usize,
            Prefix::U32 => u32::MAX as usize,
        }
    }
}

// The codec's lengths are `usize`; a u32 prefix must fit one on every target.
const _: () = assert!(usize::BITS >= 32);

/// A value with one canonical encoding (rustls's `Codec`).
///
/// [`Codec::encode`] appends the value, [`Codec::read`] reads one off a reader
/// (leaving the rest), [`Codec::from_bytes`] decodes a whole buffer and refuses
/// trailing bytes.
pub trait Codec<'a>: Sized {
    /// What the value is, named in [`DecodeError::TrailingBytes`].
    const WHAT: &'static str;

    /// Appends the encoding.
    fn encode(&self, w: &mut Writer) -> Result<(), EncodeError>;

    /// Reads one value off the front of `r`.
    fn read(r: &mut Reader<'a>) -> Result<Self, DecodeError>;

    /// The encoding as a new buffer.
    fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        let mut w = Writer::new();
        self.encode(&mut w)?;
        Ok(w.into_vec())
    }

    /// Decodes exactly one value from `bytes`, refusing trailing bytes.
    fn from_bytes(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let value = Self::read(&mut r)?;
        r.expect_empty(Self::WHAT)?;
        Ok(value)
    }
}

#[cfg(test)]
mod tests;
