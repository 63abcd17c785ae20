//! Unit tests of the fleet-epoch checker over hand-made replies.

use super::*;

/// A `LoginStart` of client `client`'s device for a user no one registered,
/// answered by service `service` against an empty vault: the reply bytes
/// and the request's digest.
fn reply_of(w: &mut VaultWorkload, client: usize, service: usize) -> (Vec<u8>, [u8; 32]) {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let flow = ClientLoginFlow::start_with_insecure_rng(&mut rng, b"a code")
        .unwrap_or_else(|e| panic!("a login flow starts: {e}"));
    let mut start = VaultLoginStart::new();
    start.user = user_id(0).as_bytes().to_vec();
    start.credential_request = flow.request().to_vec();
    w.slot(client);
    let r = w.request(client, vault_client_request::Op::LoginStart(start));
    let bytes = vaultfleet_vault::wire::encode_bounded(&r);
    let digest: [u8; 32] = Sha256::digest(&bytes).into();
    let mut machine = BackupVault::new();
    let core = &w.services[service].core;
    let mut progress = core.begin(&bytes, w.now);
    let mut index = 0;
    let reply = loop {
        match progress {
            Progress::Reply(reply) => break reply,
            Progress::Wait { call, step } => {
                let out = match step {
                    FleetStep::Propose(c) => {
                        index += 1;
                        machine.apply(index, &c)
                    }
                    FleetStep::Read(q) => machine.query(&q),
                };
                progress = core.resume(call, Ok(out), w.now);
            }
        }
    };
    (reply, digest)
}

/// `reply` with `retirement` appended to the retirements it carries (as
/// the network attacker may: they are outside the signed body).
fn with_retirement(reply: &[u8], retirement: Vec<u8>) -> Vec<u8> {
    let mut r: VaultReply = vaultfleet_vault::wire::decode(reply, "reply")
        .unwrap_or_else(|e| panic!("a service's reply decodes: {e}"));
    r.retirements.push(retirement);
    vaultfleet_vault::wire::encode_bounded(&r)
}

/// Review finding 2 (checker (a) counted retirements decoded from the raw
/// reply, unchecked): a reply carrying a byte-altered copy of a published
/// retirement, with a bundle of epoch 1 (still good: the retirement does not
/// verify), is accepted and is no violation; the genuine retirement makes the
/// same bundle refused, and counts.
#[test]
fn a_tampered_retirement_with_an_in_grace_bundle_is_no_violation() {
    let mut w = VaultWorkload::with_services(2, 5, 11, 3);
    // Replica 1 is replaced by 4 (epoch 2), and the operator retires epoch 1;
    // replica 2's service has not reloaded yet: it still serves epoch 1.
    w.membership_change(&MemberChange::Joining {
        id: 4,
        datacenter: "dc-0".into(),
        replacing: Some(1),
    });
    w.epochs.retire(1, 0);
    let (_, genuine) = w.epochs.retirements.last().cloned().expect("a retirement");
    let mut tampered = genuine.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    // It still decodes (the old checker counted it), but fails its check.
    assert!(vaultfleet_audit::EpochRetirement::decode(&tampered).is_ok());
    assert_eq!(w.epochs.published_retirement(&tampered), None);
    assert_eq!(w.services[1].epoch, 1, "replica 2 still serves epoch 1");

    let (reply, digest) = reply_of(&mut w, 0, 1);
    let altered = with_retirement(&reply, tampered);
    let body = w.check_reply(0, 1, &digest, &altered);
    assert!(body.is_ok(), "the epoch-1 reply is accepted: {body:?}");
    assert_eq!(w.facts.errors, Vec::<String>::new());
    let trust = w.trust(0);
    assert_eq!((trust.newest, trust.retired), (1, 0));

    // The genuine retirement: the verifier retires epoch 1 and refuses the
    // same bundle; the checker counts it.
    let (reply, digest) = reply_of(&mut w, 0, 1);
    let retired = with_retirement(&reply, genuine.clone());
    assert!(w.check_reply(0, 1, &digest, &retired).is_err());
    assert_eq!(w.facts.errors, Vec::<String>::new());
    assert_eq!(w.trust(0).retired, 1);

    // A reply refused by the shape check (no bundle) hands nothing.
    let mut r: VaultReply = vaultfleet_vault::wire::decode(&reply, "reply").expect("decodes");
    r.bundle.clear();
    r.retirements.push(genuine);
    let shapeless = vaultfleet_vault::wire::encode_bounded(&r);
    assert_eq!(w.retired_through_in(&shapeless), 0);
}
