//! One test per attack the transport must stop, each asserting on the counters
//! that the refused bytes never reached the raft decoder or an inbox.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use raft::prelude::{Entry, MessageType};
use tokio::net::TcpStream;
use vaultfleet::transport::{Envelope, Transport, TransportError};

use super::*;
use crate::handshake::{prologue, NOISE_PARAMS};
use crate::wire::frame::{RaftHeader, FRAME_LENGTH_BYTES};

fn header(group: u64, from: u64, to: u64) -> RaftHeader {
    RaftHeader { group, from, to }
}

/// Bytes that are no raft message: if anything decoded them, the
/// `frames_dropped_undecodable` counter would move.
const NOT_RAFT: &[u8] = &[0xff; 16];

#[test]
fn a_pinned_peer_is_heard_and_its_messages_delivered() {
    let scene = Scene::new(|_| {});
    let mut peer = scene.connect_peer();
    scene
        .runtime
        .block_on(peer.send_message(header(1, 2, 1), &raft_message(2, 1, 42)));
    wait_until("delivery", || scene.inbox.len() == 1);
    let got = scene.inbox.0.lock()[0].clone();
    assert_eq!(
        (got.group, got.message.from, got.message.commit),
        (1, 2, 42)
    );
    let stats = scene.transport.stats();
    assert_eq!(stats.connections_accepted, 1);
    assert_eq!(stats.frames_delivered, 1);
}

#[test]
fn a_peer_with_an_unpinned_key_is_refused_before_anything_it_sent_is_decoded() {
    let scene = Scene::new(|_| {});
    let stranger = StaticSecret::generate().unwrap();
    // It claims replica 2, whose pinned key it does not hold.
    let dir = scene.peer_directory(FLEET, &[2], &stranger);
    let result = scene.runtime.block_on(RawPeer::connect(
        scene.transport.local_addr(),
        &dir,
        &scene.responder,
    ));
    assert!(
        matches!(result, Err(HandshakeError::Closed | HandshakeError::Io(_))),
        "the responder closes without answering: {:?}",
        result.err()
    );
    wait_until("the refusal", || {
        scene.transport.stats().handshakes_refused_unpinned == 1
    });
    let stats = scene.transport.stats();
    assert_eq!(stats.connections_accepted, 0);
    assert_eq!(stats.frames_received, 0);
    assert_eq!(stats.keepalives_received, 0);
    assert_eq!(scene.inbox.len(), 0);
}

#[test]
fn a_peer_of_another_fleet_or_protocol_version_is_refused() {
    let scene = Scene::new(|_| {});
    let other_fleet = scene.peer_directory("another-fleet", &[2], &scene.peer);
    let other_version = scene
        .peer_directory(FLEET, &[2], &scene.peer)
        .with_protocol_version(crate::PROTOCOL_VERSION + 1);
    for (n, dir) in [other_fleet, other_version].iter().enumerate() {
        let result = scene.runtime.block_on(RawPeer::connect(
            scene.transport.local_addr(),
            dir,
            &scene.responder,
        ));
        assert!(result.is_err(), "case {n} completed a handshake");
        wait_until("the failed handshake", || {
            scene.transport.stats().handshakes_failed == n as u64 + 1
        });
    }
    let stats = scene.transport.stats();
    assert_eq!(stats.connections_accepted, 0);
    assert_eq!(
        stats.handshakes_refused_unpinned, 0,
        "the key is pinned: the prologue is what differs"
    );
    assert_eq!(stats.frames_received, 0);
}

#[test]
fn a_frame_whose_from_is_not_the_authenticated_peer_is_dropped_undecoded() {
    let scene = Scene::new(|_| {});
    let mut peer = scene.connect_peer();
    scene.runtime.block_on(async {
        // Replica 3 is pinned, but to another process's key; replica 1 is the
        // responder itself.
        peer.send_frame(header(1, 3, 1), NOT_RAFT).await;
        peer.send_frame(header(1, 1, 1), NOT_RAFT).await;
        peer.send_message(header(1, 2, 1), &raft_message(2, 1, 7))
            .await;
    });
    wait_until("the honest frame", || scene.inbox.len() == 1);
    let stats = scene.transport.stats();
    assert_eq!(stats.frames_dropped_forged_from, 2);
    assert_eq!(
        stats.frames_dropped_undecodable, 0,
        "a forged frame's payload is never decoded"
    );
    assert_eq!(stats.frames_delivered, 1);
    assert_eq!(scene.inbox.0.lock()[0].message.commit, 7);
}

#[test]
fn frames_for_a_group_or_replica_not_hosted_here_are_refused_not_routed() {
    let scene = Scene::new(|_| {});
    let other = Arc::new(Collect::default());
    // Group 5 is hosted here, but only by replica 1... which is not `to` below.
    scene.transport.register(5, 1, other.clone()).unwrap();
    let mut peer = scene.connect_peer();
    scene.runtime.block_on(async {
        peer.send_frame(header(9, 2, 1), NOT_RAFT).await;
        peer.send_frame(header(1, 2, 3), NOT_RAFT).await;
        peer.send_frame(header(1, 2, 77), NOT_RAFT).await;
        peer.send_message(header(5, 2, 1), &raft_message(2, 1, 5))
            .await;
    });
    wait_until("the routed frame", || other.len() == 1);
    let stats = scene.transport.stats();
    assert_eq!(stats.frames_refused_unknown_group, 1);
    assert_eq!(stats.frames_refused_unknown_replica, 2);
    assert_eq!(stats.frames_dropped_undecodable, 0);
    assert_eq!(scene.inbox.len(), 0);
    assert_eq!(other.0.lock()[0].group, 5);
}

#[test]
fn a_raft_message_whose_own_from_or_to_differ_from_the_header_is_dropped() {
    let scene = Scene::new(|_| {});
    let mut peer = scene.connect_peer();
    scene.runtime.block_on(async {
        peer.send_message(header(1, 2, 1), &raft_message(3, 1, 1))
            .await;
        peer.send_message(header(1, 2, 1), &raft_message(2, 4, 2))
            .await;
        peer.send_frame(header(1, 2, 1), NOT_RAFT).await;
        peer.send_message(header(1, 2, 1), &raft_message(2, 1, 3))
            .await;
    });
    wait_until("the honest frame", || scene.inbox.len() == 1);
    let stats = scene.transport.stats();
    assert_eq!(stats.frames_dropped_header_mismatch, 2);
    assert_eq!(stats.frames_dropped_undecodable, 1);
    assert_eq!(stats.frames_delivered, 1);
    assert_eq!(scene.inbox.0.lock()[0].message.commit, 3);
}

#[test]
fn an_oversize_frame_or_a_garbage_handshake_closes_that_connection_only() {
    let scene = Scene::new(|c| c.frame_bytes_max = 64 << 10);
    let mut bad = scene.connect_peer();
    let mut good = scene.connect_peer();
    scene.runtime.block_on(async {
        // A length prefix above the limit: refused before the body arrives.
        bad.send_plaintext(&(1u32 << 20).to_be_bytes()).await;
        assert!(
            bad.closed_by_responder().await,
            "the oversize sender is cut off"
        );
        // Garbage instead of a first handshake message.
        let stream = TcpStream::connect(scene.transport.local_addr())
            .await
            .unwrap();
        let (read, mut write) = stream.into_split();
        let mut out = bytes::BytesMut::new();
        put_record(&mut out, &[0x42; 200]);
        write.write_all(&out).await.unwrap();
        let mut reader = FramedRead::new(read, record_codec());
        let ended = tokio::time::timeout(WAIT, reader.next()).await;
        assert!(
            matches!(ended, Ok(None | Some(Err(_)))),
            "garbage gets no reply"
        );
        good.send_message(header(1, 2, 1), &raft_message(2, 1, 9))
            .await;
    });
    wait_until("the other connection's frame", || scene.inbox.len() == 1);
    let stats = scene.transport.stats();
    assert_eq!(stats.frames_oversize, 1);
    assert_eq!(stats.handshakes_failed, 1);
    assert_eq!(stats.frames_delivered, 1);
    let _ = FRAME_LENGTH_BYTES;
}

#[test]
fn a_replayed_first_message_or_session_gives_the_replayer_nothing() {
    let scene = Scene::new(|_| {});
    let address = scene.transport.local_addr();
    // A genuine session, recorded: the first handshake message and one frame.
    let mut genuine = scene.connect_peer();
    scene
        .runtime
        .block_on(genuine.send_message(header(1, 2, 1), &raft_message(2, 1, 1)));
    wait_until("the genuine frame", || scene.inbox.len() == 1);
    let first = genuine.transcript.sent[0].clone();
    let records = genuine.records.clone();

    // 1. Replaying the first message alone: IK cannot tell it is a replay, so the
    //    responder answers, but the answer is useless without the initiator's
    //    ephemeral and static private keys. An attacker with a key of its own
    //    cannot read it.
    let (_, _, reply) = scene.runtime.block_on(replay(address, &first, &[]));
    let reply = reply.expect("the responder answers a replayed first message");
    let attacker = StaticSecret::generate().unwrap();
    let attacker_dir = scene.peer_directory(FLEET, &[2], &attacker);
    let prologue = prologue(&attacker_dir);
    let mut hs = snow::Builder::new(NOISE_PARAMS.parse().unwrap())
        .local_private_key(attacker.expose())
        .remote_public_key(scene.responder.public_key().as_bytes())
        .prologue(&prologue)
        .build_initiator()
        .unwrap();
    let mut buf = vec![0u8; 65535];
    hs.write_message(&[], &mut buf).unwrap();
    assert!(
        hs.read_message(&reply, &mut buf).is_err(),
        "the reply to a replayed first message must not be readable by the replayer"
    );

    // 2. Replaying the whole recorded session to a fresh responder connection:
    //    the responder's new ephemeral key gives new session keys, so the
    //    recorded frame does not decrypt and nothing is accepted.
    let before = scene.transport.stats();
    scene.runtime.block_on(async {
        let (mut reader, _writer, reply) = replay(address, &first, &records).await;
        assert!(reply.is_some());
        let ended = tokio::time::timeout(WAIT, async {
            while let Some(Ok(_)) = reader.next().await {}
        })
        .await;
        assert!(ended.is_ok(), "the responder closes the replayed session");
    });
    wait_until("the refused record", || {
        scene.transport.stats().records_undecryptable == before.records_undecryptable + 1
    });
    let after = scene.transport.stats();
    assert_eq!(after.frames_received, before.frames_received);
    assert_eq!(after.frames_delivered, 1);
    assert_eq!(scene.inbox.len(), 1);
}

#[test]
fn a_dropped_key_closes_its_connection_and_a_silent_peer_is_closed_as_idle() {
    let scene = Scene::new(|c| {
        c.keepalive_interval = Duration::from_millis(50);
        c.idle_timeout = Duration::from_millis(300);
    });
    // A pinned peer that completes the handshake, then sends nothing at all.
    let mut silent = scene.connect_peer();
    assert!(scene.runtime.block_on(silent.closed_by_responder()));
    wait_until("the idle close", || {
        scene.transport.stats().connections_closed_idle >= 1
    });

    let mut peer = scene.connect_peer();
    let mut directory = (*scene.transport.directory()).clone();
    directory.remove(2);
    scene.transport.update_directory(directory).unwrap();
    assert!(scene.runtime.block_on(peer.closed_by_responder()));
    wait_until("the key-dropped close", || {
        scene.transport.stats().connections_closed_key_dropped == 1
    });
    let dir = scene.peer_directory(FLEET, &[2], &scene.peer);
    let again = scene.runtime.block_on(RawPeer::connect(
        scene.transport.local_addr(),
        &dir,
        &scene.responder,
    ));
    assert!(
        again.is_err(),
        "the dropped key no longer completes a handshake"
    );
    wait_until("the refusal", || {
        scene.transport.stats().handshakes_refused_unpinned == 1
    });
}

#[test]
fn a_full_queue_returns_unreachable_without_blocking_and_oversize_is_refused() {
    // A peer that accepts TCP connections (the kernel's backlog) and never reads
    // or answers: the link stays in its handshake and the queue fills.
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sink = StaticSecret::generate().unwrap();
    let own = StaticSecret::generate().unwrap();
    let mut config = loopback_config();
    config.queue_frames_max = 4;
    config.frame_bytes_max = 64 << 10;
    config.handshake_timeout = Duration::from_secs(30);
    config.connect_timeout = Duration::from_secs(30);
    let mut directory = PeerDirectory::new(FLEET, [1], own).unwrap();
    directory
        .insert(2, entry(black_hole.local_addr().unwrap(), &sink))
        .unwrap();
    let transport = NetTransport::start(directory, config).unwrap();
    let start = Instant::now();
    let results: Vec<Result<(), TransportError>> = (0..200)
        .map(|i| {
            transport.send(Envelope {
                group: 1,
                message: raft_message(1, 2, i),
            })
        })
        .collect();
    let elapsed = start.elapsed();
    assert!(
        results[..4].iter().all(Result::is_ok),
        "{:?}",
        &results[..4]
    );
    assert!(
        results[4..]
            .iter()
            .all(|r| *r == Err(TransportError::Unreachable(2))),
        "a full queue reports the peer unreachable"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "200 sends to a black hole took {elapsed:?}: send must never wait on the peer"
    );
    assert_eq!(transport.stats().sends_refused_queue_full, 196);

    let mut big = raft_message(1, 2, 0);
    big.set_msg_type(MessageType::MsgAppend);
    let mut entry = Entry::default();
    entry.data = vec![0u8; 100 << 10].into();
    big.entries = vec![entry].into();
    let refused = transport.send(Envelope {
        group: 1,
        message: big,
    });
    assert!(
        matches!(refused, Err(TransportError::TooLarge { to: 2, bytes_max, bytes }) if bytes_max == 64 << 10 && bytes > bytes_max),
        "{refused:?}"
    );
    assert_eq!(transport.stats().sends_refused_too_large, 1);
    assert!(matches!(
        transport.try_send(Envelope {
            group: 1,
            message: raft_message(2, 1, 0)
        }),
        Err(crate::SendError::NotLocal(2))
    ));
    transport.shutdown();
    assert!(matches!(
        transport.try_send(Envelope {
            group: 1,
            message: raft_message(1, 2, 0)
        }),
        Err(crate::SendError::Closed)
    ));
    drop(black_hole);
}

#[test]
fn a_silent_peer_stalls_neither_the_sender_nor_the_other_peers() {
    let black_hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (own, sink, other) = (
        StaticSecret::generate().unwrap(),
        StaticSecret::generate().unwrap(),
        StaticSecret::generate().unwrap(),
    );
    let mut config = loopback_config();
    config.queue_frames_max = 8;
    config.handshake_timeout = Duration::from_secs(30);
    let receiver = NetTransport::start(
        PeerDirectory::new(FLEET, [3], other.clone()).unwrap(),
        loopback_config(),
    )
    .unwrap();
    let sender =
        NetTransport::start(PeerDirectory::new(FLEET, [1], own.clone()).unwrap(), config).unwrap();
    let mut directory = (*sender.directory()).clone();
    directory
        .insert(2, entry(black_hole.local_addr().unwrap(), &sink))
        .unwrap();
    directory
        .insert(3, entry(receiver.local_addr(), &other))
        .unwrap();
    sender.update_directory(directory).unwrap();
    let mut directory = (*receiver.directory()).clone();
    directory
        .insert(1, entry(sender.local_addr(), &own))
        .unwrap();
    receiver.update_directory(directory).unwrap();
    let inbox = Arc::new(Collect::default());
    receiver.register(1, 3, inbox.clone()).unwrap();

    for i in 0..100 {
        let _ = sender.send(Envelope {
            group: 1,
            message: raft_message(1, 2, i),
        });
        sender
            .send(Envelope {
                group: 1,
                message: raft_message(1, 3, i),
            })
            .expect("the healthy peer's queue drains");
        // Pace the healthy peer's messages so its small queue keeps up.
        if i % 4 == 3 {
            wait_until("the healthy peer's delivery", || {
                inbox.len() as u64 == i + 1
            });
        }
    }
    wait_until("every message to the healthy peer", || inbox.len() == 100);
    let stats = sender.stats();
    assert_eq!(stats.sends_refused_queue_full, 100 - 8);
    assert_eq!(
        stats.connections_dialed, 1,
        "only the healthy peer answered"
    );
    sender.shutdown();
    receiver.shutdown();
}
