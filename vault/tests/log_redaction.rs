//! Issue 13, finding 7: no vault payload reaches the logs, at any level.
//!
//! One test per process (it installs the global tracing subscriber): every
//! target at TRACE, captured to memory, while a threaded fleet runs a real vault
//! flow: register, a wrong code, the right code. Then the captured text is
//! scanned for the user id, the recovery code and the secret in every form a log
//! line could carry them: raw (as lossy UTF-8), lowercase and uppercase hex,
//! standard and URL-safe base64 (at each of the three byte alignments, so a
//! needle inside a larger encoded buffer is found too), and Rust's `Debug` byte
//! lists (`[1, 2, 3]`, and the same run inside a longer list).
// Tests of the threaded runtime run client threads in wall-clock time.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

#[path = "../../tests/harness/mod.rs"]
mod harness;
#[path = "../../tests/harness/log_scan.rs"]
mod log_scan;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::{no_tweak, Fleet, Store};
use vaultfleet::{FleetConfig, MemberSpec, SoftHsm};
use vaultfleet_vault::{
    BackupVault, KsfParams, VaultClient, VaultClientConfig, VaultClientError, VaultEndpoint,
    VaultKeys, VaultPublicKeys, VaultServer, VaultService, VaultServiceConfig,
};

const USER: &[u8] = b"log-probe-user:9f3c2a71";
const CODE: &[u8] = b"log-probe-code:correct horse 5521";
const WRONG: &[u8] = b"log-probe-wrong:battery 0042";
const SECRET: &[u8] = b"log-probe-secret:e1b7c0d94a2f6835";

/// Everything every subscriber layer writes, appended to one buffer.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn finding_7_no_user_id_code_or_secret_in_trace_logs() {
    let captured = Capture::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .try_init()
        .expect("the only subscriber of this test process");

    // A small threaded fleet with a service beside every node, as vault.rs does.
    let dcs = ["dc-a", "dc-b", "dc-c"];
    let config = FleetConfig::new(
        (1..=3u64)
            .map(|id| MemberSpec::voter(id, dcs[(id as usize - 1) % dcs.len()]))
            .collect(),
    );
    let fleet = Fleet::start_machine(config, Store::Mem, no_tweak, BackupVault::new);
    fleet.wait_leader();
    let world = SoftHsm::from_seed(0x006c_6f67_7363_616e);
    let sealed_setup = VaultKeys::provision(&world).expect("provision the vault keys");
    let mut keys = VaultPublicKeys {
        group: 1,
        replicas: BTreeMap::new(),
    };
    let mut endpoints: Vec<Arc<dyn VaultEndpoint>> = Vec::new();
    for id in 1..=3 {
        let k = VaultKeys::open(world.clone(), &sealed_setup, 1, id).expect("open keys");
        keys.replicas
            .insert(id, k.response_public_key().expect("response key"));
        let service = VaultService::start(
            VaultServer::new(k),
            fleet.handles(),
            VaultServiceConfig::default(),
        )
        .expect("service session");
        endpoints.push(Arc::new(service));
    }
    let client = VaultClient::new(
        endpoints,
        keys,
        VaultClientConfig {
            ksf: KsfParams::TESTS_ONLY,
            backoff: Duration::from_millis(20),
            ..VaultClientConfig::default()
        },
    )
    .expect("the OS RNG");

    client.register(USER, CODE, SECRET).expect("register");
    match client.recover(USER, WRONG) {
        Err(VaultClientError::WrongCode { attempts_left: 9 }) => {}
        other => panic!("a wrong code must spend one attempt, got {other:?}"),
    }
    assert_eq!(
        client.recover(USER, CODE).expect("recover").as_slice(),
        SECRET
    );
    drop(client);
    drop(fleet);

    let text = {
        let bytes = captured.0.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&bytes).into_owned()
    };
    assert!(
        text.contains("raft"),
        "the capture holds raft-rs's own records (did the bridge run?)"
    );
    assert!(
        text.contains("<redacted: "),
        "raft-rs logged messages with payloads, and the bridge redacted them"
    );
    let found = log_scan::leaks(
        &text,
        &[
            ("user id", USER),
            ("recovery code", CODE),
            ("wrong code", WRONG),
            ("secret", SECRET),
        ],
    );
    assert!(
        found.is_empty(),
        "{} log leaks in {} captured bytes:\n{}",
        found.len(),
        text.len(),
        found.join("\n")
    );
}
