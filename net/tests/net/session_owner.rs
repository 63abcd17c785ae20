//! Sessions belong to the client key that registered them (the attacker review
//! of the client protocol, H3): a node's front end stamps every registration
//! and every command with the authenticated key, so a holder of another allowed
//! key can neither apply commands in a session that is not its own nor read the
//! responses cached there (for the vault: outcomes holding records).
// Tests of real sockets wait in wall-clock time.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use crate::common;

use std::sync::Arc;

use common::{remote_config, TcpFleet, GROUP, WAIT};
use vaultfleet::replica::{Reply, RequestError};
use vaultfleet::runtime::{ClientConfig, NodeApi, ResponseSlot};
use vaultfleet::wire::Request;
use vaultfleet::KvStore;
use vaultfleet_net::{RemoteClient, StaticSecret};

/// Sends `request` to every node until one that leads answers it.
fn propose_anywhere(nodes: &[Arc<dyn NodeApi>], request: &Request) -> Result<Reply, RequestError> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        for node in nodes {
            let slot = ResponseSlot::default();
            if node
                .propose_into(request.clone(), Arc::clone(&slot))
                .is_err()
            {
                continue;
            }
            match slot.wait(WAIT).unwrap_or(Err(RequestError::TimedOut)) {
                Err(RequestError::NotLeader { .. } | RequestError::Stopped) => continue,
                other => return other,
            }
        }
        assert!(std::time::Instant::now() < deadline, "no leader answered");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn review_client_h3_a_session_is_usable_only_by_the_key_that_registered_it() {
    let alice = StaticSecret::generate().unwrap();
    let alice_key = alice.public_key();
    let mallory = StaticSecret::generate().unwrap();
    let fleet = TcpFleet::start(vec![alice.public_key(), mallory.public_key()], KvStore::new);
    fleet.wait_leader();
    let alice_remote =
        RemoteClient::start(fleet.client_directory(alice), remote_config()).expect("client");
    let session = alice_remote
        .session(GROUP, ClientConfig::default())
        .expect("alice's session");
    session
        .propose(KvStore::put("secret", "alice's value"))
        .expect("alice writes in her session");

    let mallory_remote =
        RemoteClient::start(fleet.client_directory(mallory), remote_config()).expect("client");
    let nodes = mallory_remote.nodes(GROUP).expect("nodes");
    // Sequence 1 of alice's session is applied and its response cached: a
    // replay of it by another key gets neither the response nor a new apply,
    // and neither does a fresh sequence.
    for (sequence, command) in [
        (1, KvStore::put("secret", "alice's value")),
        (2, KvStore::put("secret", "mallory's value")),
    ] {
        let mut r = Request::new();
        r.client_id = session.session();
        r.sequence = sequence;
        r.acked_below = 1;
        r.command = command.into();
        // Whatever owner a client writes (alice's key here) is replaced by
        // its own authenticated key.
        r.owner = alice_key.as_bytes().to_vec().into();
        assert_eq!(
            propose_anywhere(&nodes, &r),
            Err(RequestError::NotSessionOwner {
                client_id: session.session()
            }),
            "sequence {sequence}"
        );
    }
    assert_eq!(
        KvStore::decode_response(&session.read(KvStore::get("secret")).expect("read")).expect("kv"),
        Some(b"alice's value".to_vec()),
        "nothing of mallory's was applied"
    );
    // Mallory's own session works.
    let own = mallory_remote
        .session(GROUP, ClientConfig::default())
        .expect("mallory's session");
    own.propose(KvStore::put("other", "v"))
        .expect("own session");
}
