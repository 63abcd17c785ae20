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
