//! What simulated clients do, and the model their history is checked against.
//!
//! A [`Workload`] names the state machine the fleet replicates, generates each
//! client's next operation, and gives a sequential model per key for the
//! linearizability checker, plus its own invariants. [`GuessCounter`] is the
//! built-in one: every key allows at most `limit` "attempt" commands, then locks,
//! the shape of the vault's guess counter.

use std::collections::BTreeMap;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use vaultfleet::state_machine::{CaptureError, RestoreError};
use vaultfleet::StateMachine;

/// A command (through the log) or a read (linearizable, not logged).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Bytes proposed to the state machine's `apply`.
    Command(Vec<u8>),
    /// Bytes given to the state machine's `query`.
    Read(Vec<u8>),
}

/// One client operation on one key (the unit the linearizability checker splits
/// histories by).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// The key the operation touches.
    pub key: u64,
    /// What is sent.
    pub kind: OpKind,
}

/// One operation of the client-visible history.
#[derive(Clone, Debug)]
pub struct Record {
    /// The client that issued it.
    pub client: usize,
    /// The operation.
    pub op: Operation,
    /// Position in the event order when it was invoked.
    pub invoked: u64,
    /// Position in the event order when its response arrived; `None` when the
    /// outcome is unknown (the client gave up: it may or may not have applied).
    pub completed: Option<u64>,
    /// The response, when one arrived.
    pub output: Option<Vec<u8>>,
    /// Virtual time of invocation, in microseconds.
    pub invoked_at_us: u64,
}

/// A membership change of the simulated operator, as a workload hears of it
/// ([`Workload::membership_change`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemberChange {
    /// Replica `id` is about to be added as a learner (then promoted), in
    /// `datacenter`; `replacing` names the replica it replaces, removed once
    /// it is promoted (`docs/operations.md`, "Replacing a replica").
    Joining {
        /// The new replica's id.
        id: u64,
        /// Its datacenter label (`dc-<n>`).
        datacenter: String,
        /// The replica it replaces, if any.
        replacing: Option<u64>,
    },
    /// Replica `id` was removed from the fleet (not replaced).
    Removed {
        /// The removed replica's id.
        id: u64,
    },
}

/// The fleet as a run ended, for [`Workload::check_converged`]: raft's
/// configuration as the converged replicas applied it, and what the
/// operator announced ahead of it (its epochs change before `add-learner`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Converged {
    /// Voters of the configuration the converged replicas applied.
    pub voters: Vec<u64>,
    /// Learners of that configuration.
    pub learners: Vec<u64>,
    /// Replicas the operator's epochs list while raft's configuration may
    /// not, because a plan of the operator's was under way when the run
    /// ended: ones announced joining ([`MemberChange::Joining`]) that are
    /// not yet voters, and one whose removal was not yet seen committed
    /// (its epoch comes after).
    pub listed_ahead: Vec<u64>,
    /// Replicas the operator's epochs no longer list while raft's
    /// configuration may: ones being replaced (out of the epochs at their
    /// replacement's joining) whose removal was under way.
    pub unlisted_ahead: Vec<u64>,
    /// The virtual time, in microseconds.
    pub now_us: u64,
}

impl Converged {
    /// The members the operator's published fleet must list: raft's
    /// voters and learners, with a plan under way applied ahead.
    pub fn expected_members(&self) -> std::collections::BTreeSet<u64> {
        let mut m: std::collections::BTreeSet<u64> = self
            .voters
            .iter()
            .chain(&self.learners)
            .chain(&self.listed_ahead)
            .copied()
            .collect();
        for id in &self.unlisted_ahead {
            m.remove(id);
        }
        m
    }
}

/// A workload for the simulator: the replicated state machine, the operations
/// clients issue, and the sequential model their history must fit.
pub trait Workload {
    /// The state machine every replica runs.
    type Machine: StateMachine + Send + 'static;
    /// The model's state for one key.
    type Model: Clone + Ord + std::fmt::Debug + Default;

    /// A fresh state machine (the same on every replica).
    fn machine(&self) -> Self::Machine;

    /// Client `client`'s next operation.
    fn next_operation(&mut self, client: usize, rng: &mut ChaCha8Rng) -> Operation;

    /// The simulation's virtual time, in microseconds, given before every
    /// [`Workload::next_operation`] and [`Workload::observe`]: for workloads
    /// that run a clock of their own (the vault's service cores).
    fn clock(&mut self, _now_us: u64) {}

    /// One step of the sequential model: the state after `op` when its response
    /// was `output`, or `None` if `output` is impossible in `state`. `output` is
    /// `None` for an operation whose outcome is unknown: return the state as if
    /// it took effect.
    fn step(
        &self,
        state: &Self::Model,
        op: &Operation,
        output: Option<&[u8]>,
    ) -> Option<Self::Model>;

    /// Sees the outcome of client `client`'s operation `op`: its output, or
    /// `None` when the client gave up on it (unknown outcome). Multi-step
    /// protocols (the vault's login, then reset) chain their next step here; the
    /// client's next [`Workload::next_operation`] returns it.
    fn observe(&mut self, _client: usize, _op: &Operation, _output: Option<&[u8]>) {}

    /// The operator is changing the fleet's membership: before a new
    /// replica's `AddLearner` is proposed, and after a removal (not a
    /// replacement's) was seen committed. The vault workload publishes the
    /// fleet's next epoch here, as an operator does before `add-learner`.
    /// [`Workload::clock`] is given just before.
    fn membership_change(&mut self, _change: &MemberChange) {}

    /// The workload's own invariant over the whole history.
    fn check_history(&self, _history: &[Record]) -> Result<(), String> {
        Ok(())
    }

    /// Once per completed run, before [`Workload::check_final`]: the fleet
    /// converged on `machine` (a copy of the first converged replica's
    /// state) with configuration `fleet`. The vault workload checks here
    /// that its operator's newest epoch lists exactly that configuration and
    /// that logins work through every member with it.
    fn check_converged(
        &mut self,
        _machine: &Self::Machine,
        _fleet: &Converged,
    ) -> Result<(), String> {
        Ok(())
    }

    /// Durability: the state a converged replica ends with must hold every
    /// acknowledged operation.
    fn check_final(&self, _machine: &Self::Machine, _history: &[Record]) -> Result<(), String> {
        Ok(())
    }

    /// A short readable form of an operation and its output, for reports.
    fn describe(&self, op: &Operation, output: Option<&[u8]>) -> String {
        format!("{op:?} -> {output:?}")
    }
}

const ATTEMPT: u8 = b'A';
const ACCEPTED: u8 = b'+';
const LOCKED: u8 = b'L';

/// The guess-limited counter: `attempt(key)` is accepted at most `limit` times
/// per key, then the key is locked for good; `read(key)` returns the count.
#[derive(Clone, Debug)]
pub struct CounterMachine {
    limit: u32,
    counts: BTreeMap<u64, u32>,
    /// Test hook: never lock (the invariant checker must catch it).
    never_locks: bool,
}

impl CounterMachine {
    /// An empty machine allowing `limit` attempts per key.
    pub fn new(limit: u32) -> Self {
        Self {
            limit,
            counts: BTreeMap::new(),
            never_locks: false,
        }
    }

    /// The attempts accepted for `key`.
    pub fn count(&self, key: u64) -> u32 {
        self.counts.get(&key).copied().unwrap_or(0)
    }
}

fn key_of(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}

impl StateMachine for CounterMachine {
    fn apply(&mut self, _index: u64, command: &[u8]) -> Vec<u8> {
        let Some((&ATTEMPT, rest)) = command.split_first() else {
            return b"?".to_vec();
        };
        let Some(key) = key_of(rest) else {
            return b"?".to_vec();
        };
        let count = self.counts.entry(key).or_insert(0);
        if *count >= self.limit && !self.never_locks {
            return vec![LOCKED];
        }
        *count += 1;
        let mut out = vec![ACCEPTED];
        out.extend_from_slice(&count.to_be_bytes());
        out
    }

    fn query(&self, query: &[u8]) -> Vec<u8> {
        key_of(query)
            .map(|k| self.count(k).to_be_bytes().to_vec())
            .unwrap_or_default()
    }

    fn snapshot(&self) -> Result<Vec<u8>, CaptureError> {
        let mut out = Vec::with_capacity(self.counts.len() * 12);
        for (k, c) in &self.counts {
            out.extend_from_slice(&k.to_be_bytes());
            out.extend_from_slice(&c.to_be_bytes());
        }
        Ok(out)
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        if snapshot.len() % 12 != 0 {
            return Err(RestoreError::Malformed {
                what: "counter snapshot is not a whole number of 12-byte records",
            });
        }
        self.counts = snapshot
            .chunks_exact(12)
            .map(|c| {
                let mut k = [0u8; 8];
                let mut v = [0u8; 4];
                k.copy_from_slice(&c[..8]);
                v.copy_from_slice(&c[8..]);
                (u64::from_be_bytes(k), u32::from_be_bytes(v))
            })
            .collect();
        Ok(())
    }
}

/// The guess-counter workload: clients spread attempts and reads over `keys`
/// keys, each allowing `limit` attempts.
#[derive(Clone, Debug)]
pub struct GuessCounter {
    /// Attempts allowed per key.
    pub limit: u32,
    /// Number of keys.
    pub keys: u64,
    /// Share of reads among operations (0.0 to 1.0).
    pub read_share: f64,
    /// Test hook: the machine never locks (for the invariant checker's test).
    pub bug_never_locks: bool,
}

impl GuessCounter {
    /// `keys` keys of `limit` attempts each, a quarter of operations reads.
    pub fn new(keys: u64, limit: u32) -> Self {
        Self {
            limit,
            keys: keys.max(1),
            read_share: 0.25,
            bug_never_locks: false,
        }
    }

    fn parse(output: &[u8]) -> Option<Result<u32, ()>> {
        match output.split_first() {
            Some((&ACCEPTED, rest)) if rest.len() == 4 => {
                Some(Ok(u32::from_be_bytes(rest.try_into().ok()?)))
            }
            Some((&LOCKED, [])) => Some(Err(())),
            _ => None,
        }
    }
}

impl Workload for GuessCounter {
    type Machine = CounterMachine;
    type Model = u32;

    fn machine(&self) -> CounterMachine {
        let mut m = CounterMachine::new(self.limit);
        m.never_locks = self.bug_never_locks;
        m
    }

    fn next_operation(&mut self, _client: usize, rng: &mut ChaCha8Rng) -> Operation {
        let key = rng.gen_range(0..self.keys);
        let kind = if rng.gen_bool(self.read_share) {
            OpKind::Read(key.to_be_bytes().to_vec())
        } else {
            let mut c = vec![ATTEMPT];
            c.extend_from_slice(&key.to_be_bytes());
            OpKind::Command(c)
        };
        Operation { key, kind }
    }

    fn step(&self, count: &u32, op: &Operation, output: Option<&[u8]>) -> Option<u32> {
        match (&op.kind, output) {
            (OpKind::Read(_), Some(out)) => (out.len() == 4
                && u32::from_be_bytes(out.try_into().ok()?) == *count)
                .then_some(*count),
            (OpKind::Read(_), None) => Some(*count),
            (OpKind::Command(_), None) => Some(if *count < self.limit {
                count + 1
            } else {
                *count
            }),
            (OpKind::Command(_), Some(out)) => match Self::parse(out)? {
                Ok(n) if *count < self.limit && n == count + 1 => Some(n),
                Err(()) if *count >= self.limit => Some(*count),
                _ => None,
            },
        }
    }

    fn check_history(&self, history: &[Record]) -> Result<(), String> {
        let mut accepted: BTreeMap<u64, u32> = BTreeMap::new();
        for r in history {
            if let (OpKind::Command(_), Some(out)) = (&r.op.kind, &r.output) {
                if let Some(Ok(_)) = Self::parse(out) {
                    *accepted.entry(r.op.key).or_default() += 1;
                }
            }
        }
        for (key, n) in accepted {
            if n > self.limit {
                return Err(format!(
                    "key {key}: {n} attempts were accepted, the limit is {}",
                    self.limit
                ));
            }
        }
        Ok(())
    }

    fn check_final(&self, machine: &CounterMachine, history: &[Record]) -> Result<(), String> {
        let mut acked: BTreeMap<u64, u32> = BTreeMap::new();
        for r in history {
            if let (OpKind::Command(_), Some(out)) = (&r.op.kind, &r.output) {
                if let Some(Ok(n)) = Self::parse(out) {
                    let e = acked.entry(r.op.key).or_default();
                    *e = (*e).max(n);
                }
            }
        }
        for (key, n) in acked {
            let have = machine.count(key);
            if have < n {
                return Err(format!(
                    "key {key}: an acknowledged attempt saw count {n}, but the converged \
                     fleet holds {have}: acknowledged writes were lost"
                ));
            }
        }
        Ok(())
    }

    fn describe(&self, op: &Operation, output: Option<&[u8]>) -> String {
        let what = match op.kind {
            OpKind::Read(_) => "read",
            OpKind::Command(_) => "attempt",
        };
        let out = match (&op.kind, output) {
            (_, None) => "unknown".to_string(),
            (OpKind::Read(_), Some(o)) if o.len() == 4 => {
                format!("{}", u32::from_be_bytes([o[0], o[1], o[2], o[3]]))
            }
            (OpKind::Command(_), Some(o)) => match Self::parse(o) {
                Some(Ok(n)) => format!("accepted, count {n}"),
                Some(Err(())) => "locked".into(),
                None => format!("{o:?}"),
            },
            (_, Some(o)) => format!("{o:?}"),
        };
        format!("{what}(key {}) -> {out}", op.key)
    }
}
