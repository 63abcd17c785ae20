//! The simulated world: virtual time, one event queue, one seeded RNG, the hosts
//! running the shipping `Replica` code, the network between them, the clients,
//! the fault scheduler and the checkers.
//!
//! One file per concern, as TigerBeetle's simulator has: [`events`] (the queue,
//! the trace hash, the dispatch), [`hosts`] (replicas on their disks and HSMs),
//! [`network`] (latency, message faults, partitions), [`clients`] (sessions,
//! retries, the history), [`chaos`] (the fault schedule), [`membership`] and
//! [`preference`] (the operator's changes), [`phases`] (safety, then liveness)
//! and [`checkers`] (one file per invariant).

mod chaos;
mod checkers;
mod clients;
mod events;
mod hosts;
mod membership;
mod network;
mod phases;
mod preference;

use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};
use vaultfleet::replica::{Output, RequestId};
use vaultfleet::{FleetConfig, MemberSpec};

use crate::options::SimOptions;
use crate::workload::{Record, Workload};
use chaos::CHAOS_STEP_US;
use clients::SimClient;
use events::{Event, Scheduled};
use hosts::{Applied, Host};
use membership::Churn;
use network::Partition;
use preference::Preference;

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
    /// Of those, bits flipped in a sealed snapshot file (each detected when
    /// the replica restores from it at its next start).
    pub snapshot_file_flips: u64,
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
    /// Membership changes the operator proposed and a leader accepted.
    pub membership_changes: u64,
    /// Replicas replaced (disk destroyed or host taken away).
    pub replacements: u64,
    /// Replacements whose new replica was lost before its promotion: it
    /// was removed, and the replaced replica replaced again.
    pub replacements_resumed: u64,
    /// Leadership transfers asked for.
    pub transfers: u64,
    /// Leaders that applied their own removal (and stepped down in that
    /// cycle): the path of swarm seed 2476's crash in raft-rs.
    pub leaders_removed: u64,
    /// Moves of the preferred leader datacenters by the operator.
    pub preference_moves: u64,
    /// Replicas restarted by the operator's rollouts of a new preference.
    pub rollout_restarts: u64,
    /// Times the converged fleet's leader was found outside the final
    /// preferred datacenters and had to hand over (within the bound, or a
    /// violation).
    pub placement_waits: u64,
    /// Streamed snapshots built (written to a file off the replica) and
    /// handed back to their replica (0 unless `streamed_snapshots`).
    pub snapshots_streamed: u64,
    /// Streamed snapshots restored off the replica's thread into a blank
    /// machine and taken by their replica.
    pub snapshots_restored_off_thread: u64,
    /// Streamed snapshots sent chunk by chunk into a receiver's files and
    /// then delivered (0 unless `streamed_snapshots`).
    pub streamed_installs: u64,
    /// Streamed snapshot transfers that failed (link cut or message dropped,
    /// receiver down, a chunk or the file refused).
    pub streamed_failures: u64,
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
    churn: Churn,
    prefer: Preference,
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
        let base_latency = network::base_latency(&opts, &mut rng, n, dcs);
        let apply_log = Arc::new(Mutex::new(Vec::new()));
        let hosts = hosts::build(&opts, &mut rng, n, dcs);
        let clients = clients::build(opts.clients, n);
        let churn = Churn::new(fleet.voters());
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
            churn,
            prefer: Preference::default(),
        };
        sim.start(n);
        sim
    }

    /// Starts the `n` replicas, wakes the clients and schedules the fault
    /// schedule and the liveness phase.
    fn start(&mut self, n: usize) {
        for h in 0..n {
            self.start_host(h, true);
        }
        for c in 0..self.clients.len() {
            let at = self.rng.gen_range(0..50_000);
            self.schedule(
                at,
                Event::ClientWake {
                    client: c,
                    op: 0,
                    attempt: 0,
                    resend: false,
                },
            );
        }
        self.schedule(CHAOS_STEP_US, Event::Chaos);
        self.schedule(
            self.opts.safety_ms.saturating_mul(1000),
            Event::StartLiveness,
        );
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
}

impl<W: Workload> Simulation<W> {
    /// The client-visible history so far.
    pub fn history(&self) -> &[Record] {
        &self.history
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
