//! The vault workload changes membership through fleet epochs: before a new
//! replica joins, the operator publishes the next epoch (witnessed,
//! countersigned, its keys in and a replaced replica's out, sometimes with a
//! retirement of the epochs before), services reload it, and devices follow
//! it through `FleetVerifier` ([`vaultfleet_vault::verify_bundled_reply`]).
//! Honest churn breaks no invariant; a device that keeps a replaced
//! replica's key past the epochs that retired it is caught with its seed.

use std::cell::RefCell;
use std::rc::Rc;

use rand_chacha::ChaCha8Rng;
use vaultfleet_sim::vault::BatchedVault;
use vaultfleet_sim::{
    run, Faults, MemberChange, MembershipBug, Operation, Record, Report, SimOptions, Simulation,
    VaultWorkload, Workload, WorkloadKind,
};

/// A vault fleet that replaces replicas often (and grows and shrinks), under
/// crashes and partitions, in short runs.
fn churny(seed: u64) -> SimOptions {
    let mut o = SimOptions::new(seed);
    o.workload = WorkloadKind::Vault;
    o.safety_ms = 6_000;
    o.liveness_ms = 20_000;
    o.clients = 4;
    o.keys = 6;
    o.snapshot_entries = 40;
    o.faults = Faults::none();
    o.faults.membership_rate = 0.1;
    o.faults.replace_rate = 0.1;
    o.faults.transfer_rate = 0.05;
    o.faults.crash_rate = 0.03;
    o.faults.partition_rate = 0.03;
    o.faults.heal_rate = 0.3;
    o.faults.drop = 0.01;
    o
}

/// The workload shared with the test, to read its counters after the run.
struct Shared(Rc<RefCell<VaultWorkload>>);

impl Workload for Shared {
    type Machine = BatchedVault;
    type Model = ();
    fn machine(&self) -> BatchedVault {
        self.0.borrow().machine()
    }
    fn next_operation(&mut self, client: usize, rng: &mut ChaCha8Rng) -> Operation {
        self.0.borrow_mut().next_operation(client, rng)
    }
    fn clock(&mut self, now_us: u64) {
        self.0.borrow_mut().clock(now_us);
    }
    fn observe(&mut self, client: usize, op: &Operation, output: Option<&[u8]>) {
        self.0.borrow_mut().observe(client, op, output);
    }
    fn membership_change(&mut self, change: &MemberChange) {
        self.0.borrow_mut().membership_change(change);
    }
    fn step(&self, s: &(), op: &Operation, output: Option<&[u8]>) -> Option<()> {
        self.0.borrow().step(s, op, output)
    }
    fn check_history(&self, history: &[Record]) -> Result<(), String> {
        self.0.borrow().check_history(history)
    }
    fn check_final(&self, machine: &BatchedVault, history: &[Record]) -> Result<(), String> {
        self.0.borrow().check_final(machine, history)
    }
}

/// Runs `opts` with the vault workload `run` would build, and returns the
/// report and the workload.
fn run_shared(opts: SimOptions) -> (Report, VaultWorkload) {
    let mut w = VaultWorkload::for_fleet(
        opts.keys,
        opts.attempt_limit,
        opts.seed,
        opts.replicas,
        opts.datacenters,
    );
    w.membership_bug = opts.membership_bug;
    let shared = Rc::new(RefCell::new(w));
    let report = Simulation::new(opts, Shared(shared.clone())).run();
    let w = Rc::try_unwrap(shared)
        .expect("the simulation dropped its workload")
        .into_inner();
    (report, w)
}

#[test]
fn replacements_publish_epochs_that_devices_follow() {
    let (mut epochs, mut retired, mut previous, mut refused, mut replaced) = (0, 0, 0, 0, 0);
    for seed in 0..6 {
        let (report, w) = run_shared(churny(seed));
        assert!(
            report.violation.is_none() && report.stall.is_none(),
            "seed {seed}: {:?} {:?}\n{}",
            report.violation,
            report.stall,
            report.recent.join("\n")
        );
        let (newest, through) = w.fleet_epochs();
        let (prev, refus) = w.epoch_stats();
        eprintln!(
            "seed {seed}: {} replacements, {} changes, epoch {newest}, retired through \
             {through}, {prev} replies under the previous epoch, {refus} from non-members refused",
            report.stats.replacements, report.stats.membership_changes
        );
        replaced += report.stats.replacements;
        epochs += newest - 1;
        retired += u64::from(through > 0);
        previous += prev;
        refused += refus;
    }
    // The runs did what they are for.
    assert!(
        replaced > 0 && epochs >= replaced,
        "{replaced} replacements, {epochs} epochs"
    );
    assert!(retired > 0, "no run retired an epoch early");
    assert!(
        previous > 0,
        "no device accepted a reply under the previous epoch"
    );
    assert!(refused > 0, "no device refused a removed replica's reply");
}

#[test]
fn fleet_epochs_are_deterministic() {
    let a = run(churny(3));
    let b = run(churny(3));
    assert_eq!(a.trace, b.trace);
    assert!(a.stats.replacements > 0, "seed 3 replaces a replica");
}

/// Runs churny seeds 0..40 with the planted `bug` until one is caught: its
/// violation must be `invariant`'s, with a detail starting `fleet epochs:`
/// and containing `detail`; it must replay, and the same seed without the
/// bug must pass. Returns the seed.
fn caught_at_some_seed(bug: MembershipBug, invariant: &str, detail: &str) -> u64 {
    let planted = |seed| {
        let mut o = churny(seed);
        o.membership_bug = bug;
        o
    };
    let mut caught = None;
    for seed in 0..40 {
        let report = run(planted(seed));
        if let Some(v) = report.violation {
            assert_eq!(v.invariant, invariant, "seed {seed}: {}", v.detail);
            assert!(
                v.detail.contains("fleet epochs:") && v.detail.contains(detail),
                "seed {seed}: {}",
                v.detail
            );
            eprintln!("{bug:?}: seed {seed}: caught: {}", v.detail);
            caught = Some((seed, v));
            break;
        }
    }
    let (seed, v) = caught.unwrap_or_else(|| panic!("no seed in 0..40 caught {bug:?}"));
    assert_eq!(run(planted(seed)).violation, Some(v), "seed {seed} replays");
    let honest = run(churny(seed));
    assert!(
        honest.violation.is_none(),
        "seed {seed} without the bug: {:?}",
        honest.violation
    );
    seed
}

/// Devices keep every response key they verified and accept a reply signed
/// by one even when its bundle is refused: a replaced replica still running
/// is believed past the epochs that retired it (checker (a)).
#[test]
fn a_device_that_keeps_a_replaced_replicas_key_is_caught() {
    caught_at_some_seed(
        MembershipBug::DeviceKeepsOldKeys,
        "the workload's invariant",
        "accepted a reply of replica",
    );
}

/// Review finding 3: devices drop the retirements replies carry, so a
/// replaced replica's epoch stays good to them after it was retired
/// (checker (a)).
#[test]
fn a_device_that_ignores_retirements_is_caught() {
    caught_at_some_seed(
        MembershipBug::DeviceIgnoresRetirements,
        "the workload's invariant",
        "retired (through",
    );
}

/// Review finding 3: a device whose reply's bundle is refused takes the
/// replica's key from the newest artifact it accepted that lists it, so a
/// removed replica still serving an old epoch is believed (checker (a)).
#[test]
fn a_device_that_takes_a_key_from_its_newest_artifact_is_caught() {
    caught_at_some_seed(
        MembershipBug::DeviceTakesKeyFromNewestArtifact,
        "the workload's invariant",
        "accepted a reply of replica",
    );
}

/// Review finding 1 (checker (b) took the final members from the
/// workload's own bookkeeping): the operator's epoch leaves out a member
/// raft keeps; the end-of-run check compares the newest artifact with raft's
/// converged configuration and catches it.
#[test]
fn the_final_epoch_must_list_rafts_converged_configuration() {
    caught_at_some_seed(
        MembershipBug::EpochDropsReplica,
        "the workload's converged fleet",
        "raft's converged configuration",
    );
}

/// Review finding 1's scenario, honestly: a replacement's new replica is lost
/// before its promotion (its disk damaged), so it is removed; the replaced
/// replica, already out of the epochs but still a raft voter, is replaced
/// again, and the final epoch lists exactly raft's configuration.
#[test]
fn a_replacement_whose_new_replica_is_lost_is_replaced_again() {
    let mut resumed = 0;
    // Seeds of this shape run until one loses a replacement's new replica
    // (1 to 2 seeds in 100 do): its disk is damaged before promotion; without
    // the replacement resumed, the run ends with the replaced replica a raft
    // voter no epoch lists (caught by the final check). The seed that does
    // moves whenever the draws before it change (57, then 35, then 42 after
    // leadership transfers were announced and disk damage counted the voters
    // every member holds), so the test scans rather than naming one.
    for seed in 0..200 {
        let mut o = churny(seed);
        o.sealed = true;
        o.faults.bit_flip_rate = 0.1;
        o.faults.rollback_rate = 0.1;
        o.faults.replace_rate = 0.2;
        let report = run(o);
        assert!(
            report.violation.is_none(),
            "seed {seed}: {:?}\n{}",
            report.violation,
            report.recent.join("\n")
        );
        resumed += report.stats.replacements_resumed;
        if resumed > 0 {
            break;
        }
    }
    assert!(resumed > 0, "no replacement lost its new replica");
}
