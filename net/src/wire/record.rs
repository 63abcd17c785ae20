//! Records: the TCP stream's unit. Each record is a `u16` big-endian length and
//! one Noise message, so a record can never exceed Noise's 65535-byte message
//! limit, and the reader ([`record_codec`], tokio-util's length-delimited codec)
//! never buffers more than one record.
//!
//! A batch of frames is sealed into as many records as it needs (each carrying at
//! most [`NOISE_PLAINTEXT_BYTES_MAX`] bytes of plaintext) and written with one
//! socket write.

use bytes::{BufMut, BytesMut};
use tokio_util::codec::LengthDelimitedCodec;

/// Largest Noise message, in bytes (the Noise specification's limit).
pub const NOISE_MESSAGE_BYTES_MAX: usize = 65535;
/// Bytes of the AEAD tag on every Noise transport message.
pub const NOISE_TAG_BYTES: usize = 16;
/// Largest plaintext one transport record carries, in bytes.
pub const NOISE_PLAINTEXT_BYTES_MAX: usize = NOISE_MESSAGE_BYTES_MAX - NOISE_TAG_BYTES;
/// Bytes of a record's length prefix.
pub const RECORD_LENGTH_BYTES: usize = 2;

/// The codec that reads records: a `u16` length, at most 65535 bytes.
pub fn record_codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(RECORD_LENGTH_BYTES)
        .max_frame_length(NOISE_MESSAGE_BYTES_MAX)
        .new_codec()
}

/// Appends one record holding `message` (at most [`NOISE_MESSAGE_BYTES_MAX`]
/// bytes, which every Noise message is) to `out`.
pub fn put_record(out: &mut BytesMut, message: &[u8]) {
    debug_assert!(message.len() <= NOISE_MESSAGE_BYTES_MAX);
    out.reserve(RECORD_LENGTH_BYTES + message.len());
    out.put_u16(u16::try_from(message.len()).unwrap_or(u16::MAX));
    out.put_slice(message);
}

/// Encrypts `plaintext` into records appended to `out`, one Noise message per
/// [`NOISE_PLAINTEXT_BYTES_MAX`] bytes. Returns the number of records.
pub fn seal_records(
    noise: &mut snow::TransportState,
    plaintext: &[u8],
    out: &mut BytesMut,
) -> Result<usize, snow::Error> {
    let mut message = vec![0u8; NOISE_MESSAGE_BYTES_MAX];
    let mut records = 0;
    for chunk in plaintext.chunks(NOISE_PLAINTEXT_BYTES_MAX) {
        let n = noise.write_message(chunk, &mut message)?;
        put_record(out, &message[..n]);
        records += 1;
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tokio_util::codec::Decoder;

    #[test]
    fn records_never_exceed_a_noise_message_and_read_back_in_order() {
        let mut out = BytesMut::new();
        put_record(&mut out, b"abc");
        put_record(&mut out, &[5u8; NOISE_MESSAGE_BYTES_MAX]);
        let mut codec = record_codec();
        let first = codec.decode(&mut out).unwrap().unwrap();
        assert_eq!(Bytes::from(first), Bytes::from_static(b"abc"));
        let second = codec.decode(&mut out).unwrap().unwrap();
        assert_eq!(second.len(), NOISE_MESSAGE_BYTES_MAX);
        assert!(codec.decode(&mut out).unwrap().is_none());
    }
}
