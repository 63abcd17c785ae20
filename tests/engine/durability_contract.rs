//! The durability contract, checked on the sans-IO core with a deterministic
//! driver: **a replica never sends a vote or an append acknowledgement for state
//! that is not yet durable**, and a replica that crashes and restarts from what was
//! durable loses nothing that was acknowledged.
//!
//! Three `Replica`s run over `AuditedLog`, a `LogStore` that keeps a copy of its
//! state as of the last `sync` (what a crash would leave). A seeded RNG reorders,
//! drops and duplicates messages, ticks replicas unevenly and crashes them back to
//! their durable state. Every message a replica emits is checked against its
//! durable copy at the moment it is emitted. A lying store (whose `sync` makes
//! nothing durable) must be caught, which shows the check can fail.
//!
//! Seeds: `VAULTFLEET_SEED=N` runs one seed; every failure names its seed.

use std::collections::{BTreeMap, VecDeque};

use raft::prelude::{Entry, HardState, Message, MessageType, Snapshot};
use raft::Storage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vaultfleet::replica::{Output, ReplicaConfig, Reply};
use vaultfleet::wire::Request;
use vaultfleet::{FleetConfig, KvStore, LogStore, MemLog, MemberSpec, Replica, StorageError};

/// A store that remembers what was durable at the last `sync`.
#[derive(Clone)]
struct AuditedLog {
    live: MemLog,
    durable: MemLog,
    lie: bool,
}

impl AuditedLog {
    fn new(lie: bool) -> Self {
        Self {
            live: MemLog::new(),
            durable: MemLog::new(),
            lie,
        }
    }
    /// What survives a crash.
    fn after_crash(&self) -> Self {
        Self {
            live: self.durable.clone(),
            durable: self.durable.clone(),
            lie: self.lie,
        }
    }
}

impl Storage for AuditedLog {
    vaultfleet::storage_reads_from!(live);
}

impl LogStore for AuditedLog {
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        self.live.append(entries)
    }
    fn set_hard_state(&mut self, hs: &HardState) -> Result<(), StorageError> {
        self.live.set_hard_state(hs)
    }
    fn apply_snapshot(&mut self, s: &Snapshot) -> Result<(), StorageError> {
        self.live.apply_snapshot(s)
    }
    fn save_snapshot(&mut self, s: &Snapshot) -> Result<(), StorageError> {
        self.live.save_snapshot(s)
    }
    fn compact(&mut self, i: u64) -> Result<(), StorageError> {
        self.live.compact(i)
    }
    fn sync(&mut self) -> Result<(), StorageError> {
        if !self.lie {
            self.durable = self.live.clone();
        }
        Ok(())
    }
    fn latest_snapshot(&self) -> &Snapshot {
        self.live.latest_snapshot()
    }
    fn hard_state(&self) -> &HardState {
        self.live.hard_state()
    }
}

type Node = Replica<AuditedLog, KvStore>;

fn config(id: u64, seed: u64) -> ReplicaConfig {
    let mut c = ReplicaConfig::new(id);
    c.seed = seed.wrapping_mul(31).wrapping_add(id);
    c.snapshot_entries_min = 30;
    c.compaction_entries_retained = 5;
    c
}

/// Checks one emitted message against the sender's durable state.
fn check_message(seed: u64, m: &Message, durable: &MemLog) -> Result<(), String> {
    let hs = LogStore::hard_state(durable);
    match m.get_msg_type() {
        MessageType::MsgRequestVoteResponse
            if !m.reject && (hs.term != m.term || hs.vote != m.to) =>
        {
            return Err(format!(
                "seed {seed}: replica {} granted its vote to {} in term {} but its durable hard state is term {} vote {}",
                m.from, m.to, m.term, hs.term, hs.vote
            ));
        }
        MessageType::MsgAppendResponse
            if !m.reject && (durable.last() < m.index || hs.term < m.term) =>
        {
            return Err(format!(
                "seed {seed}: replica {} acknowledged index {} in term {} but only {} (term {}) is durable",
                m.from,
                m.index,
                m.term,
                durable.last(),
                hs.term
            ));
        }
        _ => {}
    }
    Ok(())
}

struct Run {
    seed: u64,
    rng: ChaCha8Rng,
    nodes: BTreeMap<u64, Node>,
    network: VecDeque<Message>,
    out: Output,
    session: Option<u64>,
    sequence: u64,
    next_request: u64,
    pending: BTreeMap<u64, (String, String)>,
    acknowledged: BTreeMap<String, String>,
    leaders: BTreeMap<u64, u64>,
}

impl Run {
    fn new(seed: u64, lie: bool) -> Self {
        let fleet = FleetConfig::new(
            (1..=3)
                .map(|id| MemberSpec::voter(id, format!("dc-{id}")))
                .collect(),
        );
        let mut nodes = BTreeMap::new();
        for id in 1..=3 {
            let mut log = AuditedLog::new(lie);
            Replica::bootstrap(&mut log, &KvStore::new(), &fleet).expect("bootstrap");
            nodes.insert(
                id,
                Replica::new(config(id, seed), log, KvStore::new()).expect("replica"),
            );
        }
        Run {
            seed,
            rng: ChaCha8Rng::seed_from_u64(seed),
            nodes,
            network: VecDeque::new(),
            out: Output::default(),
            session: None,
            sequence: 0,
            next_request: 1,
            pending: BTreeMap::new(),
            acknowledged: BTreeMap::new(),
            leaders: BTreeMap::new(),
        }
    }

    fn cycle(&mut self, id: u64) -> Result<(), String> {
        let seed = self.seed;
        let Some(node) = self.nodes.get_mut(&id) else {
            return Ok(());
        };
        while node.has_ready() {
            self.out.clear();
            node.handle_ready(&mut self.out)
                .map_err(|e| format!("seed {seed}: {e}"))?;
            for m in &self.out.messages {
                check_message(seed, m, &node.store().durable)?;
            }
            self.network.extend(self.out.messages.drain(..));
            for c in self.out.completions.drain(..) {
                match c.result {
                    Ok(Reply::SessionRegistered(s)) => self.session = Some(s),
                    Ok(Reply::Applied(_)) => {
                        if let Some((k, v)) = self.pending.remove(&c.id) {
                            self.acknowledged.insert(k, v);
                        }
                    }
                    _ => {
                        self.pending.remove(&c.id);
                    }
                }
            }
        }
        if node.is_leader() {
            let term = node.status().term;
            if let Some(other) = self.leaders.insert(term, id) {
                if other != id {
                    return Err(format!(
                        "seed {seed}: two leaders in term {term}: {other} and {id}"
                    ));
                }
            }
        }
        Ok(())
    }

    fn step(&mut self) -> Result<(), String> {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        let id = ids[self.rng.gen_range(0..ids.len())];
        match self.rng.gen_range(0..100) {
            0..=34 => {
                if let Some(n) = self.nodes.get_mut(&id) {
                    n.tick();
                }
            }
            35..=79 if !self.network.is_empty() => {
                // Deliver a random message: reordering; sometimes drop or duplicate it.
                let i = self.rng.gen_range(0..self.network.len());
                let m = self.network.remove(i).expect("index in range");
                let fate = self.rng.gen_range(0..100);
                if fate >= 5 {
                    if fate >= 95 {
                        self.network.push_back(m.clone());
                    }
                    let to = m.to;
                    if let Some(n) = self.nodes.get_mut(&to) {
                        let _ = n.step(m);
                    }
                    self.cycle(to)?;
                }
            }
            80..=91 => {
                let Some((&leader, _)) = self.nodes.iter().find(|(_, n)| n.is_leader()) else {
                    return Ok(());
                };
                let node = self.nodes.get_mut(&leader).expect("leader exists");
                let request_id = self.next_request;
                self.next_request += 1;
                match self.session {
                    None => {
                        let _ = node.register_session(request_id);
                    }
                    Some(client_id) => {
                        self.sequence += 1;
                        let (k, v) = (
                            format!("k{}", self.sequence % 17),
                            format!("v{}", self.sequence),
                        );
                        let mut r = Request::new();
                        r.client_id = client_id;
                        r.sequence = self.sequence;
                        r.acked_below = 1;
                        r.command = KvStore::put(k.clone(), v.clone()).into();
                        if node.propose(request_id, r).is_ok() {
                            self.pending.insert(request_id, (k, v));
                        }
                    }
                }
            }
            92..=94 => {
                // Crash: the replica restarts from what its store made durable.
                let node = self.nodes.remove(&id).expect("node exists");
                let store = node.store().after_crash();
                let restarted = Replica::new(
                    config(id, self.seed ^ self.rng.gen::<u64>()),
                    store,
                    KvStore::new(),
                )
                .map_err(|e| format!("seed {}: restart of {id} failed: {e}", self.seed))?;
                self.nodes.insert(id, restarted);
            }
            _ => {}
        }
        self.cycle(id)
    }

    /// Heals everything and lets the fleet converge; then every acknowledged write
    /// must be in every replica's state, and all states must be equal.
    fn converge(&mut self) -> Result<(), String> {
        for _ in 0..20_000 {
            let ids: Vec<u64> = self.nodes.keys().copied().collect();
            for id in &ids {
                if let Some(n) = self.nodes.get_mut(id) {
                    n.tick();
                }
                self.cycle(*id)?;
            }
            while let Some(m) = self.network.pop_front() {
                let to = m.to;
                if let Some(n) = self.nodes.get_mut(&to) {
                    let _ = n.step(m);
                }
                self.cycle(to)?;
            }
            let applied: Vec<u64> = self.nodes.values().map(|n| n.status().applied).collect();
            let commit = self
                .nodes
                .values()
                .map(|n| n.status().commit)
                .max()
                .unwrap_or(0);
            if self.nodes.values().any(|n| n.is_leader()) && applied.iter().all(|&a| a == commit) {
                let states: Vec<&KvStore> =
                    self.nodes.values().map(|n| n.state_machine()).collect();
                for (k, v) in &self.acknowledged {
                    for (i, s) in states.iter().enumerate() {
                        if s.value(k.as_bytes()).is_none() {
                            return Err(format!(
                                "seed {}: acknowledged write {k}={v} missing on replica {}",
                                self.seed,
                                i + 1
                            ));
                        }
                    }
                }
                if states.windows(2).any(|w| w[0] != w[1]) {
                    return Err(format!(
                        "seed {}: replicas applied different states",
                        self.seed
                    ));
                }
                return Ok(());
            }
        }
        Err(format!(
            "seed {}: the healed fleet did not converge",
            self.seed
        ))
    }
}

fn run(seed: u64, lie: bool, steps: usize) -> Result<usize, String> {
    let mut r = Run::new(seed, lie);
    for _ in 0..steps {
        r.step()?;
    }
    r.converge()?;
    let terms = r.leaders.len();
    eprintln!(
        "seed {seed}: {} writes acknowledged, {terms} terms with a leader",
        r.acknowledged.len()
    );
    Ok(r.acknowledged.len())
}

fn seeds() -> Vec<u64> {
    match std::env::var("VAULTFLEET_SEED") {
        Ok(s) => vec![s.parse().expect("VAULTFLEET_SEED must be a number")],
        Err(_) => (1..=40).collect(),
    }
}

#[test]
fn votes_and_acknowledgements_are_only_sent_for_durable_state() {
    let mut acknowledged = 0;
    for seed in seeds() {
        match run(seed, false, 4_000) {
            Ok(n) => acknowledged += n,
            Err(e) => panic!("{e}\nreproduce with VAULTFLEET_SEED={seed}"),
        }
    }
    assert!(
        acknowledged > 0,
        "the runs acknowledged no writes, so they checked nothing"
    );
}

#[test]
fn a_store_that_lies_about_sync_is_caught() {
    let caught = (1..=10)
        .filter(|&seed| run(seed, true, 4_000).is_err())
        .count();
    assert!(
        caught > 0,
        "no seed caught a store whose sync makes nothing durable"
    );
}
