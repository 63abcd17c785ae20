//! The operator's calls ([`Admin`]) against an in-process fleet whose replicas
//! each run their own `NetTransport` on loopback (as if each were its own
//! process; after `net/tests/common`'s `TcpFleet`): status, a learner added,
//! promoted and given leadership, a voter removed; an unpinned admin key and a
//! service key are refused and change nothing.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raft::StateRole;
use vaultfleet::replica::{ReplicaConfig, RequestError, Status};
use vaultfleet::runtime::{Node, NodeConfig};
use vaultfleet::{FleetConfig, KvStore, MemLog, MemberSpec, Replica, StateMachine as _};
use vaultfleet_net::{
    ClientRole, NetConfig, NetTransport, PeerDirectory, PeerEntry, PublicKey, StaticSecret,
};
use vaultfleet_node::admin::{
    Admin, AdminConfig, AdminConfigError, AdminError, AdminOptions, DigestReport, KeyFileError,
    ReplicaReport,
};

const GROUP: u64 = 1;
const FLEET: &str = "fleet-admin-tests";
/// The bound of every wait in these tests.
const WAIT: Duration = Duration::from_secs(30);

fn datacenter(id: u64) -> String {
    format!("dc-{id}")
}

/// One replica "process": its transport and its node.
struct Process {
    transport: NetTransport,
    node: Node,
}

struct Fleet {
    secrets: BTreeMap<u64, StaticSecret>,
    addresses: BTreeMap<u64, SocketAddr>,
    /// Client keys every node allows, with their roles.
    clients: Vec<(PublicKey, ClientRole)>,
    processes: BTreeMap<u64, Process>,
}

fn net_config(address: SocketAddr) -> NetConfig {
    let mut c = NetConfig::new(address);
    c.worker_threads = 1;
    c.backoff_max = Duration::from_millis(200);
    c.client_in_flight_max = 16;
    c.write_timeout = Duration::from_secs(1);
    c
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

impl Fleet {
    /// Replicas `1..=voters`, voters of the bootstrap configuration.
    fn start(voters: u64, clients: Vec<(PublicKey, ClientRole)>) -> Fleet {
        Fleet::start_diverged(voters, clients, &[])
    }

    /// [`Fleet::start`], the replicas `diverged` bootstrapped from a state
    /// machine holding one key the others never had (a diverged replica).
    fn start_diverged(
        voters: u64,
        clients: Vec<(PublicKey, ClientRole)>,
        diverged: &[u64],
    ) -> Fleet {
        capture_logs();
        let mut fleet = Fleet {
            secrets: BTreeMap::new(),
            addresses: BTreeMap::new(),
            clients,
            processes: BTreeMap::new(),
        };
        let ids: Vec<u64> = (1..=voters).collect();
        let mut transports = BTreeMap::new();
        for &id in &ids {
            let secret = StaticSecret::generate().expect("key");
            let own = PeerDirectory::new(FLEET, [id], secret.clone()).expect("directory");
            let transport = NetTransport::start(own, net_config(loopback())).expect("transport");
            fleet.addresses.insert(id, transport.local_addr());
            fleet.secrets.insert(id, secret);
            transports.insert(id, transport);
        }
        for (&id, transport) in &transports {
            transport
                .update_directory(fleet.directory(id))
                .expect("update");
        }
        let config = FleetConfig::new(
            ids.iter()
                .map(|&id| MemberSpec::voter(id, datacenter(id)))
                .collect(),
        );
        for (id, transport) in transports {
            let mut log = MemLog::new();
            let mut machine = KvStore::new();
            if diverged.contains(&id) {
                machine.apply(1, &KvStore::put("only-here", "x"));
            }
            Replica::bootstrap(&mut log, &machine, &config).expect("bootstrap");
            fleet.spawn(id, transport, log);
        }
        fleet
    }

    fn spawn(&mut self, id: u64, transport: NetTransport, log: MemLog) {
        let node = Node::spawn(
            NodeConfig::new(ReplicaConfig::new(id)),
            log,
            KvStore::new(),
            Arc::new(transport.clone()),
        )
        .expect("spawn");
        transport
            .register(GROUP, id, Arc::new(node.handle()))
            .expect("register");
        transport
            .serve_clients(GROUP, Arc::new(node.handle()))
            .expect("serve clients");
        self.processes.insert(id, Process { transport, node });
    }

    /// Starts replica `id` with an empty log (to join as a learner), and
    /// pins it in every running node's directory.
    fn start_joiner(&mut self, id: u64) {
        let secret = StaticSecret::generate().expect("key");
        let own = PeerDirectory::new(FLEET, [id], secret.clone()).expect("directory");
        let transport = NetTransport::start(own, net_config(loopback())).expect("transport");
        self.addresses.insert(id, transport.local_addr());
        self.secrets.insert(id, secret);
        transport
            .update_directory(self.directory(id))
            .expect("update");
        for (&other, p) in &self.processes {
            p.transport
                .update_directory(self.directory(other))
                .expect("update");
        }
        self.spawn(id, transport, MemLog::new());
    }

    fn pin_members(&self, d: &mut PeerDirectory) {
        for (&id, address) in &self.addresses {
            d.insert(
                id,
                PeerEntry {
                    address: *address,
                    datacenter: datacenter(id),
                    public_key: self.secrets[&id].public_key(),
                },
            )
            .expect("pin");
        }
    }

    fn directory(&self, id: u64) -> PeerDirectory {
        let mut d = PeerDirectory::new(FLEET, [id], self.secrets[&id].clone()).expect("directory");
        self.pin_members(&mut d);
        for (key, role) in &self.clients {
            d.allow_client_as(*key, *role).expect("client key");
        }
        d
    }

    /// An admin handle proving `secret`, with every replica pinned.
    fn admin(&self, secret: StaticSecret, options: AdminOptions) -> Admin {
        let mut d = PeerDirectory::client(FLEET, secret).expect("client directory");
        self.pin_members(&mut d);
        Admin::new(d, GROUP, options).expect("admin")
    }

    /// Every node's own status (in process, not through the admin).
    fn statuses(&self) -> Vec<Status> {
        self.processes
            .values()
            .map(|p| p.node.handle().status())
            .collect()
    }

    fn shutdown(self) {
        for (_, p) in self.processes {
            p.transport.shutdown();
            p.node.shutdown().expect("clean shutdown");
        }
    }
}

/// Every log line of this test process (the nodes' admin-call lines among
/// them), without colours.
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends the logs to [`LOGS`]: `RUST_LOG` (warnings when unset), and the
/// network server's info lines always.
fn capture_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"))
        .add_directive("vaultfleet_net::server=info".parse().expect("directive"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(|| Capture)
        .try_init();
}

/// The captured log lines naming `key` (its key id, the first 8 bytes).
fn log_lines_of(key: &PublicKey) -> Vec<String> {
    let logs = LOGS.lock().unwrap_or_else(|e| e.into_inner());
    let id = format!("client={key}");
    String::from_utf8_lossy(&logs)
        .lines()
        .filter(|l| l.contains(&id))
        .map(str::to_owned)
        .collect()
}

fn options() -> AdminOptions {
    let mut o = AdminOptions::default();
    o.status_wait = Duration::from_secs(2);
    o.call_timeout = Duration::from_secs(20);
    o.remote.status_interval = Duration::from_millis(50);
    o
}

/// Polls `cond` every 20 ms until it holds; fails once [`WAIT`] has passed.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The statuses of every report, which must all have answered.
fn answered(reports: &[ReplicaReport]) -> Vec<&Status> {
    reports
        .iter()
        .map(|r| r.status.as_ref().expect("every replica answers"))
        .collect()
}

/// Waits until the admin's fresh statuses show one leader that every
/// replica names, all in one term, and every follower caught up; returns
/// the leader.
fn settled_leader(admin: &Admin, replicas: usize) -> u64 {
    let mut leader = 0;
    wait_until("one leader, equal terms, followers caught up", || {
        let reports = admin.status(None).expect("status");
        if reports.len() != replicas || reports.iter().any(|r| r.status.is_none()) {
            return false;
        }
        let statuses = answered(&reports);
        let leaders: Vec<&&Status> = statuses
            .iter()
            .filter(|s| s.role == StateRole::Leader)
            .collect();
        let [l] = leaders.as_slice() else {
            return false;
        };
        leader = l.id;
        statuses
            .iter()
            .all(|s| s.term == l.term && s.leader == Some(l.id))
            && l.followers.len() == replicas - 1
            && l.followers.iter().all(|f| f.lag == 0)
    });
    leader
}

#[test]
fn an_admin_reads_status_adds_promotes_hands_leadership_to_and_removes_replicas() {
    let admin_key = StaticSecret::generate().expect("key");
    let mut fleet = Fleet::start(3, vec![(admin_key.public_key(), ClientRole::Admin)]);
    let admin = fleet.admin(admin_key.clone(), options());

    // Status of every replica: one leader, equal terms, per-follower progress
    // on the leader only, datacenters from the directory.
    let leader = settled_leader(&admin, 3);
    let reports = admin.status(None).expect("status");
    assert_eq!(reports.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 2, 3]);
    for r in &reports {
        assert_eq!(r.datacenter, datacenter(r.id));
        let s = r.status.as_ref().expect("answered");
        assert_eq!(s.id, r.id);
        assert_eq!(s.voters, [1, 2, 3]);
        if s.id == leader {
            let ids: Vec<u64> = s.followers.iter().map(|f| f.id).collect();
            let others: Vec<u64> = [1, 2, 3].into_iter().filter(|&i| i != leader).collect();
            assert_eq!(ids, others);
        } else {
            assert!(s.followers.is_empty(), "{s:?}");
        }
    }
    let one = admin.status(Some(2)).expect("one replica");
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].id, 2);
    assert!(one[0].status.is_some());
    assert!(matches!(
        admin.status(Some(9)),
        Err(AdminError::UnknownReplica { id: 9 })
    ));
    let members = admin.members().expect("members");
    assert_eq!(
        (members.leader, members.voters.as_slice()),
        (leader, &[1, 2, 3][..])
    );
    assert!(members.learners.is_empty());

    // A fourth replica joins as a learner, is promoted and takes the lead.
    fleet.start_joiner(4);
    drop(admin);
    let admin = fleet.admin(admin_key.clone(), options());
    let cs = admin.add_learner(4, &datacenter(4)).expect("add learner");
    assert!(cs.learners.contains(&4), "{cs:?}");
    let cs = admin.promote(4).expect("promote once caught up");
    let mut voters = cs.voters.clone();
    voters.sort_unstable();
    assert_eq!(voters, [1, 2, 3, 4]);
    assert!(cs.learners.is_empty());
    admin.transfer_leader(4).expect("transfer to 4");
    let four = admin.status(Some(4)).expect("status of 4");
    assert_eq!(
        four[0].status.as_ref().map(|s| s.role),
        Some(StateRole::Leader)
    );

    // Another replica is removed; the admin waits until every remaining voter
    // holds the new configuration, at the answering leader's applied index.
    let (cs, held) = admin.remove_held(1).expect("remove 1");
    let mut voters = cs.voters.clone();
    voters.sort_unstable();
    assert_eq!(voters, [2, 3, 4]);
    assert!(held.complete(), "{held:?}");
    assert_eq!(held.holding, [2, 3, 4]);
    let applied_min = held.applied_min.expect("the leader reported");
    for s in fleet.statuses().iter().filter(|s| s.id != 1) {
        assert_eq!(s.voters, [2, 3, 4], "replica {}", s.id);
        assert!(s.applied >= applied_min, "replica {}", s.id);
    }
    let members = admin.members().expect("members");
    assert_eq!(members.leader, 4);
    assert_eq!(members.voters, [2, 3, 4]);
    // A configuration that no voter holds (here: one naming a voter no
    // replica has, and that the admin's directory does not list) is reported
    // as such once `held_wait` ends, each voter with what it holds; so is the
    // right configuration at an applied index no voter has reached.
    let mut short = options();
    short.held_wait = Duration::from_millis(300);
    let impatient = fleet.admin(admin_key.clone(), short);
    let mut other = cs.clone();
    other.voters.push(9);
    let held = impatient.wait_held(&other, Some(applied_min));
    assert!(!held.complete());
    assert!(held.holding.is_empty(), "{held:?}");
    let elsewhere: Vec<(u64, Vec<u64>)> = held
        .other
        .iter()
        .map(|o| (o.id, o.voters.clone()))
        .collect();
    assert_eq!(
        elsewhere,
        [(2, vec![2, 3, 4]), (3, vec![2, 3, 4]), (4, vec![2, 3, 4])]
    );
    assert_eq!(held.unlisted, [9]);
    let ahead = impatient.wait_held(&cs, Some(u64::MAX));
    assert!(!ahead.complete() && ahead.holding.is_empty(), "{ahead:?}");
    assert_eq!(ahead.other.len(), 3);
    drop(impatient);
    drop(admin);
    fleet.shutdown();
}

/// The digests `comparison` reports, by replica (`None`: no digest).
fn digests(c: &vaultfleet_node::admin::StateComparison) -> Vec<(u64, Option<[u8; 32]>)> {
    c.replicas
        .iter()
        .map(|r| match r.report {
            DigestReport::Digest(d) => (r.id, Some(d)),
            _ => (r.id, None),
        })
        .collect()
}

#[test]
fn compare_state_reports_every_replicas_equal_digest_at_one_index() {
    let admin_key = StaticSecret::generate().expect("key");
    let admin_key_id = admin_key.public_key();
    let fleet = Fleet::start(3, vec![(admin_key.public_key(), ClientRole::Admin)]);
    let admin = fleet.admin(admin_key, options());
    let leader = settled_leader(&admin, 3);
    let c = admin.compare_state().expect("compare state");
    assert_eq!(c.leader, leader);
    assert!(c.complete() && !c.diverged(), "{c:?}");
    assert_eq!(c.groups.len(), 1);
    assert_eq!(c.groups[0].replicas, [1, 2, 3]);
    // The index is a marker every replica applied, with that digest.
    for s in fleet.statuses() {
        assert!(s.applied >= c.index);
        let d = s.state_digests.iter().find(|d| d.index == c.index);
        assert_eq!(d.map(|d| d.digest), Some(c.groups[0].digest), "{s:?}");
    }
    // Another comparison: a later marker, the same (unchanged) state.
    let again = admin.compare_state().expect("compare again");
    assert!(again.index > c.index);
    assert_eq!(again.groups, c.groups);
    let lines = log_lines_of(&admin_key_id);
    assert!(
        lines.iter().any(|l| l.contains("admin call")
            && l.contains("op=\"compare-state\"")
            && l.contains("allowed=true")),
        "{lines:#?}"
    );
    drop(admin);
    fleet.shutdown();
}

#[test]
fn compare_state_names_the_replica_whose_state_diverged() {
    let admin_key = StaticSecret::generate().expect("key");
    let fleet = Fleet::start_diverged(3, vec![(admin_key.public_key(), ClientRole::Admin)], &[3]);
    let admin = fleet.admin(admin_key, options());
    settled_leader(&admin, 3);
    let c = admin.compare_state().expect("compare state");
    assert!(c.complete() && c.diverged(), "{c:?}");
    assert_eq!(c.groups.len(), 2);
    assert_eq!(c.groups[0].replicas, [1, 2]);
    assert_eq!(c.groups[1].replicas, [3]);
    let d = digests(&c);
    assert_eq!(d[0].1, d[1].1);
    assert_ne!(d[0].1, d[2].1);
    drop(admin);
    fleet.shutdown();
}

#[test]
fn an_unpinned_admin_key_and_a_service_key_are_refused_and_change_nothing() {
    let admin_key = StaticSecret::generate().expect("key");
    let service_key = StaticSecret::generate().expect("key");
    let fleet = Fleet::start(
        3,
        vec![
            (admin_key.public_key(), ClientRole::Admin),
            (service_key.public_key(), ClientRole::Service),
        ],
    );
    let (admin_key_id, service_key_id) = (admin_key.public_key(), service_key.public_key());
    let admin = fleet.admin(admin_key, options());
    let leader = settled_leader(&admin, 3);
    let before = admin.members().expect("members");

    // A key no node pins: every handshake fails, so no replica answers.
    let mut quick = options();
    quick.status_wait = Duration::from_secs(1);
    quick.call_timeout = Duration::from_secs(2);
    let stranger = fleet.admin(StaticSecret::generate().expect("key"), quick);
    let reports = stranger
        .status(None)
        .expect("a status call reports, it does not fail");
    assert_eq!(reports.len(), 3);
    assert!(
        reports.iter().all(|r| r.status.is_none()),
        "an unpinned key got a status: {reports:?}"
    );
    assert!(matches!(
        stranger.add_learner(5, "dc-5"),
        Err(AdminError::NoLeader { .. })
    ));
    assert!(matches!(
        stranger.transfer_leader(leader % 3 + 1),
        Err(AdminError::NoLeader { .. })
    ));
    assert!(matches!(
        stranger.compare_state(),
        Err(AdminError::NoLeader { .. })
    ));

    // A pinned service key may read status but not change the fleet.
    let service = fleet.admin(service_key.clone(), options());
    let reports = service.status(None).expect("status");
    assert!(reports.iter().all(|r| r.status.is_some()), "{reports:?}");
    let refused = service
        .add_learner(5, "dc-5")
        .expect_err("a service key adds no learner");
    assert!(
        matches!(refused, AdminError::Refused(RequestError::Forbidden)),
        "{refused:?}"
    );
    assert!(refused.is_refusal());
    let refused = service
        .compare_state()
        .expect_err("a service key marks no state digest");
    assert!(
        matches!(refused, AdminError::Refused(RequestError::Forbidden)),
        "{refused:?}"
    );
    // A fresh connection: the node itself refuses the transfer (the remote
    // client then also remembers the refusal for the connection).
    let service = fleet.admin(service_key, options());
    let other = leader % 3 + 1;
    let refused = service
        .transfer_leader(other)
        .expect_err("a service key transfers no leadership");
    assert!(
        matches!(refused, AdminError::Refused(RequestError::Forbidden)),
        "{refused:?}"
    );

    // Each node logged the calls with the caller's key id and the op, and
    // nothing else from the request (not the learner's datacenter).
    let lines = log_lines_of(&service_key_id);
    let refused_add = lines
        .iter()
        .filter(|l| l.contains("admin call") && l.contains("op=\"add-learner\""))
        .collect::<Vec<_>>();
    assert!(!refused_add.is_empty(), "{lines:#?}");
    assert!(refused_add
        .iter()
        .all(|l| l.contains(" INFO ") && l.contains("allowed=false") && !l.contains("dc-5")));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("admin call") && l.contains("op=\"transfer-leader\"")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("admin call")
            && l.contains("op=\"compare-state\"")
            && l.contains("allowed=false")),
        "{lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("op=\"status\"")),
        "a service key's status requests are not admin calls: {lines:#?}"
    );
    let lines = log_lines_of(&admin_key_id);
    assert!(
        lines.iter().any(|l| l.contains("admin call")
            && l.contains("op=\"status\"")
            && l.contains("allowed=true")),
        "{lines:#?}"
    );

    // Nothing changed: same members, same leader, same term.
    let after = admin.members().expect("members");
    assert_eq!(
        (after.leader, after.term, &after.voters, &after.learners),
        (before.leader, before.term, &before.voters, &before.learners)
    );
    for s in fleet.statuses() {
        assert_eq!(s.voters, [1, 2, 3]);
        assert!(s.learners.is_empty());
    }
    drop((admin, stranger, service));
    fleet.shutdown();
}

fn write_key(path: &Path, secret_hex: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("{secret_hex}\n")).expect("write key");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn admin_toml_loads_with_a_private_key_file_and_refuses_a_readable_one() {
    let secret_bytes = [42u8; 32];
    let secret = StaticSecret::from_bytes(zeroize::Zeroizing::new(secret_bytes)).expect("secret");
    let fleet = Fleet::start(3, vec![(secret.public_key(), ClientRole::Admin)]);
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut peers = String::new();
    for (&id, address) in &fleet.addresses {
        peers.push_str(&format!(
            "[[peer]]\nid = {id}\naddress = \"{address}\"\ndatacenter = \"{}\"\n\
             transport_key = \"{}\"\n\n",
            datacenter(id),
            hex(fleet.secrets[&id].public_key().as_bytes())
        ));
    }
    let path = dir.path().join("admin.toml");
    std::fs::write(
        &path,
        format!("fleet_id = \"{FLEET}\"\nkey_file = \"admin.key\"\n\n{peers}"),
    )
    .expect("write config");
    write_key(&dir.path().join("admin.key"), &hex(&secret_bytes), 0o600);

    let config = AdminConfig::load(&path).expect("load");
    assert_eq!(config.group, GROUP);
    assert_eq!(config.key_file, dir.path().join("admin.key"));
    let admin = Admin::connect_with(&config, options()).expect("connect");
    settled_leader(&admin, 3);

    // Group or others may read the key: refused, nothing dialled.
    write_key(&dir.path().join("admin.key"), &hex(&secret_bytes), 0o640);
    let refused = Admin::connect(&config).expect_err("a readable key file");
    assert!(
        matches!(
            refused,
            AdminError::Config(AdminConfigError::KeyFile {
                source: KeyFileError::Mode { mode: 0o640 },
                ..
            })
        ),
        "{refused:?}"
    );
    // An unknown field is refused.
    std::fs::write(
        &path,
        format!("fleet_id = \"{FLEET}\"\nkey_file = \"admin.key\"\npin = \"1234\"\n\n{peers}"),
    )
    .expect("write config");
    assert!(matches!(
        AdminConfig::load(&path),
        Err(AdminConfigError::Parse { .. })
    ));
    drop(admin);
    fleet.shutdown();
}
