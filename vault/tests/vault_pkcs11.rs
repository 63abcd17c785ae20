//! The vault's keys in a PKCS#11 HSM (SoftHSM2 on a throw-away token): the sealed
//! OPAQUE server setup, the record key, the registration MAC key and the response
//! signing key all live in the token, and a whole register / wrong code / right
//! code cycle runs against the real `BackupVault`.
#![cfg(feature = "pkcs11")]

use rand::SeedableRng;
use vaultfleet::hsm::{softhsm2_throwaway_token, verify_signature};
use vaultfleet::StateMachine;
use vaultfleet_vault::wire::{
    vault_client_request, VaultClientRequest, VaultLoginFinish, VaultOutcome, VaultReply,
    VaultReplyBody, VaultRequestId,
};
use vaultfleet_vault::{
    authenticate_request, registration_secret_digest, BackupVault, ClientLoginFlow,
    ClientRegistrationFlow, KsfParams, Registration, RegistrationTerms, UserId, UserView,
    VaultKeys, VaultServer,
};

const KSF: KsfParams = KsfParams::TESTS_ONLY;

fn outcome(bytes: &[u8]) -> VaultOutcome {
    vaultfleet::wire::decode(bytes, "outcome").expect("outcome")
}

fn id(sequence: u64) -> VaultRequestId {
    let mut id = VaultRequestId::new();
    id.client = 1;
    id.sequence = sequence;
    id
}

#[test]
fn the_vault_runs_on_keys_held_by_softhsm2() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let hsm = softhsm2_throwaway_token(dir.path(), "vaultfleet-vault", "1234")
        .unwrap_or_else(|e| panic!("{e}"));
    let sealed = VaultKeys::provision(&hsm).expect("provision");
    let keys = VaultKeys::open(hsm.clone(), &sealed, 1, 1).expect("open");
    let public = keys.response_public_key().expect("public key");
    let server = VaultServer::new(keys);
    let mut vault = BackupVault::new();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
    let (user, code, secret) = (
        &UserId::new(b"victor".as_slice()).expect("user id"),
        b"right code".as_slice(),
        b"key".as_slice(),
    );

    let flow = ClientRegistrationFlow::start_with_insecure_rng(&mut rng, code).expect("flow");
    let digest = registration_secret_digest(user, secret);
    let started = server
        .registration_start(
            user,
            flow.request(),
            &RegistrationTerms {
                max_attempts: 2,
                secret_digest: &digest,
                issued_generation: 0,
            },
        )
        .expect("start");
    let upload = flow
        .finish_with_insecure_rng(&mut rng, code, &started.response, &KSF)
        .expect("upload");
    let register = server
        .register_command(
            &id(1),
            user,
            &Registration {
                upload: &upload,
                nonce: &started.nonce,
                tag: &started.tag,
                secret,
                max_attempts: 2,
                issued_generation: started.issued_generation,
            },
        )
        .expect("register command");
    assert!(
        !register.windows(secret.len()).any(|w| w == secret),
        "the command carries the secret sealed, not in clear"
    );
    vault.apply(1, &register);

    for (index, guess, right) in [(2, b"wrong".as_slice(), false), (3, code, true)] {
        let login = ClientLoginFlow::start_with_insecure_rng(&mut rng, guess).expect("login");
        let consume = server
            .consume_command(&id(index), user, login.request())
            .expect("consume");
        let o = outcome(&vault.apply(index * 10, &consume));
        let (pending, response) = server
            .login_respond(
                user,
                login.request(),
                o.ticket,
                o.record.clone().unwrap(),
                o.erased,
            )
            .expect("respond");
        let opened = login
            .finish_with_insecure_rng(&mut rng, guess, &response, &KSF)
            .expect("finish");
        assert_eq!(opened.is_some(), right);
        if let Some(opened) = opened {
            let mut finish = VaultLoginFinish::new();
            finish.credential_finalization = opened.finalization.clone();
            let mut request = VaultClientRequest::new();
            request.request = Some(id(index + 10)).into();
            request.op = Some(vault_client_request::Op::LoginFinish(finish));
            authenticate_request(1, user, &opened.session_key, &mut request);
            let verified = server.login_finish(&pending, &request).expect("proven");
            let reset = outcome(&vault.apply(
                index * 10 + 1,
                &server.reset_command(&verified).expect("reset command"),
            ));
            let record = reset.record.into_option().expect("record");
            assert_eq!(
                server
                    .open_secret(user, &record)
                    .expect("unseal")
                    .as_slice(),
                secret
            );
        }
    }
    assert_eq!(
        vault.user(user.as_bytes()),
        Some(UserView::Registered {
            generation: 1,
            attempts_left: 2,
            max_attempts: 2
        })
    );

    // Replies are signed by the token's Ed25519 key.
    let mut body = VaultReplyBody::new();
    body.detail = "hello".into();
    let reply: VaultReply =
        vaultfleet::wire::decode(&server.sign(body).expect("sign"), "reply").expect("reply");
    let mut signed = b"vaultfleet/vault/reply/v1".to_vec();
    signed.extend_from_slice(&1u64.to_be_bytes());
    signed.extend_from_slice(&reply.body);
    let signature: [u8; 64] = reply.signature.as_slice().try_into().expect("64 bytes");
    assert!(verify_signature(&public, &signed, &signature));
}
