//! A `VaultService` on a *follower's* host proposing through a remote client
//! session: the vault's register and recover go from the service, over TCP and
//! Noise with the service's client key, to whichever node leads.
// Tests of the threaded runtime wait in wall-clock time, bounded.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{remote_config, TcpFleet, GROUP};
use vaultfleet::runtime::ClientConfig;
use vaultfleet::SoftHsm;
use vaultfleet_net::{RemoteClient, StaticSecret};
use vaultfleet_vault::{
    BackupVault, KsfParams, VaultClient, VaultClientConfig, VaultClientError, VaultEndpoint,
    VaultKeys, VaultPublicKeys, VaultServer, VaultService, VaultServiceConfig,
};

const CODE: &[u8] = b"correct horse battery staple";
const WRONG: &[u8] = b"wrong horse";
const SECRET: &[u8] = b"backup-key:0f1e2d3c4b5a69788796a5b4c3d2e1f0";

#[test]
fn a_vault_service_on_a_followers_host_registers_and_recovers_through_a_remote_session() {
    let service_key = StaticSecret::generate().expect("service key");
    let fleet = TcpFleet::start(vec![service_key.public_key()], BackupVault::new);
    let leader = fleet.wait_leader();
    let follower = common::MEMBERS
        .iter()
        .map(|&(id, _)| id)
        .find(|&id| id != leader)
        .expect("a follower");

    // The follower host's vault service: its replica's keys, and a session
    // over the network (its own node is a follower: proposals go to the leader).
    let world = SoftHsm::from_seed(0x7265_6d6f_7465);
    let sealed_setup = VaultKeys::provision(&world).expect("provision the vault keys");
    let keys = VaultKeys::open(world.clone(), &sealed_setup, GROUP, follower).expect("keys");
    let public = VaultPublicKeys {
        group: GROUP,
        replicas: BTreeMap::from([(follower, keys.response_public_key().expect("key"))]),
    };
    let remote = RemoteClient::start(fleet.client_directory(service_key), remote_config())
        .expect("remote client");
    let session = remote
        .session(GROUP, ClientConfig::default())
        .expect("remote session");
    let service = Arc::new(VaultService::with_client(
        VaultServer::new(keys),
        session,
        VaultServiceConfig::default(),
    ));

    let device = VaultClient::new(
        vec![Arc::clone(&service) as Arc<dyn VaultEndpoint>],
        public,
        VaultClientConfig {
            ksf: KsfParams::TESTS_ONLY,
            backoff: Duration::from_millis(20),
            ..VaultClientConfig::default()
        },
    )
    .expect("the OS RNG");
    assert!(matches!(device.register(b"alice", CODE, SECRET), Ok(1)));
    assert!(matches!(
        device.recover(b"alice", WRONG),
        Err(VaultClientError::WrongCode { .. })
    ));
    assert_eq!(
        device.recover(b"alice", CODE).expect("recover").as_slice(),
        SECRET
    );
    // The service's proposals and reads reached the leader's process over the
    // client protocol.
    let stats = fleet.stats(leader);
    assert!(stats.client_requests > 0, "{stats:#?}");
    assert!(stats.client_connections_accepted >= 1);
    remote.shutdown();
    fleet.shutdown();
}
