//! A bounded swarm inside the normal test suite: every seed draws its own fleet
//! shape and fault mix. Longer swarms belong to the command line:
//! `cargo run --release -p vaultfleet-sim -- swarm --seeds 0..10000`.

use vaultfleet_sim::{run, SimOptions};

#[test]
fn a_bounded_swarm_finds_no_violation() {
    let seeds: u64 = std::env::var("VAULTFLEET_SWARM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    let mut stalls = 0;
    for seed in 0..seeds {
        let mut o = SimOptions::swarm(seed);
        o.safety_ms = 10_000;
        let r = std::panic::catch_unwind(|| run(o))
            .unwrap_or_else(|_| panic!("seed {seed}: the simulator panicked"));
        if let Some(v) = &r.violation {
            panic!(
                "seed {seed} broke \"{}\": {}\nlast events:\n  {}\nreproduce: cargo run --release -p vaultfleet-sim -- run --seed {seed} --swarm --seconds 10",
                v.invariant,
                v.detail,
                r.recent.join("\n  ")
            );
        }
        stalls += r.stall.is_some() as u32;
    }
    eprintln!("{seeds} swarm seeds passed ({stalls} legitimate stalls)");
}

/// `swarm --json` on `--jobs 1` and `--jobs 2`: byte-identical stdout, one JSON
/// object per seed, in seed order, nothing else.
#[test]
fn parallel_swarm_json_matches_the_sequential_one() {
    let swarm = |jobs: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vaultfleet-sim"))
            .args([
                "swarm",
                "--seeds",
                "100..120",
                "--seconds",
                "2",
                "--json",
                "--jobs",
                jobs,
            ])
            .output()
            .expect("run vaultfleet-sim");
        let stdout = String::from_utf8(out.stdout).expect("utf-8 stdout");
        assert!(
            out.status.success(),
            "--jobs {jobs}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let sequential = swarm("1");
    let parallel = swarm("2");
    assert_eq!(sequential, parallel, "--jobs 2 changed the output");
    let lines: Vec<serde_json::Value> = sequential
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let seeds: Vec<u64> = lines.iter().filter_map(|v| v["seed"].as_u64()).collect();
    assert_eq!(seeds, (100..120).collect::<Vec<_>>());
    for v in &lines {
        let outcome = v["outcome"].as_str().unwrap_or_default();
        assert!(matches!(outcome, "ok" | "inconclusive"), "{v}");
        assert!(v["events"].as_u64().is_some_and(|e| e > 0), "{v}");
        assert!(v["sim_us"].as_u64().is_some_and(|t| t >= 2_000_000), "{v}");
        assert!(v["replicas"].as_u64().is_some_and(|r| r >= 3), "{v}");
        assert!(v["datacenters"].as_u64().is_some(), "{v}");
        assert!(
            matches!(v["workload"].as_str(), Some("vault" | "counter")),
            "{v}"
        );
    }
    // The per-seed results are those of `run --swarm`: the same trace as a run
    // of the library on the same options.
    let mut o = SimOptions::swarm(107);
    o.safety_ms = 2_000;
    let r = run(o);
    assert_eq!(lines[7]["trace"].as_str(), Some(r.trace.as_str()));
    assert_eq!(lines[7]["events"].as_u64(), Some(r.stats.events));
}
