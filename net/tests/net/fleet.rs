//! A fleet of real engine nodes, each with its own `NetTransport` (as if each
//! were its own process), talking over loopback TCP + Noise: elections,
//! replication, and a replica that restarts, reconnects and catches up.
// Tests of the threaded runtime wait in wall-clock time, bounded.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use crate::common;

use std::net::SocketAddr;

use common::{TcpFleet, MEMBERS};
use vaultfleet::replica::ReplicaConfig;
use vaultfleet::runtime::{Client, ClientConfig, Node};
use vaultfleet::KvStore;
use vaultfleet_net::NetConfig;

/// The frame limit of a small fleet.
const SMALL_FRAME_BYTES: usize = 64 << 10;

fn net_config(address: SocketAddr) -> NetConfig {
    let mut c = NetConfig::new(address);
    c.worker_threads = 1;
    c.backoff_max = std::time::Duration::from_millis(200);
    c
}

/// Small frames (64 KiB) and entries.
fn small_net_config(address: SocketAddr) -> NetConfig {
    let mut c = net_config(address);
    c.frame_bytes_max = SMALL_FRAME_BYTES;
    c.entry_bytes_max = 16 << 10;
    c
}

/// Small entries and appends, and frequent snapshots.
fn small_replica_config(id: u64) -> ReplicaConfig {
    let mut c = ReplicaConfig::new(id);
    c.entry_bytes_max = 16 << 10;
    c.command_bytes_max = 12 << 10;
    c.message_bytes_max = 16 << 10;
    c.snapshot_entries_min = 50;
    c.compaction_entries_retained = 5;
    c
}

/// A fleet of key-value replicas that allows no remote client.
fn start(small: bool) -> TcpFleet<KvStore> {
    if small {
        TcpFleet::start_tuned(
            Vec::new(),
            Vec::new(),
            KvStore::new,
            small_net_config,
            small_replica_config,
        )
    } else {
        TcpFleet::start_tuned(
            Vec::new(),
            Vec::new(),
            KvStore::new,
            net_config,
            ReplicaConfig::new,
        )
    }
}

impl TcpFleet<KvStore> {
    /// An in-process client of the running nodes.
    fn client(&self) -> Client {
        Client::connect(
            self.nodes().map(Node::handle).collect(),
            ClientConfig::default(),
        )
        .expect("client session")
    }
}

/// A member other than `leader`.
fn a_follower(leader: u64) -> u64 {
    MEMBERS
        .iter()
        .map(|&(id, _)| id)
        .find(|&id| id != leader)
        .expect("a follower")
}

fn put(client: &Client, key: &str, value: &str) {
    client
        .propose(KvStore::put(key, value))
        .expect("put committed");
}

fn get(client: &Client, key: &str) -> Option<Vec<u8>> {
    KvStore::decode_response(&client.read(KvStore::get(key)).expect("read served"))
        .expect("kv response")
}

#[test]
fn three_replicas_over_tcp_elect_a_leader_commit_and_a_restarted_replica_catches_up() {
    let mut fleet = start(false);
    let leader = fleet.wait_leader();
    let client = fleet.client();
    for i in 0..30 {
        put(&client, &format!("k{i}"), &format!("v{i}"));
    }
    let commit = fleet.status(leader).commit;
    fleet.wait_for("every replica applies", |f| {
        MEMBERS
            .iter()
            .all(|&(id, _)| f.status(id).applied >= commit)
    });
    for &(id, _) in &MEMBERS {
        let stats = fleet.processes[&id].transport.stats();
        assert!(stats.frames_delivered > 0, "replica {id}: {stats:#?}");
        assert!(stats.connections_accepted >= 1 && stats.connections_dialed >= 1);
        assert_eq!(stats.handshakes_refused_unpinned, 0);
        assert_eq!(stats.handshakes_failed, 0);
        assert_eq!(stats.frames_dropped_forged_from, 0);
        assert_eq!(stats.frames_dropped_header_mismatch, 0);
        assert_eq!(stats.frames_dropped_undecodable, 0);
        assert!(
            stats.writes <= stats.frames_sent + stats.frames_sent / 2 + 64,
            "writes are coalesced: {stats:#?}"
        );
    }

    // A follower's whole process goes away; the others keep committing.
    let victim = a_follower(leader);
    fleet.kill(victim);
    let client = fleet.client();
    for i in 30..60 {
        put(&client, &format!("k{i}"), &format!("v{i}"));
    }
    fleet.restart(victim);
    let leader = fleet.wait_leader();
    let commit = fleet.status(leader).commit;
    fleet.wait_for("the restarted replica catches up", |f| {
        f.status(victim).applied >= commit
    });
    let stats = fleet.processes[&victim].transport.stats();
    assert!(stats.frames_delivered > 0, "{stats:#?}");
    let client = fleet.client();
    assert_eq!(get(&client, "k59").as_deref(), Some(&b"v59"[..]));
    let survivors: Vec<u64> = MEMBERS
        .iter()
        .map(|&(id, _)| id)
        .filter(|&id| id != victim)
        .collect();
    assert!(
        survivors
            .iter()
            .any(|&id| fleet.processes[&id].transport.stats().connections_dialed >= 2),
        "a survivor reconnected to the restarted process"
    );
    for &(id, _) in &MEMBERS {
        fleet.kill(id);
    }
}

#[test]
fn review_net_3_a_far_behind_replica_catches_up_through_a_chunked_snapshot_above_the_frame_limit() {
    let mut fleet = start(true);
    let leader = fleet.wait_leader();
    let victim = a_follower(leader);
    fleet.kill(victim);
    // More than 1 MiB of state while the victim is away; the leader compacts
    // its log past it, so only a snapshot (about 20 frame limits) can bring it back.
    let client = fleet.client();
    let value = "v".repeat(8 << 10);
    for i in 0..160 {
        put(&client, &format!("k{i}"), &value);
    }
    let leader = fleet.wait_leader();
    fleet.restart(victim);
    let commit = fleet.status(leader).commit;
    fleet.wait_for("the far-behind replica catches up", |f| {
        f.status(victim).applied >= commit
    });
    let sender = fleet.processes[&leader].transport.stats();
    let receiver = fleet.processes[&victim].transport.stats();
    assert!(receiver.snapshots_received >= 1, "{receiver:#?}");
    assert!(
        sender.snapshots_sent >= 1 && sender.snapshot_chunks_sent > 16,
        "more than a megabyte in chunks of at most 64 KiB: {sender:#?}"
    );
    assert_eq!(receiver.snapshot_chunks_refused, 0, "{receiver:#?}");
    assert_eq!(receiver.frames_oversize, 0);
    let client = fleet.client();
    assert_eq!(get(&client, "k0").map(|v| v.len()), Some(8 << 10));
    for &(id, _) in &MEMBERS {
        fleet.kill(id);
    }
}
