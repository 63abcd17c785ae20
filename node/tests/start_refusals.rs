//! A node refuses to start, touching nothing in its data directory, with a
//! wrong PKCS#11 PIN, a corrupt config, or a data directory that belongs to
//! another replica. The control: the same fixture (tests/common) starts,
//! serves a vault client over the network, and stops.
// Tests of sockets and processes run in wall-clock time, every wait bounded.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use std::sync::Arc;

use common::{chain, snapshot, Fixture, FLEET, GROUP, READY_WAIT};
use vaultfleet::hsm::{DeviceFault, HsmError};
use vaultfleet_net::open::OpenClientConfig;
use vaultfleet_node::config::NodeConfig;
use vaultfleet_node::hsm::HsmOpenError;
use vaultfleet_node::run::{DataDirError, RunningNode, StartError};
use vaultfleet_vault::{
    BundleTrust, KsfParams, RemoteVaultEndpoint, ServerTrust, VaultClient, VaultClientConfig,
    VaultEndpoint,
};

#[test]
fn a_one_voter_fleet_starts_serves_a_vault_client_and_restarts_on_its_data() {
    let f = Fixture::new(&[(1, "dc-a")]);
    let path = f.write_config(1, "node.toml", &f.config_text(1, &[1], None, None));
    let node = RunningNode::start(NodeConfig::load(&path).unwrap()).unwrap();
    assert!(node.wait_ready(READY_WAIT), "the node serves");
    assert_eq!(node.status().leader, Some(1));
    let now = f.now;
    let trust = BundleTrust::new(f.verifier.clone(), Arc::new(move || now));
    let client = |address| {
        VaultClient::with_verifier(
            vec![Arc::new(
                RemoteVaultEndpoint::new(
                    1,
                    address,
                    FLEET,
                    ServerTrust::Bundles(Arc::clone(&trust)),
                    OpenClientConfig::default(),
                )
                .unwrap(),
            ) as Arc<dyn VaultEndpoint>],
            GROUP,
            f.verifier.clone(),
            Arc::new(move || now),
            VaultClientConfig {
                ksf: KsfParams::TESTS_ONLY,
                ..VaultClientConfig::default()
            },
        )
        .unwrap()
    };
    let c = client(node.vault_addr());
    assert_eq!(c.register(b"user-1", b"code", b"secret").unwrap(), 1);
    assert_eq!(c.recover(b"user-1", b"code").unwrap().as_slice(), b"secret");
    let probe = node.probe();
    assert_eq!(probe.hsm_health(), Ok(()));
    assert_eq!(probe.disk_health(), Ok(()));
    node.stop().unwrap();

    // A restart opens the same sealed store: the registration is there.
    let node = RunningNode::start(NodeConfig::load(&path).unwrap()).unwrap();
    assert!(node.wait_ready(READY_WAIT));
    let c = client(node.vault_addr());
    assert_eq!(c.recover(b"user-1", b"code").unwrap().as_slice(), b"secret");
    node.stop().unwrap();
}

#[test]
fn a_data_directory_of_another_replica_is_refused_untouched() {
    let f = Fixture::new(&[(1, "dc-a"), (2, "dc-b")]);
    let data = f.run_once(1);
    let before = snapshot(&data);
    assert!(!before.is_empty());
    let text = f.config_text(2, &[1, 2], None, Some(&data));
    let path = f.write_config(2, "node.toml", &text);
    let e = RunningNode::start(NodeConfig::load(&path).unwrap()).unwrap_err();
    assert!(
        matches!(e, StartError::DataDir(DataDirError::Foreign { .. })),
        "{e:?}"
    );
    let text = chain(&e);
    assert!(text.contains("replica 1 of group 1"), "{text}");
    assert!(text.contains("not to replica 2"), "{text}");
    assert_eq!(snapshot(&data), before, "the data directory is untouched");

    // A non-empty folder that is no node's data directory is refused too.
    let stranger = f.root().join("stranger");
    std::fs::create_dir_all(&stranger).unwrap();
    std::fs::write(stranger.join("notes.txt"), b"mine").unwrap();
    let before = snapshot(&stranger);
    let path = f.write_config(
        2,
        "stranger.toml",
        &f.config_text(2, &[1, 2], None, Some(&stranger)),
    );
    let e = RunningNode::start(NodeConfig::load(&path).unwrap()).unwrap_err();
    assert!(
        matches!(e, StartError::DataDir(DataDirError::NotADataDir { .. })),
        "{e:?}"
    );
    assert_eq!(snapshot(&stranger), before);
}

#[test]
fn a_corrupt_config_is_refused_and_the_data_directory_untouched() {
    let f = Fixture::new(&[(1, "dc-a"), (2, "dc-b")]);
    let data = f.run_once(1);
    let before = snapshot(&data);
    let good = f.config_text(1, &[1, 2], None, None);
    // Cut short in the middle of a table.
    let cut = &good[..good.find("[vault]").unwrap() + 12];
    let path = f.write_config(1, "cut.toml", cut);
    assert!(NodeConfig::load(&path).is_err());
    // A stray byte sequence.
    let path = f.write_config(1, "garbage.toml", "fleet_id = \"x\"\n\u{0}\u{1}[[[");
    assert!(NodeConfig::load(&path).is_err());
    // Well-formed but inconsistent: this node's [[peer]] table pins another key.
    let own_key = &f.replicas[&1].1;
    let other_key = &f.replicas[&2].1;
    let swapped = good
        .replacen(own_key.as_str(), "SWAP", 1)
        .replacen(other_key.as_str(), own_key, 1)
        .replacen("SWAP", other_key, 1);
    let path = f.write_config(1, "swapped.toml", &swapped);
    let e = RunningNode::start(NodeConfig::load(&path).unwrap()).unwrap_err();
    assert!(
        matches!(e, StartError::TransportKeyMismatch { .. }),
        "{e:?}"
    );
    assert_eq!(snapshot(&data), before, "the data directory is untouched");
    // The good config still starts on it.
    let path = f.write_config(1, "good.toml", &good);
    let node = RunningNode::start(NodeConfig::load(&path).unwrap()).unwrap();
    node.stop().unwrap();
}

#[test]
fn a_wrong_pkcs11_pin_is_refused_and_the_data_directory_untouched() {
    let Some(module) = vaultfleet::hsm::softhsm2_module() else {
        panic!("SoftHSM2 is required (apt-get install softhsm2)");
    };
    let f = Fixture::new(&[(1, "dc-a")]);
    let data = f.run_once(1);
    let before = snapshot(&data);
    let token_dir = f.root().join("softhsm");
    std::fs::create_dir_all(&token_dir).unwrap();
    let token = vaultfleet::hsm::softhsm2_throwaway_token(&token_dir, "node-1", "right-pin-1234")
        .expect("a SoftHSM2 token");
    drop(token);
    let pin_file = f.root().join("node-1").join("hsm.pin");
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut p = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&pin_file)
            .unwrap();
        p.write_all(b"wrong-pin-9999\n").unwrap();
    }
    let hsm = format!(
        "kind = \"pkcs11\"\nmodule = \"{}\"\ntoken_label = \"node-1\"\npin_file = \"{}\"\n",
        module.display(),
        pin_file.display()
    );
    let path = f.write_config(1, "pkcs11.toml", &f.config_text(1, &[1], Some(&hsm), None));
    let e = RunningNode::start(NodeConfig::load(&path).unwrap()).unwrap_err();
    assert!(
        matches!(
            &e,
            StartError::Hsm(HsmOpenError::Pkcs11 {
                source: HsmError::Unusable(DeviceFault::WrongPin { .. }),
                ..
            })
        ),
        "{e:?}"
    );
    let text = chain(&e);
    assert!(
        text.contains("user PIN of token \"node-1\" is wrong"),
        "{text}"
    );
    assert!(
        !text.contains("wrong-pin-9999"),
        "the PIN is never shown: {text}"
    );
    assert_eq!(snapshot(&data), before, "the data directory is untouched");
}
