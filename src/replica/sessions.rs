//! Client sessions: the replicated table that makes every command apply at most
//! once (Raft dissertation §6.3).
//!
//! A client first registers a session through the log; its id is the log index of
//! the registration, so ids are unique and identical on every replica. Each command
//! carries (client id, sequence, acked_below). The table keeps, per session, the
//! response of every applied sequence the client has not yet acknowledged; a
//! retried sequence gets the cached response instead of being applied again. A
//! command for an unknown (never registered, or evicted) session is rejected, never
//! applied, so eviction can cost availability but never exactly-once.
//!
//! Everything here runs inside `apply`, so it is deterministic: ordered maps only,
//! eviction by (last active index, id). Eviction scans the table, which only
//! happens when a registration finds it full; the per-command path touches one
//! session and its response cache only.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use super::RequestError;
use crate::state_machine::StateMachine;
use crate::wire::{CachedResponse, RequestView, Session as WireSession};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Session {
    /// Whom the session belongs to (empty: a client in the node's process).
    owner: Vec<u8>,
    acked_below: u64,
    last_active_index: u64,
    responses: Responses,
}

/// A session's cached responses: a ring of (sequence, response), ordered by
/// sequence, at most `responses_max` long. A client acknowledges in sequence
/// order, so forgetting is a pop from the front, and it sends in sequence
/// order, so caching is almost always a push at the back; a lookup is a binary
/// search. Unlike a map it allocates once per session (the ring grows to the
/// client's window and stays), not once per response, and a response is a
/// shared [`Bytes`]: a retry's answer is the same buffer, not a copy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Responses {
    ring: VecDeque<(u64, Bytes)>,
}

impl Responses {
    fn len(&self) -> usize {
        self.ring.len()
    }

    fn get(&self, sequence: u64) -> Option<&Bytes> {
        self.ring.get(self.position(sequence)?).map(|(_, r)| r)
    }

    /// Where the response of `sequence` is in the ring, if cached.
    fn position(&self, sequence: u64) -> Option<usize> {
        self.ring.binary_search_by_key(&sequence, |&(s, _)| s).ok()
    }

    /// Caches the response of `sequence`, which is not cached yet, and
    /// answers the cached response.
    fn insert(&mut self, sequence: u64, response: Bytes) -> &Bytes {
        let at = match self.ring.back() {
            Some(&(last, _)) if last > sequence => {
                // A retry of an older sequence applied after a newer one (its
                // first attempt was lost with a leader): keep the order.
                let at = self.ring.partition_point(|&(s, _)| s < sequence);
                debug_assert!(self.ring.get(at).is_none_or(|&(s, _)| s != sequence));
                self.ring.insert(at, (sequence, response));
                at
            }
            _ => {
                self.ring.push_back((sequence, response));
                self.ring.len() - 1
            }
        };
        debug_assert!(self
            .ring
            .iter()
            .zip(self.ring.iter().skip(1))
            .all(|(a, b)| a.0 < b.0));
        &self.ring[at].1
    }

    /// Forgets every response below `acked_below`.
    fn forget_below(&mut self, acked_below: u64) {
        while self.ring.front().is_some_and(|&(s, _)| s < acked_below) {
            self.ring.pop_front();
        }
    }

    fn first_sequence(&self) -> Option<u64> {
        self.ring.front().map(|&(s, _)| s)
    }

    fn iter(&self) -> impl Iterator<Item = &(u64, Bytes)> {
        self.ring.iter()
    }
}

/// Whether two owners are the same. Owners are public (a client's key, or
/// empty for a client in the node's process), so the comparison need not be
/// constant-time. Empty owners, the common case, never reach `memcmp`:
/// `[u8] == [u8]` calls it even for length 0, and a profile of 256 clients put
/// 15% of a pool worker's time on that call's first (masked) load from the
/// empty `Vec`'s dangling pointer (a fault-suppression assist, most likely).
/// Skipping it took the bench from 664k to 907k ops/s (medians of 3).
fn same_owner(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && (a.is_empty() || a == b)
}

/// Sessions by client id, as two vectors sorted by id: the ids, contiguous
/// (4096 of them are 32 KiB, searched mostly in cache), and the sessions in
/// the same order. A B-tree's search took about four cache misses per
/// command at 4096 sessions (`Sessions::apply` was 7.4% of a 4096-client
/// bench's samples). Ids are log indexes, so a registration is almost always
/// a push at the end; an eviction (the table full) and a restore are the
/// only other changes. Iteration is in id order, as the map's was.
#[derive(Debug, Clone, Default)]
struct SessionTable {
    ids: Vec<u64>,
    sessions: Vec<Session>,
    /// Where ids were found lately: a command's session is looked up there
    /// first. Not part of the table's value (equality ignores it).
    recent: RecentPositions,
}

impl PartialEq for SessionTable {
    fn eq(&self, other: &Self) -> bool {
        self.ids == other.ids && self.sessions == other.sessions
    }
}

impl Eq for SessionTable {}

/// A direct-mapped cache of where ids sit in a [`SessionTable`]: one slot per
/// id hash, holding the id's position when last looked up. Every replica looks
/// up the session of every command it applies, and a binary search over the
/// ids is a chain of dependent loads (about eight at 256 sessions): it took
/// 8.8% of a 5-member run's samples once the batch decode had shrunk. A slot
/// is a hint only: the position is used if `ids` holds the id there, so a
/// slot made stale by an insert or removal in the middle (an eviction, a
/// restore) just misses. It grows with the table, up to
/// [`RecentPositions::SLOTS_MAX`] slots (256 KiB).
#[derive(Clone, Default)]
struct RecentPositions {
    /// `(id, position)`; a power of two long, or empty.
    slots: Vec<(u64, usize)>,
}

impl std::fmt::Debug for RecentPositions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecentPositions({} slots)", self.slots.len())
    }
}

impl RecentPositions {
    const SLOTS_MAX: usize = 16384;

    fn slot(&self, id: u64) -> Option<usize> {
        // Fibonacci hashing: neighbouring ids (registrations close in the
        // log) land in different slots.
        let hash = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        let mask = self.slots.len().checked_sub(1)?;
        Some(hash as usize & mask)
    }

    /// The position last seen for `id`, if its slot holds it.
    fn get(&self, id: u64) -> Option<usize> {
        let (seen, at) = *self.slots.get(self.slot(id)?)?;
        (seen == id).then_some(at)
    }

    /// Notes that `id` sits at `at` in a table of `len` ids.
    fn put(&mut self, id: u64, at: usize, len: usize) {
        // Four slots per id: few ids share a slot (about one in eight).
        let wanted = len
            .saturating_mul(4)
            .min(Self::SLOTS_MAX)
            .next_power_of_two();
        if self.slots.len() < wanted {
            // Empty slots read as id 0 at position 0. Registered ids are log
            // indexes, from 1, though a restored snapshot may hold an id 0:
            // either way the caller's check of `ids` makes such a slot
            // right or a miss.
            self.slots = vec![(0, 0); wanted];
        }
        if let Some(slot) = self.slot(id) {
            self.slots[slot] = (id, at);
        }
    }
}

impl SessionTable {
    fn len(&self) -> usize {
        debug_assert_eq!(self.ids.len(), self.sessions.len());
        self.ids.len()
    }

    fn position(&self, id: u64) -> Result<usize, usize> {
        // The newest session is the likeliest to be asked for after a
        // registration: check the end first.
        match self.ids.last() {
            Some(&last) if last == id => Ok(self.ids.len() - 1),
            Some(&last) if last < id => Err(self.ids.len()),
            _ => self.ids.binary_search(&id),
        }
    }

    fn get(&self, id: u64) -> Option<&Session> {
        let at = self.position(id).ok()?;
        self.sessions.get(at)
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut Session> {
        let at = match self.recent.get(id) {
            Some(at) if self.ids.get(at) == Some(&id) => at,
            _ => {
                let at = self.position(id).ok()?;
                self.recent.put(id, at, self.ids.len());
                at
            }
        };
        self.sessions.get_mut(at)
    }

    /// Adds session `id`, replacing one of the same id (returned).
    fn insert(&mut self, id: u64, session: Session) -> Option<Session> {
        match self.position(id) {
            Ok(at) => Some(std::mem::replace(&mut self.sessions[at], session)),
            Err(at) => {
                self.ids.insert(at, id);
                self.sessions.insert(at, session);
                None
            }
        }
    }

    fn remove(&mut self, id: u64) -> Option<Session> {
        let at = self.position(id).ok()?;
        self.ids.remove(at);
        Some(self.sessions.remove(at))
    }

    fn iter(&self) -> impl Iterator<Item = (u64, &Session)> {
        self.ids.iter().copied().zip(&self.sessions)
    }

    /// A table of `sessions`, sorted by id (built once, not by inserts).
    fn from_sorted(sessions: BTreeMap<u64, Session>) -> Self {
        let (ids, sessions) = sessions.into_iter().unzip();
        Self {
            ids,
            sessions,
            recent: RecentPositions::default(),
        }
    }
}

/// The session table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sessions {
    by_client: SessionTable,
    sessions_max: usize,
    responses_max: usize,
    /// Whether the limits are the group's replicated settings (from the
    /// bootstrap or a snapshot that carried them), rather than this replica's
    /// own config for a store bootstrapped before they were replicated. Only
    /// replicated limits are written into snapshots: a replica's own values
    /// never pass themselves off as the group's.
    replicated: bool,
}

impl Sessions {
    pub(crate) fn new(sessions_max: usize, responses_max: usize) -> Self {
        debug_assert!(sessions_max > 0 && responses_max > 0);
        Self {
            by_client: SessionTable::default(),
            sessions_max,
            responses_max,
            replicated: false,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.by_client.len()
    }

    /// The replicated limits (sessions kept, responses cached per session),
    /// or `None` while they are this replica's own config's.
    pub(crate) fn replicated_limits(&self) -> Option<(usize, usize)> {
        self.replicated
            .then_some((self.sessions_max, self.responses_max))
    }

    /// Goes back to this replica's own limits: a snapshot that carries none
    /// (from a store bootstrapped before they were replicated) was restored.
    pub(crate) fn set_own_limits(&mut self, sessions_max: usize, responses_max: usize) {
        debug_assert!(sessions_max > 0 && responses_max > 0);
        self.sessions_max = sessions_max;
        self.responses_max = responses_max;
        self.replicated = false;
    }

    /// Takes the group's replicated limits (the bootstrap's, or a snapshot's).
    /// The table a snapshot restores was built under the same limits, so
    /// nothing needs evicting.
    pub(crate) fn set_replicated_limits(&mut self, sessions_max: usize, responses_max: usize) {
        debug_assert!(sessions_max > 0 && responses_max > 0);
        self.sessions_max = sessions_max;
        self.responses_max = responses_max;
        self.replicated = true;
    }

    /// Registers a session of `owner` at log `index`; its id is `index`.
    /// Evicts the least recently active session when full.
    pub(crate) fn register(&mut self, index: u64, owner: Vec<u8>) -> u64 {
        while self.by_client.len() >= self.sessions_max {
            let Some(oldest) = self
                .by_client
                .iter()
                .min_by_key(|&(id, s)| (s.last_active_index, id))
                .map(|(id, _)| id)
            else {
                break;
            };
            self.by_client.remove(oldest);
        }
        let previous = self.by_client.insert(
            index,
            Session {
                owner,
                acked_below: 1,
                last_active_index: index,
                responses: Responses::default(),
            },
        );
        // Ids are log indexes, applied once each.
        debug_assert!(previous.is_none(), "session {index} registered twice");
        debug_assert!(self.by_client.len() <= self.sessions_max);
        index
    }

    /// Applies one client command at most once. The response is the one
    /// cached for the session: a caller that answers the client clones it,
    /// and one that does not (a follower) pays nothing for it.
    pub(crate) fn apply<'r, S: StateMachine>(
        &mut self,
        index: u64,
        request: impl Into<RequestView<'r>>,
        machine: &mut S,
    ) -> Result<&Bytes, RequestError> {
        let request: RequestView<'r> = request.into();
        let client_id = request.client_id;
        let responses_max = self.responses_max;
        let Some(session) = self.by_client.get_mut(client_id) else {
            return Err(RequestError::SessionExpired { client_id });
        };
        // Another client's session: nothing of it is touched (its cached
        // responses, its acknowledgements) and nothing is applied.
        if !same_owner(&session.owner, request.owner) {
            return Err(RequestError::NotSessionOwner { client_id });
        }
        session.last_active_index = index;
        if request.acked_below > session.acked_below {
            session.acked_below = request.acked_below;
            session.responses.forget_below(request.acked_below);
        }
        if request.sequence < session.acked_below {
            return Err(RequestError::Stale {
                client_id,
                sequence: request.sequence,
                acked_below: session.acked_below,
            });
        }
        if let Some(at) = session.responses.position(request.sequence) {
            return Ok(&session.responses.ring[at].1);
        }
        if session.responses.len() >= responses_max {
            return Err(RequestError::TooManyOutstanding {
                client_id,
                limit: responses_max,
            });
        }
        // `From<Vec<u8>>` keeps the machine's allocation: no copy. A machine
        // that returns a short response in a large buffer would have the
        // cache pin the whole buffer: give back the spare capacity first.
        let mut response = machine.apply(index, request.command);
        if response.capacity() > response.len() {
            response.shrink_to_fit();
        }
        debug_assert!(session.responses.len() < responses_max);
        debug_assert!(session
            .responses
            .first_sequence()
            .is_none_or(|sequence| sequence >= session.acked_below));
        Ok(session
            .responses
            .insert(request.sequence, Bytes::from(response)))
    }

    /// The cached response of an applied command the client has not yet
    /// acknowledged, for the session's own `owner` only (another owner's
    /// request naming it gets nothing).
    pub(crate) fn cached_response(
        &self,
        client_id: u64,
        sequence: u64,
        owner: &[u8],
    ) -> Option<&Bytes> {
        self.by_client
            .get(client_id)
            .filter(|s| same_owner(&s.owner, owner))?
            .responses
            .get(sequence)
    }

    pub(crate) fn to_wire(&self) -> Vec<WireSession> {
        self.by_client
            .iter()
            .map(|(client_id, s)| {
                let mut w = WireSession::new();
                w.client_id = client_id;
                w.owner = s.owner.clone();
                w.acked_below = s.acked_below;
                w.last_active_index = s.last_active_index;
                w.responses = s
                    .responses
                    .iter()
                    .map(|(sequence, response)| {
                        let mut c = CachedResponse::new();
                        c.sequence = *sequence;
                        c.response = response.clone();
                        c
                    })
                    .collect();
                w
            })
            .collect()
    }

    pub(crate) fn restore(&mut self, sessions: Vec<WireSession>) {
        // Through a map: a snapshot in any order (and of any size) is sorted
        // in O(n log n), never by inserts into the middle of the table.
        let mut restored = BTreeMap::new();
        for w in sessions {
            // Through a map, as before the ring: any order is sorted, and of a
            // duplicate sequence (never written by `to_wire`) the last one
            // stays, so every build restores the same table from the same bytes.
            let sorted: BTreeMap<u64, Bytes> = w
                .responses
                .into_iter()
                .map(|c| (c.sequence, c.response))
                .collect();
            let responses = Responses {
                ring: sorted.into_iter().collect(),
            };
            let s = Session {
                owner: w.owner,
                acked_below: w.acked_below,
                last_active_index: w.last_active_index,
                responses,
            };
            // A duplicate id in the snapshot: the last one wins.
            restored.insert(w.client_id, s);
        }
        self.by_client = SessionTable::from_sorted(restored);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_machine::KvStore;
    use crate::wire::Request;

    /// A machine that answers each command with `self.0(command)` and keeps
    /// no state.
    struct Answers(fn(&[u8]) -> Vec<u8>);

    impl StateMachine for Answers {
        fn apply(&mut self, _: u64, command: &[u8]) -> Vec<u8> {
            (self.0)(command)
        }
        fn query(&self, _: &[u8]) -> Vec<u8> {
            Vec::new()
        }
        fn snapshot(&self) -> Result<Vec<u8>, crate::state_machine::CaptureError> {
            Ok(Vec::new())
        }
        fn restore(&mut self, _: &[u8]) -> Result<(), crate::state_machine::RestoreError> {
            Ok(())
        }
    }

    fn request(client_id: u64, sequence: u64, acked_below: u64, command: Vec<u8>) -> Request {
        let mut r = Request::new();
        r.client_id = client_id;
        r.sequence = sequence;
        r.acked_below = acked_below;
        r.command = command.into();
        r
    }

    #[test]
    fn a_retried_sequence_is_applied_once() {
        let mut s = Sessions::new(4, 4);
        let mut kv = KvStore::new();
        let c = s.register(1, Vec::new());
        let first = s
            .apply(2, &request(c, 1, 1, KvStore::put("k", "v1")), &mut kv)
            .unwrap()
            .clone();
        let retry = s
            .apply(3, &request(c, 1, 1, KvStore::put("k", "v1")), &mut kv)
            .unwrap()
            .clone();
        assert_eq!(first, retry);
        assert_eq!(
            KvStore::decode_response(&retry).ok(),
            Some(None),
            "the retry saw the cached 'absent' response"
        );
        let second = s
            .apply(4, &request(c, 2, 2, KvStore::put("k", "v2")), &mut kv)
            .unwrap();
        assert_eq!(
            KvStore::decode_response(second).ok(),
            Some(Some(b"v1".to_vec()))
        );
        assert!(matches!(
            s.apply(5, &request(c, 1, 2, KvStore::put("k", "v1")), &mut kv),
            Err(RequestError::Stale { .. })
        ));
    }

    #[test]
    fn unknown_or_evicted_sessions_are_rejected_never_applied() {
        let mut s = Sessions::new(2, 4);
        let mut kv = KvStore::new();
        assert!(matches!(
            s.apply(1, &request(99, 1, 1, KvStore::put("k", "v")), &mut kv),
            Err(RequestError::SessionExpired { client_id: 99 })
        ));
        let a = s.register(1, Vec::new());
        let b = s.register(2, Vec::new());
        s.apply(3, &request(a, 1, 1, KvStore::put("a", "1")), &mut kv)
            .unwrap();
        let c = s.register(4, Vec::new()); // evicts b, the least recently active
        assert_eq!(s.len(), 2);
        assert!(matches!(
            s.apply(5, &request(b, 1, 1, KvStore::put("b", "1")), &mut kv),
            Err(RequestError::SessionExpired { .. })
        ));
        assert!(s
            .apply(6, &request(c, 1, 1, KvStore::put("c", "1")), &mut kv)
            .is_ok());
        assert!(kv.value(b"b").is_none());
    }

    #[test]
    fn outstanding_responses_are_bounded_and_the_table_round_trips() {
        let mut s = Sessions::new(4, 2);
        let mut kv = KvStore::new();
        let c = s.register(1, Vec::new());
        s.apply(2, &request(c, 1, 1, KvStore::put("a", "1")), &mut kv)
            .unwrap();
        s.apply(3, &request(c, 2, 1, KvStore::put("b", "1")), &mut kv)
            .unwrap();
        assert!(matches!(
            s.apply(4, &request(c, 3, 1, KvStore::put("c", "1")), &mut kv),
            Err(RequestError::TooManyOutstanding { limit: 2, .. })
        ));
        assert!(s
            .apply(5, &request(c, 3, 3, KvStore::put("c", "1")), &mut kv)
            .is_ok());
        let mut copy = Sessions::new(4, 2);
        copy.restore(s.to_wire());
        assert_eq!(copy, s);
    }

    /// A retry's answer is the cached buffer itself, not a copy of it.
    #[test]
    fn a_retry_is_answered_with_the_cached_buffer_not_a_copy() {
        let mut s = Sessions::new(4, 4);
        let mut kv = KvStore::new();
        let c = s.register(1, Vec::new());
        let first = s
            .apply(2, &request(c, 1, 1, KvStore::put("k", "v")), &mut kv)
            .unwrap()
            .clone();
        let retry = s
            .apply(3, &request(c, 1, 1, KvStore::put("k", "v")), &mut kv)
            .unwrap()
            .clone();
        assert_eq!(first.as_ptr(), retry.as_ptr());
        assert_eq!(
            s.cached_response(c, 1, b"").map(|b| b.as_ptr()),
            Some(first.as_ptr())
        );
    }

    /// The ring keeps sequence order when a retry of an older sequence applies
    /// after a newer one (its first attempt was lost with a leader), forgets
    /// from the front, and a snapshot restores it in order whatever order the
    /// snapshot lists it in (a duplicate: the last one stays, as before).
    #[test]
    fn the_response_ring_keeps_sequence_order() {
        let mut s = Sessions::new(4, 8);
        let mut kv = KvStore::new();
        let c = s.register(1, Vec::new());
        for (index, sequence) in [(2, 1), (3, 3), (4, 4), (5, 2)] {
            s.apply(
                index,
                &request(c, sequence, 1, KvStore::put("k", "v")),
                &mut kv,
            )
            .unwrap();
        }
        let order = |s: &Sessions| -> Vec<u64> {
            s.by_client
                .get(c)
                .unwrap()
                .responses
                .iter()
                .map(|&(q, _)| q)
                .collect()
        };
        assert_eq!(order(&s), [1, 2, 3, 4]);
        // Acknowledging below 3 forgets 1 and 2; a replay of 2 is stale.
        s.apply(6, &request(c, 5, 3, KvStore::put("k", "v")), &mut kv)
            .unwrap();
        assert_eq!(order(&s), [3, 4, 5]);
        assert!(matches!(
            s.apply(7, &request(c, 2, 3, KvStore::put("k", "v")), &mut kv),
            Err(RequestError::Stale { .. })
        ));
        // Restored from a snapshot that lists them out of order, with a
        // duplicate sequence.
        let mut wire = s.to_wire();
        let responses = &mut wire[0].responses;
        responses.reverse();
        let mut duplicate = responses[0].clone();
        duplicate.response = Bytes::from_static(b"last");
        responses.push(duplicate);
        let mut copy = Sessions::new(4, 8);
        copy.restore(wire);
        assert_eq!(order(&copy), [3, 4, 5]);
        assert_eq!(
            copy.cached_response(c, 5, b"").map(|b| &b[..]),
            Some(&b"last"[..])
        );
    }

    /// A machine answering in an oversized buffer: the cached response keeps
    /// only its length (review finding: the cache pinned spare capacity).
    #[test]
    fn a_cached_response_keeps_no_spare_capacity() {
        // Answers in a buffer far larger than the answer.
        let mut wasteful = Answers(|_| {
            let mut v = Vec::with_capacity(1 << 20);
            v.push(1);
            v
        });
        let mut s = Sessions::new(4, 4);
        let c = s.register(1, Vec::new());
        let response = s
            .apply(2, &request(c, 1, 1, b"x".to_vec()), &mut wasteful)
            .unwrap()
            .clone();
        assert_eq!(&response[..], [1]);
        // A `Bytes` made from a Vec with spare capacity cannot be converted
        // back without a copy unless it kept that capacity: the unique
        // conversion returns the same allocation, whose capacity tells.
        drop(s);
        let back = Vec::from(response);
        assert!(back.capacity() < 64, "capacity {} kept", back.capacity());
    }

    /// Review 10: a retry of an older sequence cached in the middle of the
    /// ring answers its own response, and the neighbours keep theirs.
    #[test]
    fn review10_a_retry_inserted_mid_ring_answers_its_own_response() {
        let mut echo = Answers(<[u8]>::to_vec);
        let mut s = Sessions::new(4, 8);
        let c = s.register(1, Vec::new());
        for (index, sequence) in [(2, 1), (3, 2), (4, 5), (5, 7), (6, 4), (7, 6), (8, 3)] {
            let command = format!("seq {sequence}").into_bytes();
            let answer = s.apply(index, &request(c, sequence, 1, command.clone()), &mut echo);
            assert_eq!(
                answer.map(|b| b.to_vec()),
                Ok(command),
                "sequence {sequence}"
            );
        }
        for sequence in 1..=7 {
            let command = format!("seq {sequence}").into_bytes();
            let again = s.apply(9, &request(c, sequence, 1, b"other".to_vec()), &mut echo);
            assert_eq!(
                again.map(|b| b.to_vec()),
                Ok(command),
                "replay of {sequence}"
            );
        }
    }

    /// The sorted-vector table against a map, over random inserts (mostly
    /// increasing ids, as registrations are), lookups, removals and a
    /// rebuild; each seed is printed on failure.
    #[test]
    fn the_session_table_behaves_as_a_map() {
        use rand::{Rng, SeedableRng};
        for seed in 0..64u64 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut table = SessionTable::default();
            let mut map: BTreeMap<u64, Session> = BTreeMap::new();
            let mut next = 1u64;
            for step in 0..400 {
                let id = if rng.gen_bool(0.7) {
                    next += rng.gen_range(1..4);
                    next
                } else {
                    rng.gen_range(0..next + 2)
                };
                let session = Session {
                    last_active_index: step,
                    ..Session::default()
                };
                match rng.gen_range(0..4) {
                    0 | 1 => assert_eq!(
                        table.insert(id, session.clone()),
                        map.insert(id, session),
                        "seed {seed} step {step}: insert {id}"
                    ),
                    2 => assert_eq!(
                        table.remove(id),
                        map.remove(&id),
                        "seed {seed} step {step}: remove {id}"
                    ),
                    _ => {
                        assert_eq!(table.get(id), map.get(&id), "seed {seed}: get {id}");
                        // Twice: the second lookup goes through the position
                        // cache the first one filled (review 12).
                        for _ in 0..2 {
                            let (t, m) = (table.get_mut(id), map.get_mut(&id));
                            assert_eq!(t.as_deref(), m.as_deref(), "seed {seed}: get_mut {id}");
                            if let (Some(t), Some(m)) = (t, m) {
                                t.acked_below += 1;
                                m.acked_below += 1;
                            }
                        }
                    }
                }
                assert_eq!(table.len(), map.len(), "seed {seed} step {step}");
            }
            assert!(
                table.iter().eq(map.iter().map(|(&id, s)| (id, s))),
                "seed {seed}: iteration order"
            );
            assert_eq!(SessionTable::from_sorted(map.clone()), table, "seed {seed}");
        }
    }

    #[test]
    fn owners_compare_by_length_then_bytes() {
        assert!(same_owner(b"", b""));
        assert!(same_owner(b"alice", b"alice"));
        assert!(!same_owner(b"alice", b"alicf"));
        assert!(!same_owner(b"alice", b"alic"));
        assert!(!same_owner(b"", b"a"));
        assert!(!same_owner(b"a", b""));
    }

    /// A session belongs to its owner (a network front end's client key): a
    /// command with another owner is refused and touches nothing, not even
    /// the cached responses or the acknowledgements; the owner survives a
    /// snapshot.
    #[test]
    fn a_session_is_usable_only_by_its_owner_and_the_owner_is_in_the_snapshot() {
        let mut s = Sessions::new(4, 4);
        let mut kv = KvStore::new();
        let c = s.register(1, b"alice".to_vec());
        let mut mine = request(c, 1, 1, KvStore::put("a", "1"));
        mine.owner = Bytes::from_static(b"alice");
        let applied = s.apply(2, &mine, &mut kv).unwrap().clone();
        let mut theirs = request(c, 1, 2, KvStore::put("a", "2"));
        theirs.owner = Bytes::from_static(b"mallory");
        assert_eq!(
            s.apply(3, &theirs, &mut kv),
            Err(RequestError::NotSessionOwner { client_id: c })
        );
        assert_eq!(
            s.cached_response(c, 1, b"alice"),
            Some(&applied),
            "still cached"
        );
        assert_eq!(
            s.cached_response(c, 1, b"mallory"),
            None,
            "a snapshot install answers another owner's request with nothing of the session's"
        );
        assert_eq!(kv.value(b"a"), Some(&b"1"[..]), "nothing applied");
        let mut copy = Sessions::new(4, 4);
        copy.restore(s.to_wire());
        assert_eq!(copy, s);
        theirs.owner = Bytes::new();
        assert!(
            copy.apply(4, &theirs, &mut kv).is_err(),
            "no owner is not alice"
        );
    }
}
