//! The deterministic multi-datacenter simulator for vaultfleet.
//!
//! It drives the same [`vaultfleet::Replica`] code that ships, in virtual time,
//! from one seeded RNG, as FoundationDB's simulator and TigerBeetle's VOPR do:
//!
//! * **One source of randomness.** A ChaCha RNG seeded from [`SimOptions::seed`]
//!   draws the topology's latencies, every message's fate, every fault, every
//!   client operation, each replica's election seed and each soft HSM's seed.
//!   There is one event queue, ordered by virtual time and then by scheduling
//!   order. There are no threads, no wall clock, and no hashed-map iteration
//!   (`clippy.toml` forbids them). The same seed and options produce the same run,
//!   event for event: [`Report::trace`] hashes every event.
//! * **The world.** N replicas round-robin over D datacenters, with a base latency
//!   per link (intra-datacenter below a millisecond, inter-datacenter tens of
//!   milliseconds) plus jitter. Each replica sits on a simulated disk ([`disk`]),
//!   sealed by its own [`vaultfleet::SoftHsm`] unless [`SimOptions::sealed`] is off,
//!   and has its own clock rate.
//! * **Faults** ([`Faults`]), each switchable with a rate and mixed per seed by
//!   [`SimOptions::swarm`]:
//!   * network: message drops, duplicates, reordering (jitter) and delay spikes;
//!     partitions (a datacenter cut off, a random split, one-way links), healed
//!     later;
//!   * hosts: crashes, where the pending writes end up whole, missing, torn or
//!     corrupted; clocks that drift, tick unevenly or jump; HSMs that stop
//!     answering;
//!   * disks: bit flips in stored data and rollbacks to older images, which the
//!     sealed store must refuse (the replica is then lost for good, at most a
//!     minority of them).
//! * **Two phases**, as in the VOPR. A safety phase runs under faults. Then a
//!   liveness phase heals the network, the clocks and the HSMs, and restarts every
//!   replica that can restart. Every pending operation must then finish, and every
//!   replica converge, within a bound. A fleet that has lost its majority for good is
//!   reported as a stall ([`Report::stall`]), not as a bug.
//! * **Checkers**, run throughout and at the end:
//!   * at most one leader per term;
//!   * every replica applies the same command at the same index;
//!   * damaged storage is never served;
//!   * no false alarm after an honest crash;
//!   * durability ([`Workload::check_final`]);
//!   * linearizability of the client history ([`linearizability`]);
//!   * the workload's own invariant ([`Workload::check_history`]);
//!   * liveness.
//!
//! Use it from a test with your own [`Workload`]:
//!
//! ```
//! use vaultfleet_sim::{GuessCounter, SimOptions, Simulation};
//!
//! let mut opts = SimOptions::new(42);
//! opts.safety_ms = 2_000; // a short run for a doc test
//! opts.liveness_ms = 20_000;
//! let report = Simulation::new(opts, GuessCounter::new(4, 5)).run();
//! assert!(report.violation.is_none(), "{:?}", report.violation);
//! ```
//!
//! `docs/simulation.md` has the details, the command line, and how to reproduce
//! and shrink a failure.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod disk;
pub mod linearizability;
mod options;
pub mod shrink;
mod store;
pub mod vault;
pub mod workload;
mod world;

pub use disk::DiskBug;
pub use options::{Faults, MembershipBug, SimOptions, WorkloadKind};
pub use store::SimStore;
pub use vault::VaultWorkload;
pub use workload::{
    Converged, CounterMachine, GuessCounter, MemberChange, OpKind, Operation, Record, Workload,
};
pub use world::{ExtraCheck, Report, Simulation, Stats, Violation};

/// Runs the built-in workload `opts.workload` (its key count and attempt limit
/// come from the options).
pub fn run(opts: SimOptions) -> Report {
    match opts.workload {
        WorkloadKind::Vault => {
            let mut workload = VaultWorkload::for_fleet(
                opts.keys,
                opts.attempt_limit,
                opts.seed,
                opts.replicas,
                opts.datacenters,
            );
            workload.membership_bug = opts.membership_bug;
            Simulation::new(opts, workload).run()
        }
        WorkloadKind::Counter => {
            let workload = GuessCounter::new(opts.keys, opts.attempt_limit);
            Simulation::new(opts, workload).run()
        }
    }
}
