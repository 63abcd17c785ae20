//! Chaos under the fault-injecting proxy: three replica processes
//! (`vaultfleet-net-replica`) in datacenters dc-a, dc-b and dc-c, the test's
//! remote client in dc-app, and `vaultfleet-netem` on every connection (each
//! replica's peers file lists the proxy's link for each peer), with
//! inter-datacenter latency and seeded jitter. Each scenario runs a bounded
//! workload of writes through a remote session while the fault holds, heals,
//! writes again, then checks that no acknowledged write was lost and that the
//! replicas converged: every replica, made leader in turn, answers every key
//! ever written (acknowledged or not) from its own state machine, and all
//! answer alike. The netem seed is printed; rerun one with
//! `VAULTFLEET_NETEM_SEED=<seed>`.
//!
//! The scenarios run one at a time (a lock), in a binary of their own rather
//! than in `tests/net` beside the other fleets: each starts three processes
//! and a proxy, and the machine may have two cores. `scripts/test.sh` runs
//! them after every other suite, alone (module `netem_chaos`).
// Tests of processes and sockets wait in wall-clock time, every wait bounded.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

#[path = "net/process_fleet/mod.rs"]
mod process_fleet;
#[path = "net/wait.rs"]
mod wait;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use process_fleet::{endpoint, wait_until, ProcessFleet, Workload};
use raft::StateRole;
use rand::RngCore;
use vaultfleet::runtime::NodeApi;
use vaultfleet_netem::{CutMode, Latency, LinkMode, Proxy, ProxyConfig};

const MEMBERS: [(u64, &str); 3] = [(1, "dc-a"), (2, "dc-b"), (3, "dc-c")];

static SERIAL: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Three replica processes behind a proxy with inter-datacenter latency.
fn fleet(name: &str) -> ProcessFleet {
    let seed = ProxyConfig::seed_from_env(rand::rngs::OsRng.next_u64()).expect("seed");
    println!("{name}: netem seed {seed} (rerun with VAULTFLEET_NETEM_SEED={seed})");
    let proxy = Proxy::start(ProxyConfig::new(seed)).expect("proxy");
    proxy.set_dc_latency(
        Latency::ZERO,
        Latency::fixed(Duration::from_millis(3)).with_jitter(Duration::from_millis(2)),
    );
    ProcessFleet::start(name, &MEMBERS, Some(Arc::new(proxy)))
}

fn dc_of(id: u64) -> &'static str {
    MEMBERS
        .iter()
        .find(|&&(m, _)| m == id)
        .map(|&(_, dc)| dc)
        .expect("a member")
}

fn others(fleet: &ProcessFleet, id: u64) -> Vec<u64> {
    fleet.ids().into_iter().filter(|&m| m != id).collect()
}

/// Shows that a fault cut `follower` off from `leader`'s replication: while
/// `leader` still leads, `follower` applied less than it committed.
fn assert_held_back(fleet: &ProcessFleet, leader: u64, follower: u64) {
    let leading = fleet.nodes[&leader].status();
    if leading.role != StateRole::Leader {
        println!("leadership moved during the fault; nothing to compare");
        return;
    }
    // Fresh cached statuses (refreshed every 50 ms) of the follower.
    std::thread::sleep(Duration::from_millis(200));
    let behind = fleet.nodes[&follower].status();
    assert!(
        behind.applied < leading.commit,
        "the fault held replica {follower} back: {behind:?} against {leading:?}"
    );
}

/// Heals every fault, writes a little more, and checks the end state.
fn heal_and_check(fleet: &ProcessFleet, session: &vaultfleet::Client, workload: &mut Workload) {
    fleet.proxy().heal();
    workload.put(session, "healed", 10);
    fleet.check_no_acknowledged_write_lost(workload);
}

/// The scenarios, in a module whose path `scripts/test.sh` names: it skips
/// them while the simulator's suite computes beside the other suites, and runs
/// them afterwards, alone.
mod netem_chaos {
    use super::*;

    #[test]
    fn an_isolated_leader_is_replaced_and_rejoins() {
        let _serial = one_at_a_time();
        let fleet = fleet("chaos-isolated-leader");
        let session = fleet.session();
        let mut workload = Workload::default();
        workload.put(&session, "before", 20);
        let leader = fleet.wait_leader();

        fleet
            .proxy()
            .isolate(&endpoint(leader), CutMode::BlackHole)
            .expect("isolate");
        let next = fleet.wait_leader_among(&others(&fleet, leader));
        assert_ne!(
            next, leader,
            "the majority elects a leader without the cut one"
        );
        workload.put(&session, "cut", 30);
        assert!(
            workload.acknowledged_under("cut"),
            "the majority keeps committing: {workload:?}"
        );
        fleet.proxy().rejoin(&endpoint(leader)).expect("rejoin");
        heal_and_check(&fleet, &session, &mut workload);
    }

    #[test]
    fn a_datacenter_cut_off_as_a_black_hole_then_with_resets_heals() {
        let _serial = one_at_a_time();
        let fleet = fleet("chaos-datacenter-cut");
        let session = fleet.session();
        let mut workload = Workload::default();
        workload.put(&session, "before", 20);

        // The leader's datacenter vanishes: an election on the other side.
        let leader = fleet.wait_leader();
        fleet
            .proxy()
            .cut_dc(dc_of(leader), CutMode::BlackHole)
            .expect("cut");
        fleet.wait_leader_among(&others(&fleet, leader));
        workload.put(&session, "black-hole", 30);
        fleet.proxy().heal_dc(dc_of(leader)).expect("heal");
        workload.put(&session, "between", 10);

        // A follower's datacenter refuses every connection: resets.
        let leader = fleet.wait_leader();
        let follower = others(&fleet, leader)[0];
        let resets_before: u64 = fleet
            .proxy()
            .links()
            .iter()
            .map(|l| l.stats().connections_reset)
            .sum();
        fleet
            .proxy()
            .cut_dc(dc_of(follower), CutMode::Reset)
            .expect("cut");
        workload.put(&session, "reset", 30);
        let resets: u64 = fleet
            .proxy()
            .links()
            .iter()
            .map(|l| l.stats().connections_reset)
            .sum();
        assert!(
            resets > resets_before,
            "the cut reset the follower's connections"
        );
        fleet.proxy().heal_dc(dc_of(follower)).expect("heal");
        assert!(
            workload.acknowledged_under("black-hole") && workload.acknowledged_under("reset"),
            "writes commit through either cut: {workload:?}"
        );
        heal_and_check(&fleet, &session, &mut workload);
    }

    #[test]
    fn a_killed_leader_restarts_behind_the_proxy_and_catches_up() {
        let _serial = one_at_a_time();
        let mut fleet = fleet("chaos-killed-leader");
        let session = fleet.session();
        let mut workload = Workload::default();
        workload.put(&session, "before", 20);
        let leader = fleet.wait_leader();

        fleet.kill9(leader);
        workload.put(&session, "killed", 30);
        let next = fleet.wait_leader_among(&others(&fleet, leader));
        fleet.spawn(leader);
        workload.put(&session, "restarted", 20);
        wait_until("the restarted replica catches up", || {
            let commit = fleet.nodes[&next].status().commit;
            fleet.nodes[&leader].status().applied >= commit && commit > 0
        });
        assert!(
            workload.acknowledged_under("killed"),
            "writes go on while the leader is down: {workload:?}"
        );
        heal_and_check(&fleet, &session, &mut workload);
    }

    #[test]
    fn one_way_loss_in_either_direction_loses_no_acknowledged_write() {
        let _serial = one_at_a_time();
        let fleet = fleet("chaos-one-way-loss");
        let session = fleet.session();
        let mut workload = Workload::default();
        workload.put(&session, "before", 20);
        let leader = fleet.wait_leader();
        let follower = others(&fleet, leader)[0];
        let (l, f) = (endpoint(leader), endpoint(follower));

        // The leader's bytes to one follower vanish; the follower's still arrive.
        fleet.proxy().set_loss(&l, &f, true).expect("loss");
        workload.put(&session, "leader-to-follower-lost", 30);
        assert_held_back(&fleet, leader, follower);
        fleet.proxy().set_loss(&l, &f, false).expect("loss");
        // Then the other way round.
        fleet.proxy().set_loss(&f, &l, true).expect("loss");
        workload.put(&session, "follower-to-leader-lost", 30);
        assert!(
            workload.acknowledged_under("leader-to-follower-lost")
                && workload.acknowledged_under("follower-to-leader-lost"),
            "the majority commits under one-way loss: {workload:?}"
        );
        heal_and_check(&fleet, &session, &mut workload);
    }

    #[test]
    fn a_peer_that_accepts_and_never_reads_does_not_stall_the_leader() {
        let _serial = one_at_a_time();
        let fleet = fleet("chaos-never-reads");
        let session = fleet.session();
        let mut workload = Workload::default();
        workload.put(&session, "before", 20);
        let leader = fleet.wait_leader();
        let follower = others(&fleet, leader)[0];

        // Every connection from the leader to this follower now reaches a peer
        // that accepts and never reads (the open one is reset, so the leader
        // redials into it).
        let link = fleet
            .proxy()
            .link(&endpoint(leader), &endpoint(follower))
            .expect("link");
        let accepted_before = link.stats().connections_accepted;
        link.set_mode(LinkMode::NeverRead);
        link.reset_connections();
        workload.put(&session, "never-read", 60);
        assert_held_back(&fleet, leader, follower);
        assert!(
            workload.unacknowledged.is_empty(),
            "every write commits through the majority while one peer never reads: {workload:?}"
        );
        wait_until(
            "the leader redialled into the peer that never reads",
            || link.stats().connections_accepted > accepted_before,
        );
        let statuses: Vec<_> = fleet.nodes.values().map(|n| n.status()).collect();
        assert!(
            statuses.iter().any(|s| s.role == StateRole::Leader),
            "{statuses:?}"
        );
        link.set_mode(LinkMode::Forward);
        heal_and_check(&fleet, &session, &mut workload);
    }
}
