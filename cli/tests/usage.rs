//! The command line itself: every subcommand has `--help`; a misspelled flag, a
//! missing one or a malformed value is a usage error (exit 2, with the usage),
//! never ignored; a failing command prints its error with the chain of causes.

use std::process::{Command, Output};

fn vaultfleet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vaultfleet"))
        .args(args)
        .output()
        .expect("run vaultfleet")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `args` and expects a usage error naming `needle`.
fn usage_error(args: &[&str], needle: &str) {
    let out = vaultfleet(args);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stdout}{stderr}");
    assert!(stdout.is_empty(), "{args:?} printed to stdout: {stdout}");
    assert!(stderr.contains("error:"), "{args:?}: {stderr}");
    assert!(
        stderr.contains(needle),
        "{args:?}: no {needle:?} in {stderr}"
    );
}

const SUBCOMMANDS: [&[&str]; 8] = [
    &["fleet", "create"],
    &["witness", "sign"],
    &["operator", "countersign"],
    &["evidence", "assemble"],
    &["audit", "pins"],
    &["audit", "verify"],
    &["audit", "log"],
    &["audit", "diff"],
];

#[test]
fn every_subcommand_has_help() {
    for sub in SUBCOMMANDS {
        let mut args = sub.to_vec();
        args.push("--help");
        let out = vaultfleet(&args);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{args:?}: {stderr}");
        let usage = format!("Usage: vaultfleet {}", sub.join(" "));
        assert!(stdout.contains(&usage), "{args:?}: {stdout}");
    }
    for group in [&["--help"][..], &["fleet", "--help"], &["audit", "--help"]] {
        let out = vaultfleet(group);
        assert!(out.status.success(), "{group:?}");
        assert!(text(&out).0.contains("Usage: vaultfleet"), "{group:?}");
    }
}

#[test]
fn misspelled_missing_and_malformed_flags_are_usage_errors() {
    // A misspelled flag is refused with a hint, not ignored.
    usage_error(
        &[
            "audit",
            "verify",
            "e.bin",
            "--pins",
            "p.txt",
            "--replcia",
            "3",
        ],
        "--replica",
    );
    usage_error(
        &[
            "fleet",
            "create",
            "--dir",
            "d",
            "--fleet-id",
            "f",
            "--epoch",
            "1",
            "--replica",
            "1:a",
        ],
        "Usage:",
    );
    // A required flag left out.
    usage_error(
        &["witness", "sign", "--dir", "w", "--namespace", "n"],
        "--artifact",
    );
    // Malformed values.
    usage_error(
        &[
            "fleet",
            "create",
            "--dir",
            "d",
            "--fleet-id",
            "f",
            "--epoch",
            "one",
            "--replicas",
            "1:a",
        ],
        "--epoch",
    );
    usage_error(
        &[
            "fleet",
            "create",
            "--dir",
            "d",
            "--fleet-id",
            "f",
            "--epoch",
            "1",
            "--replicas",
            "1-dc-a",
        ],
        "ID:DATACENTER",
    );
    usage_error(
        &[
            "witness",
            "sign",
            "--dir",
            "w",
            "--namespace",
            "n",
            "--artifact",
            "a",
            "--key",
            "w@soon",
        ],
        "not_before",
    );
    usage_error(&["audit", "diff", "a.bin"], "<B>");
    usage_error(&["audit", "frobnicate"], "frobnicate");
    // No command at all: the help, on stderr, and exit 2.
    let out = vaultfleet(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("Usage: vaultfleet <COMMAND>"));
}

#[test]
fn a_failing_command_prints_its_chain_of_causes() {
    let d = tempfile::tempdir().unwrap();
    let pins = d.path().join("missing-pins.txt");
    let out = vaultfleet(&["audit", "verify", "e.bin", "--pins", pins.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("missing-pins.txt"), "{stderr}");
    assert!(stderr.contains("caused by:"), "{stderr}");

    // A pins file with a bad line names the file and the line.
    std::fs::write(&pins, "namespace n\nwitness w 0 zz\n").unwrap();
    let out = vaultfleet(&["audit", "verify", "e.bin", "--pins", pins.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("line 2"), "{stderr}");
}
