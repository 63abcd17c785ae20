//! Streamed snapshots in the simulator: the stores keep snapshot files, the
//! replicas hand their builds to the simulator, snapshots travel as chunks
//! into the receivers' files; every checker holds, the runs repeat exactly,
//! the flag really changes the path taken, and a damaged snapshot file is
//! refused, never served.

use std::process::Command;

use vaultfleet_sim::{run, Report, SimOptions, WorkloadKind};

/// A short streamed run of `seed`, snapshots every 50 entries so that many
/// are taken and some are sent.
fn streamed(seed: u64, workload: WorkloadKind) -> SimOptions {
    let mut o = SimOptions::new(seed);
    o.safety_ms = 6_000;
    o.snapshot_entries = 50;
    o.workload = workload;
    o.streamed_snapshots = true;
    o
}

fn assert_clean(seed: u64, r: &Report) {
    assert!(
        r.violation.is_none(),
        "seed {seed}: {:?}\n{}",
        r.violation,
        r.recent.join("\n")
    );
    assert!(r.stats.ops_completed > 0, "seed {seed}: the workload ran");
}

#[test]
fn streamed_runs_pass_every_checker() {
    let mut restored_off_thread = 0;
    for seed in 1..=4 {
        let workload = if seed % 2 == 0 {
            WorkloadKind::Vault
        } else {
            WorkloadKind::Counter
        };
        let r = run(streamed(seed, workload));
        assert_clean(seed, &r);
        assert!(
            r.stats.snapshots_streamed > 0,
            "seed {seed}: no streamed snapshot was built: {:?}",
            r.stats
        );
        if workload == WorkloadKind::Vault {
            restored_off_thread += r.stats.snapshots_restored_off_thread;
        } else {
            // The counter machine offers no blank: it restores in place.
            assert_eq!(r.stats.snapshots_restored_off_thread, 0, "seed {seed}");
        }
    }
    assert!(
        restored_off_thread > 0,
        "no vault seed restored a snapshot off the replica's thread"
    );
    // Plain stores (unsealed files) too.
    for seed in 5..=6 {
        let mut o = streamed(seed, WorkloadKind::Counter);
        o.sealed = false;
        let r = run(o);
        assert_clean(seed, &r);
        assert!(r.stats.snapshots_streamed > 0, "seed {seed}: {:?}", r.stats);
    }
}

#[test]
fn the_flag_takes_the_streamed_path_and_off_it_does_not() {
    // Across a few seeds, snapshots are built off the replica and some are
    // sent as chunks into a lagging follower's files and installed.
    let mut installs = 0;
    for seed in 1..=6 {
        let on = run(streamed(seed, WorkloadKind::Counter));
        assert_clean(seed, &on);
        installs += on.stats.streamed_installs;
        let mut o = streamed(seed, WorkloadKind::Counter);
        o.streamed_snapshots = false;
        let off = run(o);
        assert_clean(seed, &off);
        assert_eq!(
            off.stats.snapshots_streamed, 0,
            "seed {seed}: {:?}",
            off.stats
        );
        assert_eq!(
            off.stats.streamed_installs, 0,
            "seed {seed}: {:?}",
            off.stats
        );
        assert_ne!(on.trace, off.trace, "seed {seed}: the flag changed nothing");
    }
    assert!(
        installs > 0,
        "no streamed snapshot was ever sent and installed"
    );
}

#[test]
fn the_same_streamed_seed_gives_the_same_trace() {
    for seed in [3, 8] {
        let a = run(streamed(seed, WorkloadKind::Vault));
        let b = run(streamed(seed, WorkloadKind::Vault));
        assert_eq!(a.trace, b.trace, "seed {seed}: traces differ");
        assert_eq!(a.stats, b.stats, "seed {seed}: stats differ");
        assert_clean(seed, &a);
    }
}

#[test]
fn the_default_stays_inline() {
    let o = SimOptions::new(1);
    assert!(!o.streamed_snapshots);
    assert!(!SimOptions::swarm(1).streamed_snapshots);
}

#[test]
fn a_damaged_snapshot_file_is_refused_never_served() {
    // Bit flips, half of them into the snapshot file the
    // durable snapshot names: each damaged replica must refuse to start from
    // it (lost for good), else the storage checker reports a violation.
    let mut flipped = 0;
    let mut seeds = Vec::new();
    for seed in 1..=24 {
        let mut o = streamed(seed, WorkloadKind::Counter);
        // Rare enough that the flips (at most a minority of replicas lost)
        // are not all spent before the first snapshots.
        o.safety_ms = 10_000;
        o.faults.bit_flip_rate = 0.05;
        o.faults.rollback_rate = 0.0;
        let r = run(o);
        assert_clean(seed, &r);
        if r.stats.snapshot_file_flips > 0 {
            assert!(
                r.stats.replicas_lost > 0,
                "seed {seed}: a file was damaged, no replica refused it: {:?}",
                r.stats
            );
            flipped += r.stats.snapshot_file_flips;
            seeds.push(seed);
        }
    }
    assert!(
        seeds.len() >= 2,
        "snapshot files were damaged in seeds {seeds:?} of 1..=24 only (damage was hardly tried)"
    );
    eprintln!("{flipped} snapshot files damaged and refused in seeds {seeds:?}");
}

#[test]
fn the_command_line_flag_and_json_lines() {
    let sim = |extra: &[&str]| {
        let mut args = vec!["swarm", "--seeds", "0..3", "--json", "--seconds", "2"];
        args.extend_from_slice(extra);
        let out = Command::new(env!("CARGO_BIN_EXE_vaultfleet-sim"))
            .args(&args)
            .output()
            .expect("run vaultfleet-sim");
        assert!(out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let on = sim(&["--streamed"]);
    let off = sim(&[]);
    assert_eq!(on.lines().count(), 3, "{on}");
    for line in on.lines() {
        assert!(line.contains("\"streamed\":true"), "{line}");
    }
    for line in off.lines() {
        assert!(line.contains("\"streamed\":false"), "{line}");
        assert!(line.contains("\"snapshots_streamed\":0"), "{line}");
    }
    // A share: some seeds streamed, the others exactly as without it.
    let share = sim(&["--streamed-share", "0.5"]);
    let mut inline = 0;
    for (s, o) in share.lines().zip(off.lines()) {
        if s.contains("\"streamed\":false") {
            assert_eq!(s, o, "a seed left inline changed its run");
            inline += 1;
        }
    }
    // Seeds 0..3 under a share of 0.5: 0 and 2 inline, 1 streamed.
    assert_eq!(inline, 2, "{share}");
}
