//! The codec's errors: what was wrong, named by a `&'static str` context, never a
//! formatted `String`, so callers can match on them and nest them as a typed cause.

/// Bytes that should hold an encoding did not decode.
///
/// `what` names the field or record being read (for example `"entry data"`); it is
/// static text chosen by the decoder, never bytes from the input.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes are left than the field needs.
    #[error("{what} is cut short: {wanted} bytes wanted, {left} left")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Bytes the field needs.
        wanted: usize,
        /// Bytes that were left.
        left: usize,
    },
    /// A length or count prefix is above the field's maximum.
    #[error("{what} has length {len}, at most {max} allowed")]
    TooLong {
        /// The field being read.
        what: &'static str,
        /// The length (or item count) found in the prefix.
        len: u64,
        /// The field's maximum.
        max: usize,
    },
    /// Bytes are left after the last field.
    #[error("{left} trailing bytes after {what}")]
    TrailingBytes {
        /// The record that should have ended.
        what: &'static str,
        /// Bytes left over.
        left: usize,
    },
    /// A version byte this build does not read.
    #[error("{what} has format version {found}; this build reads version {expected}")]
    Version {
        /// The record whose version it is.
        what: &'static str,
        /// The version found.
        found: u8,
        /// The version this build reads.
        expected: u8,
    },
    /// A tag (an enum discriminant, a boolean, a magic string) is not one of the
    /// allowed values.
    #[error("{what} holds an unknown value {found}")]
    UnknownValue {
        /// The field being read.
        what: &'static str,
        /// The value found (a magic string reports its first differing byte).
        found: u64,
    },
    /// The field is well formed but breaks a rule of its own (text that is not
    /// UTF-8, a magic string that does not match, ...).
    #[error("{what} is invalid")]
    Invalid {
        /// The field and the rule it broke.
        what: &'static str,
    },
}

/// A value could not be encoded: a length-prefixed field is longer than its
/// maximum (which is what the decoder would refuse).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A field is longer than its maximum, or than its length prefix can state.
    #[error("{what} is {len} bytes (or items), at most {max} can be encoded")]
    TooLong {
        /// The field being written.
        what: &'static str,
        /// Its length.
        len: usize,
        /// Its maximum.
        max: usize,
    },
}
