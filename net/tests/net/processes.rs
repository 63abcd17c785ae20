//! Each replica its own OS process (`vaultfleet-net-replica`: SledLog, KvStore,
//! NetTransport, remote client sessions served), on loopback ports picked by
//! the test; the test process is a client with a remote session. The leader's
//! process is killed with SIGKILL mid-workload, writes go on, it restarts on
//! the same directory and catches up; at the end every replica, made leader
//! in turn, answers every acknowledged write from its own state, and the
//! processes exit 0 on SIGTERM and on stdin close.
// Tests of processes and sockets wait in wall-clock time, every wait bounded.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use crate::process_fleet;

use process_fleet::{wait_until, ProcessFleet, Workload};
use vaultfleet::runtime::NodeApi;

fn kill_the_leader_process_and_restart_it(members: &[(u64, &str)]) {
    let mut fleet = ProcessFleet::start(&format!("processes-{}", members.len()), members, None);
    let session = fleet.session();
    let mut workload = Workload::default();
    workload.put(&session, "before", 40);
    assert!(
        workload.unacknowledged.is_empty(),
        "a healthy fleet acknowledges every write: {workload:?}"
    );

    let leader = fleet.wait_leader();
    fleet.kill9(leader);
    println!("killed the leader's process, replica {leader}");
    workload.put(&session, "leaderless", 40);
    let survivors: Vec<u64> = fleet.ids().into_iter().filter(|&id| id != leader).collect();
    let new_leader = fleet.wait_leader_among(&survivors);
    assert_ne!(new_leader, leader);
    assert!(
        workload.acknowledged_under("leaderless"),
        "writes go on without the killed leader: {workload:?}"
    );
    let connections_before = fleet.nodes[&leader].connections();

    fleet.spawn(leader);
    workload.put(&session, "restarted", 40);
    wait_until("the restarted replica catches up", || {
        let commit = fleet.nodes[&new_leader].status().commit;
        let status = fleet.nodes[&leader].status();
        fleet.nodes[&leader].is_connected() && status.applied >= commit && commit > 0
    });
    assert!(
        fleet.nodes[&leader].connections() > connections_before,
        "the client reconnected to the restarted process"
    );
    fleet.check_no_acknowledged_write_lost(&workload);

    // Clean exits: SIGTERM for one, stdin closed for the others.
    let ids = fleet.ids();
    let status = fleet.terminate(ids[0]);
    assert!(status.success(), "SIGTERM: {status:?}");
    for &id in &ids[1..] {
        let status = fleet.close_stdin(id);
        assert!(status.success(), "stdin closed: replica {id} {status:?}");
    }
}

#[test]
fn three_replica_processes_survive_a_killed_leader_and_lose_no_acknowledged_write() {
    kill_the_leader_process_and_restart_it(&[(1, "dc-a"), (2, "dc-b"), (3, "dc-c")]);
}

#[test]
fn five_replica_processes_survive_a_killed_leader_and_lose_no_acknowledged_write() {
    kill_the_leader_process_and_restart_it(&[
        (1, "dc-a"),
        (2, "dc-b"),
        (3, "dc-c"),
        (4, "dc-a"),
        (5, "dc-b"),
    ]);
}

/// Runs the replica binary with `key` (written with `mode`) and a peers file
/// pinning replica 1 to `pinned`; returns its exit status and stderr.
fn start_with(key: &str, mode: u32, pinned: &str) -> (std::process::ExitStatus, String) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temporary directory");
    let key_path = dir.path().join("key");
    std::fs::write(&key_path, key).expect("key file");
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    let peers = dir.path().join("peers");
    std::fs::write(
        &peers,
        format!("fleet refusals\nreplica 1 127.0.0.1:1 dc-a {pinned}\n"),
    )
    .expect("peers file");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vaultfleet-net-replica"))
        .args(["--id", "1", "--listen", "127.0.0.1:0"])
        .arg("--dir")
        .arg(dir.path().join("data"))
        .arg("--peers")
        .arg(&peers)
        .arg("--key")
        .arg(&key_path)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the replica binary");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_replica_process_refuses_a_key_others_can_read_or_one_its_peers_file_does_not_pin() {
    let secret = "11".repeat(32);
    let public: String =
        vaultfleet_net::StaticSecret::from_bytes(zeroize::Zeroizing::new([0x11; 32]))
            .expect("key")
            .public_key()
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
    let other = "22".repeat(32);

    let (status, stderr) = start_with(&secret, 0o644, &public);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("chmod 600"), "{stderr}");

    let (status, stderr) = start_with(&secret, 0o600, &other);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is listed with key"), "{stderr}");

    let (status, stderr) = start_with("not hex", 0o600, &public);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("64 hex digits"), "{stderr}");

    // The same files with the right key and mode start (and stop at once:
    // stdin is closed), exiting 0.
    let (status, stderr) = start_with(&secret, 0o600, &public);
    assert!(status.success(), "{stderr}");
}

#[test]
fn the_replica_process_opens_its_snapshot_files_with_streamed_snapshots_on_either_store() {
    use std::os::unix::fs::PermissionsExt;
    let secret = "11".repeat(32);
    let public: String =
        vaultfleet_net::StaticSecret::from_bytes(zeroize::Zeroizing::new([0x11; 32]))
            .expect("key")
            .public_key()
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
    for sealed in [false, true] {
        let dir = tempfile::tempdir().expect("temporary directory");
        let key_path = dir.path().join("key");
        std::fs::write(&key_path, &secret).expect("key file");
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let peers = dir.path().join("peers");
        std::fs::write(
            &peers,
            format!("fleet streamed\nreplica 1 127.0.0.1:1 dc-a {public}\n"),
        )
        .expect("peers file");
        let data = dir.path().join("data");
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_vaultfleet-net-replica"));
        command
            .args([
                "--id",
                "1",
                "--listen",
                "127.0.0.1:0",
                "--streamed-snapshots",
            ])
            .arg("--dir")
            .arg(&data)
            .arg("--peers")
            .arg(&peers)
            .arg("--key")
            .arg(&key_path)
            .stdin(std::process::Stdio::null());
        if sealed {
            command
                .args(["--store", "sealed-sled", "--hsm-file"])
                .arg(dir.path().join("hsm"));
        }
        // It starts, opens its files, and stops at once (stdin is closed).
        let out = command.output().expect("run the replica binary");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "sealed {sealed}: {stderr}");
        assert!(
            data.join(vaultfleet::storage::SNAPSHOT_DIR).is_dir(),
            "sealed {sealed}: the snapshot files were opened; {stderr}"
        );
    }
}
