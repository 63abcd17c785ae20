//! The `vaultfleet-sim` command line: `--help` for every subcommand; a misspelled
//! flag, a malformed value or a refused combination is a usage error (exit 2),
//! never silently the default run; a failing run's reproduce line carries the
//! flags it ran with.

use std::process::{Command, Output};

fn sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vaultfleet-sim"))
        .args(args)
        .output()
        .expect("run vaultfleet-sim")
}

fn usage_error(args: &[&str], needle: &str) {
    let out = sim(args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stdout}{stderr}");
    assert!(stdout.is_empty(), "{args:?} ran anyway: {stdout}");
    assert!(stderr.contains("error:"), "{args:?}: {stderr}");
    assert!(
        stderr.contains(needle),
        "{args:?}: no {needle:?} in {stderr}"
    );
}

#[test]
fn every_subcommand_has_help() {
    for args in [&["--help"][..], &["run", "--help"], &["swarm", "--help"]] {
        let out = sim(args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args:?}");
        assert!(stdout.contains("Usage:"), "{args:?}: {stdout}");
    }
    let help = String::from_utf8_lossy(&sim(&["run", "--help"]).stdout).into_owned();
    for flag in [
        "--seed",
        "--swarm",
        "--replicas",
        "--crash-after-vote",
        "--disk-bug",
        "--trace",
    ] {
        assert!(help.contains(flag), "run --help lacks {flag}");
    }
}

#[test]
fn bad_flags_are_usage_errors_not_the_default_run() {
    usage_error(&["run", "--seed", "7", "--replica", "3"], "--replicas");
    usage_error(&["run", "--replicas", "3"], "--seed");
    usage_error(&["run", "--seed", "seven"], "--seed");
    usage_error(&["run", "--seed", "7", "--drop", "1.5"], "probability");
    usage_error(&["run", "--seed", "7", "--workload", "kv"], "counter");
    usage_error(&["run", "--seed", "7", "--disk-bug", "lie"], "lie-on-sync");
    usage_error(
        &["run", "--seed", "7", "--heartbeat-ticks", "40"],
        "--election-ticks",
    );
    usage_error(&["run", "--seed", "7", "--attempts", "0"], "--attempts");
    usage_error(&["swarm", "--seeds", "5..3"], "empty");
    usage_error(&["swarm", "--seeds", "0-10"], "A..B");
    usage_error(&["swarm", "--seeds", "0..2", "--trace"], "--trace");
    usage_error(&["walk"], "walk");
}

/// A run's flags for the deliberate disk defect the checkers catch: silent
/// corruption, plain stores, 10 s, the counter workload (whose draws do not
/// move when the vault protocol does).
const SILENT_CORRUPTION: [&str; 7] = [
    "--plain",
    "--disk-bug",
    "silent-corruption",
    "--seconds",
    "10",
    "--workload",
    "counter",
];

#[test]
fn a_run_prints_its_trace_and_a_failure_its_reproduce_line() {
    let ok = sim(&[
        "run",
        "--seed",
        "3",
        "--workload",
        "counter",
        "--seconds",
        "1",
        "--clients",
        "2",
    ]);
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("seed=3 ") && last.contains(" trace="),
        "{last}"
    );

    // A deliberate disk defect the checkers catch. Which seeds show it moves
    // with every change to the engine's messages (about 2 in 3 of seeds 1..30
    // fail at 10 s, with the counter workload and `--prefer 0`), so the test
    // takes the first failing seed from 3 on instead of naming one.
    let (seed, failed) = (3..23)
        .map(|seed| {
            let seed_arg = seed.to_string();
            let head = ["run", "--seed", &seed_arg, "--prefer", "0"];
            (seed, sim(&[&head[..], &SILENT_CORRUPTION].concat()))
        })
        .find(|(_, out)| out.status.code() != Some(0))
        .expect("no seed in 3..23 caught the silent corruption");
    let stdout = String::from_utf8_lossy(&failed.stdout);
    assert_eq!(failed.status.code(), Some(1), "seed {seed}: {stdout}");
    let reproduce = stdout
        .lines()
        .find(|l| l.starts_with("reproduce: "))
        .unwrap_or_else(|| panic!("no reproduce line in {stdout}"));
    for part in [
        &format!("run --seed {seed} ")[..],
        "--seconds 10",
        "--disk-bug silent-corruption",
        "--plain",
        "--workload counter",
        "--prefer 0",
    ] {
        assert!(reproduce.contains(part), "{reproduce} lacks {part}");
    }
}

#[test]
fn swarm_jobs_and_json_flags() {
    let help = String::from_utf8_lossy(&sim(&["swarm", "--help"]).stdout).into_owned();
    for flag in ["--jobs", "--json", "--seeds"] {
        assert!(help.contains(flag), "swarm --help lacks {flag}");
    }
    usage_error(&["swarm", "--seeds", "0..2", "--jobs", "0"], "--jobs");
    usage_error(&["swarm", "--seeds", "0..2", "--jobs", "many"], "--jobs");
}

/// A failing swarm stops at the lowest failing seed whatever `--jobs` is, with
/// the same stdout: under `--json`, only JSON lines, the last one the failure with
/// its reproduce command (the human report goes to stderr).
#[test]
fn a_failing_parallel_swarm_reports_the_lowest_failing_seed() {
    let swarm = |jobs: &str| {
        let head = ["swarm", "--seeds", "0..30"];
        let tail = ["--json", "--jobs", jobs];
        let out = sim(&[&head[..], &SILENT_CORRUPTION, &tail].concat());
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
        (stdout, stderr)
    };
    let (sequential, stderr) = swarm("1");
    for jobs in ["2", "3"] {
        let (parallel, _) = swarm(jobs);
        assert_eq!(sequential, parallel, "--jobs {jobs} changed the output");
    }
    let lines: Vec<serde_json::Value> = sequential
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let last = lines.last().expect("at least the failing seed");
    let seed = last["seed"].as_u64().expect("a seed");
    assert_eq!(last["outcome"], "violation", "{last}");
    assert!(last["checker"].as_str().is_some(), "{last}");
    for (i, v) in lines[..lines.len() - 1].iter().enumerate() {
        assert_eq!(v["seed"].as_u64(), Some(i as u64), "{v}");
        assert_ne!(v["outcome"], "violation", "{v}");
    }
    assert_eq!(seed, lines.len() as u64 - 1);
    let command = last["reproduce"].as_str().expect("a reproduce command");
    assert!(
        command.contains(&format!("run --seed {seed} --swarm")),
        "{command}"
    );
    assert!(
        stderr.contains(&format!("reproduce: {command}")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("seed {seed} of 0..30 failed")),
        "{stderr}"
    );
}
