//! `KvStore`: a small replicated key-value map, the example state machine used by
//! the tests, the README and the examples. Commands, queries and responses are the
//! `Kv*` messages of `proto/vaultfleet.proto`.

use std::collections::BTreeMap;

use super::{RestoreError, StateMachine};
use crate::wire::{self, kv_command, KvCommand, KvDelete, KvGet, KvPut, KvResponse, KvSnapshot};

/// A replicated map from byte keys to byte values (ordered, so snapshots are
/// deterministic).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KvStore {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl KvStore {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Encodes a command that sets `key` to `value`.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Vec<u8> {
        let mut put = KvPut::new();
        put.key = key.into();
        put.value = value.into();
        let mut c = KvCommand::new();
        c.op = Some(kv_command::Op::Put(put));
        wire::encode(&c)
    }

    /// Encodes a command that removes `key`.
    pub fn delete(key: impl Into<Vec<u8>>) -> Vec<u8> {
        let mut del = KvDelete::new();
        del.key = key.into();
        let mut c = KvCommand::new();
        c.op = Some(kv_command::Op::Delete(del));
        wire::encode(&c)
    }

    /// Encodes a query for the value of `key`.
    pub fn get(key: impl Into<Vec<u8>>) -> Vec<u8> {
        let mut g = KvGet::new();
        g.key = key.into();
        wire::encode(&g)
    }

    /// Decodes a response: `Ok(Some(value))`, `Ok(None)` when absent, or the
    /// error the state machine reported.
    pub fn decode_response(bytes: &[u8]) -> Result<Option<Vec<u8>>, String> {
        let r: KvResponse = wire::decode(bytes, "kv response").map_err(|e| e.to_string())?;
        if !r.error.is_empty() {
            return Err(r.error);
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
    wire::encode(&r)
}

fn error_response(error: String) -> Vec<u8> {
    let mut r = KvResponse::new();
    r.error = error;
    wire::encode(&r)
}

impl StateMachine for KvStore {
    fn apply(&mut self, _index: u64, command: &[u8]) -> Vec<u8> {
        let command: KvCommand = match wire::decode(command, "kv command") {
            Ok(c) => c,
            Err(e) => return error_response(e.to_string()),
        };
        match command.op {
            Some(kv_command::Op::Put(p)) => response(self.map.insert(p.key, p.value)),
            Some(kv_command::Op::Delete(d)) => response(self.map.remove(&d.key)),
            None => error_response("kv command has no operation".into()),
        }
    }

    fn query(&self, query: &[u8]) -> Vec<u8> {
        match wire::decode::<KvGet>(query, "kv query") {
            Ok(g) => response(self.map.get(&g.key).cloned()),
            Err(e) => error_response(e.to_string()),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
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
        wire::encode(&s)
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        let s: KvSnapshot =
            wire::decode(snapshot, "kv snapshot").map_err(|e| RestoreError(e.to_string()))?;
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
            KvStore::decode_response(&kv.apply(1, &KvStore::put("a", "1"))),
            Ok(None)
        );
        assert_eq!(
            KvStore::decode_response(&kv.apply(2, &KvStore::put("a", "2"))),
            Ok(Some(b"1".to_vec()))
        );
        assert_eq!(
            KvStore::decode_response(&kv.query(&KvStore::get("a"))),
            Ok(Some(b"2".to_vec()))
        );
        let mut copy = KvStore::new();
        copy.restore(&kv.snapshot()).unwrap();
        assert_eq!(copy, kv);
        kv.apply(3, &KvStore::delete("a"));
        assert!(kv.is_empty());
    }

    #[test]
    fn a_garbage_command_is_an_error_response_not_a_panic() {
        let mut kv = KvStore::new();
        let r = KvStore::decode_response(&kv.apply(1, b"\xff\xff\xff\xff"));
        assert!(r.is_err());
        assert!(kv.is_empty());
    }
}
