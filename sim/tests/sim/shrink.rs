//! `vaultfleet-sim shrink` on a planted bug: a disk that acknowledges writes
//! it never made durable (`--disk-bug lie-on-sync`). The shrink must print a
//! command that reproduces the same violation on a strictly smaller run.

use std::collections::BTreeMap;
use std::process::Command;

use vaultfleet_sim::{run, DiskBug, Faults, SimOptions, WorkloadKind};

/// The planted runs: the guess counter on plain stores that lie on sync,
/// with crashes and partitions.
const FLAGS: &[&str] = &[
    "--workload",
    "counter",
    "--seconds",
    "8",
    "--plain",
    "--faults",
    "none",
    "--crash",
    "0.3",
    "--partition",
    "0.1",
    "--heal",
    "0.3",
    "--drop",
    "0.02",
    "--disk-bug",
    "lie-on-sync",
];

fn planted(seed: u64) -> SimOptions {
    let mut o = SimOptions::new(seed);
    o.workload = WorkloadKind::Counter;
    o.safety_ms = 8_000;
    o.sealed = false;
    o.faults = Faults::none();
    o.faults.crash_rate = 0.3;
    o.faults.partition_rate = 0.1;
    o.faults.heal_rate = 0.3;
    o.faults.drop = 0.02;
    o.disk_bug = DiskBug::LieOnSync;
    o
}

fn sim(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_vaultfleet-sim"))
        .args(args)
        .output()
        .expect("run vaultfleet-sim");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `--flag value` pairs of a command line.
fn flags(cmd: &[&str]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for w in cmd.windows(2) {
        if let Some(flag) = w[0].strip_prefix("--") {
            if !w[1].starts_with("--") {
                out.insert(flag.to_string(), w[1].to_string());
            }
        }
    }
    out
}

/// Shrinks `seed`'s run, which broke `invariant`: the printed command must
/// reproduce the same violation, on a run no larger in any dimension.
/// Returns the command and whether it is strictly smaller in one.
fn shrink(seed: u64, invariant: &str) -> (String, bool) {
    let seed_arg = seed.to_string();
    let mut args = vec!["shrink", "--seed", &seed_arg, "--max-runs", "120"];
    args.extend_from_slice(FLAGS);
    let out = sim(&args);
    assert!(
        out.contains(&format!("shrinking \"{invariant}\"")),
        "seed {seed}:\n{out}"
    );
    let smallest = out
        .lines()
        .find_map(|l| l.strip_prefix("smallest: "))
        .unwrap_or_else(|| panic!("seed {seed}: no smallest command in\n{out}"));
    let run_args: Vec<&str> = smallest
        .split_once(" -- ")
        .expect("a cargo run command")
        .1
        .split(' ')
        .collect();
    // The command reproduces the same violation.
    let replay = sim(&run_args);
    assert!(
        replay.contains(&format!("VIOLATION of \"{invariant}\"")),
        "seed {seed}: `{smallest}` did not reproduce:\n{replay}"
    );
    let start = planted(seed);
    let f = flags(&run_args);
    let num = |k: &str| f[k].parse::<f64>().unwrap();
    let dims = [
        ("replicas", start.replicas as f64),
        ("datacenters", start.datacenters as f64),
        ("clients", start.clients as f64),
        ("users", start.keys as f64),
        ("seconds", start.safety_ms as f64 / 1000.0),
        ("crash", start.faults.crash_rate),
        ("partition", start.faults.partition_rate),
        ("drop", start.faults.drop),
        ("jitter", start.faults.jitter),
    ];
    for (k, was) in dims {
        assert!(num(k) <= was, "seed {seed}: --{k} {} > {was}", f[k]);
    }
    let smaller = dims.iter().any(|(k, was)| num(k) < *was);
    (smallest.to_string(), smaller)
}

#[test]
fn the_printed_command_reproduces_a_planted_safety_bug_on_a_strictly_smaller_run() {
    // Seeds whose runs break a safety invariant (not only liveness: a lying
    // disk also stalls fleets, which is the easy case). A violation can need
    // the whole run (since leaders send appends before their sync, seed 19's
    // lost write reproduces on no smaller one): every shrink must print a
    // command that reproduces it, and one of the first three must be
    // strictly smaller.
    let broken: Vec<(u64, &str)> = (0..200)
        .filter_map(|seed| {
            let r = run(planted(seed));
            let v = r.violation?;
            (!v.invariant.starts_with("liveness")).then_some((seed, v.invariant))
        })
        .take(3)
        .collect();
    assert!(
        !broken.is_empty(),
        "a seed in 0..200 breaks a safety invariant with a lying disk"
    );
    let mut tried = Vec::new();
    for (seed, invariant) in &broken {
        eprintln!("seed {seed}: \"{invariant}\"");
        let (smallest, smaller) = shrink(*seed, invariant);
        if smaller {
            return;
        }
        tried.push(format!("seed {seed}: `{smallest}`"));
    }
    panic!(
        "no shrink was strictly smaller than its start:\n{}",
        tried.join("\n")
    );
}
