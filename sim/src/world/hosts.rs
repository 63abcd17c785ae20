//! The hosts: each replica's disk, soft HSM and clock; starting a replica from
//! its store, crashing it, and pumping its output into the network and to the
//! clients.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use vaultfleet::replica::{RequestId, SnapshotBuildError};
use vaultfleet::snapshot::SnapshotDescriptor;
use vaultfleet::state_machine::{CaptureError, RestoreError};
use vaultfleet::storage::SnapshotFilesHost;
use vaultfleet::{
    Hsm, Replica, ReplicaConfig, ReplicaError, Sealed, SealedConfig, SoftHsm, StateMachine,
    StorageError,
};

use super::events::Event;
use super::{Phase, Simulation};
use crate::disk::{CrashOutcome, Disk};
use crate::options::SimOptions;
use crate::store::SimStore;
use crate::workload::Workload;

/// One applied command, as a replica's state machine saw it.
pub(in crate::world) struct Applied {
    pub(in crate::world) host: u64,
    pub(in crate::world) index: u64,
    pub(in crate::world) position: u32,
    pub(in crate::world) digest: u64,
}

/// Wraps the workload's machine to record every apply for the checkers.
pub(super) struct Recorder<M> {
    pub(super) inner: M,
    pub(super) host: u64,
    pub(super) last_index: u64,
    pub(super) position: u32,
    pub(super) log: Arc<Mutex<Vec<Applied>>>,
}

pub(in crate::world) fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl<M: StateMachine> StateMachine for Recorder<M> {
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8> {
        if index == self.last_index {
            self.position += 1;
        } else {
            self.last_index = index;
            self.position = 0;
        }
        self.log.lock().push(Applied {
            host: self.host,
            index,
            position: self.position,
            digest: fnv(command),
        });
        self.inner.apply(index, command)
    }
    fn query(&self, query: &[u8]) -> Vec<u8> {
        self.inner.query(query)
    }
    fn snapshot(&self) -> Result<Vec<u8>, CaptureError> {
        self.inner.snapshot()
    }
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        self.last_index = 0;
        self.inner.restore(snapshot)
    }
    fn snapshot_to(&self, out: &mut dyn std::io::Write) -> Result<(), CaptureError> {
        self.inner.snapshot_to(out)
    }
    fn snapshot_view(
        &self,
    ) -> Result<Box<dyn vaultfleet::state_machine::SnapshotView>, CaptureError> {
        self.inner.snapshot_view()
    }
    fn restore_from(&mut self, input: &mut dyn std::io::Read) -> Result<(), RestoreError> {
        self.last_index = 0;
        self.inner.restore_from(input)
    }
    /// A blank of the workload's machine recording into the same log (a
    /// restore applies nothing), so restores run off the thread exactly
    /// when the workload's machine offers a blank.
    fn blank(&self) -> Option<Self> {
        Some(Self {
            inner: self.inner.blank()?,
            host: self.host,
            last_index: 0,
            position: 0,
            log: Arc::clone(&self.log),
        })
    }
}

pub(in crate::world) struct Host<M: StateMachine> {
    pub(in crate::world) id: u64,
    pub(in crate::world) dc: usize,
    pub(in crate::world) replica: Option<Replica<SimStore, Recorder<M>>>,
    pub(in crate::world) disk: Disk,
    pub(in crate::world) hsm: SoftHsm,
    pub(in crate::world) tick_us: u64,
    pub(in crate::world) generation: u64,
    /// Lost for good (its store was refused, as it had to be).
    pub(in crate::world) lost: Option<String>,
    /// Its disk was damaged while it was down: the next open must refuse it.
    pub(in crate::world) damaged: Option<String>,
    /// The damage is in the snapshot file its store's snapshot names: the
    /// store opens, and the replica must refuse to start from the file.
    pub(in crate::world) damaged_file: bool,
    /// Durable images taken at crashes (what a hostile host could put back), with
    /// the HSM counter when each was taken.
    pub(in crate::world) images: Vec<(vaultfleet::MemLog, u64)>,
    pub(in crate::world) restart_pending: bool,
    /// Restores that finished, for the replica's next turn.
    pub(in crate::world) restores_done: Vec<vaultfleet::replica::RestoredSnapshot>,
    pub(in crate::world) requests: BTreeMap<RequestId, (usize, u64)>,
    /// The preferred leader datacenters in this host's configuration file:
    /// what its replica runs with from its next start.
    pub(in crate::world) preferred: Vec<String>,
    /// The preferred leader datacenters its running replica was started with.
    pub(in crate::world) running_preferred: Vec<String>,
    /// The voters of its replica's configuration when it last stopped: what a
    /// replica that is down holds, as far as the simulator knows (it comes
    /// back with an older one only if it took this one from a snapshot and
    /// crashed before that cycle's sync).
    pub(in crate::world) voters_held: Vec<u64>,
}

impl<W: Workload> Simulation<W> {
    pub(super) fn replica_config(&mut self, h: usize) -> ReplicaConfig {
        let mut rc = ReplicaConfig::new(self.hosts[h].id);
        rc.seed = self.rng.gen();
        rc.election_ticks = self.opts.election_ticks;
        rc.heartbeat_ticks = self.opts.heartbeat_ticks;
        rc.snapshot_entries_min = self.opts.snapshot_entries;
        rc.compaction_entries_retained = self.opts.snapshot_entries / 4;
        rc.request_ticks_max = 300;
        rc.preferred_leader_datacenters = self.hosts[h].preferred.clone();
        rc.leader_rebalance_ticks = Self::leader_rebalance_ticks();
        rc
    }

    /// The replicas' rebalance period: the engine's default, named once for
    /// the replicas and the placement checker's bounds.
    pub(super) fn leader_rebalance_ticks() -> u64 {
        ReplicaConfig::new(1).leader_rebalance_ticks
    }

    pub(super) fn start_host(&mut self, h: usize, initial: bool) {
        if self.hosts[h].lost.is_some() || self.hosts[h].replica.is_some() {
            return;
        }
        let id = self.hosts[h].id;
        let mut disk = self.hosts[h].disk.open();
        let streamed = self.opts.streamed_snapshots;
        let store = if self.opts.sealed {
            let cfg = SealedConfig::new(1, id);
            match Sealed::open(disk, self.hosts[h].hsm.clone(), cfg) {
                Ok(mut s) => {
                    // Sealed files only: the sealed store opens them itself.
                    if streamed {
                        if let Err(e) = s.open_snapshot_files() {
                            return self.store_refused(h, e);
                        }
                    }
                    SimStore::Sealed(Box::new(s))
                }
                Err(e) => return self.store_refused(h, e),
            }
        } else {
            if streamed {
                if let Err(e) = disk.open_snapshot_files(id, None) {
                    return self.store_refused(h, e);
                }
            }
            SimStore::Plain(Box::new(disk))
        };
        if !self.hosts[h].damaged_file && self.opened_damaged_store(h) {
            return;
        }
        let mut store = store;
        let machine = Recorder {
            inner: self.workload.machine(),
            host: id,
            last_index: 0,
            position: 0,
            log: self.apply_log.clone(),
        };
        if initial {
            if let Err(e) = Replica::bootstrap(&mut store, &machine, &self.fleet) {
                return self.violate("replicas start", format!("bootstrap of {id}: {e}"));
            }
        }
        let cfg = self.replica_config(h);
        match Replica::new(cfg, store, machine) {
            Ok(_) if self.hosts[h].damaged_file && self.opened_damaged_store(h) => {}
            Err(e) if self.hosts[h].damaged_file && matches!(e, ReplicaError::Snapshot { .. }) => {
                self.refused_damaged_file(h, e.to_string());
            }
            Ok(r) => {
                self.hosts[h].replica = Some(r);
                self.hosts[h].running_preferred = self.hosts[h].preferred.clone();
                self.hosts[h].generation += 1;
                self.hosts[h].restart_pending = false;
                let g = self.hosts[h].generation;
                let first = self.rng.gen_range(0..self.hosts[h].tick_us);
                self.schedule(
                    first,
                    Event::Tick {
                        host: h,
                        generation: g,
                    },
                );
                self.note(|| format!("replica {id} started"));
            }
            Err(e) => {
                let retry = expected_failure(&e);
                self.start_failed(h, e.to_string(), retry)
            }
        }
    }

    pub(super) fn start_failed(&mut self, h: usize, why: String, retry: bool) {
        // An HSM that is not answering: try again later.
        let id = self.hosts[h].id;
        if retry {
            self.note(|| format!("replica {id} cannot start yet: {why}"));
            if !self.hosts[h].restart_pending {
                self.hosts[h].restart_pending = true;
                self.schedule(200_000, Event::Restart { host: h });
            }
        } else {
            self.violate("replicas start", format!("replica {id}: {why}"));
        }
    }

    /// Stops host `h`'s replica, keeping the voters it held; false if none ran.
    pub(super) fn stop_replica(&mut self, h: usize) -> bool {
        let Some(replica) = self.hosts[h].replica.take() else {
            return false;
        };
        self.hosts[h].voters_held = replica.status().voters;
        true
    }

    pub(super) fn crash_host(&mut self, h: usize, why: &str) {
        if !self.stop_replica(h) {
            return;
        }
        let id = self.hosts[h].id;
        self.hosts[h].generation += 1;
        self.hosts[h].requests.clear();
        self.hosts[h].restores_done.clear();
        let outcome = self.hosts[h].disk.crash(&mut self.rng);
        if matches!(outcome, CrashOutcome::Torn | CrashOutcome::Corrupted) {
            self.stats.torn_or_corrupted += 1;
        }
        self.stats.crashes += 1;
        // Keep an image for a later rollback, with the counter it was taken at
        // (unknown while the HSM is not answering: then keep none).
        let image = self.hosts[h].disk.image();
        let counter = if self.opts.sealed {
            self.hsm_counter(h)
        } else {
            Some(0)
        };
        if let Some(counter) = counter {
            let images = &mut self.hosts[h].images;
            if images.len() == 4 {
                images.remove(0);
            }
            images.push((image, counter));
        }
        self.note(|| format!("replica {id} crashed ({why}); pending writes {outcome:?}"));
        if !self.hosts[h].restart_pending {
            self.hosts[h].restart_pending = true;
            let after = if self.phase == Phase::Safety {
                let (lo, hi) = self.opts.restart_ms;
                self.rng.gen_range(lo * 1000..=hi.max(lo) * 1000)
            } else {
                10_000
            };
            self.schedule(after, Event::Restart { host: h });
        }
    }

    /// Runs `handle_ready` until the replica has nothing more to do, routing its
    /// messages and completions, then runs the checkers that look at replicas.
    /// As a node does, it runs at most `BACKLOG_STEPS_PER_TURN` cycles that
    /// apply a restore's backlog and takes the rest at a next turn, 0-1 ms
    /// later, so messages that arrive meanwhile are stepped between its steps.
    pub(super) fn pump(&mut self, h: usize) {
        if !self.take_restores(h) {
            return;
        }
        let mut backlog_steps = 0;
        let id = self.hosts[h].id;
        loop {
            let Some(replica) = self.hosts[h].replica.as_mut() else {
                return;
            };
            if !replica.has_ready() {
                break;
            }
            if replica.applying_backlog() {
                if backlog_steps == vaultfleet::replica::BACKLOG_STEPS_PER_TURN {
                    let generation = self.hosts[h].generation;
                    let after = self.rng.gen_range(0..=1_000);
                    self.schedule(
                        after,
                        Event::Turn {
                            host: h,
                            generation,
                        },
                    );
                    break;
                }
                backlog_steps += 1;
            }
            let mut out = std::mem::take(&mut self.out);
            out.clear();
            // As a node does: a leader's appends leave before its sync, and
            // stay sent if the sync then fails (the host crashes below).
            let mut early = Vec::new();
            let led = replica.is_leader();
            let result = replica.handle_ready_sending(&mut out, &mut |m| early.extend(m));
            if led && result.is_ok() && !replica.is_leader() {
                let status = replica.status();
                if !status.voters.contains(&id) && !status.learners.contains(&id) {
                    self.stats.leaders_removed += 1;
                }
            }
            for message in early {
                self.send(h, message);
            }
            if let Err(e) = result {
                self.out = out;
                let why = e.to_string();
                if self.phase == Phase::Safety && expected_failure(&e) {
                    self.crash_host(h, &why);
                } else {
                    let id = self.hosts[h].id;
                    self.violate(
                        "replicas only stop for injected faults",
                        format!("replica {id} failed: {why}"),
                    );
                }
                return;
            }
            for job in out.jobs.drain(..) {
                self.start_build(h, job);
            }
            for job in out.restores.drain(..) {
                self.start_restore(h, job);
            }
            for message in out.messages.drain(..) {
                self.send(h, message);
            }
            for completion in out.completions.drain(..) {
                self.complete(h, completion);
            }
            self.out = out;
            if let Some(victim) = self.crash_next.pop() {
                self.crash_next.clear();
                self.crash_host(victim, "crash right after granting a vote");
                return;
            }
        }
        self.check_replica(h);
    }

    /// Runs a streamed snapshot's build at once (into the disk's in-memory
    /// files: deterministic, no thread) and tells the replica its outcome
    /// after the time writing it would take, unless the replica restarts
    /// first (then the outcome is lost with it, as a build thread dies with
    /// its process; a file it finished stays on the disk).
    fn start_build(&mut self, h: usize, job: vaultfleet::replica::SnapshotBuild) {
        let index = job.index();
        let result = job.run();
        let bytes = result.as_ref().map_or(0, |d| d.total_bytes);
        let generation = self.hosts[h].generation;
        let id = self.hosts[h].id;
        match &result {
            Ok(d) => self.note(|| {
                format!(
                    "replica {id} wrote its snapshot at {index} ({} bytes, {} chunks)",
                    d.total_bytes, d.chunks
                )
            }),
            Err(e) => {
                let why = e.to_string();
                self.note(|| format!("replica {id} could not write its snapshot at {index}: {why}"))
            }
        }
        self.schedule(
            build_us(bytes),
            Event::SnapshotBuilt {
                host: h,
                generation,
                index,
                result: Box::new(result),
            },
        );
    }

    /// A streamed snapshot's build finished: the replica hears of it (ignored
    /// when it belongs to an earlier generation of the replica).
    pub(super) fn on_snapshot_built(
        &mut self,
        host: usize,
        generation: u64,
        index: u64,
        result: Result<SnapshotDescriptor, SnapshotBuildError>,
    ) {
        if self.hosts[host].generation != generation {
            return;
        }
        let Some(replica) = self.hosts[host].replica.as_mut() else {
            return;
        };
        let built = result.is_ok();
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        let outcome = replica.snapshot_built(index, result, &mut out);
        if built && outcome.is_ok() {
            self.stats.snapshots_streamed += 1;
        }
        if self.after_snapshot_job(host, out, outcome) {
            self.pump(host);
        }
    }

    /// Runs a streamed snapshot's restore at once (deterministic, no thread)
    /// and hands the replica its outcome after the time reading it would
    /// take, unless the replica restarts first (its restart restores the
    /// installed snapshot again). Meanwhile the replica steps, appends and
    /// acknowledges, and applies nothing past the snapshot.
    fn start_restore(&mut self, h: usize, job: vaultfleet::replica::SnapshotRestore) {
        let index = job.index();
        let bytes = job.total_bytes();
        let restored = job.run();
        let generation = self.hosts[h].generation;
        let id = self.hosts[h].id;
        let ok = restored.is_ok();
        self.note(|| {
            format!("replica {id} restores its snapshot at {index} off its thread ({bytes} bytes, ok: {ok})")
        });
        // Reading and parsing a file takes about as long as writing it.
        self.schedule(
            build_us(bytes),
            Event::SnapshotRestored {
                host: h,
                generation,
                restored: Box::new(restored),
            },
        );
    }

    /// A streamed snapshot's restore finished (ignored when it belongs to an
    /// earlier generation): its outcome waits for the replica's next turn,
    /// taken 0-2 ms later as a node takes it on its next turn, so a message
    /// that arrives meanwhile is stepped before it, as on a node (its inputs
    /// first, then finished restores, then the Ready cycle).
    pub(super) fn on_snapshot_restored(
        &mut self,
        host: usize,
        generation: u64,
        restored: vaultfleet::replica::RestoredSnapshot,
    ) {
        if self.hosts[host].generation != generation || self.hosts[host].replica.is_none() {
            return;
        }
        self.hosts[host].restores_done.push(restored);
        let after = self.rng.gen_range(0..=2_000);
        self.schedule(after, Event::Turn { host, generation });
    }

    /// The replica's turn after a restore finished or after a turn that left
    /// backlog.
    pub(super) fn on_turn(&mut self, host: usize, generation: u64) {
        if self.hosts[host].generation == generation {
            self.pump(host);
        }
    }

    /// Hands the replica the restores that finished, before its Ready cycle;
    /// false when it failed on one (and was judged for it).
    fn take_restores(&mut self, host: usize) -> bool {
        for restored in std::mem::take(&mut self.hosts[host].restores_done) {
            let Some(replica) = self.hosts[host].replica.as_mut() else {
                return false;
            };
            let mut out = std::mem::take(&mut self.out);
            out.clear();
            let outcome = replica.snapshot_restored(restored, &mut out);
            if let Ok(true) = outcome {
                self.stats.snapshots_restored_off_thread += 1;
            }
            if !self.after_snapshot_job(host, out, outcome.map(|_| ())) {
                return false;
            }
        }
        true
    }

    /// After the replica heard of a build or restore: its output goes out, or
    /// its failure is judged as a failed `handle_ready`'s is (false).
    fn after_snapshot_job(
        &mut self,
        host: usize,
        mut out: vaultfleet::replica::Output,
        outcome: Result<(), vaultfleet::ReplicaError>,
    ) -> bool {
        if let Err(e) = outcome {
            // As after a failed `handle_ready`: the replica is gone, its
            // requests with it.
            self.out = out;
            let why = e.to_string();
            if self.phase == Phase::Safety && expected_failure(&e) {
                self.crash_host(host, &why);
            } else {
                let id = self.hosts[host].id;
                self.violate(
                    "replicas only stop for injected faults",
                    format!("replica {id} failed: {why}"),
                );
            }
            return false;
        }
        let messages = std::mem::take(&mut out.messages);
        let completions = std::mem::take(&mut out.completions);
        out.clear();
        self.out = out;
        for message in messages {
            self.send(host, message);
        }
        for completion in completions {
            self.complete(host, completion);
        }
        true
    }

    /// A tick of host `host`'s clock (ignored when it belongs to an earlier
    /// generation of its replica).
    pub(super) fn on_tick(&mut self, host: usize, generation: u64) {
        if self.hosts[host].generation != generation {
            return;
        }
        let Some(r) = self.hosts[host].replica.as_mut() else {
            return;
        };
        r.tick();
        let mut next = self.hosts[host].tick_us;
        let drift = self.opts.faults.clock_drift;
        if self.phase == Phase::Safety && drift > 0.0 {
            // Uneven ticks: each one a little early or late.
            let spread = (next as f64 * drift / 2.0) as u64;
            next = next - spread.min(next - 1) + self.rng.gen_range(0..=2 * spread);
        }
        self.schedule(next.max(1), Event::Tick { host, generation });
        self.pump(host);
    }

    /// The restart timer of host `host` went off.
    pub(super) fn on_restart(&mut self, host: usize) {
        self.hosts[host].restart_pending = false;
        if self.phase != Phase::Safety {
            self.hosts[host].hsm.set_available(true);
        }
        self.start_host(host, false);
    }

    /// Host `host`'s HSM answers again after an outage.
    pub(super) fn on_hsm_back(&mut self, host: usize) {
        self.hosts[host].hsm.set_available(true);
        let id = self.hosts[host].id;
        self.note(|| format!("HSM of replica {id} answers again"));
    }

    pub(super) fn hsm_counter(&self, h: usize) -> Option<u64> {
        let label = SealedConfig::new(1, self.hosts[h].id).counter_label;
        self.hosts[h].hsm.counter(&label).ok().map(|c| c.value)
    }
}

/// Simulated rate of writing a snapshot file, in bytes per µs (200 MB/s).
const BUILD_BYTES_PER_US: u64 = 200;

/// Simulated fixed cost of a snapshot build (open, fsync, rename), in µs.
const BUILD_US_MIN: u64 = 1_000;

/// How long writing a snapshot file of `bytes` takes, in µs.
fn build_us(bytes: u64) -> u64 {
    BUILD_US_MIN + bytes / BUILD_BYTES_PER_US
}

/// A replica stopped for a reason the simulator injected: an armed crash in the
/// simulated disk, or an HSM switched off.
pub(super) fn expected_failure(e: &vaultfleet::ReplicaError) -> bool {
    match e {
        vaultfleet::ReplicaError::Storage { source, .. } => match source {
            StorageError::Hsm(vaultfleet::HsmError::Unavailable { .. }) => true,
            StorageError::Backend(cause) => cause.is::<crate::disk::SimulatedCrash>(),
            _ => false,
        },
        _ => false,
    }
}

/// The `n` hosts of a fleet over `dcs` datacenters, each with its disk, its soft
/// HSM (seeded from `rng`) and its clock rate. Draws from `rng` in a fixed order.
pub(super) fn build<M: StateMachine>(
    opts: &SimOptions,
    rng: &mut ChaCha8Rng,
    n: usize,
    dcs: usize,
) -> Vec<Host<M>> {
    (0..n)
        .map(|i| fresh_host(opts, rng, i as u64 + 1, i % dcs))
        .collect()
}

/// A new host for replica `id` in datacenter `dc`: an empty disk, a soft HSM
/// seeded from `rng`, and its clock rate. Draws from `rng` in a fixed order.
pub(super) fn fresh_host<M: StateMachine>(
    opts: &SimOptions,
    rng: &mut ChaCha8Rng,
    id: u64,
    dc: usize,
) -> Host<M> {
    let tick = opts.tick_ms * 1000;
    let drift = opts.faults.clock_drift;
    let factor = if drift > 0.0 {
        rng.gen_range(1.0 - drift..1.0 + drift)
    } else {
        1.0
    };
    Host {
        id,
        dc,
        replica: None,
        disk: Disk::new(opts.disk_bug),
        hsm: SoftHsm::from_seed(rng.gen()),
        tick_us: ((tick as f64) * factor).max(1.0) as u64,
        generation: 0,
        lost: None,
        damaged: None,
        damaged_file: false,
        images: Vec::new(),
        restart_pending: false,
        restores_done: Vec::new(),
        requests: BTreeMap::new(),
        preferred: Vec::new(),
        running_preferred: Vec::new(),
        voters_held: Vec::new(),
    }
}
