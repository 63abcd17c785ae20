//! `vaultfleet-model`: checks the login protocol's model under larger bounds
//! than the test suite, and optionally replays seeded random walks through the
//! real service.
//!
//! ```text
//! cargo run --release -p vaultfleet-model -- --attempts 3 --services 2 --logins 4 \
//!     --crashes 1 --leader-changes 1 --drops 1 --replays 1 [--threads 2] [--walks 100 --steps 40 --seed 1]
//! ```

use std::process::ExitCode;

use vaultfleet_model::{check, describe, replay, Bounds};

fn usage() -> ExitCode {
    eprintln!(
        "usage: vaultfleet-model [--attempts N] [--services 1|2] [--logins N] [--crashes N] \
         [--leader-changes N] [--drops N] [--replays N] [--threads N] \
         [--walks N] [--steps N] [--seed N]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut bounds = Bounds::default();
    let (mut threads, mut walks, mut steps, mut seed) = (1usize, 0usize, 40usize, 1u64);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let Some(Ok(v)) = args.next().map(|v| v.parse::<u64>()) else {
            return usage();
        };
        let small = u8::try_from(v).unwrap_or(u8::MAX);
        match flag.as_str() {
            "--attempts" => bounds.max_attempts = small.clamp(1, 5),
            "--services" => bounds.services = small.clamp(1, 2),
            "--logins" => bounds.logins = small.min(8),
            "--crashes" => bounds.crashes = small,
            "--leader-changes" => bounds.leader_changes = small,
            "--drops" => bounds.drops = small,
            "--replays" => bounds.replays = small,
            "--threads" => threads = v.max(1) as usize,
            "--walks" => walks = v as usize,
            "--steps" => steps = v as usize,
            "--seed" => seed = v,
            _ => return usage(),
        }
    }
    let report = check(bounds, threads);
    println!("{report}");
    let mut failed = false;
    for name in report.violated() {
        failed = true;
        if let Some(path) = report.counterexample(name) {
            println!("counterexample to \"{name}\":\n{}", describe(path));
        }
    }
    if walks > 0 {
        match replay::random_walks(bounds, seed, walks, steps) {
            Ok(s) => println!("replayed through the real service (seed {seed}): {s:?}"),
            Err((walk_seed, e)) => {
                failed = true;
                println!("replay failed, walk seed {walk_seed}: {e}");
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
