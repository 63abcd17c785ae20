//! `vaultfleet-sim`: run one seeded simulation, or a swarm of them.
//!
//! ```text
//! cargo run --release -p vaultfleet-sim -- run --seed 7
//! cargo run --release -p vaultfleet-sim -- swarm --seeds 0..1000
//! cargo run --release -p vaultfleet-sim -- swarm --seeds 0..1000 --jobs 2 --json
//! cargo run --release -p vaultfleet-sim -- shrink --seed 7 --swarm
//! ```
//!
//! Every subcommand has `--help`. Logs go to stderr, filtered by `RUST_LOG`
//! (off by default: the injected faults make the replica code warn by design);
//! stdout carries the summary and its `trace=<hash>` line only.
// The command line measures wall-clock speed and draws a progress bar; the
// simulation itself never reads a clock.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::ops::Range;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vaultfleet_sim::{run, DiskBug, Faults, Report, SimOptions, WorkloadKind};

/// The deterministic multi-datacenter simulator of a vaultfleet fleet.
#[derive(Debug, Parser)]
#[command(name = "vaultfleet-sim", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One simulation; prints a summary, last line `seed=S ... trace=<hex>`.
    Run(RunArgs),
    /// Many seeds, each with its own fleet shape and fault mix; stops at the
    /// first violation with the command that reproduces it.
    Swarm(SwarmArgs),
    /// Shrink a failing run: fewer replicas, clients, users and seconds, fault
    /// kinds off, rates lowered, while the same invariant still fails; prints
    /// the smallest reproducing command (exit 1 if the run does not fail).
    Shrink(ShrinkArgs),
}

#[derive(Debug, Args)]
struct ShrinkArgs {
    /// The failing seed.
    #[arg(long, value_name = "S")]
    seed: u64,
    /// Draw the fleet shape and faults from the seed, as swarm does.
    #[arg(long)]
    swarm: bool,
    /// The most simulations to run (the start included).
    #[arg(long, value_name = "N", default_value_t = 400)]
    max_runs: usize,
    /// Seeds each smaller shape is tried with (its start's seed first): a
    /// bug that needs a particular interleaving rarely survives a reduction
    /// with its seed alone.
    #[arg(long, value_name = "K", default_value_t = 8)]
    seeds_per_shape: usize,
    #[command(flatten)]
    sim: SimArgs,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The seed of the run's one RNG.
    #[arg(long, value_name = "S")]
    seed: u64,
    /// Draw the fleet shape and faults from the seed, as swarm does.
    #[arg(long)]
    swarm: bool,
    /// Print the last events even when nothing failed.
    #[arg(long)]
    trace: bool,
    #[command(flatten)]
    sim: SimArgs,
}

#[derive(Debug, Args)]
struct SwarmArgs {
    /// The seeds to run, `A..B` (B excluded).
    #[arg(long, value_name = "A..B", value_parser = seed_range)]
    seeds: Range<u64>,
    /// Worker threads, 1..=256 (default 1). Each seed is its own deterministic
    /// simulation: the output is the same for any N (results in seed order; a
    /// failure reports the lowest failing seed among those run).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = job_count)]
    jobs: usize,
    /// One JSON object per seed on stdout (seed, shape, events, simulated time,
    /// outcome), nothing else there: the summary and any failure report go to
    /// stderr. The lines carry no wall-clock figure, so they repeat exactly.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    sim: SimArgs,
}

/// The most worker threads `swarm --jobs` accepts.
const MAX_JOBS: usize = 256;

/// A fault mix when not `--swarm`.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum FaultMix {
    /// No faults at all.
    None,
    /// Every fault at its default rate.
    All,
}

/// The workload the clients run.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum WorkloadArg {
    /// The Backup Key Vault with real OPAQUE logins.
    Vault,
    /// The bare guess counter with a linearizability model.
    Counter,
}

/// A deliberate disk defect.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum DiskBugArg {
    /// A correct disk.
    None,
    /// `sync` returns without making anything durable.
    LieOnSync,
    /// A restart forgets the vote.
    ForgetVote,
    /// A crash silently corrupts a stored entry.
    SilentCorruption,
}

/// The options `run` and `swarm` share. Each one left out keeps the default (or,
/// under `--swarm` and in `swarm`, what the seed draws).
#[derive(Debug, Args)]
struct SimArgs {
    /// Replicas (default 5).
    #[arg(long, value_name = "N")]
    replicas: Option<usize>,
    /// Datacenters (default 3).
    #[arg(long, value_name = "D")]
    datacenters: Option<usize>,
    /// Concurrent clients (default 8).
    #[arg(long, value_name = "C")]
    clients: Option<usize>,
    /// Virtual seconds of the safety phase (default 20).
    #[arg(long, value_name = "T")]
    seconds: Option<f64>,
    /// Bound on the liveness phase, in virtual seconds (default 20).
    #[arg(long, value_name = "L")]
    liveness_seconds: Option<f64>,
    /// Fault mix when not --swarm (default all).
    #[arg(long, value_enum)]
    faults: Option<FaultMix>,
    /// Rate of message drops (0 switches it off).
    #[arg(long, value_name = "P", value_parser = probability)]
    drop: Option<f64>,
    /// Rate of duplicated messages.
    #[arg(long, value_name = "P", value_parser = probability)]
    duplicate: Option<f64>,
    /// Jitter, as a fraction of a link's latency.
    #[arg(long, value_name = "F", value_parser = probability)]
    jitter: Option<f64>,
    /// Rate of delay spikes.
    #[arg(long, value_name = "P", value_parser = probability)]
    delay_spike: Option<f64>,
    /// Rate of partitions, per chaos step.
    #[arg(long, value_name = "P", value_parser = probability)]
    partition: Option<f64>,
    /// Rate of healing a partition, per chaos step.
    #[arg(long, value_name = "P", value_parser = probability)]
    heal: Option<f64>,
    /// Rate of crashes, per chaos step.
    #[arg(long, value_name = "P", value_parser = probability)]
    crash: Option<f64>,
    /// Rate of a voter crashing right after granting its vote.
    #[arg(long, value_name = "P", value_parser = probability)]
    crash_after_vote: Option<f64>,
    /// Clock drift, as a fraction of the tick.
    #[arg(long, value_name = "F", value_parser = probability)]
    clock_drift: Option<f64>,
    /// Rate of clock jumps, per chaos step.
    #[arg(long, value_name = "P", value_parser = probability)]
    clock_jump: Option<f64>,
    /// Rate of HSM outages, per chaos step.
    #[arg(long, value_name = "P", value_parser = probability)]
    hsm_outage: Option<f64>,
    /// Rate of bit flips in a down replica's disk, per chaos step.
    #[arg(long, value_name = "P", value_parser = probability)]
    bit_flip: Option<f64>,
    /// Rate of rollbacks of a down replica's disk, per chaos step.
    #[arg(long, value_name = "P", value_parser = probability)]
    rollback: Option<f64>,
    /// Rate of membership changes (add a learner and promote it, or remove a
    /// voter), per chaos step.
    #[arg(long, value_name = "P", value_parser = probability)]
    membership: Option<f64>,
    /// Rate of replica replacements (disk destroyed: new id, learner, promote,
    /// remove the old id), per chaos step.
    #[arg(long, value_name = "P", value_parser = probability)]
    replace: Option<f64>,
    /// Rate of leadership transfers, per chaos step.
    #[arg(long, value_name = "P", value_parser = probability)]
    transfer: Option<f64>,
    /// Rate of moves of the preferred leader datacenters (a new list in every
    /// member's configuration, then a rolling restart), per chaos step.
    #[arg(long, value_name = "P", value_parser = probability)]
    prefer: Option<f64>,
    /// The Backup Key Vault with real OPAQUE logins (default), or the bare guess
    /// counter with a linearizability model (swarm draws one per seed).
    #[arg(long, value_enum)]
    workload: Option<WorkloadArg>,
    /// Users (keys) (default 16).
    #[arg(long, value_name = "N")]
    users: Option<u64>,
    /// Attempts per registration, 1..=255 (default 10).
    #[arg(long, value_name = "A")]
    attempts: Option<u32>,
    /// Unsealed stores (no HSM).
    #[arg(long)]
    plain: bool,
    /// Streamed snapshots: each store keeps snapshot files (sealed under a
    /// sealed store), snapshots are built off the replica and sent as chunks.
    #[arg(long)]
    streamed: bool,
    /// Run this share of the seeds with streamed snapshots (each seed's
    /// choice drawn apart from its run's draws, so the other seeds keep
    /// their traces); `--streamed` runs them all so.
    #[arg(long, value_name = "P", value_parser = probability)]
    streamed_share: Option<f64>,
    /// Raft election timeout in ticks of 10 ms (default 30).
    #[arg(long, value_name = "N")]
    election_ticks: Option<usize>,
    /// Raft heartbeat interval in ticks of 10 ms (default 3).
    #[arg(long, value_name = "N")]
    heartbeat_ticks: Option<usize>,
    /// Switch on a deliberate disk defect, on plain stores (to watch a checker
    /// catch it).
    #[arg(long, value_enum)]
    disk_bug: Option<DiskBugArg>,
}

fn probability(s: &str) -> Result<f64, String> {
    let p: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !(0.0..=1.0).contains(&p) {
        return Err(format!("{p} is not a probability"));
    }
    Ok(p)
}

fn job_count(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|_| format!("{s:?} is not a count"))?;
    if !(1..=MAX_JOBS).contains(&n) {
        return Err(format!("{n} is not within 1..={MAX_JOBS}"));
    }
    Ok(n)
}

fn seed_range(s: &str) -> Result<Range<u64>, String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("expected A..B, not {s:?}"))?;
    let a: u64 = a.parse().map_err(|_| format!("bad start {a:?}"))?;
    let b: u64 = b.parse().map_err(|_| format!("bad end {b:?}"))?;
    if b <= a {
        return Err("the range is empty".into());
    }
    Ok(a..b)
}

impl SimArgs {
    /// The options for `seed`, or why the combination is refused.
    fn options(&self, seed: u64, swarm: bool) -> Result<SimOptions, String> {
        let mut o = if swarm {
            SimOptions::swarm(seed)
        } else {
            SimOptions::new(seed)
        };
        self.apply_fleet(&mut o);
        self.apply_faults(&mut o.faults);
        if let Some(w) = self.workload {
            o.workload = match w {
                WorkloadArg::Vault => WorkloadKind::Vault,
                WorkloadArg::Counter => WorkloadKind::Counter,
            };
        }
        if let Some(u) = self.users {
            o.keys = u;
        }
        if let Some(a) = self.attempts {
            o.attempt_limit = a;
        }
        if let Some(bug) = self.disk_bug {
            o.disk_bug = match bug {
                DiskBugArg::None => DiskBug::None,
                DiskBugArg::LieOnSync => DiskBug::LieOnSync,
                DiskBugArg::ForgetVote => DiskBug::ForgetVote,
                DiskBugArg::SilentCorruption => DiskBug::SilentCorruption,
            };
        } else {
            o.disk_bug = DiskBug::None;
        }
        if o.disk_bug != DiskBug::None {
            // The defects live below the sealed store's view (it keeps the vote in its
            // sealed head, and refuses a disk that lies): watch them on plain stores.
            o.sealed = false;
        }
        validate(&o)?;
        Ok(o)
    }

    fn apply_fleet(&self, o: &mut SimOptions) {
        if let Some(n) = self.replicas {
            o.replicas = n;
        }
        if let Some(d) = self.datacenters {
            o.datacenters = d;
        }
        if let Some(c) = self.clients {
            o.clients = c;
        }
        if let Some(t) = self.seconds {
            o.safety_ms = (t * 1000.0).round() as u64;
        }
        if let Some(t) = self.liveness_seconds {
            o.liveness_ms = (t * 1000.0).round() as u64;
        }
        if self.plain {
            o.sealed = false;
        }
        o.streamed_snapshots = self.streamed
            || self
                .streamed_share
                .is_some_and(|p| streamed_draw(o.seed).gen_bool(p));
        if let Some(t) = self.election_ticks {
            o.election_ticks = t;
        }
        if let Some(t) = self.heartbeat_ticks {
            o.heartbeat_ticks = t;
        }
    }

    fn apply_faults(&self, f: &mut Faults) {
        match self.faults {
            None => {}
            Some(FaultMix::None) => *f = Faults::none(),
            Some(FaultMix::All) => *f = Faults::all(),
        }
        for (value, slot) in [
            (self.drop, &mut f.drop),
            (self.duplicate, &mut f.duplicate),
            (self.jitter, &mut f.jitter),
            (self.delay_spike, &mut f.delay_spike),
            (self.partition, &mut f.partition_rate),
            (self.heal, &mut f.heal_rate),
            (self.crash, &mut f.crash_rate),
            (self.crash_after_vote, &mut f.crash_after_vote),
            (self.clock_drift, &mut f.clock_drift),
            (self.clock_jump, &mut f.clock_jump_rate),
            (self.hsm_outage, &mut f.hsm_outage_rate),
            (self.bit_flip, &mut f.bit_flip_rate),
            (self.rollback, &mut f.rollback_rate),
            (self.membership, &mut f.membership_rate),
            (self.replace, &mut f.replace_rate),
            (self.transfer, &mut f.transfer_rate),
            (self.prefer, &mut f.prefer_rate),
        ] {
            if let Some(p) = value {
                *slot = p;
            }
        }
    }

    /// The flags given, as a command line (for the reproduce line).
    fn to_args(&self) -> String {
        fn num(v: Option<impl ToString>) -> Option<String> {
            v.map(|v| v.to_string())
        }
        fn name(v: Option<impl ValueEnum>) -> Option<String> {
            v.and_then(|v| v.to_possible_value())
                .map(|v| v.get_name().to_string())
        }
        let flags = [
            ("replicas", num(self.replicas)),
            ("datacenters", num(self.datacenters)),
            ("clients", num(self.clients)),
            ("seconds", num(self.seconds)),
            ("liveness-seconds", num(self.liveness_seconds)),
            ("faults", name(self.faults)),
            ("drop", num(self.drop)),
            ("duplicate", num(self.duplicate)),
            ("jitter", num(self.jitter)),
            ("delay-spike", num(self.delay_spike)),
            ("partition", num(self.partition)),
            ("heal", num(self.heal)),
            ("crash", num(self.crash)),
            ("crash-after-vote", num(self.crash_after_vote)),
            ("clock-drift", num(self.clock_drift)),
            ("clock-jump", num(self.clock_jump)),
            ("hsm-outage", num(self.hsm_outage)),
            ("bit-flip", num(self.bit_flip)),
            ("rollback", num(self.rollback)),
            ("membership", num(self.membership)),
            ("replace", num(self.replace)),
            ("transfer", num(self.transfer)),
            ("prefer", num(self.prefer)),
            ("workload", name(self.workload)),
            ("users", num(self.users)),
            ("attempts", num(self.attempts)),
            ("election-ticks", num(self.election_ticks)),
            ("heartbeat-ticks", num(self.heartbeat_ticks)),
            ("disk-bug", name(self.disk_bug)),
            ("streamed-share", num(self.streamed_share)),
        ];
        let mut s = String::new();
        for (flag, value) in flags {
            if let Some(v) = value {
                s.push_str(&format!(" --{flag} {v}"));
            }
        }
        if self.plain {
            s.push_str(" --plain");
        }
        if self.streamed {
            s.push_str(" --streamed");
        }
        s
    }
}

/// The RNG that decides whether `--streamed-share` runs `seed` streamed: its
/// own stream, so the choice shifts none of the run's draws.
fn streamed_draw(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed ^ 0x5354_5245_414d)
}

fn validate(o: &SimOptions) -> Result<(), String> {
    if o.keys == 0 || o.attempt_limit == 0 || o.attempt_limit > 255 {
        return Err("--users must be at least 1 and --attempts within 1..=255".into());
    }
    if o.heartbeat_ticks == 0 || o.heartbeat_ticks >= o.election_ticks {
        return Err("--heartbeat-ticks must be at least 1 and below --election-ticks".into());
    }
    if o.liveness_ms == 0 {
        return Err("--liveness-seconds must be above 0".into());
    }
    if o.safety_ms > 1_000_000_000 || o.liveness_ms > 1_000_000_000 {
        return Err("--seconds and --liveness-seconds are limited to 1,000,000".into());
    }
    if o.replicas == 0 || o.datacenters == 0 {
        return Err("--replicas and --datacenters must be at least 1".into());
    }
    Ok(())
}

/// A warning when the election timeout is not above the longest round trip
/// between datacenters (without jitter): a new leader's first append must be
/// answered before its first quorum check (raft-rs's `check_quorum`, one
/// election timeout after it won), so a leader that needs a voter in another
/// datacenter for its majority steps down every term, however healed the
/// network, and liveness violations are the flags' doing (swarm seed 103003
/// of `--election-ticks 10 --heartbeat-ticks 9`: 100 ms against round trips of
/// up to 115 ms). Not refused: `run --election-ticks N` is how an operator
/// checks a choice (docs/operations.md).
fn timing_warning(o: &SimOptions) -> Option<String> {
    if o.datacenters < 2 || o.replicas < 2 {
        return None;
    }
    let timeout_us = (o.election_ticks as u64).saturating_mul(o.tick_ms.saturating_mul(1000));
    let round_trip_us = o.inter_dc_us.1.saturating_mul(2);
    (timeout_us <= round_trip_us).then(|| {
        format!(
            "warning: the election timeout ({} ticks, {} ms) is not above the longest round \
             trip between datacenters ({} ms): a leader that needs a voter in another \
             datacenter steps down before that voter answers it, so liveness violations \
             are to be expected (raft wants the election timeout well above the round trip)",
            o.election_ticks,
            timeout_us / 1000,
            round_trip_us / 1000,
        )
    })
}

/// Logs to stderr, filtered by `RUST_LOG` (off when unset).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn summary(r: &Report, wall: f64) -> String {
    let sim_s = r.simulated_us as f64 / 1e6;
    format!(
        "seed={} replicas={} dcs={} sealed={} sim_s={:.1} events={} ops={} unknown={} crashes={} partitions={} lost={} speed={:.0}x trace={}",
        r.options.seed,
        r.options.replicas,
        r.options.datacenters,
        r.options.sealed,
        sim_s,
        r.stats.events,
        r.stats.ops_completed,
        r.stats.ops_unknown,
        r.stats.crashes,
        r.stats.partitions,
        r.stats.replicas_lost,
        sim_s / wall.max(1e-9),
        r.trace
    )
}

fn print_failure(r: &Report, command: &str) {
    if let Some(v) = &r.violation {
        println!(
            "VIOLATION of \"{}\" at {:.3} s:",
            v.invariant,
            v.at_us as f64 / 1e6
        );
        println!("  {}", v.detail);
    }
    println!("last events:");
    for e in &r.recent {
        println!("  {e}");
    }
    println!("reproduce: {command}");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match &cli.command {
        Command::Run(args) => cmd_run(args),
        Command::Swarm(args) => cmd_swarm(args),
        Command::Shrink(args) => cmd_shrink(args),
    };
    match result {
        Ok(code) => code,
        // A combination of flags the simulator refuses: a usage error.
        Err(e) => Cli::command().error(ErrorKind::ValueValidation, e).exit(),
    }
}

/// The command that runs exactly `o`: every option the command line has,
/// given explicitly (over `--swarm`'s draw when the run came from one, so the
/// options the command line has no flag for are drawn the same way).
fn command_for(o: &SimOptions, swarm: bool) -> String {
    let f = &o.faults;
    let mut cmd = format!(
        "cargo run --release -p vaultfleet-sim -- run --seed {}",
        o.seed
    );
    if swarm {
        cmd.push_str(" --swarm");
    }
    let workload = match o.workload {
        WorkloadKind::Vault => "vault",
        WorkloadKind::Counter => "counter",
    };
    cmd.push_str(&format!(
        " --replicas {} --datacenters {} --clients {} --seconds {} --liveness-seconds {} --workload {workload} --users {} --attempts {} --election-ticks {} --heartbeat-ticks {}",
        o.replicas,
        o.datacenters,
        o.clients,
        o.safety_ms as f64 / 1000.0,
        o.liveness_ms as f64 / 1000.0,
        o.keys,
        o.attempt_limit,
        o.election_ticks,
        o.heartbeat_ticks,
    ));
    for (flag, v) in [
        ("drop", f.drop),
        ("duplicate", f.duplicate),
        ("jitter", f.jitter),
        ("delay-spike", f.delay_spike),
        ("partition", f.partition_rate),
        ("heal", f.heal_rate),
        ("crash", f.crash_rate),
        ("crash-after-vote", f.crash_after_vote),
        ("clock-drift", f.clock_drift),
        ("clock-jump", f.clock_jump_rate),
        ("hsm-outage", f.hsm_outage_rate),
        ("bit-flip", f.bit_flip_rate),
        ("rollback", f.rollback_rate),
        ("membership", f.membership_rate),
        ("replace", f.replace_rate),
        ("transfer", f.transfer_rate),
        ("prefer", f.prefer_rate),
    ] {
        cmd.push_str(&format!(" --{flag} {v}"));
    }
    match o.disk_bug {
        DiskBug::None => {}
        DiskBug::LieOnSync => cmd.push_str(" --disk-bug lie-on-sync"),
        DiskBug::ForgetVote => cmd.push_str(" --disk-bug forget-vote"),
        DiskBug::SilentCorruption => cmd.push_str(" --disk-bug silent-corruption"),
    }
    if !o.sealed {
        cmd.push_str(" --plain");
    }
    if o.streamed_snapshots {
        cmd.push_str(" --streamed");
    }
    cmd
}

fn cmd_shrink(args: &ShrinkArgs) -> Result<ExitCode, String> {
    let opts = args.sim.options(args.seed, args.swarm)?;
    let start = Instant::now();
    let from = vaultfleet_sim::shrink::SizeOf::of(&opts);
    let Some(s) = vaultfleet_sim::shrink::shrink(opts, args.max_runs.max(1), args.seeds_per_shape)
    else {
        println!(
            "seed {} does not fail with these options: nothing to shrink",
            args.seed
        );
        return Ok(ExitCode::FAILURE);
    };
    println!("shrinking \"{}\" (seed {}):", s.invariant, args.seed);
    if s.options.seed != args.seed {
        println!("  (the smallest run fails with seed {})", s.options.seed);
    }
    for step in &s.steps {
        println!("  kept: {step}");
    }
    let to = vaultfleet_sim::shrink::SizeOf::of(&s.options);
    println!(
        "{} simulations in {:.1} s wall; from {} replicas, {} datacenters, {} clients, {} users, {:.1} s, {} fault kinds to {} replicas, {} datacenters, {} clients, {} users, {:.1} s, {} fault kinds",
        s.runs,
        start.elapsed().as_secs_f64(),
        from.replicas,
        from.datacenters,
        from.clients,
        from.keys,
        from.safety_ms as f64 / 1000.0,
        from.fault_kinds,
        to.replicas,
        to.datacenters,
        to.clients,
        to.keys,
        to.safety_ms as f64 / 1000.0,
        to.fault_kinds,
    );
    if let Some(v) = &s.report.violation {
        println!("VIOLATION of \"{}\": {}", v.invariant, v.detail);
    }
    println!("smallest: {}", command_for(&s.options, args.swarm));
    Ok(ExitCode::SUCCESS)
}

fn reproduce(seed: u64, sim: &SimArgs, swarm: bool) -> String {
    let mut cmd = format!("cargo run --release -p vaultfleet-sim -- run --seed {seed}");
    if swarm {
        cmd.push_str(" --swarm");
    }
    cmd.push_str(&sim.to_args());
    cmd
}

fn print_run(report: &Report) {
    let s = &report.stats;
    println!(
        "fleet: {} replicas in {} datacenters, {} clients, {} stores, {} workload ({} users/keys, {} attempts)",
        report.options.replicas,
        report.options.datacenters,
        report.options.clients,
        if report.options.sealed {
            "sealed"
        } else {
            "plain"
        },
        match report.options.workload {
            WorkloadKind::Vault => "vault",
            WorkloadKind::Counter => "guess-counter",
        },
        report.options.keys,
        report.options.attempt_limit
    );
    println!(
        "faults: {} crashes ({} with torn or corrupted pending writes), {} partitions, {} HSM outages, {} clock jumps, {} bit flips, {} rollbacks; {} replicas refused their damaged store",
        s.crashes, s.torn_or_corrupted, s.partitions, s.hsm_outages, s.clock_jumps, s.bit_flips, s.rollbacks, s.replicas_lost
    );
    println!(
        "membership: {} changes, {} replacements, {} leader transfers, {} leaders removed while leading, {} preference moves ({} rolling restarts, {} leaders moved to a preferred datacenter after converging)",
        s.membership_changes, s.replacements, s.transfers, s.leaders_removed, s.preference_moves, s.rollout_restarts, s.placement_waits
    );
    if report.options.streamed_snapshots {
        println!(
            "streamed snapshots: {} built, {} sent into a receiver's files and delivered, {} restored off the replica's thread, {} transfers failed, {} files damaged (counted in the bit flips)",
            s.snapshots_streamed, s.streamed_installs, s.snapshots_restored_off_thread, s.streamed_failures, s.snapshot_file_flips
        );
    }
    println!(
        "work: {} operations acknowledged, {} with unknown outcome, {} messages, highest term {}, highest commit {}",
        s.ops_completed, s.ops_unknown, s.messages, s.max_term, s.max_commit
    );
    if let Some(stall) = &report.stall {
        println!("stall (not a bug): {stall}");
    }
    if !report.inconclusive.is_empty() {
        println!(
            "linearizability inconclusive (search budget spent) for keys {:?}",
            report.inconclusive
        );
    }
}

fn cmd_run(args: &RunArgs) -> Result<ExitCode, String> {
    let opts = args.sim.options(args.seed, args.swarm)?;
    if let Some(warning) = timing_warning(&opts) {
        eprintln!("{warning}");
    }
    let start = Instant::now();
    let report = run(opts);
    let wall = start.elapsed().as_secs_f64();
    print_run(&report);
    let failed = report.violation.is_some();
    if failed {
        print_failure(&report, &reproduce(args.seed, &args.sim, args.swarm));
    } else {
        println!("ok: every checker passed");
        if args.trace {
            for e in &report.recent {
                println!("  {e}");
            }
        }
    }
    println!("{}", summary(&report, wall));
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Redraws the swarm's progress bar on stderr.
fn progress(done: u64, total: u64, sim_us: u64, start: Instant) {
    let width = 30;
    let filled = (done * width / total) as usize;
    eprint!(
        "\r[{}{}] {done}/{total} seeds, {:.0}x real time   ",
        "#".repeat(filled),
        " ".repeat(width as usize - filled),
        sim_us as f64 / 1e6 / start.elapsed().as_secs_f64().max(1e-9)
    );
    let _ = std::io::stderr().flush();
}

/// What one swarm seed came to, as a worker hands it to the printer.
enum SeedRun {
    /// The simulation ran to its end (or to a violation).
    Ran(Box<Report>),
    /// The simulator itself panicked (a bug in the simulator or the replica code).
    Panicked,
}

impl SeedRun {
    fn failed(&self) -> bool {
        match self {
            SeedRun::Ran(r) => r.violation.is_some(),
            SeedRun::Panicked => true,
        }
    }
}

/// One seed's result as it travels from a worker to the printer: the run, or why
/// its options were refused; plus the logs it wrote when they are captured.
struct Done {
    seed: u64,
    run: Result<SeedRun, String>,
    logs: Vec<u8>,
}

/// A log sink shared by a per-seed subscriber and the worker that reads it back.
#[derive(Clone, Default)]
struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        v.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs one swarm seed. With `capture`, the run logs (filtered by `RUST_LOG`)
/// into a buffer of its own, under a subscriber scoped to this thread, so that
/// parallel seeds never interleave their logs: the printer writes them out in
/// seed order.
fn run_seed(seed: u64, sim: &SimArgs, capture: Option<&str>) -> Done {
    let opts = match sim.options(seed, true) {
        Ok(o) => o,
        Err(e) => {
            return Done {
                seed,
                run: Err(e),
                logs: Vec::new(),
            }
        }
    };
    let guarded = move || match std::panic::catch_unwind(|| run(opts)) {
        Ok(r) => SeedRun::Ran(Box::new(r)),
        Err(_) => SeedRun::Panicked,
    };
    let Some(filter) = capture else {
        return Done {
            seed,
            run: Ok(guarded()),
            logs: Vec::new(),
        };
    };
    let buffer = LogBuffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let run = tracing::subscriber::with_default(subscriber, guarded);
    let logs = std::mem::take(&mut *buffer.0.lock().unwrap_or_else(|e| e.into_inner()));
    Done {
        seed,
        run: Ok(run),
        logs,
    }
}

/// Escapes `s` as a JSON string, quotes included.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The `--json` line of one seed: deterministic (no wall-clock figure), so equal
/// across runs and across `--jobs`.
fn json_line(seed: u64, run: &SeedRun, reproduce: Option<&str>) -> String {
    let mut s = format!("{{\"seed\":{seed}");
    match run {
        SeedRun::Panicked => s.push_str(",\"outcome\":\"panic\""),
        SeedRun::Ran(r) => {
            let o = &r.options;
            let workload = match o.workload {
                WorkloadKind::Vault => "vault",
                WorkloadKind::Counter => "counter",
            };
            s.push_str(&format!(
                ",\"replicas\":{},\"datacenters\":{},\"workload\":\"{workload}\",\"clients\":{},\"sealed\":{},\"streamed\":{},\"snapshots_streamed\":{},\"streamed_installs\":{},\"restored_off_thread\":{},\"events\":{},\"sim_us\":{},\"sim_s\":{:.6},\"ops\":{},\"crashes\":{},\"partitions\":{},\"stall\":{}",
                o.replicas,
                o.datacenters,
                o.clients,
                o.sealed,
                o.streamed_snapshots,
                r.stats.snapshots_streamed,
                r.stats.streamed_installs,
                r.stats.snapshots_restored_off_thread,
                r.stats.events,
                r.simulated_us,
                r.simulated_us as f64 / 1e6,
                r.stats.ops_completed,
                r.stats.crashes,
                r.stats.partitions,
                r.stall.is_some(),
            ));
            if let Some(v) = &r.violation {
                s.push_str(&format!(
                    ",\"outcome\":\"violation\",\"checker\":{},\"at_us\":{}",
                    json_string(v.invariant),
                    v.at_us
                ));
            } else if !r.inconclusive.is_empty() {
                s.push_str(",\"outcome\":\"inconclusive\",\"checker\":\"linearizability\"");
            } else {
                s.push_str(",\"outcome\":\"ok\"");
            }
            s.push_str(&format!(",\"trace\":{}", json_string(&r.trace)));
        }
    }
    if let Some(cmd) = reproduce {
        s.push_str(&format!(",\"reproduce\":{}", json_string(cmd)));
    }
    s.push('}');
    s
}

/// Swarm output: the human summary, or JSON lines (then everything else goes to
/// stderr, so stdout stays one parsable line per seed).
struct SwarmOut {
    json: bool,
}

impl SwarmOut {
    /// A human line: stdout, or stderr under `--json`.
    fn say(&self, line: &str) {
        if self.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }

    fn failure(&self, r: &Report, command: &str) {
        if let Some(v) = &r.violation {
            self.say(&format!(
                "VIOLATION of \"{}\" at {:.3} s:",
                v.invariant,
                v.at_us as f64 / 1e6
            ));
            self.say(&format!("  {}", v.detail));
        }
        self.say("last events:");
        for e in &r.recent {
            self.say(&format!("  {e}"));
        }
        self.say(&format!("reproduce: {command}"));
    }
}

fn cmd_swarm(args: &SwarmArgs) -> Result<ExitCode, String> {
    let (a, b) = (args.seeds.start, args.seeds.end);
    // A refused combination is a usage error before any worker starts.
    if let Some(warning) = timing_warning(&args.sim.options(a, true)?) {
        eprintln!("{warning}");
    }
    let jobs = args.jobs.clamp(1, (b - a).min(MAX_JOBS as u64) as usize);
    let capture = if jobs > 1 {
        std::env::var("RUST_LOG").ok().filter(|f| !f.is_empty())
    } else {
        None
    };
    let out = SwarmOut { json: args.json };
    let tty = std::io::stderr().is_terminal();
    let start = Instant::now();
    let next = AtomicU64::new(a);
    let stop = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel::<Done>();
    let mut failure: Option<(u64, Result<SeedRun, String>)> = None;
    let (mut sim_us, mut stalls, mut inconclusive, mut passed) = (0u64, 0u64, 0u64, 0u64);
    thread::scope(|scope| {
        for _ in 0..jobs {
            let tx = tx.clone();
            let (next, stop, sim, capture) = (&next, &stop, &args.sim, capture.as_deref());
            scope.spawn(move || {
                // Seeds are handed out in increasing order: when a worker stops,
                // every seed below the ones already taken has been taken too.
                while !stop.load(Ordering::SeqCst) {
                    let seed = next.fetch_add(1, Ordering::SeqCst);
                    if seed >= b {
                        break;
                    }
                    let done = run_seed(seed, sim, capture);
                    if done.run.as_ref().map_or(true, SeedRun::failed) {
                        stop.store(true, Ordering::SeqCst);
                    }
                    if tx.send(done).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        // The printer: results in seed order, whatever order they finish in.
        let mut pending = BTreeMap::new();
        let mut expected = a;
        for done in rx {
            pending.insert(done.seed, done);
            while let Some(done) = pending.remove(&expected) {
                if !done.logs.is_empty() {
                    if tty {
                        eprintln!();
                    }
                    let _ = std::io::stderr().write_all(&done.logs);
                }
                expected += 1;
                let run = match done.run {
                    Ok(run) if !run.failed() => run,
                    other => {
                        // The lowest failing seed: everything below it passed.
                        stop.store(true, Ordering::SeqCst);
                        failure = Some((done.seed, other));
                        return;
                    }
                };
                if let SeedRun::Ran(r) = &run {
                    sim_us += r.simulated_us;
                    stalls += r.stall.is_some() as u64;
                    inconclusive += !r.inconclusive.is_empty() as u64;
                }
                passed += 1;
                if args.json {
                    println!("{}", json_line(done.seed, &run, None));
                }
                if tty {
                    progress(passed, b - a, sim_us, start);
                }
            }
        }
    });
    if tty {
        eprintln!();
    }
    if let Some((seed, run)) = failure {
        let run = run?;
        let command = reproduce(seed, &args.sim, true);
        if args.json {
            println!("{}", json_line(seed, &run, Some(&command)));
        }
        match &run {
            SeedRun::Panicked => {
                out.say(&format!(
                    "seed {seed} of {a}..{b} panicked in the simulator itself"
                ));
                out.say(&format!("reproduce: {command}"));
            }
            SeedRun::Ran(r) => {
                out.say(&format!("seed {seed} of {a}..{b} failed"));
                out.failure(r, &command);
            }
        }
        return Ok(ExitCode::FAILURE);
    }
    // No failure: then no worker stopped early, and every seed was printed.
    assert_eq!(passed, b - a, "a swarm without failure ran every seed");
    let wall = start.elapsed().as_secs_f64();
    out.say(&format!(
        "swarm {a}..{b}: {passed} seeds passed ({stalls} legitimate stalls, {inconclusive} with a linearizability search out of budget), {:.0} simulated s in {:.1} s ({:.0}x real time, i.e. simulated fleet-hours per wall-clock hour, on {jobs} jobs)",
        sim_us as f64 / 1e6,
        wall,
        sim_us as f64 / 1e6 / wall.max(1e-9),
    ));
    Ok(ExitCode::SUCCESS)
}
