//! Fixes from the attacker review of the remote client protocol, one test per
//! finding (`review_client_<finding>_…`). Most serve a scripted node (a
//! `NodeApi` that records what reaches it and answers, or holds, each request)
//! through a real `NetTransport`, reached by real `RemoteClient`s over
//! loopback TCP + Noise: what the server lets through to the node is then
//! exact, not a matter of timing.
// Tests of the threaded runtime wait in wall-clock time, bounded.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use raft::prelude::{ConfState, Message, MessageType};
use raft::StateRole;
use vaultfleet::replica::{MembershipChange, Reply, RequestError, StateDigest, Status};
use vaultfleet::runtime::{ClientConfig, ClientError, NodeApi, ResponseSlot};
use vaultfleet::transport::{Envelope, Inbox};
use vaultfleet::wire::Request;
use vaultfleet::ReplicaId;
use vaultfleet_net::{
    ClientRole, NetConfig, NetStats, NetTransport, PeerDirectory, PeerEntry, RemoteClient,
    RemoteConfig, RemoteNode, StaticSecret,
};

const FLEET: &str = "client-review";
const GROUP: u64 = 1;
/// The replica the scripted node plays.
const NODE: ReplicaId = 1;
/// Every wait gives up (and fails the test) after this long.
const WAIT: Duration = Duration::from_secs(20);

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What reached the scripted node.
#[derive(Debug, Clone, PartialEq)]
enum Op {
    Propose(Vec<u8>),
    Register,
    Read(Vec<u8>),
    Membership(MembershipChange),
    StateDigest,
}

/// How the scripted node answers: `Some` fills the slot at once, `None`
/// holds it until [`Scripted::release`].
type Script = dyn Fn(&Op) -> Option<Result<Reply, RequestError>> + Send + Sync;

/// A node that leads, records every request and answers per its script. It
/// also counts calls to the slot-returning methods (`read`,
/// `register_session`, `change_membership`), which hand it slots without a
/// notify: a server that used them would have to poll.
struct Scripted {
    script: Box<Script>,
    command_bytes_max: usize,
    seen: Mutex<Vec<Op>>,
    held: Mutex<Vec<ResponseSlot>>,
    transfers: AtomicU64,
    slot_returning_calls: AtomicU64,
}

impl Scripted {
    fn new(
        command_bytes_max: usize,
        script: impl Fn(&Op) -> Option<Result<Reply, RequestError>> + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            script: Box::new(script),
            command_bytes_max,
            seen: Mutex::new(Vec::new()),
            held: Mutex::new(Vec::new()),
            transfers: AtomicU64::new(0),
            slot_returning_calls: AtomicU64::new(0),
        })
    }

    fn take(&self, op: Op, slot: ResponseSlot) -> Result<(), RequestError> {
        let answer = (self.script)(&op);
        self.seen.lock().push(op);
        match answer {
            Some(outcome) => {
                let _ = slot.fill(outcome);
            }
            None => self.held.lock().push(slot),
        }
        Ok(())
    }

    fn seen(&self) -> Vec<Op> {
        self.seen.lock().clone()
    }

    fn held(&self) -> usize {
        self.held.lock().len()
    }

    /// Answers every held request with an empty read answer.
    fn release(&self) {
        for slot in std::mem::take(&mut *self.held.lock()) {
            let _ = slot.fill(Ok(Reply::Read(Vec::new())));
        }
    }
}

impl NodeApi for Scripted {
    fn id(&self) -> ReplicaId {
        NODE
    }
    fn status(&self) -> Status {
        Status {
            id: NODE,
            role: StateRole::Leader,
            leader: Some(NODE),
            term: 2,
            commit: 1,
            applied: 1,
            first_index: 1,
            last_index: 1,
            voters: vec![NODE],
            learners: Vec::new(),
            followers: Vec::new(),
            state_digests: Vec::new(),
            host: vaultfleet::replica::HostHealth::UNKNOWN,
        }
    }
    fn is_stopped(&self) -> bool {
        false
    }
    fn propose_into(&self, request: Request, slot: ResponseSlot) -> Result<(), RequestError> {
        self.take(Op::Propose(request.command.to_vec()), slot)
    }
    fn register_session_into(&self, slot: ResponseSlot) -> Result<(), RequestError> {
        self.take(Op::Register, slot)
    }
    fn register_session_of_into(
        &self,
        _owner: Vec<u8>,
        slot: ResponseSlot,
    ) -> Result<(), RequestError> {
        self.take(Op::Register, slot)
    }
    fn read_into(&self, query: Vec<u8>, slot: ResponseSlot) -> Result<(), RequestError> {
        self.take(Op::Read(query), slot)
    }
    fn change_membership_into(
        &self,
        change: MembershipChange,
        slot: ResponseSlot,
    ) -> Result<(), RequestError> {
        self.take(Op::Membership(change), slot)
    }
    fn mark_state_digest_into(&self, slot: ResponseSlot) -> Result<(), RequestError> {
        self.take(Op::StateDigest, slot)
    }
    fn register_session(&self) -> Result<ResponseSlot, RequestError> {
        self.slot_returning_calls.fetch_add(1, Ordering::Relaxed);
        let slot = ResponseSlot::default();
        self.register_session_into(Arc::clone(&slot))?;
        Ok(slot)
    }
    fn read(&self, query: Vec<u8>) -> Result<ResponseSlot, RequestError> {
        self.slot_returning_calls.fetch_add(1, Ordering::Relaxed);
        let slot = ResponseSlot::default();
        self.read_into(query, Arc::clone(&slot))?;
        Ok(slot)
    }
    fn change_membership(&self, change: MembershipChange) -> Result<ResponseSlot, RequestError> {
        self.slot_returning_calls.fetch_add(1, Ordering::Relaxed);
        let slot = ResponseSlot::default();
        self.change_membership_into(change, Arc::clone(&slot))?;
        Ok(slot)
    }
    fn transfer_leader(&self, _to: ReplicaId) -> Result<(), RequestError> {
        self.transfers.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn command_bytes_max(&self) -> Option<usize> {
        Some(self.command_bytes_max)
    }
}

/// The usual answers: sessions register as 7, proposals apply with an empty
/// response, membership changes succeed, reads are held.
fn usual(op: &Op) -> Option<Result<Reply, RequestError>> {
    match op {
        Op::Register => Some(Ok(Reply::SessionRegistered(7))),
        Op::Propose(_) => Some(Ok(Reply::Applied(Default::default()))),
        Op::Membership(_) => Some(Ok(Reply::MembershipChanged(ConfState::default()))),
        Op::StateDigest => Some(Ok(Reply::StateDigest(StateDigest {
            index: 5,
            digest: [1; 32],
        }))),
        Op::Read(_) => None,
    }
}

fn loopback(tweak: impl FnOnce(&mut NetConfig)) -> NetConfig {
    let mut c = NetConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
    c.worker_threads = 1;
    c.backoff_max = Duration::from_millis(100);
    tweak(&mut c);
    c
}

/// A small frame limit (64 KiB) and budgets the byte tests count against.
fn small_frames(c: &mut NetConfig) {
    c.entry_bytes_max = 16 << 10;
    c.frame_bytes_max = 64 << 10;
    c.queue_bytes_max = 1 << 20;
    c.client_bytes_in_flight_max = 64 << 10;
    c.client_bytes_in_flight_total_max = 96 << 10;
}

fn entry(address: SocketAddr, secret: &StaticSecret) -> PeerEntry {
    PeerEntry {
        address,
        datacenter: "dc-a".into(),
        public_key: secret.public_key(),
    }
}

/// One node process serving `node` as replica 1, allowing `clients`.
struct Server {
    transport: NetTransport,
    secret: StaticSecret,
}

impl Server {
    fn start(
        config: NetConfig,
        clients: &[(&StaticSecret, ClientRole)],
        node: Arc<dyn NodeApi>,
    ) -> Self {
        let secret = StaticSecret::generate().expect("key");
        let directory = PeerDirectory::new(FLEET, [NODE], secret.clone()).expect("directory");
        let transport = NetTransport::start(directory, config).expect("transport");
        let mut directory = (*transport.directory()).clone();
        directory
            .insert(NODE, entry(transport.local_addr(), &secret))
            .expect("pin");
        for (client, role) in clients {
            directory
                .allow_client_as(client.public_key(), *role)
                .expect("client key");
        }
        transport.update_directory(directory).expect("update");
        transport.serve_clients(GROUP, node).expect("serve");
        Self { transport, secret }
    }

    fn remote(&self, client: &StaticSecret, tweak: impl FnOnce(&mut NetConfig)) -> RemoteClient {
        let mut directory = PeerDirectory::client(FLEET, client.clone()).expect("directory");
        directory
            .insert(NODE, entry(self.transport.local_addr(), &self.secret))
            .expect("pin");
        let mut config = RemoteConfig::default();
        config.net = loopback(tweak);
        config.in_flight_max = 64;
        config.status_interval = Duration::from_secs(3600);
        RemoteClient::start(directory, config).expect("remote client")
    }

    fn stats(&self) -> NetStats {
        self.transport.stats()
    }
}

/// A connected remote node whose first status request was answered (the
/// remote client asks for no other: its status interval is an hour), so no
/// status request holds a permit while a test counts them.
fn connected(remote: &RemoteClient) -> Arc<RemoteNode> {
    let node = remote.node(GROUP, NODE).expect("remote node");
    wait_until("the client connected", || {
        node.is_connected() && node.status().role == StateRole::Leader
    });
    let_permits_go();
    node
}

fn answer(slot: &ResponseSlot) -> Result<Reply, RequestError> {
    slot.wait(WAIT).expect("answered in time")
}

/// The slots of requests sent, and what each was answered so far.
struct Answers {
    slots: Vec<ResponseSlot>,
    got: Vec<Option<Result<Reply, RequestError>>>,
}

impl Answers {
    fn new(slots: Vec<ResponseSlot>) -> Self {
        let got = vec![None; slots.len()];
        Self { slots, got }
    }

    /// Takes the answers that arrived; how many have.
    fn poll(&mut self) -> usize {
        for (slot, got) in self.slots.iter().zip(&mut self.got) {
            if got.is_none() {
                *got = slot.try_take();
            }
        }
        self.got.iter().filter(|g| g.is_some()).count()
    }

    /// The answers that arrived.
    fn answered(&self) -> Vec<Result<Reply, RequestError>> {
        self.got.iter().flatten().cloned().collect()
    }
}

/// A reply is received by the client a moment before its writer releases
/// the request's permits: give it that moment.
fn let_permits_go() {
    std::thread::sleep(Duration::from_millis(200));
}

#[test]
fn review_client_h2_only_admin_keys_change_membership_or_transfer_leadership() {
    let service = StaticSecret::generate().expect("service key");
    let admin = StaticSecret::generate().expect("admin key");
    let node = Scripted::new(1 << 10, usual);
    let server = Server::start(
        loopback(|_| {}),
        &[(&service, ClientRole::Service), (&admin, ClientRole::Admin)],
        Arc::clone(&node) as Arc<dyn NodeApi>,
    );

    // A service key: its session works, its administrative requests do not.
    let as_service = server.remote(&service, |_| {});
    let session = as_service
        .session(GROUP, ClientConfig::default())
        .expect("a service key registers sessions");
    session.propose(b"cmd".to_vec()).expect("and proposes");
    let refused = session.change_membership(MembershipChange::AddLearner {
        id: 4,
        datacenter: "dc-d".into(),
    });
    assert!(
        matches!(refused, Err(ClientError::Rejected(RequestError::Forbidden))),
        "a typed refusal, not retried: {refused:?}"
    );
    let remote = connected(&as_service);
    remote
        .transfer_leader(2)
        .expect("a transfer is fire and forget");
    wait_until("the refused transfer is learned", || {
        remote.transfer_leader(2) == Err(RequestError::Forbidden)
    });
    let marked = remote
        .mark_state_digest()
        .expect("submitted")
        .wait(Duration::from_secs(10));
    assert_eq!(marked, Some(Err(RequestError::Forbidden)));
    assert!(
        !node
            .seen()
            .iter()
            .any(|op| matches!(op, Op::Membership(_) | Op::StateDigest)),
        "no membership change or state digest marker from a service key reached the node"
    );
    assert_eq!(node.transfers.load(Ordering::Relaxed), 0);
    assert!(server.stats().client_requests_forbidden >= 3);

    // An admin key may.
    let as_admin = server.remote(&admin, |_| {});
    let session = as_admin
        .session(GROUP, ClientConfig::default())
        .expect("admin session");
    session
        .change_membership(MembershipChange::Promote { id: 4 })
        .expect("an admin changes membership");
    assert!(node
        .seen()
        .contains(&Op::Membership(MembershipChange::Promote { id: 4 })));
    let admin_node = connected(&as_admin);
    let marked = admin_node
        .mark_state_digest()
        .expect("submitted")
        .wait(Duration::from_secs(10));
    assert!(
        matches!(marked, Some(Ok(Reply::StateDigest(d))) if d.index == 5),
        "{marked:?}"
    );
    assert!(node.seen().contains(&Op::StateDigest));
    admin_node.transfer_leader(2).expect("an admin transfers");
    wait_until("the admin's transfer reached the node", || {
        node.transfers.load(Ordering::Relaxed) == 1
    });
    as_service.shutdown();
    as_admin.shutdown();
    server.transport.shutdown();
}

#[test]
fn review_client_m1_client_requests_in_flight_are_capped_per_process() {
    let client = StaticSecret::generate().expect("client key");
    let node = Scripted::new(1 << 10, usual);
    let server = Server::start(
        loopback(|c| {
            c.client_in_flight_max = 8;
            c.client_in_flight_total_max = 10;
        }),
        &[(&client, ClientRole::Service)],
        Arc::clone(&node) as Arc<dyn NodeApi>,
    );
    let remote = server.remote(&client, |_| {});
    // Two connections of 8 requests each: within each connection's bound,
    // 16 in all against a process bound of 10.
    let connections = [connected(&remote), connected(&remote)];
    let mut slots = Vec::new();
    for (i, connection) in connections.iter().enumerate() {
        for j in 0..8u8 {
            slots.push(connection.read(vec![i as u8, j]).expect("queued"));
        }
    }
    let mut answers = Answers::new(slots);
    wait_until("every request answered or held", || {
        node.held() + answers.poll() == 16
    });
    assert_eq!(
        node.held(),
        10,
        "the node holds at most the process's bound"
    );
    assert_eq!(answers.answered(), vec![Err(RequestError::Overloaded); 6]);
    let stats = server.stats();
    assert_eq!(stats.client_requests_overloaded_process, 6, "{stats:#?}");

    // Answered and written, the held requests give their permits back.
    node.release();
    wait_until("the held requests answered", || answers.poll() == 16);
    let_permits_go();
    let again = connections[0].read(b"again".to_vec()).expect("queued");
    wait_until("the new request reached the node", || node.held() == 1);
    node.release();
    assert_eq!(answer(&again), Ok(Reply::Read(Vec::new())));
    remote.shutdown();
    server.transport.shutdown();
}

#[test]
fn review_client_m3_commands_above_the_node_limit_and_bytes_beyond_the_budgets_are_refused() {
    let client = StaticSecret::generate().expect("client key");
    let node = Scripted::new(1 << 10, usual);
    let server = Server::start(
        loopback(small_frames),
        &[(&client, ClientRole::Service)],
        Arc::clone(&node) as Arc<dyn NodeApi>,
    );
    let remote = server.remote(&client, small_frames);

    // A command above the node's command_bytes_max never reaches the node.
    let connection = connected(&remote);
    let mut request = Request::new();
    request.client_id = 7;
    request.sequence = 1;
    request.command = vec![0; 2000].into();
    let slot = ResponseSlot::default();
    connection
        .propose_into(request, Arc::clone(&slot))
        .expect("queued");
    assert_eq!(
        answer(&slot),
        Err(RequestError::CommandTooLarge {
            bytes: 2000,
            limit: 1 << 10
        })
    );
    assert!(node.seen().is_empty(), "the node never saw it");
    assert_eq!(server.stats().client_requests_too_large, 1);

    // Reads of 20 KiB: three fit one connection's 64 KiB, a fourth does not;
    // a second connection's second one passes the process's 96 KiB.
    let query = |tag: u8| {
        let mut q = vec![0u8; 20 << 10];
        q[0] = tag;
        q
    };
    let mut first = Answers::new(
        (0..4)
            .map(|i| connection.read(query(i)).expect("queued"))
            .collect(),
    );
    wait_until("the first connection's reads answered or held", || {
        node.held() + first.poll() == 4
    });
    assert_eq!(node.held(), 3, "three reads fit the connection's budget");
    let other = connected(&remote);
    let mut second = Answers::new(
        (10..12)
            .map(|i| other.read(query(i)).expect("queued"))
            .collect(),
    );
    wait_until("the second connection's reads answered or held", || {
        node.held() + first.poll() + second.poll() == 6
    });
    assert_eq!(node.held(), 4, "3 of the first connection, 1 of the second");
    assert_eq!(first.got[3], Some(Err(RequestError::Overloaded)));
    assert_eq!(second.got[1], Some(Err(RequestError::Overloaded)));
    let stats = server.stats();
    assert_eq!(stats.client_requests_overloaded_bytes, 2, "{stats:#?}");

    // Once answered, the bytes are free again.
    node.release();
    wait_until("the held reads answered", || {
        first.poll() == 4 && second.poll() == 2
    });
    let_permits_go();
    let later: Vec<ResponseSlot> = (20..23)
        .map(|i| connection.read(query(i)).expect("queued"))
        .collect();
    wait_until("the later reads reached the node", || node.held() == 3);
    node.release();
    for slot in &later {
        assert_eq!(answer(slot), Ok(Reply::Read(Vec::new())));
    }
    remote.shutdown();
    server.transport.shutdown();
}

#[test]
fn review_client_m2_every_request_reaches_the_node_with_a_notify_slot() {
    let client = StaticSecret::generate().expect("admin key");
    let node = Scripted::new(1 << 10, usual);
    let server = Server::start(
        loopback(|_| {}),
        &[(&client, ClientRole::Admin)],
        Arc::clone(&node) as Arc<dyn NodeApi>,
    );
    let remote = server.remote(&client, |_| {});
    let connection = connected(&remote);
    let registered = connection.register_session().expect("queued");
    assert_eq!(answer(&registered), Ok(Reply::SessionRegistered(7)));
    let changed = connection
        .change_membership(MembershipChange::Remove { id: 3 })
        .expect("queued");
    assert!(matches!(answer(&changed), Ok(Reply::MembershipChanged(_))));
    let read = connection.read(b"q".to_vec()).expect("queued");
    wait_until("the read is held by the node", || node.held() == 1);
    // A held read is answered when the node fills the slot, long after the
    // request: the slot's notify wakes the server's task.
    std::thread::sleep(Duration::from_millis(200));
    node.release();
    assert_eq!(answer(&read), Ok(Reply::Read(Vec::new())));
    assert_eq!(
        node.slot_returning_calls.load(Ordering::Relaxed),
        0,
        "the server hands the node its own notify slots (the *_into calls), never polls one"
    );
    assert_eq!(
        node.seen(),
        vec![
            Op::Register,
            Op::Membership(MembershipChange::Remove { id: 3 }),
            Op::Read(b"q".to_vec())
        ]
    );
    remote.shutdown();
    server.transport.shutdown();
}

#[test]
fn review_client_l1_an_applied_proposal_with_a_reply_above_the_frame_limit_says_it_applied() {
    let client = StaticSecret::generate().expect("client key");
    let node = Scripted::new(16 << 10, |op| match op {
        // A response larger than the 64 KiB frame limit.
        Op::Propose(_) => Some(Ok(Reply::Applied(vec![1; 100 << 10].into()))),
        other => usual(other),
    });
    let server = Server::start(
        loopback(small_frames),
        &[(&client, ClientRole::Service)],
        Arc::clone(&node) as Arc<dyn NodeApi>,
    );
    let remote = server.remote(&client, small_frames);
    let session = remote
        .session(GROUP, ClientConfig::default())
        .expect("session");
    let outcome = session.propose(b"big answer".to_vec());
    match outcome {
        Err(ClientError::Rejected(RequestError::ReplyTooLarge { bytes, limit })) => {
            assert!(bytes > 100 << 10, "{bytes}");
            assert_eq!(limit, 64 << 10);
        }
        other => panic!("expected ReplyTooLarge (applied), got {other:?}"),
    }
    assert_eq!(
        node.seen()
            .iter()
            .filter(|op| matches!(op, Op::Propose(_)))
            .count(),
        1,
        "applied once, not retried"
    );
    assert_eq!(server.stats().client_replies_too_large, 1);
    remote.shutdown();
    server.transport.shutdown();
}

/// An inbox that counts deliveries.
#[derive(Default)]
struct Count(AtomicU64);

impl Inbox for Count {
    fn deliver(&self, _: Envelope) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

fn heartbeat(from: u64, to: u64) -> Envelope {
    let mut message = Message::default();
    message.set_msg_type(MessageType::MsgHeartbeat);
    message.from = from;
    message.to = to;
    Envelope {
        group: GROUP,
        message,
    }
}

#[test]
fn review_client_h1_client_connections_cannot_take_the_slots_peers_need() {
    let client = StaticSecret::generate().expect("client key");
    // Replica 1's process holds 2 peer connections and 12 client ones; the
    // client key may open 16.
    let node = Scripted::new(1 << 10, usual);
    let server = Server::start(
        loopback(|c| {
            c.inbound_connections_max = 2;
            c.client_connections_max = 12;
            c.connections_per_client_key_max = 16;
        }),
        &[(&client, ClientRole::Service)],
        Arc::clone(&node) as Arc<dyn NodeApi>,
    );
    let remote = server.remote(&client, |_| {});
    let connections: Vec<Arc<RemoteNode>> = (0..16)
        .map(|_| remote.node(GROUP, NODE).expect("remote node"))
        .collect();
    // More client connections than the peer pool holds: without a pool of
    // their own they would take every peer slot.
    wait_until("client connections beyond the peers' pool", || {
        connections.iter().filter(|c| c.is_connected()).count() >= 3
    });
    std::thread::sleep(Duration::from_millis(300));

    // Two peer processes (replicas 2 and 3) still connect and deliver.
    let inbox = Arc::new(Count::default());
    server
        .transport
        .register(GROUP, NODE, Arc::clone(&inbox) as Arc<dyn Inbox>)
        .expect("register");
    let mut peers = Vec::new();
    let mut server_directory = (*server.transport.directory()).clone();
    for id in [2u64, 3] {
        let secret = StaticSecret::generate().expect("peer key");
        let directory = PeerDirectory::new(FLEET, [id], secret.clone()).expect("directory");
        let transport = NetTransport::start(directory, loopback(|_| {})).expect("peer");
        let mut directory = (*transport.directory()).clone();
        directory
            .insert(id, entry(transport.local_addr(), &secret))
            .expect("pin self");
        directory
            .insert(NODE, entry(server.transport.local_addr(), &server.secret))
            .expect("pin the server");
        transport.update_directory(directory).expect("update");
        server_directory
            .insert(id, entry(transport.local_addr(), &secret))
            .expect("pin the peer");
        peers.push((id, transport));
    }
    server
        .transport
        .update_directory(server_directory)
        .expect("update");
    wait_until("both peers delivered to replica 1", || {
        for (id, transport) in &peers {
            let _ = transport.try_send(heartbeat(*id, NODE));
        }
        std::thread::sleep(Duration::from_millis(20));
        server.stats().connections_accepted >= 2 && inbox.0.load(Ordering::Relaxed) >= 2
    });
    wait_until(
        "the client pool filled and more clients were refused",
        || {
            server.stats().client_connections_refused_limit > 0
                && connections.iter().filter(|c| c.is_connected()).count() >= 12
        },
    );
    let stats = server.stats();
    assert_eq!(stats.inbound_refused_limit, 0, "{stats:#?}");
    for (_, transport) in peers {
        transport.shutdown();
    }
    remote.shutdown();
    server.transport.shutdown();
}
