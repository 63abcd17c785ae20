//! Remote clients over loopback TCP + Noise: a 3-node fleet, each node its own
//! `NetTransport` (as if each were its own process) serving clients, and a
//! client process (`RemoteClient`) in the same test process reaching all three
//! as `RemoteNode`s through the engine's own `Client`. Then the attacks: keys
//! in the wrong role, unpinned keys, garbage and oversize frames, a client that
//! never reads.
// Tests of the threaded runtime wait in wall-clock time, bounded.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use crate::common;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::{remote_config, wait_until, TcpFleet, FLEET, GROUP, MEMBERS, WAIT};
use futures_util::StreamExt;
use raft::StateRole;
use tokio::io::AsyncWriteExt;
use tokio_util::codec::FramedRead;
use vaultfleet::replica::{MembershipChange, Reply, RequestError, Status};
use vaultfleet::runtime::{Client, ClientConfig, NodeApi, ResponseSlot};
use vaultfleet::wire::Request;
use vaultfleet::{KvStore, ReplicaId};
use vaultfleet_net::handshake::initiate;
use vaultfleet_net::wire::client::{encode_request, ClientOp, ClientRequest};
use vaultfleet_net::wire::record::{record_codec, seal_records};
use vaultfleet_net::{
    HandshakeError, PeerDirectory, PeerEntry, PublicKey, RemoteClient, RemoteNode, StaticSecret,
};

/// Waits until every remote node is connected and the leader's own status
/// (as cached by its remote node) says it leads.
fn wait_remote(nodes: &[Arc<RemoteNode>], leader: u64) {
    wait_until(
        "remote nodes connected and the leader's status cached",
        || {
            nodes.iter().all(|n| n.is_connected())
                && nodes
                    .iter()
                    .any(|n| n.id() == leader && n.status().role == StateRole::Leader)
        },
    );
}

fn put(client: &Client, key: &str, value: &str) -> Option<Vec<u8>> {
    let response = client
        .propose(KvStore::put(key, value))
        .expect("put committed");
    KvStore::decode_response(&response).expect("kv response")
}

fn get(client: &Client, key: &str) -> Option<Vec<u8>> {
    KvStore::decode_response(&client.read(KvStore::get(key)).expect("read served"))
        .expect("kv response")
}

/// A node whose cached status lies: it claims to lead at a high term (a stale
/// cache after an election), so the client tries it first and must follow its
/// `NotLeader` hint. Counts the `NotLeader` answers it passes on.
struct StaleLeaderClaim {
    inner: Arc<RemoteNode>,
    hints: Arc<AtomicU64>,
}

/// Passes `inner`'s outcome on to `outer`, counting `NotLeader` hints.
fn relay(inner: ResponseSlot, outer: ResponseSlot, hints: Arc<AtomicU64>) {
    std::thread::spawn(move || {
        if let Some(outcome) = inner.wait(WAIT) {
            if matches!(outcome, Err(RequestError::NotLeader { leader: Some(_) })) {
                hints.fetch_add(1, Ordering::Relaxed);
            }
            let _ = outer.fill(outcome);
        }
    });
}

impl NodeApi for StaleLeaderClaim {
    fn id(&self) -> ReplicaId {
        self.inner.id()
    }
    fn status(&self) -> Status {
        let mut s = self.inner.status();
        s.role = StateRole::Leader;
        s.term += 1000;
        s.leader = Some(s.id);
        s
    }
    fn is_stopped(&self) -> bool {
        self.inner.is_stopped()
    }
    fn propose_into(&self, request: Request, slot: ResponseSlot) -> Result<(), RequestError> {
        let inner = ResponseSlot::default();
        self.inner.propose_into(request, Arc::clone(&inner))?;
        relay(inner, slot, Arc::clone(&self.hints));
        Ok(())
    }
    fn register_session_into(&self, slot: ResponseSlot) -> Result<(), RequestError> {
        let inner = self.inner.register_session()?;
        relay(inner, slot, Arc::clone(&self.hints));
        Ok(())
    }
    fn read_into(&self, query: Vec<u8>, slot: ResponseSlot) -> Result<(), RequestError> {
        self.inner.read_into(query, slot)
    }
    fn change_membership_into(
        &self,
        change: MembershipChange,
        slot: ResponseSlot,
    ) -> Result<(), RequestError> {
        self.inner.change_membership_into(change, slot)
    }
    fn mark_state_digest_into(&self, slot: ResponseSlot) -> Result<(), RequestError> {
        self.inner.mark_state_digest_into(slot)
    }
    fn transfer_leader(&self, to: ReplicaId) -> Result<(), RequestError> {
        self.inner.transfer_leader(to)
    }
}

/// A node that loses the reply of the first proposal it carries: the command
/// is applied, the client hears `TimedOut` and retries with the same sequence.
struct DropFirstReply {
    inner: Arc<RemoteNode>,
    dropped: AtomicU64,
}

impl NodeApi for DropFirstReply {
    fn id(&self) -> ReplicaId {
        self.inner.id()
    }
    fn status(&self) -> Status {
        self.inner.status()
    }
    fn is_stopped(&self) -> bool {
        self.inner.is_stopped()
    }
    fn propose_into(&self, request: Request, slot: ResponseSlot) -> Result<(), RequestError> {
        if self.dropped.fetch_add(1, Ordering::Relaxed) > 0 {
            return self.inner.propose_into(request, slot);
        }
        let private = ResponseSlot::default();
        self.inner.propose_into(request, Arc::clone(&private))?;
        std::thread::spawn(move || {
            // The first copy's answer arrives and is lost.
            let _ = private.wait(WAIT);
            let _ = slot.fill(Err(RequestError::TimedOut));
        });
        Ok(())
    }
    fn register_session_into(&self, slot: ResponseSlot) -> Result<(), RequestError> {
        self.inner.register_session_into(slot)
    }
    fn read_into(&self, query: Vec<u8>, slot: ResponseSlot) -> Result<(), RequestError> {
        self.inner.read_into(query, slot)
    }
    fn change_membership_into(
        &self,
        change: MembershipChange,
        slot: ResponseSlot,
    ) -> Result<(), RequestError> {
        self.inner.change_membership_into(change, slot)
    }
    fn mark_state_digest_into(&self, slot: ResponseSlot) -> Result<(), RequestError> {
        self.inner.mark_state_digest_into(slot)
    }
    fn transfer_leader(&self, to: ReplicaId) -> Result<(), RequestError> {
        self.inner.transfer_leader(to)
    }
}

struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// A minimal executor: polls `future` on this thread, parking between polls.
/// Each park is bounded by [`WAIT`] and a park that lasts that long fails the
/// test: the future must wake us, not a timer.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        let parked = Instant::now();
        std::thread::park_timeout(WAIT);
        assert!(parked.elapsed() < WAIT, "the future never woke its task");
    }
}

#[test]
fn a_remote_session_follows_hints_retries_once_transfers_and_changes_membership() {
    let client_secret = StaticSecret::generate().expect("client key");
    // An admin key: this session transfers leadership and changes membership.
    let mut fleet =
        TcpFleet::start_with_roles(vec![], vec![client_secret.public_key()], KvStore::new);
    let leader = fleet.wait_leader();
    let remote = RemoteClient::start(
        fleet.client_directory(client_secret.clone()),
        remote_config(),
    )
    .expect("remote client");
    let nodes: Vec<Arc<RemoteNode>> = MEMBERS
        .iter()
        .map(|&(id, _)| remote.node(GROUP, id).expect("remote node"))
        .collect();
    wait_remote(&nodes, leader);
    let follower = Arc::clone(nodes.iter().find(|n| n.id() != leader).expect("a follower"));

    // A follower answers a direct request with the leader's id.
    let answer = follower
        .register_session()
        .expect("submitted")
        .wait(WAIT)
        .expect("answered");
    assert_eq!(
        answer,
        Err(RequestError::NotLeader {
            leader: Some(leader)
        })
    );

    // A session whose stale cache sends it to that follower first.
    let hints = Arc::new(AtomicU64::new(0));
    let mut api: Vec<Arc<dyn NodeApi>> = vec![Arc::new(StaleLeaderClaim {
        inner: Arc::clone(&follower),
        hints: Arc::clone(&hints),
    })];
    api.extend(
        nodes
            .iter()
            .filter(|n| n.id() != follower.id())
            .map(|n| Arc::clone(n) as Arc<dyn NodeApi>),
    );
    let client = Client::connect_to(api, ClientConfig::default()).expect("remote session");
    assert!(
        hints.load(Ordering::Relaxed) >= 1,
        "the registration went to the follower first and followed its hint"
    );
    for i in 0..20 {
        assert_eq!(put(&client, &format!("k{i}"), &format!("v{i}")), None);
    }
    assert_eq!(get(&client, "k19").as_deref(), Some(&b"v19"[..]));
    assert_eq!(get(&client, "absent"), None);

    // The async API: a future driven by a minimal executor, woken by the reply.
    let previous =
        block_on(client.propose_future(KvStore::put("k0", "async"))).expect("the future resolves");
    assert_eq!(
        KvStore::decode_response(&previous).expect("kv"),
        Some(b"v0".to_vec())
    );
    assert_eq!(get(&client, "k0").as_deref(), Some(&b"async"[..]));

    // A lost reply: the command applied, the client retries the same sequence
    // and learns the first outcome (the previous value "1"; a second
    // application would have answered "2").
    let mut api: Vec<Arc<dyn NodeApi>> = Vec::new();
    let dropper = Arc::new(DropFirstReply {
        inner: Arc::clone(nodes.iter().find(|n| n.id() == leader).expect("leader")),
        dropped: AtomicU64::new(0),
    });
    api.push(Arc::clone(&dropper) as Arc<dyn NodeApi>);
    api.extend(
        nodes
            .iter()
            .filter(|n| n.id() != leader)
            .map(|n| Arc::clone(n) as Arc<dyn NodeApi>),
    );
    let once = Client::connect_to(api, ClientConfig::default()).expect("second session");
    assert_eq!(
        put(&once, "counter", "1"),
        None,
        "the retry answers the first application's outcome; a second application would answer \"1\""
    );
    assert!(
        dropper.dropped.load(Ordering::Relaxed) >= 2,
        "the reply was dropped and the command retried"
    );
    assert_eq!(put(&once, "counter", "2"), Some(b"1".to_vec()));

    // A plain remote session over every node, from the remote client.
    let client = remote
        .session(GROUP, ClientConfig::default())
        .expect("plain remote session");

    // Leadership moves through the remote client; the session follows.
    let target = follower.id();
    client.transfer_leader(target).expect("transferred");
    wait_until("the remote cache sees the new leader", || {
        nodes
            .iter()
            .find(|n| n.id() == target)
            .is_some_and(|n| n.status().role == StateRole::Leader)
    });
    assert_eq!(put(&client, "after-transfer", "x"), None);

    // Membership changes through the remote client.
    let added = client
        .change_membership(MembershipChange::AddLearner {
            id: 4,
            datacenter: "dc-d".into(),
        })
        .expect("learner added");
    match added {
        Reply::MembershipChanged(cs) => {
            assert_eq!(cs.learners, vec![4]);
            assert_eq!(cs.voters, vec![1, 2, 3]);
        }
        other => panic!("unexpected reply {other:?}"),
    }
    let removed = client
        .change_membership(MembershipChange::Remove { id: 4 })
        .expect("learner removed");
    assert!(matches!(removed, Reply::MembershipChanged(cs) if cs.learners.is_empty()));

    // The leader's whole process dies with a command in flight: the session
    // retries elsewhere with the same sequence, and it applies once.
    let leader = fleet.wait_leader();
    assert_eq!(put(&client, "x", "a"), None);
    let pending = client.propose_async(KvStore::put("x", "b"));
    fleet.kill(leader);
    let response = pending.wait().expect("committed after failover");
    assert_eq!(
        KvStore::decode_response(&response).expect("kv"),
        Some(b"a".to_vec()),
        "applied once: a second application would answer \"b\""
    );
    assert_eq!(get(&client, "x").as_deref(), Some(&b"b"[..]));
    let dead = nodes.iter().find(|n| n.id() == leader).expect("dead node");
    wait_until("the dead node's connection is down", || {
        !dead.is_connected()
    });
    assert_eq!(dead.status().role, StateRole::Follower);
    assert_eq!(put(&client, "y", "after-failover"), None);

    // A new directory that no longer pins the dead replica stops its node.
    let mut unpinned = fleet.client_directory(client_secret.clone());
    unpinned.remove(leader);
    remote.update_directory(unpinned).expect("update");
    wait_until("the unpinned node stops", || dead.is_stopped());
    assert!(nodes
        .iter()
        .filter(|n| n.id() != leader)
        .all(|n| !n.is_stopped()));

    for &(id, _) in &MEMBERS {
        if id != leader {
            let stats = fleet.stats(id);
            assert!(stats.client_connections_accepted >= 1, "{stats:#?}");
            assert!(
                stats.client_requests > 0 && stats.client_replies > 0,
                "{stats:#?}"
            );
            assert_eq!(stats.handshakes_refused_role, 0);
            assert_eq!(stats.frames_malformed, 0);
        }
    }
    remote.shutdown();
    wait_until("remote nodes stop", || nodes.iter().all(|n| n.is_stopped()));
    assert_eq!(
        nodes[0].register_session().err(),
        Some(RequestError::Stopped)
    );
    fleet.shutdown();
}

/// A raw client connection (for attacks): the crate's handshake with
/// `directory`, then whatever records a test writes.
struct RawClient {
    reader: FramedRead<tokio::net::tcp::OwnedReadHalf, tokio_util::codec::LengthDelimitedCodec>,
    writer: tokio::net::tcp::OwnedWriteHalf,
    noise: snow::TransportState,
}

async fn raw_connect(
    address: SocketAddr,
    directory: &PeerDirectory,
    server: PublicKey,
) -> Result<RawClient, HandshakeError> {
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(HandshakeError::Io)?;
    let (read, mut writer) = stream.into_split();
    let mut reader = FramedRead::new(read, record_codec());
    let frame_bytes_max = vaultfleet_net::NetConfig::default().frame_bytes_max;
    let session = initiate(
        &mut reader,
        &mut writer,
        directory,
        server,
        frame_bytes_max,
        None,
    )
    .await?;
    Ok(RawClient {
        reader,
        writer,
        noise: session.noise,
    })
}

impl RawClient {
    async fn send(&mut self, plaintext: &[u8]) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        seal_records(&mut self.noise, plaintext, &mut out).expect("seal");
        self.writer.write_all(&out).await
    }

    /// True once the server closed the connection (EOF or reset), within WAIT.
    async fn closed_by_server(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.reader.next()).await {
                Err(_) => return false,
                Ok(None) | Ok(Some(Err(_))) => return true,
                Ok(Some(Ok(_))) => continue,
            }
        }
    }
}

fn status_request(correlation: u64) -> Vec<u8> {
    encode_request(&ClientRequest {
        correlation,
        group: GROUP,
        replica: 1,
        op: ClientOp::Status,
    })
    .expect("encode")
}

#[test]
fn keys_in_the_wrong_role_and_bad_clients_are_refused_without_stalling_the_node() {
    let good = StaticSecret::generate().expect("client key");
    let raw_key = StaticSecret::generate().expect("raw client key");
    let fleet = TcpFleet::start(vec![good.public_key(), raw_key.public_key()], KvStore::new);
    let leader = fleet.wait_leader();
    let good_key = good.public_key();
    let remote =
        RemoteClient::start(fleet.client_directory(good), remote_config()).expect("remote");
    let client = remote
        .session(GROUP, ClientConfig::default())
        .expect("remote session");
    assert_eq!(put(&client, "before", "1"), None);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let address = fleet.addresses[&1];
    let server = fleet.secrets[&1].public_key();
    let before = fleet.stats(1);

    runtime.block_on(async {
        // An unpinned client key: refused before anything it sent is decoded.
        let stranger = fleet.client_directory(StaticSecret::generate().expect("key"));
        assert!(raw_connect(address, &stranger, server).await.is_err());

        // A client key speaking as a peer (claiming replica 9).
        let mut as_peer = PeerDirectory::new(FLEET, [9], raw_key.clone()).expect("peer directory");
        fleet.pin_members(&mut as_peer);
        as_peer
            .insert(
                9,
                PeerEntry {
                    address: SocketAddr::from(([127, 0, 0, 1], 9)),
                    datacenter: "dc-x".into(),
                    public_key: raw_key.public_key(),
                },
            )
            .expect("pin own");
        assert!(raw_connect(address, &as_peer, server).await.is_err());

        // A peer's key (replica 2's) speaking as a client.
        let peer_as_client = fleet.client_directory(fleet.secrets[&2].clone());
        assert!(raw_connect(address, &peer_as_client, server).await.is_err());

        // Garbage and oversize frames close that connection only.
        let allowed = fleet.client_directory(raw_key.clone());
        let mut garbage = raw_connect(address, &allowed, server)
            .await
            .expect("handshake");
        garbage.send(&[0, 0, 0, 2, 9, 9]).await.expect("write");
        assert!(garbage.closed_by_server().await);
        let mut raft_kind = raw_connect(address, &allowed, server)
            .await
            .expect("handshake");
        raft_kind.send(&[0, 0, 0, 2, 1, 0]).await.expect("write");
        assert!(
            raft_kind.closed_by_server().await,
            "a raft frame from a client"
        );
        let mut oversize = raw_connect(address, &allowed, server)
            .await
            .expect("handshake");
        oversize
            .send(&(u32::MAX).to_be_bytes())
            .await
            .expect("write");
        assert!(oversize.closed_by_server().await);
    });
    wait_until("the refusals are counted", || {
        let s = fleet.stats(1);
        s.handshakes_refused_unpinned > before.handshakes_refused_unpinned
            && s.handshakes_refused_role >= before.handshakes_refused_role + 2
            && s.frames_malformed >= before.frames_malformed + 2
            && s.frames_oversize > before.frames_oversize
    });
    // The well-behaved session never noticed.
    assert_eq!(put(&client, "after-attacks", "1"), None);

    // A client that sends and never reads: its connection is cut (its
    // refusals pile up, or its writes time out) while the node keeps
    // serving the others.
    let closed_before = fleet.stats(1).connections_closed;
    let flooder = runtime.spawn({
        let allowed = fleet.client_directory(raw_key.clone());
        async move {
            let mut flood = raw_connect(address, &allowed, server)
                .await
                .expect("handshake");
            let mut correlation = 0u64;
            let started = tokio::time::Instant::now();
            // Bounded in count and time; the server cuts it long before.
            while correlation < 200_000 && started.elapsed() < WAIT {
                let mut batch = Vec::new();
                for _ in 0..100 {
                    correlation += 1;
                    batch.extend_from_slice(&status_request(correlation));
                }
                match tokio::time::timeout(Duration::from_secs(2), flood.send(&batch)).await {
                    Ok(Ok(())) => {}
                    // Refused by a closed socket, or blocked: the server stopped reading.
                    Ok(Err(_)) | Err(_) => return correlation,
                }
            }
            correlation
        }
    });
    let flood_thread = std::thread::spawn(move || runtime.block_on(flooder));
    for i in 0..20 {
        assert_eq!(put(&client, &format!("during-flood-{i}"), "1"), None);
    }
    wait_until("the flooding client is cut off", || {
        let s = fleet.stats(1);
        s.connections_closed > closed_before
            && (s.client_requests_overloaded > 0 || s.connections_closed_write_timeout > 0)
    });
    let sent = flood_thread.join().expect("flooder").expect("flood task");
    assert!(
        sent < 200_000,
        "the server stopped taking requests after {sent}"
    );
    assert_eq!(get(&client, "during-flood-19").as_deref(), Some(&b"1"[..]));
    assert!(fleet.stats(leader).frames_delivered > 0);

    // Node 1's directory drops the client's key: its connection closes and
    // every redial is refused as unpinned.
    let node_1 = remote.node(GROUP, 1).expect("remote node 1");
    wait_until("node 1 connected", || node_1.is_connected());
    let before = fleet.stats(1);
    let mut revoked = fleet.directory(1);
    assert!(revoked.remove_client(&good_key));
    fleet.processes[&1]
        .transport
        .update_directory(revoked)
        .expect("update");
    wait_until("the revoked client is cut off and refused", || {
        let s = fleet.stats(1);
        !node_1.is_connected()
            && s.connections_closed_key_dropped > before.connections_closed_key_dropped
            && s.handshakes_refused_unpinned > before.handshakes_refused_unpinned
    });
    assert!(
        !node_1.is_stopped(),
        "it keeps redialling: a later epoch may allow it again"
    );
    remote.shutdown();
    fleet.shutdown();
}
