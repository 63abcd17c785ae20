//! The whole flow on one machine through the `vaultfleet` binary: create two
//! fleet epochs, witness and countersign them, assemble evidence, and audit it.
//! Tampered evidence and a re-signing attempt are refused with a failing exit.

mod common;

use common::{ok, p, run};

const NS: &str = "example.vault.fleet_keys.v1";

#[test]
fn two_epochs_witnessed_countersigned_assembled_and_audited() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let (fleet, witness) = (p(dir, "fleet"), p(dir, "witness"));
    for (epoch, replicas, t) in [
        ("1", "1:dc-a,2:dc-a,3:dc-b,4:dc-b,5:dc-c", "1800000100"),
        ("2", "1:dc-a,2:dc-b,3:dc-b,4:dc-c,6:dc-c", "1800000200"),
    ] {
        ok(&[
            "fleet",
            "create",
            "--dir",
            &fleet,
            "--fleet-id",
            "example",
            "--epoch",
            epoch,
            "--replicas",
            replicas,
            "--not-before",
            "1800000000",
        ]);
        let artifact = p(dir, &format!("fleet/epoch-{epoch}/artifact.bin"));
        ok(&[
            "witness",
            "sign",
            "--dir",
            &witness,
            "--namespace",
            NS,
            "--artifact",
            &artifact,
            "--time",
            t,
        ]);
        ok(&[
            "operator",
            "countersign",
            "--dir",
            &fleet,
            "--epoch",
            epoch,
            "--witness-dir",
            &witness,
            "--namespace",
            NS,
        ]);
        ok(&[
            "evidence",
            "assemble",
            "--dir",
            &fleet,
            "--epoch",
            epoch,
            "--witness-dir",
            &witness,
            "--namespace",
            NS,
            "--out",
            &p(dir, &format!("evidence-{epoch}.bin")),
            "--time",
            t,
        ]);
    }
    let pins = p(dir, "pins.txt");
    ok(&[
        "audit",
        "pins",
        "--dir",
        &fleet,
        "--witness-dir",
        &witness,
        "--namespace",
        NS,
        "--out",
        &pins,
    ]);
    let report = ok(&[
        "audit",
        "verify",
        &p(dir, "evidence-2.bin"),
        "--pins",
        &pins,
        "--now",
        "1800001000",
    ]);
    assert!(
        report.contains("every check passed") && !report.contains("[FAIL]"),
        "{report}"
    );
    let log = ok(&[
        "audit",
        "log",
        "--witness-dir",
        &witness,
        "--pins",
        &pins,
        "--evidence",
        &p(dir, "evidence-1.bin"),
        "--evidence",
        &p(dir, "evidence-2.bin"),
    ]);
    assert!(
        log.contains("consistency 1 -> 2") && log.contains("log verified"),
        "{log}"
    );
    let diff = ok(&[
        "audit",
        "diff",
        &p(dir, "evidence-1.bin"),
        &p(dir, "evidence-2.bin"),
    ]);
    assert!(
        diff.contains("replica 5 (dc-c) removed") && diff.contains("replica 6 (dc-c) added"),
        "{diff}"
    );

    // A flipped byte anywhere in the evidence is refused, never accepted.
    let good = std::fs::read(dir.join("evidence-2.bin")).unwrap();
    for at in 0..good.len() {
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        std::fs::write(dir.join("bad.bin"), &bad).unwrap();
        let (success, text) = run(&[
            "audit",
            "verify",
            &p(dir, "bad.bin"),
            "--pins",
            &pins,
            "--now",
            "1800001000",
        ]);
        assert!(!success, "byte {at} flipped, yet accepted:\n{text}");
    }
    // Expired at audit time.
    let (success, text) = run(&[
        "audit",
        "verify",
        &p(dir, "evidence-2.bin"),
        "--pins",
        &pins,
        "--now",
        "1900000000",
    ]);
    assert!(
        !success && text.contains("[FAIL] validation bundle"),
        "{text}"
    );
    // A witness whose state was rolled back to epoch 1 signs another epoch 2:
    // its bundle verifies on its own, but the log walk sees the fork.
    let fork = dir.join("witness-fork");
    std::fs::create_dir_all(&fork).unwrap();
    for f in ["witness.hsm", "keys.txt"] {
        std::fs::copy(dir.join("witness").join(f), fork.join(f)).unwrap();
    }
    let state = std::fs::read_to_string(dir.join("witness/witness.state")).unwrap();
    std::fs::write(
        fork.join("witness.state"),
        state.lines().next().unwrap().to_string() + "\n",
    )
    .unwrap();
    let fleet_b = p(dir, "fleet-b");
    ok(&[
        "fleet",
        "create",
        "--dir",
        &fleet_b,
        "--fleet-id",
        "example",
        "--epoch",
        "2",
        "--replicas",
        "1:dc-a,2:dc-b,3:dc-c",
        "--not-before",
        "1800000000",
    ]);
    ok(&[
        "witness",
        "sign",
        "--dir",
        &fork.display().to_string(),
        "--namespace",
        NS,
        "--artifact",
        &p(dir, "fleet-b/epoch-2/artifact.bin"),
        "--time",
        "1800000250",
    ]);
    std::fs::copy(
        dir.join("fleet/operator.hsm"),
        dir.join("fleet-b/operator.hsm"),
    )
    .unwrap();
    ok(&[
        "operator",
        "countersign",
        "--dir",
        &fleet_b,
        "--epoch",
        "2",
        "--witness-dir",
        &fork.display().to_string(),
        "--namespace",
        NS,
    ]);
    ok(&[
        "evidence",
        "assemble",
        "--dir",
        &fleet_b,
        "--epoch",
        "2",
        "--witness-dir",
        &fork.display().to_string(),
        "--namespace",
        NS,
        "--out",
        &p(dir, "forked.bin"),
        "--time",
        "1800000250",
    ]);
    let (success, text) = run(&[
        "audit",
        "log",
        "--witness-dir",
        &witness,
        "--pins",
        &pins,
        "--evidence",
        &p(dir, "evidence-2.bin"),
        "--evidence",
        &p(dir, "forked.bin"),
    ]);
    assert!(
        !success && text.contains("forked"),
        "the fork went unnoticed:\n{text}"
    );

    // The witness will not sign epoch 1 again, nor reuse a digest.
    let (success, text) = run(&[
        "witness",
        "sign",
        "--dir",
        &witness,
        "--namespace",
        NS,
        "--artifact",
        &p(dir, "fleet/epoch-1/artifact.bin"),
        "--time",
        "1800000300",
    ]);
    assert!(!success && text.contains("refused"), "{text}");
}
