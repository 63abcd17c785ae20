//! Membership under faults: learners added and promoted, voters removed,
//! replicas replaced (new id, learner, promote, remove the old id) and
//! leadership transferred while the chaos schedule runs; healthy runs pass every
//! checker, and each planted membership bug is caught with its seed.

use vaultfleet_sim::{run, Faults, MembershipBug, Report, SimOptions, WorkloadKind};

/// A counter fleet that churns its membership hard, under crashes and
/// partitions, in short runs.
fn churny(seed: u64) -> SimOptions {
    let mut o = SimOptions::new(seed);
    o.workload = WorkloadKind::Counter;
    o.safety_ms = 6_000;
    o.liveness_ms = 20_000;
    o.clients = 4;
    o.snapshot_entries = 40;
    o.faults = Faults::none();
    o.faults.membership_rate = 0.3;
    o.faults.replace_rate = 0.1;
    o.faults.transfer_rate = 0.05;
    o.faults.crash_rate = 0.03;
    o.faults.partition_rate = 0.03;
    o.faults.heal_rate = 0.3;
    o.faults.drop = 0.01;
    o
}

/// Runs `make(seed)` for seeds `0..budget` until a run reports a violation of
/// `invariant`; panics (with the seeds tried) if none does or another fires.
fn find(budget: u64, invariant: &str, make: impl Fn(u64) -> SimOptions) -> (u64, Report) {
    for seed in 0..budget {
        let report = run(make(seed));
        if let Some(v) = &report.violation {
            assert_eq!(
                v.invariant,
                invariant,
                "seed {seed}: expected \"{invariant}\", got: {}\n{}",
                v.detail,
                report.recent.join("\n")
            );
            eprintln!("seed {seed}: caught \"{}\": {}", v.invariant, v.detail);
            return (seed, report);
        }
    }
    panic!("no seed in 0..{budget} caught the defect ({invariant})");
}

/// `churny(seed)`, varied by seed: every other run the vault workload, every
/// third on plain stores, every fifth with every other fault on too.
fn varied(seed: u64) -> SimOptions {
    let mut o = churny(seed);
    if seed % 2 == 1 {
        o.workload = WorkloadKind::Vault;
    }
    if seed % 3 == 1 {
        o.sealed = false;
    }
    if seed % 5 == 2 {
        let churn = o.faults.clone();
        o.faults = Faults::all();
        o.faults.membership_rate = churn.membership_rate;
        o.faults.replace_rate = churn.replace_rate;
        o.faults.transfer_rate = churn.transfer_rate;
    }
    o
}

#[test]
fn churn_under_faults_breaks_no_invariant() {
    let (mut changes, mut replacements, mut transfers) = (0, 0, 0);
    for seed in 0..20 {
        let report = run(varied(seed));
        assert!(
            report.violation.is_none() && report.stall.is_none(),
            "seed {seed}: {:?} {:?}\n{}",
            report.violation,
            report.stall,
            report.recent.join("\n")
        );
        changes += report.stats.membership_changes;
        replacements += report.stats.replacements;
        transfers += report.stats.transfers;
    }
    // The runs did churn: many changes, replacements and transfers.
    assert!(changes > 40, "only {changes} membership changes were made");
    assert!(
        replacements > 5,
        "only {replacements} replicas were replaced"
    );
    assert!(transfers > 3, "only {transfers} leadership transfers");
}

#[test]
fn churn_is_deterministic() {
    let a = run(varied(7));
    let b = run(varied(7));
    assert!(a.stats.membership_changes > 0);
    assert_eq!(a.trace, b.trace);
    assert_eq!(a.stats, b.stats);
}

#[test]
fn no_churn_without_its_rates() {
    let mut o = churny(3);
    o.faults.membership_rate = 0.0;
    o.faults.replace_rate = 0.0;
    o.faults.transfer_rate = 0.0;
    let report = run(o);
    assert!(report.violation.is_none(), "{:?}", report.violation);
    assert_eq!(
        (
            report.stats.membership_changes,
            report.stats.replacements,
            report.stats.transfers
        ),
        (0, 0, 0)
    );
    assert_eq!(Faults::none().membership_rate, 0.0);
    assert_eq!(Faults::none().replace_rate, 0.0);
    assert_eq!(Faults::none().transfer_rate, 0.0);
}

#[test]
fn counting_a_removed_voter_is_caught() {
    // The operator's tool reports removals it never proposed: the fleet keeps
    // counting the "removed" voter's acknowledgements toward its quorums.
    let (seed, report) = find(
        40,
        "a removed replica never counts toward a quorum",
        |seed| {
            let mut o = churny(seed);
            o.faults.replace_rate = 0.0;
            o.membership_bug = MembershipBug::CountRemovedVoter;
            o
        },
    );
    let again = run({
        let mut o = churny(seed);
        o.faults.replace_rate = 0.0;
        o.membership_bug = MembershipBug::CountRemovedVoter;
        o
    });
    assert_eq!(again.violation, report.violation, "seed {seed} replays");
    let detail = report.violation.map(|v| v.detail).unwrap_or_default();
    assert!(
        !detail.ends_with("[]"),
        "a removed replica's acknowledgement was counted: {detail}"
    );
}

#[test]
fn an_old_disk_rejoining_under_its_old_id_is_caught() {
    // A removed replica's host comes back with its old disk and is re-added
    // under its old id: the checker sees the removed id in the configuration.
    find(40, "a removed replica's old disk never rejoins", |seed| {
        let mut o = churny(seed);
        o.membership_bug = MembershipBug::OldDiskRejoins;
        o
    });
}

/// Swarm seed `seed` as the long run drew it before `prefer_rate` existed:
/// that rate is drawn last and draws nothing while it is 0, so switching it
/// off replays the run that was found.
fn as_found(seed: u64) -> SimOptions {
    let mut o = SimOptions::swarm(seed);
    o.faults.prefer_rate = 0.0;
    o
}

/// Found by the long swarm run (sim e62e4e2, seed 2476): a removal of voter 1
/// was proposed on leader 2, leadership then moved to replica 1, and replica 1
/// applied its own removal while leading. raft-rs leaves a removed leader
/// leading, and the next append response it stepped unwrapped its own
/// progress: "called `Option::unwrap()` on a `None` value" in raft-rs's
/// `maybe_commit`. The replica now steps down at the end of that Ready cycle
/// (`tests/core.rs`, `r4_a_leader_committing_its_own_removal_with_a_write_queued_steps_down`,
/// holds the exact path). Which seed reaches it moves with every change to the
/// engine's messages (2 of the 500 seeds from 2476 with these options): seed
/// 2499 since commits stopped being broadcast. If the count below is 0, scan
/// for another seed whose `stats.leaders_removed` is above 0.
#[test]
fn swarm_seed_2476_a_leader_that_applies_its_own_removal_steps_down() {
    let seed = 2499;
    let report = run(as_found(seed));
    assert!(
        report.violation.is_none(),
        "seed {seed}: {:?}\n{}",
        report.violation,
        report.recent.join("\n")
    );
    assert!(
        report.stats.leaders_removed > 0,
        "seed {seed} no longer has a leader apply its own removal: {:?}",
        report.stats
    );
}

/// Found by the long swarm run (sim ba973e6, seed 3851): replica 5 was removed
/// by leader 2 while replica 3 was down and 1 cut off; 5 never learned the
/// commit, and on healing won term 9 with 1's and 3's votes under the
/// configuration it knew. That is Raft's removed-server disruption, not a
/// safety break (it held every committed entry); the checker flagged it. It
/// now flags a removed replica leading only once its own configuration leaves
/// it out.
#[test]
fn swarm_seed_3851_a_removed_replica_that_never_learned_of_its_removal_may_lead() {
    let report = run(as_found(3851));
    assert!(
        report.violation.is_none(),
        "seed 3851: {:?}\n{}",
        report.violation,
        report.recent.join("\n")
    );
}

/// Found by the long swarm run (sim c4eb58e, seed 35217): after a replacement
/// and a bit flip left two live voters of three, a vault fleet step was still
/// pending 20 s after healing. Its client retried at random among every host
/// ever run and drew only dead or removed ones 25 times in a row, while a
/// removed replica, still running, hinted at a dead leader. Clients now retry
/// in turn once the faults heal, as the runtime's `Client` does.
#[test]
fn swarm_seed_35217_clients_retry_every_replica_in_turn_after_healing() {
    let report = run(as_found(35217));
    assert!(
        report.violation.is_none(),
        "seed 35217: {:?}\n{}",
        report.violation,
        report.recent.join("\n")
    );
    assert!(report.stats.membership_changes > 0);
}

/// `varied(seed)` whose operator also moves the preferred leader datacenters
/// often (a new list in every member's configuration, then a rolling restart).
fn preferring(seed: u64) -> SimOptions {
    let mut o = varied(seed);
    o.faults.prefer_rate = 0.1;
    o
}

#[test]
fn moving_preferred_datacenters_under_faults_breaks_no_invariant() {
    let (mut moves, mut restarts, mut waits) = (0, 0, 0);
    for seed in 0..12 {
        let report = run(preferring(seed));
        assert!(
            report.violation.is_none() && report.stall.is_none(),
            "seed {seed}: {:?} {:?}\n{}",
            report.violation,
            report.stall,
            report.recent.join("\n")
        );
        moves += report.stats.preference_moves;
        restarts += report.stats.rollout_restarts;
        waits += report.stats.placement_waits;
    }
    eprintln!("{moves} moves, {restarts} restarts, {waits} leaders moved after converging");
    // The runs did move the preference, and restarted replicas for it.
    assert!(moves > 20, "only {moves} preference moves");
    assert!(restarts > 40, "only {restarts} rolling restarts");
}

#[test]
fn preference_moves_are_deterministic_and_off_without_their_rate() {
    let a = run(preferring(5));
    let b = run(preferring(5));
    assert!(a.stats.preference_moves > 0);
    assert_eq!(a.trace, b.trace);
    assert_eq!(a.stats, b.stats);
    let mut o = preferring(5);
    o.faults.prefer_rate = 0.0;
    let c = run(o);
    assert_eq!((c.stats.preference_moves, c.stats.rollout_restarts), (0, 0));
    assert_eq!(Faults::none().prefer_rate, 0.0);
    assert!(Faults::all().prefer_rate > 0.0);
}

#[test]
fn a_rollout_that_skips_the_leader_is_caught() {
    // The operator's rolling restart leaves the leader's host for last and
    // forgets it: that replica keeps the old list, believes itself preferred,
    // and never hands leadership over.
    let bugged = |seed| {
        let mut o = churny(seed);
        o.faults.prefer_rate = 0.1;
        o.membership_bug = MembershipBug::PreferenceSkipsLeader;
        o
    };
    // Seed 1 catches it at the time of writing (replica 4 in dc-0 keeps its
    // empty list and leads; the preferred dc-2 holds voter 10).
    let (seed, report) = find(60, "the leader moves to a preferred datacenter", bugged);
    let again = run(bugged(seed));
    assert_eq!(again.violation, report.violation, "seed {seed} replays");
    // The same seed under the correct procedure passes.
    let mut fixed = bugged(seed);
    fixed.membership_bug = MembershipBug::None;
    let fixed = run(fixed);
    assert!(
        fixed.violation.is_none(),
        "seed {seed} without the bug: {:?}",
        fixed.violation
    );
}

/// Found by the swarm with `--prefer 0.02` (seed 11): a new host was added
/// (its `AddLearner` not yet applied) just before the preference moved; the
/// simulated operator wrote the new list only into the members'
/// configurations, so the new replica kept the old one, joined, led, and
/// never handed leadership to the new preferred datacenter. The operator now
/// writes it into every host it runs; the placement checker had caught it.
#[test]
fn swarm_seed_11_a_joining_host_gets_the_new_preference_too() {
    let mut o = SimOptions::swarm(11);
    o.faults.prefer_rate = 0.02;
    let report = run(o);
    assert!(
        report.violation.is_none(),
        "seed 11: {:?}\n{}",
        report.violation,
        report.recent.join("\n")
    );
    assert!(report.stats.preference_moves > 0 && report.stats.membership_changes > 0);
}

/// Found by the swarm with `--workload vault --membership 0.5 --prefer 0.05`
/// (seed 91474): a removal committed, only its leader learned that it had,
/// and that leader's disk was then rolled back. The four survivors had not
/// applied the removal, so they still elected among the eight voters of
/// before, four of them lost, while the damage budget had counted three of
/// the seven of after: no leader ever again, a liveness violation the faults
/// caused. Damage now counts against every configuration a member holds.
/// (The seed shows it only while the draws before it stay as they are.)
#[test]
fn swarm_seed_91474_damage_counts_against_the_voters_survivors_hold() {
    let mut o = SimOptions::swarm(91474);
    o.faults.membership_rate = 0.5;
    o.faults.prefer_rate = 0.05;
    o.workload = WorkloadKind::Vault;
    o.disk_bug = vaultfleet_sim::DiskBug::None;
    let report = run(o);
    assert!(
        report.violation.is_none(),
        "seed 91474: {:?}\n{}",
        report.violation,
        report.recent.join("\n")
    );
    assert!(report.stats.membership_changes > 0);
}

/// Swarm seed 100529 of `--replicas 7 --membership 0.3 --replace 0.2
/// --transfer 0.2 --prefer 0.05`: a 4-voter configuration shrunk to 3 (the
/// removed replica shut down), and both survivors applied the removal, then
/// restarted in a rolling restart with the removal's commit index lost (it
/// was written without a sync). raft-rs rebuilt the 4-voter configuration from
/// their logs; the third voter's disk was then destroyed, and two of four
/// elected no leader. The engine now makes a change's commit index durable
/// before it applies the change (`Replica::commit_durably`; the engine's unit
/// test `a_replica_restarts_holding_the_membership_it_applied` shows it
/// without a seed). (The seed shows it only while the draws before it stay as
/// they are.)
#[test]
fn swarm_seed_100529_a_restart_keeps_the_membership_it_applied() {
    let mut o = SimOptions::swarm(100529);
    o.replicas = 7;
    o.faults.membership_rate = 0.3;
    o.faults.replace_rate = 0.2;
    o.faults.transfer_rate = 0.2;
    o.faults.prefer_rate = 0.05;
    o.disk_bug = vaultfleet_sim::DiskBug::None;
    let report = run(o);
    assert!(
        report.violation.is_none(),
        "seed 100529: {:?}\n{}",
        report.violation,
        report.recent.join("\n")
    );
    assert!(report.stats.membership_changes > 0);
}
