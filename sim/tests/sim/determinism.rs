//! Same seed and options, same run, event for event.

use vaultfleet_sim::{run, SimOptions};

fn short(seed: u64) -> SimOptions {
    let mut o = SimOptions::new(seed);
    o.safety_ms = 5_000;
    o
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    for seed in [1, 2, 3] {
        let a = run(short(seed));
        let b = run(short(seed));
        assert_eq!(a.trace, b.trace, "seed {seed}: traces differ");
        assert_eq!(a.stats, b.stats, "seed {seed}: stats differ");
        assert!(a.violation.is_none(), "seed {seed}: {:?}", a.violation);
        assert!(a.stats.ops_completed > 0, "seed {seed}: the workload ran");
    }
}

#[test]
fn different_seeds_give_different_runs() {
    assert_ne!(run(short(1)).trace, run(short(2)).trace);
}

#[test]
fn swarm_options_follow_from_the_seed() {
    assert_eq!(SimOptions::swarm(9), SimOptions::swarm(9));
    let a = run({
        let mut o = SimOptions::swarm(9);
        o.safety_ms = 3_000;
        o
    });
    let b = run({
        let mut o = SimOptions::swarm(9);
        o.safety_ms = 3_000;
        o
    });
    assert_eq!(a.trace, b.trace);
}
