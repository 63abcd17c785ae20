//! `vaultfleet-sim`: run one seeded simulation, or a swarm of them.
//!
//! ```text
//! cargo run --release -p vaultfleet-sim -- run --seed 7
//! cargo run --release -p vaultfleet-sim -- swarm --seeds 0..1000
//! ```
// The command line measures wall-clock speed and draws a progress bar; the
// simulation itself never reads a clock.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Instant;

use vaultfleet_sim::{run, DiskBug, Faults, Report, SimOptions, WorkloadKind};

const USAGE: &str = "usage:
  vaultfleet-sim run --seed S [options]      one simulation; prints a summary, last line seed=S ... trace=<hex>
  vaultfleet-sim swarm --seeds A..B [options] many seeds, each with its own fleet shape and fault mix;
                                              stops at the first violation with the command that reproduces it
options:
  --swarm                 (run) draw the fleet shape and faults from the seed, as swarm does
  --replicas N            replicas (default 5)
  --datacenters D         datacenters (default 3)
  --clients C             concurrent clients (default 8)
  --seconds T             virtual seconds of the safety phase (default 20)
  --liveness-seconds L    bound on the liveness phase (default 20)
  --faults none|all       fault mix when not --swarm (default all)
  --drop P --duplicate P --jitter F --delay-spike P --partition P --heal P --crash P
  --crash-after-vote P --clock-drift F --clock-jump P --hsm-outage P --bit-flip P --rollback P
                          override one fault rate (0 switches it off)
  --workload vault|counter
                          the Backup Key Vault with real OPAQUE logins (default), or the bare
                          guess counter with a linearizability model (swarm draws one per seed)
  --users N --attempts A  users (keys) and attempts per registration (defaults 16 and 10)
  --plain                 unsealed stores (no HSM)
  --election-ticks N --heartbeat-ticks N
                          raft timing in ticks of 10 ms (defaults 30 and 3)
  --disk-bug lie-on-sync|forget-vote|silent-corruption
                          switch on a deliberate disk defect, on plain stores (to watch a checker catch it)
  --trace                 print the last events even when nothing failed";

fn value<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn parse<T: std::str::FromStr>(args: &[String], name: &str) -> Result<Option<T>, String> {
    match value(args, name) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| format!("{name}: cannot parse {v:?}")),
    }
}

fn options(args: &[String], seed: u64, swarm: bool) -> Result<SimOptions, String> {
    let mut o = if swarm {
        SimOptions::swarm(seed)
    } else {
        SimOptions::new(seed)
    };
    if let Some(n) = parse(args, "--replicas")? {
        o.replicas = n;
    }
    if let Some(d) = parse(args, "--datacenters")? {
        o.datacenters = d;
    }
    if let Some(c) = parse(args, "--clients")? {
        o.clients = c;
    }
    if let Some(t) = parse::<f64>(args, "--seconds")? {
        o.safety_ms = (t * 1000.0) as u64;
    }
    if let Some(t) = parse::<f64>(args, "--liveness-seconds")? {
        o.liveness_ms = (t * 1000.0) as u64;
    }
    match value(args, "--faults") {
        None => {}
        Some("none") => o.faults = Faults::none(),
        Some("all") => o.faults = Faults::all(),
        Some(other) => return Err(format!("--faults: expected none or all, not {other:?}")),
    }
    let f = &mut o.faults;
    for (name, slot) in [
        ("--drop", &mut f.drop),
        ("--duplicate", &mut f.duplicate),
        ("--jitter", &mut f.jitter),
        ("--delay-spike", &mut f.delay_spike),
        ("--partition", &mut f.partition_rate),
        ("--heal", &mut f.heal_rate),
        ("--crash", &mut f.crash_rate),
        ("--crash-after-vote", &mut f.crash_after_vote),
        ("--clock-drift", &mut f.clock_drift),
        ("--clock-jump", &mut f.clock_jump_rate),
        ("--hsm-outage", &mut f.hsm_outage_rate),
        ("--bit-flip", &mut f.bit_flip_rate),
        ("--rollback", &mut f.rollback_rate),
    ] {
        if let Some(p) = parse::<f64>(args, name)? {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("{name}: {p} is not a probability"));
            }
            *slot = p;
        }
    }
    match value(args, "--workload") {
        None => {}
        Some("vault") => o.workload = WorkloadKind::Vault,
        Some("counter") => o.workload = WorkloadKind::Counter,
        Some(other) => {
            return Err(format!(
                "--workload: expected vault or counter, not {other:?}"
            ))
        }
    }
    if let Some(u) = parse(args, "--users")? {
        o.keys = u;
    }
    if let Some(a) = parse(args, "--attempts")? {
        o.attempt_limit = a;
    }
    if o.keys == 0 || o.attempt_limit == 0 || o.attempt_limit > 255 {
        return Err("--users must be at least 1 and --attempts within 1..=255".into());
    }
    if args.iter().any(|a| a == "--plain") {
        o.sealed = false;
    }
    if let Some(t) = parse(args, "--election-ticks")? {
        o.election_ticks = t;
    }
    if let Some(t) = parse(args, "--heartbeat-ticks")? {
        o.heartbeat_ticks = t;
    }
    o.disk_bug = match value(args, "--disk-bug") {
        None | Some("none") => DiskBug::None,
        Some("lie-on-sync") => DiskBug::LieOnSync,
        Some("forget-vote") => DiskBug::ForgetVote,
        Some("silent-corruption") => DiskBug::SilentCorruption,
        Some(other) => return Err(format!("--disk-bug: unknown defect {other:?}")),
    };
    if o.disk_bug != DiskBug::None {
        // The defects live below the sealed store's view (it keeps the vote in its
        // sealed head, and refuses a disk that lies): watch them on plain stores.
        o.sealed = false;
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
    Ok(o)
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
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("run") => cmd_run(&args),
        Some("swarm") => cmd_swarm(&args),
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

fn reproduce(seed: u64, args: &[String], swarm: bool) -> String {
    let mut cmd = format!("cargo run --release -p vaultfleet-sim -- run --seed {seed}");
    if swarm {
        cmd.push_str(" --swarm");
    }
    let mut i = 1;
    while i < args.len() {
        let a = &args[i];
        if a == "--seed" || a == "--seeds" {
            i += 2;
            continue;
        }
        if a != "--swarm" && a != "--trace" {
            cmd.push(' ');
            cmd.push_str(a);
        }
        i += 1;
    }
    cmd
}

fn cmd_run(args: &[String]) -> Result<ExitCode, String> {
    let seed = parse(args, "--seed")?.ok_or("run needs --seed S")?;
    let swarm = args.iter().any(|a| a == "--swarm");
    let opts = options(args, seed, swarm)?;
    let start = Instant::now();
    let report = run(opts);
    let wall = start.elapsed().as_secs_f64();
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
    let failed = report.violation.is_some();
    if failed {
        print_failure(&report, &reproduce(seed, args, swarm));
    } else {
        println!("ok: every checker passed");
        if args.iter().any(|a| a == "--trace") {
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

fn cmd_swarm(args: &[String]) -> Result<ExitCode, String> {
    let range = value(args, "--seeds").ok_or("swarm needs --seeds A..B")?;
    let (a, b) = range
        .split_once("..")
        .ok_or_else(|| format!("--seeds: expected A..B, not {range:?}"))?;
    let (a, b): (u64, u64) = (
        a.parse().map_err(|_| format!("--seeds: bad start {a:?}"))?,
        b.parse().map_err(|_| format!("--seeds: bad end {b:?}"))?,
    );
    if b <= a {
        return Err("--seeds: the range is empty".into());
    }
    let tty = std::io::stderr().is_terminal();
    let start = Instant::now();
    let (mut sim_us, mut stalls, mut inconclusive) = (0u64, 0u64, 0u64);
    for seed in a..b {
        let opts = options(args, seed, true)?;
        let Ok(report) = std::panic::catch_unwind(|| run(opts)) else {
            if tty {
                eprintln!();
            }
            println!("seed {seed} of {a}..{b} panicked in the simulator itself");
            println!("reproduce: {}", reproduce(seed, args, true));
            return Ok(ExitCode::FAILURE);
        };
        if !report.inconclusive.is_empty() {
            inconclusive += 1;
        }
        sim_us += report.simulated_us;
        if report.stall.is_some() {
            stalls += 1;
        }
        if report.violation.is_some() {
            if tty {
                eprintln!();
            }
            println!("seed {seed} of {a}..{b} failed");
            print_failure(&report, &reproduce(seed, args, true));
            return Ok(ExitCode::FAILURE);
        }
        let done = seed - a + 1;
        if tty {
            let total = b - a;
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
    }
    if tty {
        eprintln!();
    }
    let wall = start.elapsed().as_secs_f64();
    println!(
        "swarm {a}..{b}: {} seeds passed ({stalls} legitimate stalls, {inconclusive} with a linearizability search out of budget), {:.0} simulated s in {:.1} s ({:.0}x real time)",
        b - a,
        sim_us as f64 / 1e6,
        wall,
        sim_us as f64 / 1e6 / wall.max(1e-9)
    );
    Ok(ExitCode::SUCCESS)
}
