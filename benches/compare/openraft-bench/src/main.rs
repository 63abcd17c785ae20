//! openraft's `benchmarks/minimal` shape on a pinned openraft release, for
//! `benches/compare/openraft.sh`: every member in one process on one tokio runtime, an
//! in-memory log store and state machine, an in-process "network" that calls the
//! target `Raft` directly, and `-c` client tasks on a second runtime calling
//! `client_write` on the leader with an empty command. The knobs follow
//! `vaultfleet-bench` (`-c -n -m -b`); the last line is `ops/s=...` like ours.
//!
//! `-b` is the number of writes each client keeps in flight (as `vaultfleet-bench -b`).
//! openraft 0.10's benchmark sends `-b` commands in one `client_write_many` call; 0.9
//! has no such call, so here a client keeps `-b` `client_write`s outstanding instead.

// A benchmark measures wall-clock time.
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use futures::stream::{FuturesUnordered, StreamExt};
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::{
    LogFlushed, LogState, RaftLogReader, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine,
    Snapshot,
};
use openraft::{
    Config, Entry, EntryPayload, LogId, OptionalSend, Raft, SnapshotMeta, StorageError,
    StoredMembership, Vote,
};

/// The command: empty, as in openraft's benchmark.
#[derive(Debug, Clone)]
pub struct Command;

/// The response: empty.
#[derive(Debug, Clone)]
pub struct Reply;

openraft::declare_raft_types!(
    /// Types of the benchmark cluster.
    pub Types:
        D = Command,
        R = Reply,
        Node = (),
);

type NodeId = u64;
type BenchRaft = Raft<Types>;

/// The log and vote of one member, in memory.
#[derive(Default)]
struct LogInner {
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    purged: Option<LogId<NodeId>>,
    entries: BTreeMap<u64, Entry<Types>>,
}

/// A shared handle on one member's in-memory log.
#[derive(Clone, Default)]
struct MemLog(Arc<Mutex<LogInner>>);

impl MemLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, LogInner> {
        // A poisoned lock means another task panicked mid-update: the run is void.
        self.0.lock().expect("log lock poisoned")
    }
}

impl RaftLogReader<Types> for MemLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<Types>>, StorageError<NodeId>> {
        Ok(self
            .lock()
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<Types> for MemLog {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<Types>, StorageError<NodeId>> {
        let inner = self.lock();
        let last = inner
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(inner.purged);
        Ok(LogState {
            last_purged_log_id: inner.purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.lock().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<Types>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<Types>> + OptionalSend,
    {
        {
            let mut inner = self.lock();
            for e in entries {
                inner.entries.insert(e.log_id.index, e);
            }
        }
        // In memory: "flushed" as soon as it is in the map.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.lock().entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        inner.purged = Some(log_id);
        let kept = inner.entries.split_off(&(log_id.index + 1));
        inner.entries = kept;
        Ok(())
    }
}

/// The state machine of one member. Commands are empty, so its whole state is the last
/// applied log id and membership, which a snapshot's metadata already carries: the
/// snapshot data is empty.
#[derive(Default)]
struct SmInner {
    applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, ()>,
    snapshot: Option<SnapshotMeta<NodeId, ()>>,
    snapshots_built: u64,
}

/// A shared handle on one member's state machine.
#[derive(Clone, Default)]
struct MemSm(Arc<Mutex<SmInner>>);

impl MemSm {
    fn lock(&self) -> std::sync::MutexGuard<'_, SmInner> {
        self.0.lock().expect("state machine lock poisoned")
    }
}

impl RaftSnapshotBuilder<Types> for MemSm {
    async fn build_snapshot(&mut self) -> Result<Snapshot<Types>, StorageError<NodeId>> {
        let mut inner = self.lock();
        inner.snapshots_built += 1;
        let snapshot_id = match inner.applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, inner.snapshots_built),
            None => format!("--{}", inner.snapshots_built),
        };
        let meta = SnapshotMeta {
            last_log_id: inner.applied,
            last_membership: inner.membership.clone(),
            snapshot_id,
        };
        inner.snapshot = Some(meta.clone());
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(Vec::new())),
        })
    }
}

impl RaftStateMachine<Types> for MemSm {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, ()>), StorageError<NodeId>> {
        let inner = self.lock();
        Ok((inner.applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<Types>> + OptionalSend,
    {
        let mut inner = self.lock();
        let entries = entries.into_iter();
        let mut replies = Vec::with_capacity(entries.size_hint().0);
        for e in entries {
            inner.applied = Some(e.log_id);
            if let EntryPayload::Membership(m) = e.payload {
                inner.membership = StoredMembership::new(Some(e.log_id), m);
            }
            replies.push(Reply);
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, ()>,
        _snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.lock();
        inner.applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.snapshot = Some(meta.clone());
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<Types>>, StorageError<NodeId>> {
        Ok(self.lock().snapshot.clone().map(|meta| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(Vec::new())),
        }))
    }
}

/// The in-process network: each member reaches the others by calling their `Raft`.
#[derive(Clone, Default)]
struct Router(Arc<Mutex<BTreeMap<NodeId, BenchRaft>>>);

impl Router {
    fn get(&self, id: NodeId) -> Option<BenchRaft> {
        self.0
            .lock()
            .expect("router lock poisoned")
            .get(&id)
            .cloned()
    }
}

/// A connection to one member.
struct Peer {
    target: NodeId,
    raft: Option<BenchRaft>,
}

impl Peer {
    // The error type is the one openraft's `RaftNetwork` methods return.
    #[allow(clippy::result_large_err)]
    fn raft<E: std::error::Error>(&self) -> Result<&BenchRaft, RPCError<NodeId, (), E>> {
        self.raft.as_ref().ok_or_else(|| {
            let e = std::io::Error::new(std::io::ErrorKind::NotFound, "no such member");
            RPCError::Unreachable(openraft::error::Unreachable::new(&e))
        })
    }
}

impl RaftNetworkFactory<Types> for Router {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, _node: &()) -> Self::Network {
        Peer {
            target,
            raft: self.get(target),
        }
    }
}

impl RaftNetwork<Types> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<Types>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, (), RaftError<NodeId>>> {
        let target = self.target;
        self.raft()?
            .append_entries(rpc)
            .await
            .map_err(|e| RemoteError::new(target, e).into())
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<Types>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, (), RaftError<NodeId, InstallSnapshotError>>,
    > {
        let target = self.target;
        self.raft()?
            .install_snapshot(rpc)
            .await
            .map_err(|e| RemoteError::new(target, e).into())
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, (), RaftError<NodeId>>> {
        let target = self.target;
        self.raft()?
            .vote(rpc)
            .await
            .map_err(|e| RemoteError::new(target, e).into())
    }
}

/// openraft's benchmarks/minimal on openraft 0.9, with vaultfleet-bench's knobs.
#[derive(Parser, Debug)]
struct Args {
    /// Concurrent client tasks.
    #[arg(short = 'c', default_value = "256", value_parser = count)]
    clients: u64,
    /// Total operations (k and m suffixes accepted).
    #[arg(short = 'n', default_value = "100k", value_parser = count)]
    operations: u64,
    /// Members: 1, 3 or 5.
    #[arg(short = 'm', default_value = "3", value_parser = count)]
    members: u64,
    /// Writes each client keeps in flight.
    #[arg(short = 'b', default_value = "1", value_parser = count)]
    in_flight: u64,
    /// Worker threads of the runtime all members run on.
    #[arg(long, default_value = "2", value_parser = count)]
    server_workers: u64,
    /// Worker threads of the runtime the clients run on.
    #[arg(long, default_value = "1", value_parser = count)]
    client_workers: u64,
}

/// A positive count, with an optional `k` (thousand) or `m` (million) suffix.
fn count(s: &str) -> Result<u64, String> {
    let s = s.replace('_', "");
    let (digits, unit) = match s.as_bytes().last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 1_000),
        Some(b'm' | b'M') => (&s[..s.len() - 1], 1_000_000),
        _ => (s.as_str(), 1),
    };
    let n: u64 = digits.parse().map_err(|e| format!("{s:?}: {e}"))?;
    match n.checked_mul(unit) {
        Some(0) => Err("must be at least 1".into()),
        Some(n) => Ok(n),
        None => Err(format!("{s:?} is too large")),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!((1..=7).contains(&args.members), "-m must be 1..=7");
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::try_from(args.server_workers)?)
        .enable_all()
        .thread_name("raft")
        .build()?;
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::try_from(args.client_workers)?)
        .enable_all()
        .thread_name("client")
        .build()?;

    let router = Router::default();
    let leader = server.block_on(start_cluster(&router, args.members))?;

    let per_client = args.operations / args.clients;
    anyhow::ensure!(per_client >= 1, "-n must be at least -c");
    let total = per_client * args.clients;
    let in_flight = usize::try_from(args.in_flight.min(per_client))?;
    eprintln!(
        "openraft 0.9.25: members={} clients={} ops={} in_flight={} server_workers={} client_workers={}",
        args.members, args.clients, total, in_flight, args.server_workers, args.client_workers
    );

    let elapsed = client.block_on(async move {
        let start = Instant::now();
        let tasks: Vec<_> = (0..args.clients)
            .map(|_| tokio::spawn(run_client(leader.clone(), per_client, in_flight)))
            .collect();
        for t in tasks {
            t.await.context("client task")??;
        }
        let elapsed = start.elapsed();
        // Every write was acknowledged as applied on the leader; check the count too.
        let applied = leader
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |l| l.index);
        anyhow::ensure!(
            applied >= total,
            "leader applied {applied} < {total} writes"
        );
        Ok::<_, anyhow::Error>(elapsed)
    })?;

    let secs = elapsed.as_secs_f64();
    println!(
        "time={secs:.3}s ns/op={:.0} ops/s={:.0}",
        secs * 1e9 / total as f64,
        total as f64 / secs
    );
    Ok(())
}

/// Starts `members` members, initializes member 0 with all of them as voters and waits
/// until every member has applied the initial membership entry.
async fn start_cluster(router: &Router, members: u64) -> anyhow::Result<BenchRaft> {
    let config = Arc::new(
        Config {
            election_timeout_min: 200,
            election_timeout_max: 2000,
            purge_batch_size: 1024,
            ..Default::default()
        }
        .validate()?,
    );
    let ids: BTreeSet<NodeId> = (0..members).collect();
    for &id in &ids {
        let raft = Raft::new(
            id,
            config.clone(),
            router.clone(),
            MemLog::default(),
            MemSm::default(),
        )
        .await?;
        router
            .0
            .lock()
            .expect("router lock poisoned")
            .insert(id, raft);
    }
    let leader = router.get(0).context("member 0")?;
    leader.initialize(ids.clone()).await?;
    for &id in &ids {
        let raft = router.get(id).context("member")?;
        raft.wait(Some(Duration::from_secs(10)))
            .applied_index(Some(1), "initial membership")
            .await?;
    }
    Ok(leader)
}

/// One client: `n` writes, `in_flight` of them outstanding at a time.
async fn run_client(leader: BenchRaft, n: u64, in_flight: usize) -> anyhow::Result<()> {
    let mut pending = FuturesUnordered::new();
    let mut sent = 0;
    while sent < n && pending.len() < in_flight {
        pending.push(leader.client_write(Command));
        sent += 1;
    }
    while let Some(done) = pending.next().await {
        done?;
        if sent < n {
            pending.push(leader.client_write(Command));
            sent += 1;
        }
    }
    Ok(())
}
