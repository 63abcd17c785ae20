//! `KvStore`: a small replicated key-value map, the example state machine used by
//! the tests, the README and the examples. Commands, queries and responses are the
//! `Kv*` messages of `proto/vaultfleet.proto`.

use std::collections::BTreeMap;

use super::{CaptureError, RestoreError, StateMachine};
use crate::wire::{
    self, kv_command, DecodeError, KvCommand, KvDelete, KvGet, KvPut, KvResponse, KvSnapshot,
};

/// Why [`KvStore::decode_response`] has no value to give.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// The response bytes are not a `KvResponse`.
    #[error("kv response did not decode: {0}")]
    Decode(#[from] DecodeError),
    /// The state machine refused the command or query; `reason` is one of the
    /// `KvStore::REFUSAL_*` texts.
    #[error("kv store refused the request: {reason}")]
    Refused {
        /// The state machine's reason.
        reason: String,
    },
}

/// A replicated map from byte keys to byte values (ordered, so snapshots are
/// deterministic).
///
/// An example machine: its snapshot is one protocol buffer, so it holds at most
/// [`wire::MESSAGE_BYTES_MAX`] bytes of keys and values in all (above that
/// [`StateMachine::snapshot`] fails with [`CaptureError::Encode`], and the
/// replica runs on without compacting its log).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KvStore {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl KvStore {
    /// The reason [`KvStore`] writes into the response to a command it cannot decode.
    /// Fixed text, never a decoder's message: responses are replicated state (they are
    /// cached in the session table), and a dependency's wording may differ between
    /// the builds replicas run.
    pub const REFUSAL_MALFORMED_COMMAND: &str = "malformed kv command";
    /// The reason written for a command without an operation.
    pub const REFUSAL_NO_OPERATION: &str = "kv command has no operation";
    /// The reason written in answer to a query that does not decode.
    pub const REFUSAL_MALFORMED_QUERY: &str = "malformed kv query";

    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Encodes a command that sets `key` to `value`.
    ///
    /// # Panics
    /// If `key` and `value` together exceed [`wire::MESSAGE_BYTES_MAX`] (such a
    /// command could never be proposed: it is far above any `command_bytes_max`).
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Vec<u8> {
        let mut put = KvPut::new();
        put.key = key.into();
        put.value = value.into();
        let mut c = KvCommand::new();
        c.op = Some(kv_command::Op::Put(put));
        wire::encode_bounded(&c)
    }

    /// Encodes a command that removes `key`.
    ///
    /// # Panics
    /// If `key` exceeds [`wire::MESSAGE_BYTES_MAX`].
    pub fn delete(key: impl Into<Vec<u8>>) -> Vec<u8> {
        let mut del = KvDelete::new();
        del.key = key.into();
        let mut c = KvCommand::new();
        c.op = Some(kv_command::Op::Delete(del));
        wire::encode_bounded(&c)
    }

    /// Encodes a query for the value of `key`.
    ///
    /// # Panics
    /// If `key` exceeds [`wire::MESSAGE_BYTES_MAX`].
    pub fn get(key: impl Into<Vec<u8>>) -> Vec<u8> {
        let mut g = KvGet::new();
        g.key = key.into();
        wire::encode_bounded(&g)
    }

    /// Decodes a response: `Ok(Some(value))`, `Ok(None)` when absent, or why
    /// there is none.
    pub fn decode_response(bytes: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        let r: KvResponse = wire::decode(bytes, "kv response")?;
        if !r.error.is_empty() {
            return Err(KvError::Refused { reason: r.error });
        }
        Ok(r.found.then_some(r.value))
    }

    /// The encoded response for a previous value (`Some`) or its absence (`None`),
    /// as [`KvStore::apply`](StateMachine::apply) returns it.
    pub fn decode_response_bytes(previous: Option<Vec<u8>>) -> Vec<u8> {
        response(previous)
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The value of `key`, read directly (not replicated; for tests).
    pub fn value(&self, key: &[u8]) -> Option<&[u8]> {
        self.map.get(key).map(Vec::as_slice)
    }
}

fn response(previous: Option<Vec<u8>>) -> Vec<u8> {
    let mut r = KvResponse::new();
    r.found = previous.is_some();
    r.value = previous.unwrap_or_default();
    wire::encode_bounded(&r)
}

/// A response is bounded by the command or state it answers, so
/// [`wire::encode_bounded`] holds for every one of them.
fn error_response(reason: &'static str) -> Vec<u8> {
    let mut r = KvResponse::new();
    r.error = reason.to_owned();
    wire::encode_bounded(&r)
}

impl StateMachine for KvStore {
    fn apply(&mut self, _index: u64, command: &[u8]) -> Vec<u8> {
        let command: KvCommand = match wire::decode(command, "kv command") {
            Ok(c) => c,
            Err(_) => return error_response(KvStore::REFUSAL_MALFORMED_COMMAND),
        };
        match command.op {
            Some(kv_command::Op::Put(p)) => response(self.map.insert(p.key, p.value)),
            Some(kv_command::Op::Delete(d)) => response(self.map.remove(&d.key)),
            None => error_response(KvStore::REFUSAL_NO_OPERATION),
        }
    }

    fn query(&self, query: &[u8]) -> Vec<u8> {
        match wire::decode::<KvGet>(query, "kv query") {
            Ok(g) => response(self.map.get(&g.key).cloned()),
            Err(_) => error_response(KvStore::REFUSAL_MALFORMED_QUERY),
        }
    }

    fn snapshot(&self) -> Result<Vec<u8>, CaptureError> {
        let mut s = KvSnapshot::new();
        s.entries = self
            .map
            .iter()
            .map(|(k, v)| {
                let mut p = KvPut::new();
                p.key = k.clone();
                p.value = v.clone();
                p
            })
            .collect();
        Ok(wire::encode(&s)?)
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        let s: KvSnapshot = wire::decode(snapshot, "kv snapshot")?;
        self.map = s.entries.into_iter().map(|p| (p.key, p.value)).collect();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_delete_and_snapshot_round_trip() {
        let mut kv = KvStore::new();
        assert_eq!(
            KvStore::decode_response(&kv.apply(1, &KvStore::put("a", "1"))).ok(),
            Some(None)
        );
        assert_eq!(
            KvStore::decode_response(&kv.apply(2, &KvStore::put("a", "2"))).ok(),
            Some(Some(b"1".to_vec()))
        );
        assert_eq!(
            KvStore::decode_response(&kv.query(&KvStore::get("a"))).ok(),
            Some(Some(b"2".to_vec()))
        );
        let mut copy = KvStore::new();
        copy.restore(&kv.snapshot().unwrap()).unwrap();
        assert_eq!(copy, kv);
        kv.apply(3, &KvStore::delete("a"));
        assert!(kv.is_empty());
    }

    #[test]
    fn a_garbage_command_is_an_error_response_not_a_panic() {
        let mut kv = KvStore::new();
        let r = KvStore::decode_response(&kv.apply(1, b"\xff\xff\xff\xff"));
        assert!(
            matches!(r, Err(KvError::Refused { ref reason }) if reason == KvStore::REFUSAL_MALFORMED_COMMAND),
            "{r:?}"
        );
        assert!(kv.is_empty());
    }

    #[test]
    fn refusals_are_fixed_text_never_a_decoders_message() {
        let kv = KvStore::new();
        let r = KvStore::decode_response(&kv.query(b"\x0a\xff"));
        assert!(
            matches!(r, Err(KvError::Refused { ref reason }) if reason == KvStore::REFUSAL_MALFORMED_QUERY),
            "{r:?}"
        );
        let mut kv = KvStore::new();
        let r = KvStore::decode_response(&kv.apply(1, b""));
        assert!(
            matches!(r, Err(KvError::Refused { ref reason }) if reason == KvStore::REFUSAL_NO_OPERATION),
            "{r:?}"
        );
        assert!(matches!(
            KvStore::decode_response(b"\xff"),
            Err(KvError::Decode(_))
        ));
    }
}
