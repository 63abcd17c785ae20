//! What a simulation runs: the fleet's shape, timing, and the fault mix.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::disk::DiskBug;

/// Fault rates. Rates named `*_rate` are probabilities per chaos step (every
/// 100 ms of virtual time during the safety phase); the network ones are per
/// message. Zero switches a fault off.
#[derive(Clone, Debug, PartialEq)]
pub struct Faults {
    /// Probability a message is lost.
    pub drop: f64,
    /// Probability a message is delivered twice.
    pub duplicate: f64,
    /// Latency jitter as a fraction of the link's base latency (reorders messages).
    pub jitter: f64,
    /// Probability a message is held back by a delay spike (up to a second).
    pub delay_spike: f64,
    /// Probability per chaos step that a partition starts (if none is active).
    pub partition_rate: f64,
    /// Probability per chaos step that the active partition heals.
    pub heal_rate: f64,
    /// Probability per chaos step that a replica crashes (it restarts later).
    pub crash_rate: f64,
    /// Probability that a replica crashes right after granting a vote (the worst
    /// moment for a store that forgets votes).
    pub crash_after_vote: f64,
    /// Largest relative drift of a replica's tick rate (0.2: ±20%).
    pub clock_drift: f64,
    /// Probability per chaos step that a replica's clock jumps ahead.
    pub clock_jump_rate: f64,
    /// Probability per chaos step that a replica's HSM stops answering for a while.
    pub hsm_outage_rate: f64,
    /// Probability per chaos step that a bit of a (crashed) replica's stored data flips.
    pub bit_flip_rate: f64,
    /// Probability per chaos step that a (crashed) replica's disk is rolled back.
    pub rollback_rate: f64,
    /// Probability per chaos step that an operator starts a membership change
    /// (add a learner and promote it once caught up, or remove a voter), when
    /// none is under way.
    pub membership_rate: f64,
    /// Probability per chaos step that a voter's disk is destroyed (or its
    /// host taken away) and the replica replaced as `docs/operations.md` says:
    /// a new id, a learner, promoted once caught up, then the old id removed.
    pub replace_rate: f64,
    /// Probability per chaos step that the leader is asked to hand leadership
    /// to another voter.
    pub transfer_rate: f64,
    /// Probability per chaos step that the operator moves the preferred leader
    /// datacenters (`ReplicaConfig::preferred_leader_datacenters`): it writes
    /// the new list into the configuration of every replica it runs and restarts the
    /// replicas one at a time, the only way the engine takes a new list.
    pub prefer_rate: f64,
}

impl Faults {
    /// No faults at all: a fair network and replicas that never crash.
    pub fn none() -> Self {
        Self {
            drop: 0.0,
            duplicate: 0.0,
            jitter: 0.1,
            delay_spike: 0.0,
            partition_rate: 0.0,
            heal_rate: 1.0,
            crash_rate: 0.0,
            crash_after_vote: 0.0,
            clock_drift: 0.0,
            clock_jump_rate: 0.0,
            hsm_outage_rate: 0.0,
            bit_flip_rate: 0.0,
            rollback_rate: 0.0,
            membership_rate: 0.0,
            replace_rate: 0.0,
            transfer_rate: 0.0,
            prefer_rate: 0.0,
        }
    }

    /// Every fault on, at moderate rates.
    pub fn all() -> Self {
        Self {
            drop: 0.02,
            duplicate: 0.01,
            jitter: 0.5,
            delay_spike: 0.002,
            partition_rate: 0.03,
            heal_rate: 0.1,
            crash_rate: 0.02,
            crash_after_vote: 0.02,
            clock_drift: 0.2,
            clock_jump_rate: 0.01,
            hsm_outage_rate: 0.005,
            bit_flip_rate: 0.003,
            rollback_rate: 0.003,
            membership_rate: 0.02,
            replace_rate: 0.005,
            transfer_rate: 0.01,
            prefer_rate: 0.005,
        }
    }

    /// Swarm testing: each fault is switched on or off by a coin, and gets its
    /// own rate, so every seed runs a different mix.
    pub fn swarm(rng: &mut ChaCha8Rng) -> Self {
        let mut pick = |max: f64| {
            if rng.gen_bool(0.5) {
                rng.gen_range(0.0..max)
            } else {
                0.0
            }
        };
        Self {
            drop: pick(0.1),
            duplicate: pick(0.05),
            jitter: pick(1.0),
            delay_spike: pick(0.01),
            partition_rate: pick(0.1),
            heal_rate: 0.02 + pick(0.3),
            crash_rate: pick(0.05),
            crash_after_vote: pick(0.1),
            clock_drift: pick(0.5),
            clock_jump_rate: pick(0.03),
            hsm_outage_rate: pick(0.02),
            bit_flip_rate: pick(0.01),
            rollback_rate: pick(0.01),
            membership_rate: pick(0.05),
            replace_rate: pick(0.02),
            transfer_rate: pick(0.03),
            // Drawn last, so the other rates of a seed are those drawn before
            // it existed.
            prefer_rate: pick(0.02),
        }
    }
}

/// A simulation's settings. [`SimOptions::new`] gives the defaults;
/// [`SimOptions::swarm`] draws a fleet shape and fault mix from the seed.
#[derive(Clone, Debug, PartialEq)]
pub struct SimOptions {
    /// The seed of the one RNG everything random comes from.
    pub seed: u64,
    /// Number of replicas (all voters).
    pub replicas: usize,
    /// Number of datacenters they are spread over (round robin).
    pub datacenters: usize,
    /// Number of concurrent clients.
    pub clients: usize,
    /// Length of the safety phase (faults on), in virtual milliseconds.
    pub safety_ms: u64,
    /// Bound on the liveness phase (faults healed), in virtual milliseconds.
    pub liveness_ms: u64,
    /// Nominal tick length, in virtual milliseconds.
    pub tick_ms: u64,
    /// Election timeout, in ticks.
    pub election_ticks: usize,
    /// Heartbeat interval, in ticks.
    pub heartbeat_ticks: usize,
    /// Base latency range within a datacenter, in microseconds.
    pub intra_dc_us: (u64, u64),
    /// Base latency range between datacenters, in microseconds.
    pub inter_dc_us: (u64, u64),
    /// How long a crashed replica stays down, in virtual milliseconds (a range).
    pub restart_ms: (u64, u64),
    /// Give each replica's log the HSM-sealed store (`Sealed<_, SoftHsm>`).
    pub sealed: bool,
    /// Entries between snapshots (small, so snapshots and compaction happen).
    pub snapshot_entries: u64,
    /// Give each replica's store snapshot files (sealed under a sealed
    /// store), so snapshots are streamed: built off the replica as a job,
    /// sent as chunks into the receiver's files. Off by default, so every
    /// existing seed keeps its trace.
    pub streamed_snapshots: bool,
    /// The faults.
    pub faults: Faults,
    /// A deliberate disk defect, for checker tests only.
    pub disk_bug: DiskBug,
    /// A deliberate defect in the operator's membership procedure, for checker
    /// tests only.
    pub membership_bug: MembershipBug,
    /// Heal the network in the liveness phase (off only to test the liveness checker).
    pub heal_for_liveness: bool,
    /// Damage plain (unsealed) stores too. They cannot detect it, so this only
    /// serves the test that shows the damaged-storage checker fires.
    pub damage_unsealed: bool,
    /// Most replicas disk faults may cost for good (`None`: a minority, so the
    /// fleet can always recover; more only to show a stall is told from a bug).
    pub lost_replicas_max: Option<usize>,
    /// Attempts allowed per key (per user) by the built-in workloads.
    pub attempt_limit: u32,
    /// Keys (users) of the built-in workloads.
    pub keys: u64,
    /// Which built-in workload [`crate::run`] runs.
    pub workload: WorkloadKind,
}

/// A deliberate defect in how the simulated operator changes the membership,
/// so the membership checkers can be shown to catch it. Never on by default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum MembershipBug {
    /// The procedure of `docs/operations.md`, followed exactly.
    #[default]
    None,
    /// The operator's tool reports a voter removed without proposing the
    /// change: the fleet still counts the removed voter toward its quorums.
    CountRemovedVoter,
    /// A replaced replica's old disk comes back and is re-added under its old
    /// id (ids must never be reused).
    OldDiskRejoins,
    /// When the preferred leader datacenters move, the operator's rollout
    /// leaves the leader's host out ("restart the leader last") and never
    /// comes back to it: that host keeps the old list for good.
    PreferenceSkipsLeader,
    /// Under the vault workload, devices keep every replica response key
    /// they ever verified and accept a reply signed by one even when its
    /// bundle is refused (too old an epoch, or retired): a replaced replica's
    /// key outlives the epochs that retired it.
    DeviceKeepsOldKeys,
    /// Under the vault workload, devices drop the epoch retirements replies
    /// carry before checking them: a retired epoch stays good to them.
    DeviceIgnoresRetirements,
    /// Under the vault workload, a device whose reply's bundle is refused
    /// falls back to the answering replica's key in the newest artifact it
    /// accepted that lists that replica (a cached directory of keys), so a
    /// removed replica still serving an old epoch is believed.
    DeviceTakesKeyFromNewestArtifact,
    /// Under the vault workload, the operator's epoch for a replica joining
    /// (not replacing) also leaves out another member, whom raft keeps: the
    /// published fleet and raft's configuration part ways.
    EpochDropsReplica,
}

/// The built-in workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadKind {
    /// The Backup Key Vault with real OPAQUE logins ([`crate::VaultWorkload`]).
    Vault,
    /// The bare guess counter ([`crate::GuessCounter`]), with a sequential model
    /// for the linearizability checker.
    Counter,
}

impl SimOptions {
    /// The defaults: 5 replicas in 3 datacenters, 8 clients, 20 s of faults then
    /// up to 20 s to converge, sealed stores, every fault on at moderate rates.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            replicas: 5,
            datacenters: 3,
            clients: 8,
            safety_ms: 20_000,
            liveness_ms: 20_000,
            tick_ms: 10,
            election_ticks: 30,
            heartbeat_ticks: 3,
            intra_dc_us: (100, 900),
            inter_dc_us: (10_000, 60_000),
            restart_ms: (200, 3_000),
            sealed: true,
            snapshot_entries: 200,
            streamed_snapshots: false,
            faults: Faults::all(),
            disk_bug: DiskBug::None,
            membership_bug: MembershipBug::None,
            heal_for_liveness: true,
            lost_replicas_max: None,
            damage_unsealed: false,
            attempt_limit: 10,
            keys: 16,
            workload: WorkloadKind::Vault,
        }
    }

    /// Swarm testing: the fleet's shape, the workload and the fault mix drawn
    /// from `seed` (the same seed always draws the same options).
    pub fn swarm(seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5741_524d);
        let mut o = Self::new(seed);
        o.replicas = [3, 5, 5, 7][rng.gen_range(0..4)];
        o.datacenters = rng.gen_range(2..=o.replicas.min(4));
        o.clients = rng.gen_range(1..=12);
        o.keys = rng.gen_range(1..=24);
        o.attempt_limit = rng.gen_range(1..=12);
        o.workload = if rng.gen_bool(0.5) {
            WorkloadKind::Vault
        } else {
            WorkloadKind::Counter
        };
        o.snapshot_entries = rng.gen_range(20..=500);
        o.faults = Faults::swarm(&mut rng);
        o
    }
}
