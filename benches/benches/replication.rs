//! The hot paths above storage: propose → commit on an in-process fleet, and the
//! vault's consume-attempt round trip.
//!
//! * `propose_commit/{members}`: one client proposes and waits (latency of one
//!   commit through the threaded runtime, `MemLog`, dataless state machine).
//! * `propose_commit_64/{members}`: one client keeps 64 proposals in flight and
//!   waits for all (group commit).
//! * `vault/consume_round_trip`: the CPU cost of one attempt, sans-IO: the
//!   service builds the `consume`, the vault applies it, the service answers
//!   with OPAQUE, the client opens the answer (Argon2id at `TESTS_ONLY` cost, so
//!   the figure is the vault's, not the KSF's).
//! * `vault/recover_on_fleet`: a whole right-code recovery through `VaultClient`,
//!   `VaultService` and a 3-replica fleet (two commits).
//!
//! `cargo bench -p vaultfleet-bench --bench replication`
// A benchmark runs real threads.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use vaultfleet::replica::ReplicaConfig;
use vaultfleet::runtime::{Client, ClientConfig, Node, NodeConfig, NodeHandle};
use vaultfleet::{ChannelNetwork, FleetConfig, MemLog, MemberSpec, Replica, SoftHsm, StateMachine};
use vaultfleet_bench::Noop;
use vaultfleet_vault::wire::{
    vault_client_request, VaultClientRequest, VaultLoginFinish, VaultOutcome, VaultRequestId,
};
use vaultfleet_vault::{
    authenticate_request, BackupVault, ClientLoginFlow, ClientRegistrationFlow, KsfParams,
    Registration, UserId, VaultClient, VaultClientConfig, VaultEndpoint, VaultKeys,
    VaultPublicKeys, VaultServer, VaultService, VaultServiceConfig,
};

struct Fleet {
    nodes: Vec<Node>,
    _net: ChannelNetwork,
}

impl Fleet {
    fn start<S: StateMachine + Default>(members: u64) -> Fleet {
        let dcs = ["dc-a", "dc-b", "dc-c"];
        let config = FleetConfig::new(
            (1..=members)
                .map(|id| MemberSpec::voter(id, dcs[(id as usize - 1) % 3]))
                .collect(),
        );
        let net = ChannelNetwork::new();
        let nodes = (1..=members)
            .map(|id| {
                let mut log = MemLog::new();
                Replica::bootstrap(&mut log, &S::default(), &config).expect("bootstrap");
                let node = Node::spawn(
                    NodeConfig::new(ReplicaConfig::new(id)),
                    log,
                    S::default(),
                    net.transport(id),
                )
                .expect("spawn");
                net.register(id, Arc::new(node.handle()));
                node
            })
            .collect();
        Fleet { nodes, _net: net }
    }

    fn handles(&self) -> Vec<NodeHandle> {
        self.nodes.iter().map(Node::handle).collect()
    }
}

fn propose_commit(c: &mut Criterion) {
    let mut g = c.benchmark_group("propose_commit");
    g.measurement_time(Duration::from_secs(5));
    for members in [1u64, 3, 5] {
        let fleet = Fleet::start::<Noop>(members);
        let client = Client::connect(fleet.handles(), ClientConfig::default()).expect("client");
        client.propose(b"warm-up".to_vec()).expect("warm-up");
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::from_parameter(members), &members, |b, _| {
            b.iter(|| client.propose(vec![7u8; 64]).expect("commit"))
        });
        let group = 64;
        g.throughput(Throughput::Elements(group));
        g.bench_with_input(
            BenchmarkId::new("in_flight_64", members),
            &members,
            |b, _| {
                b.iter(|| {
                    let pending: Vec<_> = (0..group)
                        .map(|_| client.propose_async(vec![7u8; 64]))
                        .collect();
                    for p in pending {
                        p.wait().expect("commit");
                    }
                })
            },
        );
    }
    g.finish();
}

fn outcome(bytes: &[u8]) -> VaultOutcome {
    vaultfleet::wire::decode(bytes, "outcome").expect("outcome")
}

fn vault(c: &mut Criterion) {
    let mut g = c.benchmark_group("vault");
    g.measurement_time(Duration::from_secs(5));
    let hsm = SoftHsm::from_seed(1);
    let sealed = VaultKeys::provision(&hsm).expect("provision");
    let server = VaultServer::new(VaultKeys::open(hsm.clone(), &sealed, 1, 1).expect("keys"));
    let ksf = KsfParams::TESTS_ONLY;
    let (user, code) = (b"bench-user".as_slice(), b"bench code".as_slice());
    let user_id = UserId::new(user).expect("user id");
    let mut vault = BackupVault::new();
    let flow = ClientRegistrationFlow::start(code).expect("flow");
    let started = server
        .registration_start(
            &user_id,
            flow.request(),
            &vaultfleet_vault::RegistrationTerms {
                max_attempts: 255,
                secret_digest: &vaultfleet_vault::registration_secret_digest(&user_id, b"secret"),
                issued_generation: 0,
            },
        )
        .expect("start");
    let upload = flow.finish(code, &started.response, &ksf).expect("upload");
    let mut id = VaultRequestId::new();
    id.client = 1;
    id.sequence = 1;
    vault.apply(
        1,
        &server
            .register_command(
                &id,
                &user_id,
                &Registration {
                    upload: &upload,
                    nonce: &started.nonce,
                    tag: &started.tag,
                    secret: b"secret",
                    max_attempts: 255,
                    issued_generation: started.issued_generation,
                },
            )
            .expect("register"),
    );
    let mut index = 2;
    g.bench_function("consume_round_trip", |b| {
        b.iter(|| {
            id.sequence += 1;
            index += 1;
            let login = ClientLoginFlow::start(code).expect("login");
            let consume = server
                .consume_command(&id, &user_id, login.request())
                .expect("consume");
            let o = outcome(&vault.apply(index, &consume));
            let (pending, response) = server
                .login_respond(
                    &user_id,
                    login.request(),
                    o.ticket,
                    o.record.clone().unwrap(),
                    o.erased,
                )
                .expect("respond");
            let opened = login
                .finish(code, &response, &ksf)
                .expect("finish")
                .expect("right code");
            // Forgive it, so the record never runs out of attempts.
            index += 1;
            id.sequence += 1;
            let mut finish = VaultLoginFinish::new();
            finish.credential_finalization = opened.finalization.clone();
            let mut request = VaultClientRequest::new();
            request.request = Some(id.clone()).into();
            request.op = Some(vault_client_request::Op::LoginFinish(finish));
            authenticate_request(1, &user_id, &opened.session_key, &mut request);
            let verified = server.login_finish(&pending, &request).expect("proven");
            vault.apply(index, &server.reset_command(&verified).expect("reset"));
        })
    });

    let fleet = Fleet::start::<BackupVault>(3);
    let handles = fleet.handles();
    let mut pinned = VaultPublicKeys {
        group: 1,
        replicas: BTreeMap::new(),
    };
    let mut services: Vec<Arc<dyn VaultEndpoint>> = Vec::new();
    for id in 1..=3 {
        let keys = VaultKeys::open(hsm.clone(), &sealed, 1, id).expect("keys");
        pinned
            .replicas
            .insert(id, keys.response_public_key().expect("key"));
        services.push(Arc::new(
            VaultService::start(
                VaultServer::new(keys),
                handles.clone(),
                VaultServiceConfig::default(),
            )
            .expect("service"),
        ));
    }
    let cfg = VaultClientConfig {
        ksf,
        ..VaultClientConfig::default()
    };
    let client = VaultClient::new(services, pinned, cfg).expect("the OS RNG");
    client.register(user, code, b"secret").expect("register");
    g.bench_function("recover_on_fleet", |b| {
        b.iter(|| client.recover(user, code).expect("recover"))
    });
    g.finish();
}

criterion_group!(benches, propose_commit, vault);
criterion_main!(benches);
