//! [`labeled`]: the one way to build an input to a MAC, to AEAD associated data or
//! to a signature.
//!
//! Concatenating fields is ambiguous (`"ab" + "c"` and `"a" + "bc"` give the same
//! bytes), and an input that names no purpose can be replayed into another one.
//! [`labeled`] prefixes a domain-separation label and every field with its
//! length, so two different (label, fields) lists never give the same bytes.
//!
//! Layout: `u64 label length, label, u64 field count, then for each field
//! u64 length, field` (all big-endian). The prefixes are `u64`, unlike the
//! record encodings' `u32`, because these bytes are only ever hashed or
//! authenticated, never decoded: `u64` makes the helper total (no slice is too
//! long for it), so building an input can never fail.

/// The domain-separated, length-prefixed encoding of `fields` under `label`.
///
/// Use one label per purpose and version (for example
/// `b"vaultfleet/sealed-log/batch/v2"`).
pub fn labeled(label: &'static [u8], fields: &[&[u8]]) -> Vec<u8> {
    let size = 16 + label.len() + fields.iter().map(|f| 8 + f.len()).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(label.len() as u64).to_be_bytes());
    out.extend_from_slice(label);
    out.extend_from_slice(&(fields.len() as u64).to_be_bytes());
    for field in fields {
        out.extend_from_slice(&(field.len() as u64).to_be_bytes());
        out.extend_from_slice(field);
    }
    debug_assert_eq!(out.len(), size);
    out
}
