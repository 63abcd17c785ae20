//! Each checker catches the defect it exists for: the defect is switched on (only
//! here), seeds are tried until the checker reports it, and the report names the
//! seed. A checker that never fires within the budget fails its test.

use vaultfleet::state_machine::{CaptureError, RestoreError};
use vaultfleet::StateMachine;
use vaultfleet_sim::vault::BatchedVault;
use vaultfleet_sim::workload::{Operation, Record, Workload};
use vaultfleet_sim::{
    run, DiskBug, Faults, GuessCounter, Report, SimOptions, Simulation, VaultWorkload, WorkloadKind,
};
use vaultfleet_vault::wire::{vault_command, VaultCommand, VaultOutcome, VaultReset};

/// Runs `make(seed)` for seeds `0..budget` until a run reports a violation of one
/// of `invariants`; panics (with the seeds tried) if none does.
fn find(budget: u64, invariants: &[&str], make: impl Fn(u64) -> SimOptions) -> (u64, Report) {
    for seed in 0..budget {
        let report = run(make(seed));
        if let Some(v) = &report.violation {
            assert!(
                invariants.contains(&v.invariant),
                "seed {seed}: expected one of {invariants:?}, got \"{}\": {}",
                v.invariant,
                v.detail
            );
            eprintln!("seed {seed}: caught \"{}\": {}", v.invariant, v.detail);
            return (seed, report);
        }
    }
    panic!("no seed in 0..{budget} caught the defect ({invariants:?})");
}

/// Crash-heavy runs of the guess counter, whose sequential model lets the
/// linearizability checker see lost or reordered writes.
fn crashy(seed: u64) -> SimOptions {
    let mut o = SimOptions::new(seed);
    o.workload = WorkloadKind::Counter;
    o.safety_ms = 8_000;
    o.sealed = false;
    o.faults = Faults::none();
    o.faults.crash_rate = 0.3;
    o.faults.partition_rate = 0.1;
    o.faults.heal_rate = 0.3;
    o.faults.drop = 0.02;
    o
}

#[test]
fn acknowledging_before_persisting_is_caught() {
    find(
        40,
        &[
            "durability",
            "linearizability",
            "at most one leader per term",
            "all replicas apply the same command at the same index",
            "replicas start",
            "no panic in the replica code",
            // Every replica lost even its bootstrap: nothing can ever be elected.
            "liveness: pending operations finish once faults heal",
        ],
        |seed| {
            let mut o = crashy(seed);
            o.disk_bug = DiskBug::LieOnSync;
            o
        },
    );
}

#[test]
fn forgetting_the_vote_on_restart_is_caught() {
    find(
        2000,
        &[
            "at most one leader per term",
            "linearizability",
            "durability",
            "all replicas apply the same command at the same index",
        ],
        |seed| {
            // Three replicas, short elections, many crashes and partitions: a
            // replica that votes, crashes and forgets gives a second candidate of
            // the same term its majority.
            let mut o = crashy(seed);
            o.disk_bug = DiskBug::ForgetVote;
            o.replicas = 3;
            o.election_ticks = 10;
            o.heartbeat_ticks = 2;
            // Elections this short need short links: a 100 ms timeout against a
            // 120 ms round trip never elects anyone (the simulator showed it).
            o.intra_dc_us = (100, 500);
            o.inter_dc_us = (1_000, 5_000);
            o.restart_ms = (5, 50);
            o.faults.crash_rate = 0.6;
            o.faults.crash_after_vote = 0.5;
            o.faults.partition_rate = 0.3;
            o.faults.drop = 0.1;
            o
        },
    );
}

#[test]
fn a_silently_corrupted_log_is_caught_by_the_apply_checker() {
    find(
        40,
        &["all replicas apply the same command at the same index"],
        |seed| {
            let mut o = crashy(seed);
            o.disk_bug = DiskBug::SilentCorruption;
            o.snapshot_entries = 100_000; // keep the log, so restarts replay it
            o
        },
    );
}

#[test]
fn damaged_storage_that_is_served_is_caught() {
    // Without the sealed store nothing detects a flipped bit or a rollback.
    for rollback in [false, true] {
        find(40, &["damaged storage is detected, never served"], |seed| {
            let mut o = SimOptions::new(seed);
            o.safety_ms = 8_000;
            o.sealed = false;
            o.damage_unsealed = true;
            o.faults = Faults::none();
            o.faults.crash_rate = 0.2;
            if rollback {
                o.faults.rollback_rate = 0.2;
            } else {
                o.faults.bit_flip_rate = 0.2;
            }
            o
        });
    }
}

#[test]
fn the_sealed_store_refuses_damaged_storage_instead() {
    let mut refused = 0;
    for seed in 0..10 {
        let mut o = SimOptions::new(seed);
        o.safety_ms = 8_000;
        o.faults = Faults::none();
        o.faults.crash_rate = 0.2;
        o.faults.bit_flip_rate = 0.1;
        o.faults.rollback_rate = 0.1;
        let r = run(o);
        assert!(r.violation.is_none(), "seed {seed}: {:?}", r.violation);
        refused += r.stats.replicas_lost;
    }
    assert!(refused > 0, "some damage was done and refused");
}

#[test]
fn more_accepted_attempts_than_the_limit_is_caught() {
    let (_, report) = (0..20)
        .find_map(|seed| {
            let mut o = SimOptions::new(seed);
            o.safety_ms = 3_000;
            o.faults = Faults::none();
            let mut w = GuessCounter::new(2, 3);
            w.bug_never_locks = true;
            let r = Simulation::new(o, w).run();
            r.violation.is_some().then_some((seed, r))
        })
        .expect("a machine that never locks is caught");
    let v = report.violation.expect("violation");
    assert_eq!(v.invariant, "the workload's invariant", "{}", v.detail);
}

#[test]
fn a_fleet_that_never_heals_fails_the_liveness_check() {
    find(
        10,
        &["liveness: pending operations finish once faults heal"],
        |seed| {
            let mut o = SimOptions::new(seed);
            o.safety_ms = 3_000;
            o.liveness_ms = 5_000;
            o.faults = Faults::none();
            o.faults.drop = 1.0; // every message lost, and the liveness phase keeps it so
            o.heal_for_liveness = false;
            o
        },
    );
}

#[test]
fn losing_the_majority_for_good_is_a_stall_not_a_bug() {
    let mut stalled = 0;
    for seed in 0..20 {
        let mut o = SimOptions::new(seed);
        o.replicas = 3;
        o.safety_ms = 8_000;
        o.liveness_ms = 5_000;
        o.faults = Faults::none();
        o.faults.crash_rate = 0.3;
        o.faults.bit_flip_rate = 0.5;
        o.lost_replicas_max = Some(3);
        let r = run(o);
        assert!(r.violation.is_none(), "seed {seed}: {:?}", r.violation);
        if r.stall.is_some() {
            stalled += 1;
        }
    }
    assert!(
        stalled > 0,
        "some seed lost its majority and was reported as a stall"
    );
}

#[test]
fn a_users_own_replica_invariant_is_checked() {
    let mut o = SimOptions::new(3);
    o.safety_ms = 2_000;
    o.faults = Faults::none();
    let mut sim = Simulation::new(o, GuessCounter::new(1, 100));
    sim.check_each_replica(|id, m| {
        if m.count(0) > 5 {
            Err(format!("replica {id}: key 0 passed 5 attempts"))
        } else {
            Ok(())
        }
    });
    let r = sim.run();
    let v = r.violation.expect("the user's invariant fires");
    assert_eq!(v.invariant, "the workload's replica invariant");
}

/// A vault machine with a planted bug, around the real (batched) vault.
trait PlantedVault: StateMachine {
    /// The buggy machine around `vault`.
    fn over(vault: BatchedVault) -> Self;
    /// The real vault inside.
    fn vault(&self) -> &BatchedVault;
}

/// The real vault workload (its operations and checkers), run over a machine
/// with a planted bug: the checkers must catch it.
struct Planted<M>(VaultWorkload, std::marker::PhantomData<M>);

impl<M> Planted<M> {
    fn new(workload: VaultWorkload) -> Self {
        Self(workload, std::marker::PhantomData)
    }
}

impl<M: PlantedVault> Workload for Planted<M> {
    type Machine = M;
    type Model = ();
    fn machine(&self) -> M {
        M::over(BatchedVault::new(self.0.per_entry))
    }
    fn next_operation(&mut self, client: usize, rng: &mut rand_chacha::ChaCha8Rng) -> Operation {
        self.0.next_operation(client, rng)
    }
    fn observe(&mut self, client: usize, op: &Operation, output: Option<&[u8]>) {
        self.0.observe(client, op, output)
    }
    fn step(&self, s: &(), op: &Operation, output: Option<&[u8]>) -> Option<()> {
        self.0.step(s, op, output)
    }
    fn check_history(&self, history: &[Record]) -> Result<(), String> {
        self.0.check_history(history)
    }
    fn check_final(&self, m: &M, history: &[Record]) -> Result<(), String> {
        self.0.check_final(m.vault(), history)
    }
}

/// A vault that quietly gives back an attempt whenever a user is down to their
/// last one: the reset the consensus rules reserve for a proven login, applied
/// without one.
struct RefundingVault(BatchedVault);

impl PlantedVault for RefundingVault {
    fn over(vault: BatchedVault) -> Self {
        Self(vault)
    }
    fn vault(&self) -> &BatchedVault {
        &self.0
    }
}

impl StateMachine for RefundingVault {
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8> {
        let out = self.0.apply(index, command);
        let parsed: Option<VaultOutcome> = vaultfleet::wire::decode(&out, "outcome").ok();
        let consume: Option<VaultCommand> = vaultfleet::wire::decode(command, "command").ok();
        if let (Some(o), Some(c)) = (parsed, consume) {
            if matches!(c.op, Some(vault_command::Op::Consume(_))) && o.attempts_left == 1 {
                let mut reset = VaultReset::new();
                reset.ticket = o.ticket;
                reset.generation = o.generation;
                let mut r = VaultCommand::new();
                r.user = c.user;
                r.request = c.request;
                r.op = Some(vault_command::Op::Reset(reset));
                self.0.apply(index, &vaultfleet::wire::encode_bounded(&r));
            }
        }
        out
    }
    fn query(&self, q: &[u8]) -> Vec<u8> {
        self.0.query(q)
    }
    fn snapshot(&self) -> Result<Vec<u8>, CaptureError> {
        self.0.snapshot()
    }
    fn restore(&mut self, s: &[u8]) -> Result<(), RestoreError> {
        self.0.restore(s)
    }
}

/// The vault workload for the fleet `o` describes (its epoch-1 artifact lists
/// every replica, as `vaultfleet_sim::run` builds it): the end-of-run check
/// compares the newest epoch with raft's configuration.
fn vault_for(o: &SimOptions, users: u64, max_attempts: u32) -> VaultWorkload {
    VaultWorkload::for_fleet(users, max_attempts, o.seed, o.replicas, o.datacenters)
}

#[test]
fn a_vault_that_gives_back_attempts_is_caught() {
    let (seed, report) = (0..20)
        .find_map(|seed| {
            let mut o = SimOptions::new(seed);
            o.safety_ms = 5_000;
            o.faults = Faults::none();
            let w = vault_for(&o, 2, 3);
            let r = Simulation::new(o, Planted::<RefundingVault>::new(w)).run();
            r.violation.is_some().then_some((seed, r))
        })
        .expect("refunded attempts are caught");
    let v = report.violation.expect("violation");
    assert_eq!(
        v.invariant, "the workload's invariant",
        "seed {seed}: {}",
        v.detail
    );
    assert!(
        v.detail.contains("attempts answered"),
        "seed {seed}: {}",
        v.detail
    );
    // And the honest vault passes the same runs.
    let mut o = SimOptions::new(seed);
    o.safety_ms = 5_000;
    o.faults = Faults::none();
    let w = vault_for(&o, 2, 3);
    let r = Simulation::new(o, w).run();
    assert!(r.violation.is_none(), "seed {seed}: {:?}", r.violation);
}

/// A vault whose consumes answer the log index as their ticket, as tickets were
/// before issue 13's follow-up: every consume of one batched entry shares it
/// (the index the vault is shown, which [`BatchedVault`] batches).
struct IndexTicketVault(BatchedVault);

impl PlantedVault for IndexTicketVault {
    fn over(vault: BatchedVault) -> Self {
        Self(vault)
    }
    fn vault(&self) -> &BatchedVault {
        &self.0
    }
}

impl StateMachine for IndexTicketVault {
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8> {
        let out = self.0.apply(index, command);
        let parsed: Option<VaultOutcome> = vaultfleet::wire::decode(&out, "outcome").ok();
        let consume: Option<VaultCommand> = vaultfleet::wire::decode(command, "command").ok();
        match (parsed, consume) {
            (Some(mut o), Some(c)) if matches!(c.op, Some(vault_command::Op::Consume(_))) => {
                o.ticket = o.applied_at;
                vaultfleet::wire::encode_bounded(&o)
            }
            _ => out,
        }
    }
    fn query(&self, q: &[u8]) -> Vec<u8> {
        self.0.query(q)
    }
    fn snapshot(&self) -> Result<Vec<u8>, CaptureError> {
        self.0.snapshot()
    }
    fn restore(&mut self, s: &[u8]) -> Result<(), RestoreError> {
        self.0.restore(s)
    }
}

#[test]
fn finding_tickets_sim_batches_consumes_and_catches_shared_tickets() {
    // One user, many concurrent clients: consumes of that user share entries.
    let options = |seed: u64| {
        let mut o = SimOptions::new(seed);
        o.safety_ms = 5_000;
        o.clients = 12;
        o.faults = Faults::none();
        o
    };
    let (seed, report) = (0..20)
        .find_map(|seed| {
            let o = options(seed);
            let w = vault_for(&o, 1, 10);
            let r = Simulation::new(o, Planted::<IndexTicketVault>::new(w)).run();
            r.violation
                .as_ref()
                .is_some_and(|v| v.detail.contains("given to two different guesses"))
                .then_some((seed, r))
        })
        .expect("a batch of one user's consumes sharing a ticket is caught");
    let v = report.violation.expect("violation");
    assert_eq!(
        v.invariant, "the workload's invariant",
        "seed {seed}: {}",
        v.detail
    );
    // And the real vault, whose tickets are its own, passes the same run.
    let o = options(seed);
    let w = vault_for(&o, 1, 10);
    let r = Simulation::new(o, w).run();
    assert!(r.violation.is_none(), "seed {seed}: {:?}", r.violation);
}
