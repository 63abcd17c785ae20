//! Streamed snapshots over TCP between real engine nodes: three replicas on
//! sealed sled stores with their snapshot files open; a follower stopped
//! while the leader compacts past it comes back through a snapshot streamed
//! chunk by chunk into its files, not through an inline snapshot message.
// Tests of the threaded runtime wait in wall-clock time, bounded.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use crate::common;

use std::net::SocketAddr;

use common::{TcpFleet, MEMBERS};
use vaultfleet::replica::ReplicaConfig;
use vaultfleet::runtime::{Client, ClientConfig, Node};
use vaultfleet::KvStore;
use vaultfleet_net::NetConfig;

fn net_config(address: SocketAddr) -> NetConfig {
    let mut c = common::net_config(address);
    // Small data frames: a chunk of the file goes in several of them,
    // between the raft frames.
    c.snapshot_chunk_bytes = 32 << 10;
    c
}

/// Small entries and appends, and frequent snapshots.
fn replica_config(id: u64) -> ReplicaConfig {
    let mut c = ReplicaConfig::new(id);
    c.entry_bytes_max = 16 << 10;
    c.command_bytes_max = 12 << 10;
    c.message_bytes_max = 16 << 10;
    c.snapshot_entries_min = 50;
    c.compaction_entries_retained = 5;
    c
}

fn client(fleet: &TcpFleet<KvStore>) -> Client {
    Client::connect(
        fleet.nodes().map(Node::handle).collect(),
        ClientConfig::default(),
    )
    .expect("client session")
}

fn put(client: &Client, key: &str, value: &str) {
    client
        .propose(KvStore::put(key, value))
        .expect("put committed");
}

/// The finished snapshot files in replica `id`'s store.
fn snap_files(fleet: &TcpFleet<KvStore>, id: u64) -> Vec<String> {
    let dir = fleet.dir_of(id).join(vaultfleet::storage::SNAPSHOT_DIR);
    match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".snap"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn a_far_behind_follower_on_sealed_sled_catches_up_through_a_streamed_snapshot() {
    let mut fleet = TcpFleet::start_stored(
        Vec::new(),
        Vec::new(),
        KvStore::new,
        net_config,
        replica_config,
        true,
    );
    let leader = fleet.wait_leader();
    let victim = MEMBERS
        .iter()
        .map(|&(id, _)| id)
        .find(|&id| id != leader)
        .expect("a follower");
    fleet.kill(victim);
    let before = snap_files(&fleet, victim);
    // About 1.3 MB of state while the victim is away; the leader compacts
    // its log past it, so only a snapshot can bring it back.
    let c = client(&fleet);
    let value = "v".repeat(8 << 10);
    for i in 0..160 {
        put(&c, &format!("k{i}"), &value);
    }
    drop(c);
    let leader = fleet.wait_leader();
    fleet.restart(victim);
    let commit = fleet.status(leader).commit;
    fleet.wait_for("the far-behind replica catches up", |f| {
        f.status(victim).applied >= commit
    });
    let sender = fleet.stats(leader);
    let receiver = fleet.stats(victim);
    assert!(receiver.streams_received >= 1, "{receiver:#?}");
    assert!(sender.streams_sent >= 1, "{sender:#?}");
    assert!(
        sender.stream_bytes_sent >= 1 << 20,
        "the state went through the stream: {sender:#?}"
    );
    assert_eq!(
        receiver.snapshots_received, 0,
        "no inline snapshot message: {receiver:#?}"
    );
    assert_eq!(receiver.streams_refused, 0, "{receiver:#?}");
    let after = snap_files(&fleet, victim);
    assert!(
        after.iter().any(|f| !before.contains(f)),
        "the victim's snapshot files hold the received snapshot: before {before:?}, after {after:?}"
    );
    // The victim serves the state it received: it applies a write after it.
    let c = client(&fleet);
    put(&c, "after", "x");
    let commit = fleet.status(fleet.wait_leader()).commit;
    fleet.wait_for("the victim applies a later write", |f| {
        f.status(victim).applied >= commit
    });
    drop(c);
    fleet.shutdown();
}
