//! The vault workload's network attacker catches planted bugs: a service that
//! would accept an altered finish (its intent tag unchecked), and a device that
//! accepts a reply without checking that it answers its request. The honest
//! code passes the same seeds.

use vaultfleet_sim::{Faults, Report, SimOptions, Simulation, VaultWorkload};

fn options(seed: u64) -> SimOptions {
    let mut o = SimOptions::new(seed);
    o.safety_ms = 5_000;
    o.clients = 6;
    o.faults = Faults::none();
    o
}

/// The vault workload for the fleet of `options(seed)` (its epoch-1 artifact
/// lists every replica: the end-of-run check compares the newest epoch with
/// raft's configuration).
fn vault(seed: u64) -> VaultWorkload {
    let o = options(seed);
    VaultWorkload::for_fleet(4, 5, seed, o.replicas, o.datacenters)
}

fn run(seed: u64, workload: VaultWorkload) -> Report {
    Simulation::new(options(seed), workload).run()
}

/// The first seed of `0..40` whose run with `planted` breaks the workload's
/// invariant with `expect` in its detail; that seed's honest run must pass.
fn caught(planted: impl Fn(u64) -> VaultWorkload, expect: &[&str]) -> u64 {
    let (seed, report) = (0..40)
        .find_map(|seed| {
            let r = run(seed, planted(seed));
            r.violation
                .as_ref()
                .is_some_and(|v| expect.iter().any(|e| v.detail.contains(e)))
                .then_some((seed, r))
        })
        .unwrap_or_else(|| panic!("the planted bug is not caught in seeds 0..40 ({expect:?})"));
    let v = report.violation.expect("violation");
    eprintln!("seed {seed}: caught: {}", v.detail);
    assert_eq!(
        v.invariant, "the workload's invariant",
        "seed {seed}: {}",
        v.detail
    );
    let honest = run(seed, vault(seed));
    assert!(
        honest.violation.is_none(),
        "seed {seed}: the honest run fails: {:?}",
        honest.violation
    );
    seed
}

#[test]
fn an_altered_finish_accepted_without_its_intent_tag_is_caught() {
    caught(
        |seed| vault(seed).with_intent_tags_unchecked(),
        &["an altered request"],
    );
}

#[test]
fn a_device_that_does_not_check_the_request_digest_is_caught() {
    caught(
        |seed| {
            let mut w = vault(seed);
            w.bug_device_skips_digest_check = true;
            w
        },
        &[
            "reported the right code",
            "yielded another secret",
            "reported registration",
            "not recoverable",
            "missing",
        ],
    );
}

/// The workload, shared so the test can read its counts after the run.
struct Shared(std::rc::Rc<std::cell::RefCell<VaultWorkload>>);

impl vaultfleet_sim::Workload for Shared {
    type Machine = vaultfleet_sim::vault::BatchedVault;
    type Model = ();
    fn machine(&self) -> Self::Machine {
        self.0.borrow().machine()
    }
    fn next_operation(
        &mut self,
        client: usize,
        rng: &mut rand_chacha::ChaCha8Rng,
    ) -> vaultfleet_sim::Operation {
        self.0.borrow_mut().next_operation(client, rng)
    }
    fn clock(&mut self, now_us: u64) {
        self.0.borrow_mut().clock(now_us)
    }
    fn observe(&mut self, client: usize, op: &vaultfleet_sim::Operation, output: Option<&[u8]>) {
        self.0.borrow_mut().observe(client, op, output)
    }
    fn step(&self, s: &(), op: &vaultfleet_sim::Operation, output: Option<&[u8]>) -> Option<()> {
        self.0.borrow().step(s, op, output)
    }
    fn check_history(&self, history: &[vaultfleet_sim::Record]) -> Result<(), String> {
        self.0.borrow().check_history(history)
    }
    fn check_final(
        &self,
        m: &Self::Machine,
        history: &[vaultfleet_sim::Record],
    ) -> Result<(), String> {
        self.0.borrow().check_final(m, history)
    }
}

/// Seeds tried, from [`ATTACKER_SEED_FIRST`], for a run in which some device
/// operation also ends refused or unavailable: whether a seed's attack
/// lands on a lost reply moves with every change to the engine's messages.
const ATTACKER_SEEDS: u64 = 8;
const ATTACKER_SEED_FIRST: u64 = 7;

#[test]
fn the_attacker_attacks_and_every_device_operation_ends_named() {
    use vaultfleet_sim::vault::DeviceOutcome;
    for seed in ATTACKER_SEED_FIRST..ATTACKER_SEED_FIRST + ATTACKER_SEEDS {
        let mut o = SimOptions::new(seed);
        let shared = std::rc::Rc::new(std::cell::RefCell::new(VaultWorkload::for_fleet(
            4,
            5,
            seed,
            o.replicas,
            o.datacenters,
        )));
        o.safety_ms = 10_000;
        let r = Simulation::new(o, Shared(shared.clone())).run();
        assert!(r.violation.is_none(), "seed {seed}: {:?}", r.violation);
        let w = shared.borrow();
        let outcomes = w.outcomes();
        eprintln!(
            "seed {seed}: {outcomes:?}, attack stats {:?}",
            w.attack_stats()
        );
        let n = |k: DeviceOutcome| outcomes.get(&k).copied().unwrap_or(0);
        if n(DeviceOutcome::RefusedReply) + n(DeviceOutcome::Unavailable) == 0 {
            continue;
        }
        assert!(n(DeviceOutcome::Succeeded) > 0, "seed {seed}: {outcomes:?}");
        assert!(n(DeviceOutcome::WrongCode) > 0, "seed {seed}: {outcomes:?}");
        let (attacker_attempts, redelivered) = w.attack_stats();
        assert!(
            attacker_attempts > 0,
            "seed {seed}: the attacker spent nothing"
        );
        assert!(
            redelivered > 0,
            "seed {seed}: no LoginStart was re-delivered"
        );
        return;
    }
    panic!(
        "no seed in {ATTACKER_SEED_FIRST}..{} had a device operation end refused or unavailable",
        ATTACKER_SEED_FIRST + ATTACKER_SEEDS
    );
}
