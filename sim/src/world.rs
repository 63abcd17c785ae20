//! The simulated world: virtual time, one event queue, one seeded RNG, the hosts
//! running the shipping `Replica` code, the network between them, the clients,
//! the fault scheduler and the checkers.

use std::cmp::Ordering as CmpOrdering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use raft::eraftpb::MessageType;
use raft::prelude::Message;
use raft::{SnapshotStatus, StateRole};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};
use vaultfleet::replica::{Completion, Output, Reply, RequestId};
use vaultfleet::state_machine::RestoreError;
use vaultfleet::wire::Request;
use vaultfleet::{
    FleetConfig, Hsm, LogStore, MemberSpec, Replica, ReplicaConfig, RequestError, Sealed,
    SealedConfig, SoftHsm, StateMachine, StorageError,
};

use crate::disk::{CrashOutcome, CrashPoint, Disk};
use crate::linearizability::{self, Verdict};
use crate::options::SimOptions;
use crate::store::SimStore;
use crate::workload::{OpKind, Operation, Record, Workload};

const CHAOS_STEP_US: u64 = 100_000;
const CLIENT_ATTEMPT_TIMEOUT_US: u64 = 1_000_000;
const CLIENT_OP_TIMEOUT_US: u64 = 10_000_000;
const LINEARIZABILITY_BUDGET: u64 = 2_000_000;
const RECENT_EVENTS: usize = 48;

/// Which invariant a run broke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The invariant's name (`one leader per term`, `linearizability`, ...).
    pub invariant: &'static str,
    /// What was seen.
    pub detail: String,
    /// Virtual time of detection, in microseconds.
    pub at_us: u64,
}

/// Counters of what happened in a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events processed.
    pub events: u64,
    /// Messages sent between replicas.
    pub messages: u64,
    /// Client operations acknowledged.
    pub ops_completed: u64,
    /// Client operations given up (outcome unknown).
    pub ops_unknown: u64,
    /// Crashes, and what became of pending writes.
    pub crashes: u64,
    /// Crashes whose pending batch was torn or corrupted (and discarded).
    pub torn_or_corrupted: u64,
    /// Partitions started.
    pub partitions: u64,
    /// HSM outages.
    pub hsm_outages: u64,
    /// Bits flipped in stored data (each detected at the next open).
    pub bit_flips: u64,
    /// Disks rolled back (each detected at the next open).
    pub rollbacks: u64,
    /// Clock jumps.
    pub clock_jumps: u64,
    /// Replicas lost for good (their store was refused, as it must be).
    pub replicas_lost: u64,
    /// Highest term reached.
    pub max_term: u64,
    /// Highest commit index reached.
    pub max_commit: u64,
}

/// The result of one simulation.
#[derive(Clone, Debug)]
pub struct Report {
    /// The options it ran with.
    pub options: SimOptions,
    /// The first invariant broken, if any.
    pub violation: Option<Violation>,
    /// A legitimate stall (no connected majority left), if any: not a bug.
    pub stall: Option<String>,
    /// Virtual time simulated, in microseconds.
    pub simulated_us: u64,
    /// SHA-256 over every event, in hex: equal for equal runs.
    pub trace: String,
    /// What happened.
    pub stats: Stats,
    /// The last events before the end (or the violation), readable.
    pub recent: Vec<String>,
    /// Keys whose linearizability search ran out of budget (neither passed nor failed).
    pub inconclusive: Vec<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Safety,
    Liveness,
    Done,
}

enum ClientRequest {
    Register,
    Command(Request),
    Read(Vec<u8>),
}

enum Event {
    Tick {
        host: usize,
        generation: u64,
    },
    Deliver {
        to: usize,
        message: Box<Message>,
    },
    ClientArrive {
        host: usize,
        client: usize,
        op: u64,
        request: ClientRequest,
    },
    ClientReply {
        client: usize,
        op: u64,
        result: Result<Reply, RequestError>,
    },
    /// A client's timer: start the next operation, or (for the current one)
    /// resend to the chosen replica after a back-off (`resend`), or give up on
    /// that replica after an attempt timed out (pick another).
    ClientWake {
        client: usize,
        op: u64,
        attempt: u64,
        resend: bool,
    },
    Chaos,
    Restart {
        host: usize,
    },
    HsmBack {
        host: usize,
    },
    Heal,
    StartLiveness,
    Poll,
}

struct Scheduled {
    at: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    // Reversed: BinaryHeap is a max-heap, the earliest event must come out first.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// One applied command, as a replica's state machine saw it.
struct Applied {
    host: u64,
    index: u64,
    position: u32,
    digest: u64,
}

/// Wraps the workload's machine to record every apply for the checkers.
struct Recorder<M> {
    inner: M,
    host: u64,
    last_index: u64,
    position: u32,
    log: Arc<Mutex<Vec<Applied>>>,
}

fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl<M: StateMachine> StateMachine for Recorder<M> {
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8> {
        if index == self.last_index {
            self.position += 1;
        } else {
            self.last_index = index;
            self.position = 0;
        }
        self.log.lock().push(Applied {
            host: self.host,
            index,
            position: self.position,
            digest: fnv(command),
        });
        self.inner.apply(index, command)
    }
    fn query(&self, query: &[u8]) -> Vec<u8> {
        self.inner.query(query)
    }
    fn snapshot(&self) -> Vec<u8> {
        self.inner.snapshot()
    }
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        self.last_index = 0;
        self.inner.restore(snapshot)
    }
}

struct Host<M: StateMachine> {
    id: u64,
    dc: usize,
    replica: Option<Replica<SimStore, Recorder<M>>>,
    disk: Disk,
    hsm: SoftHsm,
    tick_us: u64,
    generation: u64,
    /// Lost for good (its store was refused, as it had to be).
    lost: Option<String>,
    /// Its disk was damaged while it was down: the next open must refuse it.
    damaged: Option<String>,
    /// Durable images taken at crashes (what a hostile host could put back), with
    /// the HSM counter when each was taken.
    images: Vec<(vaultfleet::MemLog, u64)>,
    restart_pending: bool,
    requests: BTreeMap<RequestId, (usize, u64)>,
}

struct Pending {
    record: usize,
    op: Operation,
    sequence: u64,
    deadline: u64,
}

struct SimClient {
    session: Option<u64>,
    next_sequence: u64,
    op: u64,
    attempt: u64,
    target: usize,
    current: Option<Pending>,
}

#[derive(Clone, Copy, Debug)]
enum Partition {
    None,
    Active,
}

/// A simulated fleet running a workload. Build it with [`Simulation::new`], run it
/// with [`Simulation::run`].
pub struct Simulation<W: Workload> {
    opts: SimOptions,
    workload: W,
    rng: ChaCha8Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    hosts: Vec<Host<W::Machine>>,
    fleet: FleetConfig,
    base_latency: Vec<Vec<u64>>,
    blocked: BTreeSet<(usize, usize)>,
    partition: Partition,
    clients: Vec<SimClient>,
    history: Vec<Record>,
    order: u64,
    next_request: RequestId,
    leaders: BTreeMap<u64, u64>,
    applied: BTreeMap<(u64, u32), (u64, u64)>,
    apply_log: Arc<Mutex<Vec<Applied>>>,
    phase: Phase,
    liveness_deadline: u64,
    violation: Option<Violation>,
    stall: Option<String>,
    crash_next: Vec<usize>,
    inconclusive: Vec<u64>,
    trace: Sha256,
    recent: VecDeque<String>,
    stats: Stats,
    out: Output,
    extra_check: Option<Box<ExtraCheck<W>>>,
}

/// A user's own invariant over a replica's state machine, checked after every
/// event that touched that replica.
pub type ExtraCheck<W> = dyn FnMut(u64, &<W as Workload>::Machine) -> Result<(), String>;

impl<W: Workload> Simulation<W> {
    /// Builds the fleet described by `opts` around `workload`: bootstraps every
    /// replica's store and starts them at virtual time 0.
    pub fn new(opts: SimOptions, workload: W) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
        let n = opts.replicas.max(1);
        let dcs = opts.datacenters.clamp(1, n);
        let fleet = FleetConfig::new(
            (0..n)
                .map(|i| MemberSpec::voter(i as u64 + 1, format!("dc-{}", i % dcs)))
                .collect(),
        );
        // Per datacenter pair a base latency; per link a little spread.
        let mut pair_latency = BTreeMap::new();
        for a in 0..dcs {
            for b in a..dcs {
                let (lo, hi) = if a == b {
                    opts.intra_dc_us
                } else {
                    opts.inter_dc_us
                };
                pair_latency.insert((a, b), rng.gen_range(lo..=hi.max(lo)));
            }
        }
        let dc_latency = |a: usize, b: usize| pair_latency[&(a.min(b), a.max(b))];
        let base_latency = (0..n)
            .map(|a| {
                (0..n)
                    .map(|b| dc_latency(a % dcs, b % dcs) + rng.gen_range(0..50))
                    .collect()
            })
            .collect();
        let apply_log = Arc::new(Mutex::new(Vec::new()));
        let tick = opts.tick_ms * 1000;
        let mut hosts = Vec::with_capacity(n);
        for i in 0..n {
            let drift = opts.faults.clock_drift;
            let factor = if drift > 0.0 {
                rng.gen_range(1.0 - drift..1.0 + drift)
            } else {
                1.0
            };
            hosts.push(Host {
                id: i as u64 + 1,
                dc: i % dcs,
                replica: None,
                disk: Disk::new(opts.disk_bug),
                hsm: SoftHsm::from_seed(rng.gen()),
                tick_us: ((tick as f64) * factor).max(1.0) as u64,
                generation: 0,
                lost: None,
                damaged: None,
                images: Vec::new(),
                restart_pending: false,
                requests: BTreeMap::new(),
            });
        }
        let clients = (0..opts.clients)
            .map(|c| SimClient {
                session: None,
                next_sequence: 1,
                op: 0,
                attempt: 0,
                target: c % n,
                current: None,
            })
            .collect();
        let mut sim = Self {
            opts,
            workload,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            hosts,
            fleet,
            base_latency,
            blocked: BTreeSet::new(),
            partition: Partition::None,
            clients,
            history: Vec::new(),
            order: 0,
            next_request: 1,
            leaders: BTreeMap::new(),
            applied: BTreeMap::new(),
            apply_log,
            phase: Phase::Safety,
            liveness_deadline: u64::MAX,
            violation: None,
            stall: None,
            crash_next: Vec::new(),
            inconclusive: Vec::new(),
            trace: Sha256::new(),
            recent: VecDeque::with_capacity(RECENT_EVENTS),
            stats: Stats::default(),
            out: Output::default(),
            extra_check: None,
        };
        for h in 0..n {
            sim.start_host(h, true);
        }
        for c in 0..sim.clients.len() {
            let at = sim.rng.gen_range(0..50_000);
            sim.schedule(
                at,
                Event::ClientWake {
                    client: c,
                    op: 0,
                    attempt: 0,
                    resend: false,
                },
            );
        }
        sim.schedule(CHAOS_STEP_US, Event::Chaos);
        sim.schedule(
            sim.opts.safety_ms.saturating_mul(1000),
            Event::StartLiveness,
        );
        sim
    }

    /// Adds an invariant of the caller's own over each replica's state machine.
    pub fn check_each_replica(
        &mut self,
        check: impl FnMut(u64, &W::Machine) -> Result<(), String> + 'static,
    ) {
        self.extra_check = Some(Box::new(check));
    }

    fn schedule(&mut self, after: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Scheduled {
            at: self.now.saturating_add(after),
            seq: self.seq,
            event,
        });
    }

    fn note(&mut self, text: impl FnOnce() -> String) {
        if self.recent.len() == RECENT_EVENTS {
            self.recent.pop_front();
        }
        let t = text();
        self.recent
            .push_back(format!("{:>10.3} ms  {t}", self.now as f64 / 1000.0));
    }

    fn violate(&mut self, invariant: &'static str, detail: String) {
        if self.violation.is_none() {
            self.note(|| format!("VIOLATION {invariant}: {detail}"));
            self.violation = Some(Violation {
                invariant,
                detail,
                at_us: self.now,
            });
        }
    }

    fn replica_config(&mut self, h: usize) -> ReplicaConfig {
        let mut rc = ReplicaConfig::new(self.hosts[h].id);
        rc.seed = self.rng.gen();
        rc.election_ticks = self.opts.election_ticks;
        rc.heartbeat_ticks = self.opts.heartbeat_ticks;
        rc.snapshot_entries_min = self.opts.snapshot_entries;
        rc.compaction_entries_retained = self.opts.snapshot_entries / 4;
        rc.request_ticks_max = 300;
        rc
    }

    /// Opens host `h`'s store and starts its replica; `initial` bootstraps it.
    fn start_host(&mut self, h: usize, initial: bool) {
        if self.hosts[h].lost.is_some() || self.hosts[h].replica.is_some() {
            return;
        }
        let id = self.hosts[h].id;
        let disk = self.hosts[h].disk.open();
        let store = if self.opts.sealed {
            let cfg = SealedConfig::new(1, id);
            match Sealed::open(disk, self.hosts[h].hsm.clone(), cfg) {
                Ok(s) => SimStore::Sealed(Box::new(s)),
                Err(e) => return self.store_refused(h, e),
            }
        } else {
            SimStore::Plain(disk)
        };
        if let Some(damage) = self.hosts[h].damaged.take() {
            // The store opened although its disk was damaged.
            self.violate(
                "damaged storage is detected, never served",
                format!("replica {id} opened its store after {damage}"),
            );
            return;
        }
        let mut store = store;
        let machine = Recorder {
            inner: self.workload.machine(),
            host: id,
            last_index: 0,
            position: 0,
            log: self.apply_log.clone(),
        };
        if initial {
            if let Err(e) = Replica::bootstrap(&mut store, &machine, &self.fleet) {
                return self.violate("replicas start", format!("bootstrap of {id}: {e}"));
            }
        }
        let cfg = self.replica_config(h);
        match Replica::new(cfg, store, machine) {
            Ok(r) => {
                self.hosts[h].replica = Some(r);
                self.hosts[h].generation += 1;
                self.hosts[h].restart_pending = false;
                let g = self.hosts[h].generation;
                let first = self.rng.gen_range(0..self.hosts[h].tick_us);
                self.schedule(
                    first,
                    Event::Tick {
                        host: h,
                        generation: g,
                    },
                );
                self.note(|| format!("replica {id} started"));
            }
            Err(e) => {
                let retry = expected_failure(&e);
                self.start_failed(h, e.to_string(), retry)
            }
        }
    }

    fn store_refused(&mut self, h: usize, e: StorageError) {
        let id = self.hosts[h].id;
        match e {
            StorageError::Hsm(vaultfleet::HsmError::Unavailable(_)) => {
                self.start_failed(h, e.to_string(), true)
            }
            StorageError::Tampered { .. }
            | StorageError::RolledBack { .. }
            | StorageError::Forked { .. }
                if self.hosts[h].damaged.is_some() =>
            {
                let reason = e.to_string();
                self.note(|| format!("replica {id} refused its damaged store: {reason}"));
                self.hosts[h].damaged = None;
                self.hosts[h].lost = Some(reason);
                self.stats.replicas_lost += 1;
            }
            other => self.violate(
                "no false alarm after an honest crash",
                format!("replica {id}'s store was refused: {other}"),
            ),
        }
    }

    fn start_failed(&mut self, h: usize, why: String, retry: bool) {
        // An HSM that is not answering: try again later.
        let id = self.hosts[h].id;
        if retry {
            self.note(|| format!("replica {id} cannot start yet: {why}"));
            if !self.hosts[h].restart_pending {
                self.hosts[h].restart_pending = true;
                self.schedule(200_000, Event::Restart { host: h });
            }
        } else {
            self.violate("replicas start", format!("replica {id}: {why}"));
        }
    }

    fn crash_host(&mut self, h: usize, why: &str) {
        if self.hosts[h].replica.take().is_none() {
            return;
        }
        let id = self.hosts[h].id;
        self.hosts[h].generation += 1;
        self.hosts[h].requests.clear();
        let outcome = self.hosts[h].disk.crash(&mut self.rng);
        if matches!(outcome, CrashOutcome::Torn | CrashOutcome::Corrupted) {
            self.stats.torn_or_corrupted += 1;
        }
        self.stats.crashes += 1;
        // Keep an image for a later rollback, with the counter it was taken at
        // (unknown while the HSM is not answering: then keep none).
        let image = self.hosts[h].disk.image();
        let counter = if self.opts.sealed {
            self.hsm_counter(h)
        } else {
            Some(0)
        };
        if let Some(counter) = counter {
            let images = &mut self.hosts[h].images;
            if images.len() == 4 {
                images.remove(0);
            }
            images.push((image, counter));
        }
        self.note(|| format!("replica {id} crashed ({why}); pending writes {outcome:?}"));
        if !self.hosts[h].restart_pending {
            self.hosts[h].restart_pending = true;
            let after = if self.phase == Phase::Safety {
                let (lo, hi) = self.opts.restart_ms;
                self.rng.gen_range(lo * 1000..=hi.max(lo) * 1000)
            } else {
                10_000
            };
            self.schedule(after, Event::Restart { host: h });
        }
    }

    /// Runs `handle_ready` until the replica has nothing more to do, routing its
    /// messages and completions, then runs the checkers that look at replicas.
    fn pump(&mut self, h: usize) {
        loop {
            let Some(replica) = self.hosts[h].replica.as_mut() else {
                return;
            };
            if !replica.has_ready() {
                break;
            }
            let mut out = std::mem::take(&mut self.out);
            out.clear();
            if let Err(e) = replica.handle_ready(&mut out) {
                self.out = out;
                let why = e.to_string();
                if self.phase == Phase::Safety && expected_failure(&e) {
                    self.crash_host(h, &why);
                } else {
                    let id = self.hosts[h].id;
                    self.violate(
                        "replicas only stop for injected faults",
                        format!("replica {id} failed: {why}"),
                    );
                }
                return;
            }
            for message in out.messages.drain(..) {
                self.send(h, message);
            }
            for completion in out.completions.drain(..) {
                self.complete(h, completion);
            }
            self.out = out;
            if let Some(victim) = self.crash_next.pop() {
                self.crash_next.clear();
                self.crash_host(victim, "crash right after granting a vote");
                return;
            }
        }
        self.check_replica(h);
    }

    fn check_replica(&mut self, h: usize) {
        let Some(replica) = self.hosts[h].replica.as_ref() else {
            return;
        };
        let status = replica.status();
        self.stats.max_term = self.stats.max_term.max(status.term);
        self.stats.max_commit = self.stats.max_commit.max(status.commit);
        if status.role == StateRole::Leader {
            match self.leaders.get(&status.term) {
                Some(&other) if other != status.id => self.violate(
                    "at most one leader per term",
                    format!(
                        "replicas {other} and {} both led term {}",
                        status.id, status.term
                    ),
                ),
                Some(_) => {}
                None => {
                    self.leaders.insert(status.term, status.id);
                    let (id, term) = (status.id, status.term);
                    self.note(|| format!("replica {id} leads term {term}"));
                }
            }
        }
        let applied = std::mem::take(&mut *self.apply_log.lock());
        for a in applied {
            match self.applied.get(&(a.index, a.position)) {
                Some(&(digest, host)) if digest != a.digest => self.violate(
                    "all replicas apply the same command at the same index",
                    format!(
                        "at index {} (command {} of the entry) replica {} applied {:#x}, \
                         replica {host} applied {digest:#x}",
                        a.index, a.position, a.host, a.digest
                    ),
                ),
                Some(_) => {}
                None => {
                    self.applied
                        .insert((a.index, a.position), (a.digest, a.host));
                }
            }
        }
        if let Some(check) = self.extra_check.as_mut() {
            if let Some(r) = self.hosts[h].replica.as_ref() {
                if let Err(detail) = check(self.hosts[h].id, &r.state_machine().inner) {
                    self.violate("the workload's replica invariant", detail);
                }
            }
        }
    }

    fn link_delay(&mut self, from: usize, to: usize) -> Option<u64> {
        let base = self.base_latency[from][to];
        let f = &self.opts.faults;
        let (jitter, spike, drop) = (f.jitter, f.delay_spike, f.drop);
        let healed = self.phase != Phase::Safety && self.opts.heal_for_liveness;
        if !healed && drop > 0.0 && self.rng.gen_bool(drop) {
            return None;
        }
        let mut d = base;
        if jitter > 0.0 {
            d += self
                .rng
                .gen_range(0..=((base as f64 * jitter) as u64).max(1));
        }
        if !healed && spike > 0.0 && self.rng.gen_bool(spike) {
            d += self.rng.gen_range(100_000..1_000_000);
        }
        Some(d)
    }

    fn send(&mut self, from: usize, message: Message) {
        self.stats.messages += 1;
        let Some(to) = (message.to as usize)
            .checked_sub(1)
            .filter(|t| *t < self.hosts.len())
        else {
            return;
        };
        let is_snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
        let vote_granted =
            message.get_msg_type() == MessageType::MsgRequestVoteResponse && !message.reject;
        let p = self.opts.faults.crash_after_vote;
        if vote_granted && self.phase == Phase::Safety && p > 0.0 && self.rng.gen_bool(p) {
            // The vote leaves; the voter dies right behind it.
            self.crash_next.push(from);
        }
        if self.blocked.contains(&(from, to)) {
            if let Some(r) = self.hosts[from].replica.as_mut() {
                r.report_unreachable(message.to);
                if is_snapshot {
                    r.report_snapshot(message.to, SnapshotStatus::Failure);
                }
            }
            return;
        }
        let Some(delay) = self.link_delay(from, to) else {
            if is_snapshot {
                if let Some(r) = self.hosts[from].replica.as_mut() {
                    r.report_snapshot(message.to, SnapshotStatus::Failure);
                }
            }
            return;
        };
        let dup = self.opts.faults.duplicate;
        if self.phase == Phase::Safety && dup > 0.0 && self.rng.gen_bool(dup) {
            let again = delay + self.rng.gen_range(0..20_000);
            self.schedule(
                again,
                Event::Deliver {
                    to,
                    message: Box::new(message.clone()),
                },
            );
        }
        self.schedule(
            delay,
            Event::Deliver {
                to,
                message: Box::new(message),
            },
        );
    }

    fn client_delay(&mut self) -> u64 {
        self.rng.gen_range(200..2_000)
    }

    /// A client request or reply lost on the way (the network's drop rate, in the
    /// safety phase): the client's timer retries, and the fleet's deduplication
    /// must keep a retried command from applying twice.
    fn client_message_lost(&mut self) -> bool {
        let drop = self.opts.faults.drop;
        self.phase == Phase::Safety && drop > 0.0 && self.rng.gen_bool(drop)
    }

    fn complete(&mut self, h: usize, completion: Completion) {
        let Some((client, op)) = self.hosts[h].requests.remove(&completion.id) else {
            return;
        };
        self.reply_to(client, op, completion.result);
    }

    /// Sends a replica's answer back to a client, over the (lossy) network.
    fn reply_to(&mut self, client: usize, op: u64, result: Result<Reply, RequestError>) {
        if self.client_message_lost() {
            return;
        }
        let delay = self.client_delay();
        self.schedule(delay, Event::ClientReply { client, op, result });
    }

    /// Runs to the end and reports.
    pub fn run(mut self) -> Report {
        while let Some(Scheduled { at, event, .. }) = self.queue.pop() {
            if self.phase == Phase::Liveness && at >= self.liveness_deadline {
                self.now = self.liveness_deadline;
                self.liveness_timeout();
                break;
            }
            self.now = at;
            self.stats.events += 1;
            self.hash_event(&event);
            // The shipping code must not panic, whatever the faults: a panic is a
            // finding, reported with the seed like any other.
            let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.handle(event);
            }));
            if let Err(panic) = handled {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                self.violate("no panic in the replica code", why);
            }
            if self.violation.is_some() || self.phase == Phase::Done {
                break;
            }
        }
        let mut stall = self.stall.take();
        if self.violation.is_none() {
            let lost = self.final_checks(stall.is_none());
            stall = stall.or(lost);
        }
        Report {
            options: self.opts.clone(),
            violation: self.violation.clone(),
            stall,
            simulated_us: self.now,
            trace: hex(&self.trace.clone().finalize()),
            stats: self.stats.clone(),
            recent: self.recent.iter().cloned().collect(),
            inconclusive: std::mem::take(&mut self.inconclusive),
        }
    }

    fn hash_event(&mut self, event: &Event) {
        let mut b = [0u8; 41];
        b[..8].copy_from_slice(&self.now.to_be_bytes());
        let (tag, x, y, z, w) = match event {
            Event::Tick { host, generation } => (1, *host as u64, *generation, 0, 0),
            Event::Deliver { to, message } => (
                2,
                *to as u64,
                message.from << 8 | message.get_msg_type() as u64,
                message.term,
                message.entries.iter().fold(
                    message.index ^ message.commit << 32 ^ message.entries.len() as u64,
                    |h, e| h.rotate_left(5) ^ fnv(&e.data) ^ e.index,
                ),
            ),
            Event::ClientArrive {
                host, client, op, ..
            } => (3, *host as u64, *client as u64, *op, 0),
            Event::ClientReply { client, op, result } => {
                let digest = match result {
                    Ok(Reply::Applied(o) | Reply::Read(o)) => fnv(o),
                    Ok(Reply::SessionRegistered(s)) => *s,
                    Ok(Reply::MembershipChanged(_)) => 1,
                    Err(_) => 0,
                };
                (4, *client as u64, *op, result.is_ok() as u64, digest)
            }
            Event::ClientWake {
                client,
                op,
                attempt,
                resend,
            } => (5, *client as u64, *op, *attempt, *resend as u64),
            Event::Chaos => (6, 0, 0, 0, 0),
            Event::Restart { host } => (7, *host as u64, 0, 0, 0),
            Event::HsmBack { host } => (8, *host as u64, 0, 0, 0),
            Event::Heal => (9, 0, 0, 0, 0),
            Event::StartLiveness => (10, 0, 0, 0, 0),
            Event::Poll => (11, 0, 0, 0, 0),
        };
        b[8] = tag;
        b[9..17].copy_from_slice(&x.to_be_bytes());
        b[17..25].copy_from_slice(&y.to_be_bytes());
        b[25..33].copy_from_slice(&z.to_be_bytes());
        b[33..41].copy_from_slice(&w.to_be_bytes());
        self.trace.update(b);
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Tick { host, generation } => {
                if self.hosts[host].generation != generation {
                    return;
                }
                let Some(r) = self.hosts[host].replica.as_mut() else {
                    return;
                };
                r.tick();
                let mut next = self.hosts[host].tick_us;
                let drift = self.opts.faults.clock_drift;
                if self.phase == Phase::Safety && drift > 0.0 {
                    // Uneven ticks: each one a little early or late.
                    let spread = (next as f64 * drift / 2.0) as u64;
                    next = next - spread.min(next - 1) + self.rng.gen_range(0..=2 * spread);
                }
                self.schedule(next.max(1), Event::Tick { host, generation });
                self.pump(host);
            }
            Event::Deliver { to, message } => {
                let from = message.from;
                let is_snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
                let Some(r) = self.hosts[to].replica.as_mut() else {
                    if is_snapshot {
                        self.report_snapshot(from, to, SnapshotStatus::Failure);
                    }
                    return;
                };
                let _ = r.step(*message);
                if is_snapshot {
                    self.report_snapshot(from, to, SnapshotStatus::Finish);
                }
                self.pump(to);
            }
            Event::ClientArrive {
                host,
                client,
                op,
                request,
            } => self.arrive(host, client, op, request),
            Event::ClientReply { client, op, result } => self.reply(client, op, result),
            Event::ClientWake {
                client,
                op,
                attempt,
                resend,
            } => self.wake(client, op, attempt, resend),
            Event::Chaos => self.chaos(),
            Event::Restart { host } => {
                self.hosts[host].restart_pending = false;
                if self.phase != Phase::Safety {
                    self.hosts[host].hsm.set_available(true);
                }
                self.start_host(host, false);
            }
            Event::HsmBack { host } => {
                self.hosts[host].hsm.set_available(true);
                let id = self.hosts[host].id;
                self.note(|| format!("HSM of replica {id} answers again"));
            }
            Event::Heal => self.heal(),
            Event::StartLiveness => self.start_liveness(),
            Event::Poll => self.poll_done(),
        }
    }

    fn report_snapshot(&mut self, from: u64, to: usize, status: SnapshotStatus) {
        if let Some(h) = (from as usize).checked_sub(1) {
            if let Some(r) = self.hosts.get_mut(h).and_then(|h| h.replica.as_mut()) {
                r.report_snapshot(to as u64 + 1, status);
            }
        }
    }

    // --- clients ---------------------------------------------------------

    fn wake(&mut self, client: usize, op: u64, attempt: u64, resend: bool) {
        let c = &self.clients[client];
        if c.op != op || c.attempt != attempt {
            return; // a stale timer
        }
        match &c.current {
            None => self.start_operation(client),
            Some(p) if self.now >= p.deadline => self.give_up(client),
            // Back-off over: resend to the replica chosen (a leader hint, or a
            // random one after an error).
            Some(_) if resend => self.send_current(client),
            Some(_) => {
                // No answer in time: try another replica.
                let n = self.hosts.len();
                self.clients[client].target = self.rng.gen_range(0..n);
                self.send_current(client);
            }
        }
    }

    /// Starts a new attempt of `client` and wakes it after `after` µs: to resend
    /// to its chosen replica (`resend`), or else to move on.
    fn wake_later(&mut self, client: usize, after: u64, resend: bool) {
        let c = &mut self.clients[client];
        c.attempt += 1;
        let (op, attempt) = (c.op, c.attempt);
        self.schedule(
            after,
            Event::ClientWake {
                client,
                op,
                attempt,
                resend,
            },
        );
    }

    fn start_operation(&mut self, client: usize) {
        if self.phase != Phase::Safety {
            return;
        }
        let op = self.workload.next_operation(client, &mut self.rng);
        self.order += 1;
        self.history.push(Record {
            client,
            op: op.clone(),
            invoked: self.order,
            completed: None,
            output: None,
            invoked_at_us: self.now,
        });
        let c = &mut self.clients[client];
        c.op += 1;
        let sequence = if matches!(op.kind, OpKind::Command(_)) {
            c.next_sequence += 1;
            c.next_sequence - 1
        } else {
            0
        };
        c.current = Some(Pending {
            record: self.history.len() - 1,
            op,
            sequence,
            deadline: self.now + CLIENT_OP_TIMEOUT_US,
        });
        self.send_current(client);
    }

    fn send_current(&mut self, client: usize) {
        let c = &mut self.clients[client];
        let Some(p) = c.current.as_ref() else {
            return;
        };
        let request = match (&p.op.kind, c.session) {
            (OpKind::Read(q), _) => ClientRequest::Read(q.clone()),
            (OpKind::Command(_), None) => ClientRequest::Register,
            (OpKind::Command(cmd), Some(session)) => {
                let mut r = Request::new();
                r.client_id = session;
                r.sequence = p.sequence;
                r.acked_below = p.sequence;
                r.command = cmd.clone();
                ClientRequest::Command(r)
            }
        };
        c.attempt += 1;
        let (op, attempt, host) = (c.op, c.attempt, c.target);
        let delay = self.client_delay();
        if !self.client_message_lost() {
            self.schedule(
                delay,
                Event::ClientArrive {
                    host,
                    client,
                    op,
                    request,
                },
            );
        }
        // Without an answer in time, the client tries another replica.
        self.schedule(
            CLIENT_ATTEMPT_TIMEOUT_US,
            Event::ClientWake {
                client,
                op,
                attempt,
                resend: false,
            },
        );
    }

    fn arrive(&mut self, h: usize, client: usize, op: u64, request: ClientRequest) {
        let id = self.next_request;
        let Some(r) = self.hosts[h].replica.as_mut() else {
            return; // the host is down: the client's timer retries elsewhere
        };
        self.next_request += 1;
        let result = match request {
            ClientRequest::Register => r.register_session(id),
            ClientRequest::Command(req) => r.propose(id, req),
            ClientRequest::Read(q) => r.read(id, q),
        };
        match result {
            Ok(()) => {
                self.hosts[h].requests.insert(id, (client, op));
                self.pump(h);
            }
            Err(e) => self.reply_to(client, op, Err(e)),
        }
    }

    fn reply(&mut self, client: usize, op: u64, result: Result<Reply, RequestError>) {
        if self.clients[client].op != op || self.clients[client].current.is_none() {
            return; // an answer to an operation already finished
        }
        let retry_soon = |sim: &mut Self, random_target: bool| {
            if random_target {
                let n = sim.hosts.len();
                sim.clients[client].target = sim.rng.gen_range(0..n);
            }
            let backoff = sim.rng.gen_range(10_000..100_000);
            sim.wake_later(client, backoff, true);
        };
        match result {
            Ok(Reply::SessionRegistered(session)) => {
                // Only the first registration counts: a second session for the
                // same command would let it apply twice.
                if self.clients[client].session.is_none() {
                    self.clients[client].session = Some(session);
                    self.send_current(client);
                }
            }
            Ok(Reply::Applied(output) | Reply::Read(output)) => {
                let Some(p) = self.clients[client].current.take() else {
                    return;
                };
                self.order += 1;
                self.workload.observe(client, &p.op, Some(&output));
                let rec = &mut self.history[p.record];
                rec.completed = Some(self.order);
                rec.output = Some(output);
                self.stats.ops_completed += 1;
                let think = self.rng.gen_range(0..50_000);
                self.wake_later(client, think, false);
            }
            Ok(Reply::MembershipChanged(_)) => {}
            Err(RequestError::NotLeader { leader: Some(l) }) => {
                if let Some(t) = (l as usize)
                    .checked_sub(1)
                    .filter(|t| *t < self.hosts.len())
                {
                    self.clients[client].target = t;
                }
                retry_soon(self, false);
            }
            Err(RequestError::SessionExpired { .. }) => {
                // This attempt was not applied, but an earlier one may have been
                // before the session was evicted: the outcome is unknown.
                self.clients[client].session = None;
                self.give_up(client);
            }
            Err(
                RequestError::NotLeader { leader: None }
                | RequestError::Dropped
                | RequestError::TimedOut
                | RequestError::LeaderChanged
                | RequestError::Overloaded
                | RequestError::Stopped
                | RequestError::TooManyOutstanding { .. },
            ) => retry_soon(self, true),
            Err(e) => {
                let detail = e.to_string();
                self.note(|| format!("client {client}: unexpected answer {detail}"));
                self.give_up(client);
            }
        }
    }

    fn give_up(&mut self, client: usize) {
        let Some(p) = self.clients[client].current.take() else {
            return;
        };
        self.stats.ops_unknown += 1;
        self.workload.observe(client, &p.op, None);
        if self.phase == Phase::Liveness {
            let what = self.workload.describe(&p.op, None);
            self.violate(
                "liveness: pending operations finish once faults heal",
                format!("client {client} gave up on {what} during the liveness phase"),
            );
        }
        self.wake_later(client, 1_000, false);
    }

    // --- faults ----------------------------------------------------------

    fn chaos(&mut self) {
        if self.phase != Phase::Safety {
            return;
        }
        self.schedule(CHAOS_STEP_US, Event::Chaos);
        let f = self.opts.faults.clone();
        let n = self.hosts.len();
        if matches!(self.partition, Partition::None) && self.rng.gen_bool(f.partition_rate) {
            self.start_partition();
        }
        if matches!(self.partition, Partition::Active) && self.rng.gen_bool(f.heal_rate.min(1.0)) {
            self.schedule(0, Event::Heal);
        }
        if self.rng.gen_bool(f.crash_rate) {
            let h = self.rng.gen_range(0..n);
            // A third of crashes strike between events; the others are armed to
            // cut the replica's next write before or after its data is durable.
            let up = self.hosts[h].replica.is_some();
            match self.rng.gen_range(0..3) {
                0 => self.crash_host(h, "crash fault"),
                1 if up => self.hosts[h].disk.arm(CrashPoint::BeforeSync),
                _ if up => self.hosts[h].disk.arm(CrashPoint::AfterSync),
                _ => {}
            }
        }
        if self.rng.gen_bool(f.clock_jump_rate) {
            let h = self.rng.gen_range(0..n);
            let jump = self.rng.gen_range(1..=self.opts.election_ticks as u64);
            if let Some(r) = self.hosts[h].replica.as_mut() {
                for _ in 0..jump {
                    r.tick();
                }
                self.stats.clock_jumps += 1;
                let id = self.hosts[h].id;
                self.note(|| format!("clock of replica {id} jumps {jump} ticks"));
                self.pump(h);
            }
        }
        if self.rng.gen_bool(f.hsm_outage_rate) {
            let h = self.rng.gen_range(0..n);
            self.hosts[h].hsm.set_available(false);
            self.stats.hsm_outages += 1;
            let id = self.hosts[h].id;
            self.note(|| format!("HSM of replica {id} stops answering"));
            let back = self.rng.gen_range(100_000..2_000_000);
            self.schedule(back, Event::HsmBack { host: h });
        }
        let lossy = f.bit_flip_rate > 0.0 && self.rng.gen_bool(f.bit_flip_rate);
        let rollback = f.rollback_rate > 0.0 && self.rng.gen_bool(f.rollback_rate);
        if lossy || rollback {
            self.damage_a_disk(rollback);
        }
    }

    /// Flips a bit in, or rolls back, a down replica's disk, keeping the number of
    /// replicas lost for good below a majority.
    fn damage_a_disk(&mut self, rollback: bool) {
        if !self.opts.sealed && !self.opts.damage_unsealed {
            // A plain store cannot detect damage; only the checker's own test asks for it.
            return;
        }
        let n = self.hosts.len();
        let f = self.opts.lost_replicas_max.unwrap_or((n - 1) / 2);
        let lost = self
            .hosts
            .iter()
            .filter(|h| h.lost.is_some() || h.damaged.is_some())
            .count();
        if lost >= f {
            return;
        }
        let h = self.rng.gen_range(0..n);
        if self.hosts[h].lost.is_some() || self.hosts[h].damaged.is_some() {
            return;
        }
        self.crash_host(h, "crash before its disk is damaged");
        let id = self.hosts[h].id;
        if rollback {
            let current = self.hosts[h].disk.image();
            let now = self.hsm_counter(h);
            let sealed = self.opts.sealed;
            // Only an image that lacks an acknowledged write is a harmful rollback.
            // Under a sealed store an image taken at counter c holds head c or
            // c + 1 (a write durable but not yet counted, never acknowledged); so
            // it lacks an acknowledged write once the counter reached c + 2. A
            // plain store cannot tell, so any older differing image will do.
            let harmful = |(i, c): &&(vaultfleet::MemLog, u64)| {
                if sealed {
                    now.is_some_and(|now| c + 2 <= now)
                } else {
                    i.wrapper_record() != current.wrapper_record()
                        || i.last() != current.last()
                        || i.hard_state() != current.hard_state()
                }
            };
            let Some((older, _)) = self.hosts[h].images.iter().rev().find(harmful).cloned() else {
                return;
            };
            self.hosts[h].disk.restore(older);
            self.hosts[h].damaged = Some("a rollback of its disk to an older image".into());
            self.stats.rollbacks += 1;
            self.note(|| format!("disk of replica {id} rolled back to an older image"));
        } else if let Some(what) = self.hosts[h].disk.flip_bit(&mut self.rng) {
            self.hosts[h].damaged = Some(format!("a bit flip in {what}"));
            self.stats.bit_flips += 1;
            self.note(|| format!("bit flipped on replica {id}'s disk: {what}"));
        }
    }

    fn hsm_counter(&self, h: usize) -> Option<u64> {
        let label = SealedConfig::new(1, self.hosts[h].id).counter_label;
        self.hosts[h].hsm.counter(&label).ok().map(|c| c.value)
    }

    fn start_partition(&mut self) {
        let n = self.hosts.len();
        self.blocked.clear();
        let kind = self.rng.gen_range(0..3);
        match kind {
            0 => {
                // A whole datacenter cut off.
                let dcs = self.opts.datacenters.clamp(1, n);
                let dc = self.rng.gen_range(0..dcs);
                for a in 0..n {
                    for b in 0..n {
                        if (self.hosts[a].dc == dc) != (self.hosts[b].dc == dc) {
                            self.blocked.insert((a, b));
                        }
                    }
                }
                self.note(|| format!("partition: dc-{dc} cut off"));
            }
            1 => {
                // A random split.
                let side: Vec<bool> = (0..n).map(|_| self.rng.gen_bool(0.5)).collect();
                for a in 0..n {
                    for b in 0..n {
                        if side[a] != side[b] {
                            self.blocked.insert((a, b));
                        }
                    }
                }
                self.note(|| format!("partition: random split {side:?}"));
            }
            _ => {
                // Asymmetric: some links work one way only.
                for _ in 0..self.rng.gen_range(1..=n) {
                    let a = self.rng.gen_range(0..n);
                    let b = self.rng.gen_range(0..n);
                    if a != b {
                        self.blocked.insert((a, b));
                    }
                }
                let links = self.blocked.len();
                self.note(|| format!("partition: {links} one-way links cut"));
            }
        }
        self.partition = Partition::Active;
        self.stats.partitions += 1;
    }

    fn heal(&mut self) {
        if !self.blocked.is_empty() {
            self.note(|| "partition healed".to_string());
        }
        self.blocked.clear();
        self.partition = Partition::None;
    }

    // --- phases ----------------------------------------------------------

    fn start_liveness(&mut self) {
        self.phase = Phase::Liveness;
        self.liveness_deadline = self
            .now
            .saturating_add(self.opts.liveness_ms.saturating_mul(1000));
        self.note(|| "liveness phase: faults healed, no new operations".to_string());
        if self.opts.heal_for_liveness {
            self.heal();
            let tick = self.opts.tick_ms * 1000;
            for h in 0..self.hosts.len() {
                self.hosts[h].disk.disarm();
                self.hosts[h].hsm.set_available(true);
                self.hosts[h].tick_us = tick;
                if self.hosts[h].replica.is_none() && self.hosts[h].lost.is_none() {
                    self.schedule(0, Event::Restart { host: h });
                }
            }
        }
        // Operations started under faults get the whole liveness bound.
        let deadline = self.liveness_deadline;
        for c in &mut self.clients {
            if let Some(p) = c.current.as_mut() {
                p.deadline = p.deadline.max(deadline);
            }
        }
        self.poll_done();
    }

    fn alive(&self) -> Vec<usize> {
        (0..self.hosts.len())
            .filter(|&h| self.hosts[h].replica.is_some())
            .collect()
    }

    fn poll_done(&mut self) {
        if self.phase != Phase::Liveness {
            return;
        }
        let idle = self.clients.iter().all(|c| c.current.is_none());
        let alive = self.alive();
        let commits: Vec<(u64, u64)> = alive
            .iter()
            .filter_map(|&h| self.hosts[h].replica.as_ref())
            .map(|r| {
                let s = r.status();
                (s.commit, s.applied)
            })
            .collect();
        let max_commit = commits.iter().map(|c| c.0).max().unwrap_or(0);
        let converged = alive.len() + self.lost_count() == self.hosts.len()
            && commits
                .iter()
                .all(|&(c, a)| c == max_commit && a == max_commit);
        if idle && converged {
            self.phase = Phase::Done;
        } else {
            // Keep polling while the world runs.
            self.schedule(50_000, Event::Poll);
        }
    }

    fn lost_count(&self) -> usize {
        self.hosts.iter().filter(|h| h.lost.is_some()).count()
    }

    /// The largest set of running replicas that can all reach each other.
    fn largest_connected(&self) -> usize {
        let alive = self.alive();
        let mut seen = BTreeSet::new();
        let mut best = 0;
        for &start in &alive {
            if !seen.insert(start) {
                continue;
            }
            let mut size = 0;
            let mut stack = vec![start];
            while let Some(a) = stack.pop() {
                size += 1;
                for &b in &alive {
                    let linked = !self.blocked.contains(&(a, b)) && !self.blocked.contains(&(b, a));
                    if linked && seen.insert(b) {
                        stack.push(b);
                    }
                }
            }
            best = best.max(size);
        }
        best
    }

    fn liveness_timeout(&mut self) {
        let n = self.hosts.len();
        if self.lost_count() > (n - 1) / 2 {
            return; // reported as a stall by final_checks
        }
        if self.largest_connected() <= n / 2 {
            let biggest = self.largest_connected();
            self.stall = Some(format!(
                "no connected majority after the liveness bound: the largest group of \
                 running replicas that reach each other has {biggest} of {n}"
            ));
            return;
        }
        let pending: Vec<String> = self
            .clients
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                c.current
                    .as_ref()
                    .map(|p| format!("client {i}: {}", self.workload.describe(&p.op, None)))
            })
            .collect();
        let behind: Vec<String> = self
            .hosts
            .iter()
            .filter(|h| h.lost.is_none())
            .map(|h| match &h.replica {
                Some(r) => {
                    let s = r.status();
                    format!(
                        "replica {} {:?} term {} commit {} applied {}",
                        h.id, s.role, s.term, s.commit, s.applied
                    )
                }
                None => format!("replica {} down", h.id),
            })
            .collect();
        self.violate(
            "liveness: pending operations finish once faults heal",
            format!(
                "{} ms after healing: pending {pending:?}; replicas {behind:?}",
                self.opts.liveness_ms
            ),
        );
    }

    /// The end-of-run checks. The history's own checks (the workload invariant,
    /// linearizability) always run; durability and convergence only when the
    /// liveness phase completed (`complete`). Returns a stall, if the majority is
    /// lost for good.
    fn final_checks(&mut self, complete: bool) -> Option<String> {
        let n = self.hosts.len();
        let stall = (self.lost_count() > (n - 1) / 2).then(|| {
            format!(
                "{} of {n} replicas lost for good: no majority left, the fleet stalls as it must",
                self.lost_count()
            )
        });
        if let Err(detail) = self.workload.check_history(&self.history) {
            self.violate("the workload's invariant", detail);
            return stall;
        }
        match linearizability::check(&self.workload, &self.history, LINEARIZABILITY_BUDGET) {
            Verdict::Linearizable => {}
            Verdict::Violation { key, operations } => {
                let shown: Vec<String> = operations.iter().take(24).cloned().collect();
                self.violate(
                    "linearizability",
                    format!(
                        "key {key} has no valid order:\n    {}",
                        shown.join("\n    ")
                    ),
                );
                return stall;
            }
            Verdict::Inconclusive { keys } => {
                let k = keys.clone();
                self.note(|| format!("linearizability inconclusive for keys {k:?} (budget spent)"));
                self.inconclusive = keys;
            }
        }
        if !complete || stall.is_some() || self.phase != Phase::Done {
            return stall;
        }
        let mut converged: Option<(u64, Vec<u8>)> = None;
        for h in self.alive() {
            let Some(r) = self.hosts[h].replica.as_ref() else {
                continue;
            };
            let id = self.hosts[h].id;
            let machine = &r.state_machine().inner;
            if let Err(detail) = self.workload.check_final(machine, &self.history) {
                self.violate("durability", format!("replica {id}: {detail}"));
                return None;
            }
            // Every converged replica must hold the same state, byte for byte.
            let state = machine.snapshot();
            match &converged {
                Some((first, s)) if *s != state => {
                    let first = *first;
                    self.violate(
                        "converged replicas hold the same state",
                        format!(
                            "replicas {first} and {id} applied the same log to different states"
                        ),
                    );
                    return None;
                }
                Some(_) => {}
                None => converged = Some((id, state)),
            }
        }
        None
    }
}

impl<W: Workload> Simulation<W> {
    /// The client-visible history so far.
    pub fn history(&self) -> &[Record] {
        &self.history
    }
}

/// A replica stopped for a reason the simulator injected: an armed crash in the
/// simulated disk, or an HSM switched off.
fn expected_failure(e: &vaultfleet::ReplicaError) -> bool {
    match e {
        vaultfleet::ReplicaError::Storage { source, .. } => match source {
            StorageError::Hsm(vaultfleet::HsmError::Unavailable(_)) => true,
            StorageError::Corrupt { what, detail } => {
                what == "simulated disk" && detail.starts_with("simulated crash")
            }
            _ => false,
        },
        _ => false,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
