//! Bridges raft-rs's `slog` logging into `tracing`, so the whole crate logs through
//! one facade. raft-rs logs are emitted under the `raft` target: quiet unless a
//! subscriber enables it (for example `RUST_LOG=raft=debug`).
//!
//! raft-rs logs whole messages and entries (`"msg" => ?m`, `"ents" => ?ents`),
//! and their payloads are the vault's state: user ids, OPAQUE records, sealed
//! secrets. The bridge therefore redacts every record, at every level, before it
//! reaches `tracing` (issue 13, finding 7): every quoted literal (protobuf text
//! format prints each `bytes` and `string` field, Rust's `Debug` each string and
//! `Bytes`, as one) becomes its length, and every bracketed list of numbers (a
//! `Debug` byte slice or array) becomes its item count. Message types, ids,
//! terms, indexes and counts stay readable.

use std::fmt::{self, Write as _};

use slog::{Drain, Level, OwnedKVList, Record, KV};

/// A slog drain that forwards every record to `tracing`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TracingDrain;

struct KvText(String);

impl slog::Serializer for KvText {
    fn emit_arguments(&mut self, key: slog::Key, val: &fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        let level = match record.level() {
            Level::Critical | Level::Error => tracing::Level::ERROR,
            Level::Warning => tracing::Level::WARN,
            Level::Info => tracing::Level::INFO,
            Level::Debug => tracing::Level::DEBUG,
            Level::Trace => tracing::Level::TRACE,
        };
        // Formatting costs; skip it when nobody listens at this level.
        let enabled = match level {
            tracing::Level::ERROR => tracing::enabled!(target: "raft", tracing::Level::ERROR),
            tracing::Level::WARN => tracing::enabled!(target: "raft", tracing::Level::WARN),
            tracing::Level::INFO => tracing::enabled!(target: "raft", tracing::Level::INFO),
            tracing::Level::DEBUG => tracing::enabled!(target: "raft", tracing::Level::DEBUG),
            tracing::Level::TRACE => tracing::enabled!(target: "raft", tracing::Level::TRACE),
        };
        if !enabled {
            return Ok(());
        }
        let mut kv = KvText(String::new());
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        // Redacted at every level: an error record may carry a message too.
        let msg = redact(&record.msg().to_string());
        let kv = redact(&kv.0);
        match level {
            tracing::Level::ERROR => tracing::error!(target: "raft", "{msg}{kv}"),
            tracing::Level::WARN => tracing::warn!(target: "raft", "{msg}{kv}"),
            tracing::Level::INFO => tracing::info!(target: "raft", "{msg}{kv}"),
            tracing::Level::DEBUG => tracing::debug!(target: "raft", "{msg}{kv}"),
            tracing::Level::TRACE => tracing::trace!(target: "raft", "{msg}{kv}"),
        }
        Ok(())
    }
}

/// A raft-rs logger for replica `id` that writes through `tracing`.
pub(crate) fn raft_logger(id: u64) -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!("replica" => id))
}

/// `text` with its payloads replaced by their sizes: each double-quoted literal
/// (escapes included; an unterminated one runs to the end) by
/// `"<redacted: N chars>"`, N its length as printed, and each bracketed list of
/// unsigned integers (a `Debug` byte slice) by `[<redacted: N items>]`. Anything
/// else is kept.
pub(crate) fn redact(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len().min(4096));
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let mut j = i + 1;
                while j < bytes.len() && bytes[j] != b'"' {
                    j += if bytes[j] == b'\\' { 2 } else { 1 };
                }
                let end = j.min(bytes.len());
                let _ = write!(out, "\"<redacted: {} chars>\"", end - (i + 1));
                i = end + 1;
            }
            b'[' => match number_list(&bytes[i..]) {
                Some((len, items)) => {
                    let _ = write!(out, "[<redacted: {items} items>]");
                    i += len;
                }
                None => {
                    out.push('[');
                    i += 1;
                }
            },
            _ => {
                // Copy up to the next quote or bracket (both ASCII, so the cut is
                // on a character boundary).
                let next = bytes[i..]
                    .iter()
                    .position(|b| matches!(b, b'"' | b'['))
                    .map_or(bytes.len(), |p| i + p);
                out.push_str(&text[i..next]);
                i = next;
            }
        }
    }
    out
}

/// If `s` starts with a non-empty bracketed list of unsigned integers (`[1, 2]`,
/// whitespace and a trailing comma allowed), its length in bytes and its number
/// of items.
fn number_list(s: &[u8]) -> Option<(usize, usize)> {
    debug_assert_eq!(s.first(), Some(&b'['));
    let mut i = 1;
    let mut items = 0;
    loop {
        while s.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
            i += 1;
        }
        match s.get(i)? {
            b']' if items > 0 => return Some((i + 1, items)),
            b if b.is_ascii_digit() => {
                while s.get(i).is_some_and(|b| b.is_ascii_digit()) {
                    i += 1;
                }
                items += 1;
                while s.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
                    i += 1;
                }
                match s.get(i)? {
                    b',' => i += 1,
                    b']' => return Some((i + 1, items)),
                    _ => return None,
                }
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn quoted_literals_become_their_length() {
        assert_eq!(
            redact(
                r#"msg_type: MsgAppend entries {term: 2 index: 6 data: "\n\214al\"ice"} commit: 5"#
            ),
            r#"msg_type: MsgAppend entries {term: 2 index: 6 data: "<redacted: 13 chars>"} commit: 5"#
        );
        assert_eq!(
            redact(r#"context: "" x"#),
            r#"context: "<redacted: 0 chars>" x"#
        );
        assert_eq!(
            redact(r#"data: "unterminated sec"#),
            r#"data: "<redacted: 16 chars>""#
        );
        assert_eq!(
            redact(r#"trailing escape "\"#),
            r#"trailing escape "<redacted: 1 chars>""#
        );
    }

    #[test]
    fn byte_lists_become_their_length() {
        assert_eq!(
            redact("key=[97, 108, 105, 99, 101] next=[\n  1,\n  2,\n]"),
            "key=[<redacted: 5 items>] next=[<redacted: 2 items>]"
        );
    }

    #[test]
    fn structure_and_numbers_are_kept() {
        let text = "Sending from 2 to 1 msg_type: MsgHeartbeat term: 3 commit: 7 buffer: [] \
                    voters: {1, 2, 3} [term: 3] [a] ünïcode";
        assert_eq!(redact(text), text);
    }
}
