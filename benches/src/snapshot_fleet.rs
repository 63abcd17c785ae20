//! `vaultfleet-snapshot-fleet-bench`: a streamed snapshot of a `BackupVault`
//! at vault scale, taken and sent for real (steps 3-5 of
//! docs/proposals/streamed-snapshots.md): a leader takes its snapshot off its
//! thread into its snapshot files, and a follower that fell behind its
//! compaction receives the file chunk by chunk and restores from it, while a
//! probe reads through the leader every few milliseconds.
//!
//! ```text
//! cargo run --release -p vaultfleet-bench --bin vaultfleet-snapshot-fleet-bench -- --users 1m
//! ```
//!
//! Shapes: `three` (3 voters; voter 3 is stopped before the state is filled
//! and restarted once the others compacted past it: the election question is
//! real) and `learner` (voter 1 and learner 2: two copies of the state, for a
//! machine that cannot hold three; no election is possible by construction,
//! so only the probe's gaps say anything). Replicas run in this process on the
//! threaded runtime over the in-process network, each on its own sled
//! directory with snapshot files, sealed by a soft HSM unless `--plain`.
//!
//! The state is filled through the log: one bench-only command makes every
//! replica insert the same `--users` users directly (`insert_user_for_bench`:
//! records of real sizes, no OPAQUE work). Prints one `key=value` line: the
//! time from the fill's apply on every replica to the leader's compaction (its
//! build, written off its thread), from the follower's restart to its catching
//! up (reopening its store, the leader's send of the file chunk by chunk, the
//! receiver's checks, and its restore: into a blank vault on a thread of its
//! own), split where the file is complete in the follower's files
//! (`transfer_s` before, `restore_s` after), the file's
//! size, the process's peak RSS over the filled state (every replica of the
//! run is in this one process), terms and leaderships seen, and the probe's
//! slowest read through the leader. Not run in CI.
// A benchmark measures wall-clock time, uses threads and temporary directories.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;

use vaultfleet_bench::sizing::{count, load, status_mib, user_id};

use vaultfleet::replica::MembershipChange;
use vaultfleet::runtime::{Client, ClientConfig, Node, NodeConfig, NodeHandle};
use vaultfleet::state_machine::{CaptureError, RestoreError, SnapshotView};
use vaultfleet::storage::SnapshotFilesHost as _;
use vaultfleet::transport::ChannelNetwork;
use vaultfleet::{
    FleetConfig, LogStore, MemberSpec, Replica, ReplicaConfig, Sealed, SealedConfig, SledLog,
    SoftHsm, StateMachine,
};
use vaultfleet_vault::BackupVault;

/// The bench-only command that fills the vault: this prefix, then the user
/// count as 8 big-endian bytes.
const FILL: &[u8] = b"vaultfleet-bench/fill-users/v1:";

/// A streamed snapshot of a `BackupVault` sent to a follower that fell
/// behind, measured. Sizes take suffixes: 1m, 100k.
#[derive(Debug, Parser)]
#[command(name = "vaultfleet-snapshot-fleet-bench", version)]
struct Options {
    /// Users in the vault.
    #[arg(long, value_name = "N", default_value = "1m", value_parser = count)]
    users: u64,
    /// `three` voters, or `learner` (a voter and a learner: two copies).
    #[arg(long, default_value = "three", value_parser = ["three", "learner"])]
    shape: String,
    /// Plain sled and plain snapshot files instead of sealed ones.
    #[arg(long)]
    plain: bool,
    /// No snapshot files: today's inline snapshots (taken on the replica's
    /// thread, sent whole inside the raft message), for comparison.
    #[arg(long)]
    inline: bool,
    /// Where the replicas' directories go (default: a temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Milliseconds between the probe's reads through the leader.
    #[arg(long, default_value_t = 10)]
    probe_ms: u64,
}

/// A `BackupVault` that also takes the bench's fill command.
struct FillVault(BackupVault);

impl StateMachine for FillVault {
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8> {
        if let Some(n) = command.strip_prefix(FILL) {
            let users = n.try_into().map(u64::from_be_bytes).unwrap_or(0);
            for i in 0..users {
                self.0.insert_user_for_bench(user_id(i).as_bytes(), i);
            }
            return b"filled".to_vec();
        }
        self.0.apply(index, command)
    }
    fn query(&self, query: &[u8]) -> Vec<u8> {
        self.0.query(query)
    }
    fn snapshot(&self) -> Result<Vec<u8>, CaptureError> {
        self.0.snapshot()
    }
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        self.0.restore(snapshot)
    }
    fn snapshot_to(&self, out: &mut dyn Write) -> Result<(), CaptureError> {
        self.0.snapshot_to(out)
    }
    fn snapshot_view(&self) -> Result<Box<dyn SnapshotView>, CaptureError> {
        self.0.snapshot_view()
    }
    fn restore_from(&mut self, input: &mut dyn Read) -> Result<(), RestoreError> {
        self.0.restore_from(input)
    }
    fn blank(&self) -> Option<Self> {
        self.0.blank().map(FillVault)
    }
}

struct Fleet {
    net: ChannelNetwork,
    fleet: FleetConfig,
    dir: PathBuf,
    plain: bool,
    inline: bool,
    nodes: Vec<Option<Node>>,
    /// Each replica's HSM, kept across its restart.
    hsms: Vec<Arc<SoftHsm>>,
}

impl Fleet {
    fn replica_dir(&self, id: u64) -> PathBuf {
        self.dir.join(format!("replica-{id}"))
    }

    fn start(&mut self, id: u64, initial: bool) -> Result<(), String> {
        let mut rc = ReplicaConfig::new(id);
        // A snapshot right after the fill, keeping one entry behind it: a
        // replica that missed the fill needs the snapshot.
        rc.snapshot_entries_min = 1;
        rc.compaction_entries_retained = 1;
        let cfg = NodeConfig::new(rc);
        let machine = FillVault(BackupVault::new());
        let transport = self.net.transport(id);
        let inner = SledLog::open(self.replica_dir(id)).map_err(|e| e.to_string())?;
        let node = if self.plain {
            let mut log = inner;
            if !self.inline {
                log.open_snapshot_files(id, None)
                    .map_err(|e| e.to_string())?;
            }
            spawn(&self.fleet, cfg, log, machine, transport, initial)?
        } else {
            let hsm = Arc::clone(&self.hsms[id as usize]);
            let mut log =
                Sealed::open(inner, hsm, SealedConfig::new(0, id)).map_err(|e| e.to_string())?;
            if !self.inline {
                log.open_snapshot_files().map_err(|e| e.to_string())?;
            }
            spawn(&self.fleet, cfg, log, machine, transport, initial)?
        };
        self.net.register(id, Arc::new(node.handle()));
        let slot = usize::try_from(id).map_err(|_| "id")?;
        self.nodes[slot] = Some(node);
        Ok(())
    }

    fn stop(&mut self, id: u64) {
        self.net.unregister(id);
        if let Some(node) = self.nodes[id as usize].take() {
            let _ = node.shutdown();
        }
    }

    fn handles(&self) -> Vec<NodeHandle> {
        self.nodes.iter().flatten().map(Node::handle).collect()
    }

    fn handle(&self, id: u64) -> Option<NodeHandle> {
        self.nodes[id as usize].as_ref().map(Node::handle)
    }
}

fn spawn<L: LogStore>(
    fleet: &FleetConfig,
    cfg: NodeConfig,
    mut log: L,
    machine: FillVault,
    transport: Arc<vaultfleet::transport::ChannelTransport>,
    initial: bool,
) -> Result<Node, String> {
    if initial {
        Replica::bootstrap(&mut log, &machine, fleet).map_err(|e| e.to_string())?;
    }
    Node::spawn(cfg, log, machine, transport).map_err(|e| e.to_string())
}

fn wait(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Result<Instant, String> {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > limit {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(Instant::now())
}

fn run(o: &Options) -> Result<String, String> {
    let temp;
    let dir = match &o.dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::tempdir().map_err(|e| e.to_string())?;
            temp.path().to_path_buf()
        }
    };
    let three = o.shape == "three";
    let members = if three {
        vec![
            MemberSpec::voter(1, "dc-a"),
            MemberSpec::voter(2, "dc-b"),
            MemberSpec::voter(3, "dc-c"),
        ]
    } else {
        vec![MemberSpec::voter(1, "dc-a")]
    };
    let behind = if three { 3 } else { 2 };
    let mut f = Fleet {
        net: ChannelNetwork::new(),
        fleet: FleetConfig::new(members),
        dir,
        plain: o.plain,
        inline: o.inline,
        nodes: (0..=3).map(|_| None).collect(),
        hsms: (0..=3).map(|id| Arc::new(SoftHsm::from_seed(id))).collect(),
    };
    let initial: Vec<u64> = if three { vec![1, 2, 3] } else { vec![1] };
    for &id in &initial {
        f.start(id, true)?;
    }
    let ccfg = ClientConfig {
        timeout: Duration::from_secs(600),
        ..ClientConfig::default()
    };
    let client = Client::connect(f.handles(), ccfg).map_err(|e| e.to_string())?;
    // The probe's session is registered now: a registration later would be
    // an entry after the fill, hence another full snapshot.
    let probe_client = Client::connect(f.handles(), ccfg).map_err(|e| e.to_string())?;
    if !three {
        // The learner joins empty, then stops before the fill.
        f.start(2, false)?;
        client
            .change_membership(MembershipChange::AddLearner {
                id: 2,
                datacenter: "dc-b".into(),
            })
            .map_err(|e| e.to_string())?;
    }
    let leader_of = |f: &Fleet| {
        f.handles()
            .iter()
            .map(|h| h.status())
            .find(|s| s.leader == Some(s.id))
    };
    wait("a leader", Duration::from_secs(30), || {
        leader_of(&f).is_some()
    })?;
    let leader = leader_of(&f).ok_or("no leader")?.id;
    if leader == behind {
        return Err("the replica to leave behind leads; run again".into());
    }
    f.stop(behind);
    // A few entries the stopped replica misses, each followed by a (small)
    // snapshot and compaction: it can only come back through a snapshot.
    for _ in 0..3 {
        client
            .propose(b"vaultfleet-bench/no-op".to_vec())
            .map_err(|e| e.to_string())?;
    }

    // Fill, timed to its apply on the leader.
    let mut fill = FILL.to_vec();
    fill.extend_from_slice(&o.users.to_be_bytes());
    let filled_at = {
        let start = Instant::now();
        client.propose(fill).map_err(|e| e.to_string())?;
        let t = Instant::now();
        eprintln!("fill applied in {:.2} s", (t - start).as_secs_f64());
        t
    };
    // Every running replica holds the filled state before the baseline.
    let fill_index = {
        let handles = f.handles();
        let index = handles.iter().map(|h| h.status().commit).max().unwrap_or(0);
        wait("the fill everywhere", Duration::from_secs(3600), || {
            handles.iter().all(|h| h.status().applied >= index)
        })?;
        index
    };
    // The first compaction past the fill (the leader's build done), watched
    // from now on: the settling below may outlast a small build.
    let compacted = {
        let handles = f.handles();
        std::thread::spawn(move || {
            wait("the first compaction", Duration::from_secs(3600), || {
                handles.iter().any(|h| h.status().first_index >= fill_index)
            })
        })
    };
    // The fill held the replica threads for as long as it took (a bench-only
    // command of `--users` inserts): a leader that heard no heartbeat reply
    // meanwhile steps down and an election follows. Let that settle before
    // the baseline, so the terms below count only what the snapshot caused.
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(500));
        client
            .propose(b"vaultfleet-bench/no-op".to_vec())
            .map_err(|e| e.to_string())?;
    }
    let leader = leader_of(&f).ok_or("no leader after the fill")?.id;
    let rss_state = status_mib("VmRSS:");
    let _ = std::fs::write("/proc/self/clear_refs", "5");

    // The probe: reads through the leader (read index: a heartbeat round).
    let stop = Arc::new(AtomicBool::new(false));
    let probe = {
        let stop = Arc::clone(&stop);
        let client = probe_client;
        let every = Duration::from_millis(o.probe_ms);
        let query = user_id(0).into_bytes();
        std::thread::spawn(move || {
            let mut slowest = Duration::ZERO;
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                if client.read(query.clone()).is_ok() {
                    reads += 1;
                }
                slowest = slowest.max(start.elapsed());
                std::thread::sleep(every);
            }
            (reads, slowest)
        })
    };
    let term_before = f.handle(leader).ok_or("leader gone")?.status().term;
    let leaders = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let watch = {
        let handles = f.handles();
        let stop = Arc::clone(&stop);
        let leaders = Arc::clone(&leaders);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for h in &handles {
                    let s = h.status();
                    if let Some(l) = s.leader {
                        if let Ok(mut seen) = leaders.lock() {
                            seen.insert((s.term, l));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    // The build: done when the first replica compacted behind the fill
    // (each replica builds its own); then the leader too, so the follower
    // can only come back through the snapshot.
    let lh = f.handle(leader).ok_or("leader gone")?;
    let built_at = compacted
        .join()
        .map_err(|_| "the compaction watcher panicked")??;
    wait("the leader's snapshot", Duration::from_secs(3600), || {
        lh.status().first_index >= fill_index
    })?;
    // The follower comes back and must be sent the snapshot.
    let restart_at = Instant::now();
    f.start(behind, false)?;
    let behind_dir = f.replica_dir(behind);
    let bh = f.handle(behind).ok_or("follower gone")?;
    // The file is complete in the follower's files (received, its digest
    // checked, durable, renamed) from the moment its `.snap` name appears:
    // transfer before it, the restore (and the entries that waited) after.
    let snap_dir = behind_dir.join(vaultfleet::storage::SNAPSHOT_DIR);
    let mut received_at = None;
    let caught_up_at = wait("the follower's catch-up", Duration::from_secs(3600), || {
        if received_at.is_none() && holds_snapshot_from(&snap_dir, fill_index) {
            received_at = Some(Instant::now());
        }
        bh.status().applied >= fill_index
    })?;
    let received_at = received_at.unwrap_or(caught_up_at);
    stop.store(true, Ordering::Relaxed);
    if bh.status().first_index < fill_index {
        return Err("the follower caught up from entries, not from the snapshot".into());
    }
    let (reads, slowest) = probe.join().map_err(|_| "probe panicked")?;
    let _ = watch.join();
    let peak = status_mib("VmHWM:");
    let term_after = lh.status().term;
    let leaderships = leaders.lock().map(|s| s.len()).unwrap_or(0);
    let file_bytes: u64 = std::fs::read_dir(behind_dir.join(vaultfleet::storage::SNAPSHOT_DIR))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0);
    for id in 1..=3 {
        f.stop(id);
    }
    Ok(format!(
        "users={} shape={} sealed={} streamed={} build_s={:.2} catch_up_s={:.2} transfer_s={:.2} restore_s={:.2} file_mib={:.0} state_rss_mib={:.0} peak_over_state_mib={:.0} term_before={} \
         term_after={} leaderships={} probe_reads={} probe_slowest_ms={:.1}",
        o.users,
        o.shape,
        !o.plain,
        !o.inline,
        (built_at - filled_at).as_secs_f64(),
        (caught_up_at - restart_at).as_secs_f64(),
        (received_at - restart_at).as_secs_f64(),
        (caught_up_at - received_at).as_secs_f64(),
        file_bytes as f64 / (1 << 20) as f64,
        rss_state,
        peak - rss_state,
        term_before,
        term_after,
        leaderships,
        reads,
        slowest.as_secs_f64() * 1e3,
    ))
}

fn main() -> ExitCode {
    let o = Options::parse();
    eprintln!("load before: {}", load());
    match run(&o) {
        Ok(line) => {
            eprintln!("load after: {}", load());
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vaultfleet-snapshot-fleet-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// True once `dir` holds a finished snapshot file (`<index>-<term>-<id>.snap`)
/// at or past `index`.
fn holds_snapshot_from(dir: &std::path::Path, index: u64) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.filter_map(|e| e.ok()).any(|e| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        name.strip_suffix(".snap")
            .and_then(|stem| stem.split('-').next())
            .and_then(|i| i.parse::<u64>().ok())
            .is_some_and(|i| i >= index)
    })
}
