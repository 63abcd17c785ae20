//! The public log through the `vaultfleet` binary, as an operator and an
//! auditor run it: a served witness (`witness serve`), two independent
//! cosigners (`cosigner serve`), the operator's signed submissions (`witness
//! submit`), evidence assembled from the served, cosigned log (`evidence
//! assemble --witness-url`), and the auditor's `audit verify` (2 of 2
//! cosigners pinned), `audit log --url` (twice: the second run checks the new
//! checkpoint against the one it kept) and `audit bundle --url`. Every server
//! listens on 127.0.0.1 with a port the OS picks, is stopped with SIGTERM and
//! exits 0; a failing test kills them when their handles drop.

// A test of server processes reads the clock, sleeps and reads their output on a thread.
#![allow(clippy::disallowed_methods)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use common::{bin, ok, p, run};

const NS: &str = "example.vault.fleet_keys.v1";

/// A server process; killed on drop unless stopped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    /// Starts `vaultfleet ARGS` and reads the URL from its first line
    /// (`... on http://ADDR`), waiting at most 30 s.
    fn start(args: &[&str]) -> Server {
        let mut child = bin()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn vaultfleet");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            // Drain the rest, so the server never writes to a closed pipe.
            let mut rest = String::new();
            while reader.read_line(&mut rest).is_ok_and(|n| n > 0) {
                rest.clear();
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the server printed its address");
        let url = line
            .trim()
            .rsplit_once(" on ")
            .map(|(_, u)| u.to_string())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        Server { child, url }
    }

    fn stop(mut self) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "the server exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "the server did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn an_operator_publishes_through_a_served_cosigned_log_and_an_auditor_checks_it_over_http() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let (fleet, witness) = (p(dir, "fleet"), p(dir, "witness"));
    let not_before = (now() - 3600).to_string();
    let create = |epoch: &str, replicas: &str| {
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
            &not_before,
        ]);
    };
    create("1", "1:dc-a,2:dc-b,3:dc-c");
    let log_vkey = ok(&["witness", "vkey", "--dir", &witness])
        .lines()
        .next()
        .unwrap()
        .to_string();
    let mut cosigner_vkeys = Vec::new();
    for i in 1..=2 {
        let v = ok(&[
            "cosigner",
            "init",
            "--dir",
            &p(dir, &format!("cosigner-{i}")),
            "--name",
            &format!("cosigner-{i}.example"),
        ]);
        cosigner_vkeys.push(v.trim().to_string());
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
        "--cosigner",
        &cosigner_vkeys[0],
        "--cosigner",
        &cosigner_vkeys[1],
        "--cosigners-required",
        "2",
    ]);
    let pins_text = std::fs::read_to_string(&pins).unwrap();
    assert!(pins_text.contains("cosigners 2\n"), "{pins_text}");
    let operator_key = pins_text
        .lines()
        .find_map(|l| l.strip_prefix("operator "))
        .unwrap()
        .to_string();

    let log_arg = format!("{NS}={log_vkey}");
    let cosigners: Vec<Server> = (1..=2)
        .map(|i| {
            Server::start(&[
                "cosigner",
                "serve",
                "--dir",
                &p(dir, &format!("cosigner-{i}")),
                "--name",
                &format!("cosigner-{i}.example"),
                "--listen",
                "127.0.0.1:0",
                "--log",
                &log_arg,
            ])
        })
        .collect();
    let c1 = format!("{},{}", cosigners[0].url, cosigner_vkeys[0]);
    let c2 = format!("{},{}", cosigners[1].url, cosigner_vkeys[1]);
    let log = Server::start(&[
        "witness",
        "serve",
        "--dir",
        &witness,
        "--listen",
        "127.0.0.1:0",
        "--operator-key",
        &operator_key,
        "--cosigner",
        &c1,
        "--cosigner",
        &c2,
    ]);

    let keep = p(dir, "kept-checkpoints");
    for epoch in ["1", "2"] {
        if epoch == "2" {
            create("2", "1:dc-a,2:dc-b,4:dc-c");
        }
        ok(&[
            "witness",
            "submit",
            "--url",
            &log.url,
            "--dir",
            &fleet,
            "--namespace",
            NS,
            "--artifact",
            &p(dir, &format!("fleet/epoch-{epoch}/artifact.bin")),
            "--witness-vkey",
            &log_vkey,
        ]);
        let evidence = p(dir, &format!("evidence-{epoch}.bin"));
        ok(&[
            "evidence",
            "assemble",
            "--dir",
            &fleet,
            "--epoch",
            epoch,
            "--witness-url",
            &log.url,
            "--witness-vkey",
            &log_vkey,
            "--namespace",
            NS,
            "--out",
            &evidence,
        ]);
        let verified = ok(&["audit", "verify", &evidence, "--pins", &pins]);
        assert!(verified.contains("every check passed"), "{verified}");
        let walked = ok(&[
            "audit", "log", "--url", &log.url, "--pins", &pins, "--keep", &keep,
        ]);
        assert!(walked.contains("log verified"), "{walked}");
        assert!(
            walked.contains("[pass] cosignatures: 2 of 2 pinned cosigners, 2 required"),
            "{walked}"
        );
        if epoch == "2" {
            // The checkpoint kept from the first run, extended by this one.
            assert!(walked.contains("consistency 1 -> 2"), "{walked}");
        }
        let bundle = ok(&[
            "audit", "bundle", &evidence, "--url", &log.url, "--pins", &pins,
        ]);
        assert!(bundle.contains("it is in the served log"), "{bundle}");
    }
    // The operator's submission replayed is refused by the witness's rules.
    let (success, text) = run(&[
        "witness",
        "submit",
        "--url",
        &log.url,
        "--dir",
        &fleet,
        "--namespace",
        NS,
        "--artifact",
        &p(dir, "fleet/epoch-2/artifact.bin"),
        "--witness-vkey",
        &log_vkey,
    ]);
    assert!(!success && text.contains("409"), "{text}");

    log.stop();
    for c in cosigners {
        c.stop();
    }
}
