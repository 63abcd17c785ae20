//! One test per finding of the attacker review of the transport (issue 14),
//! named `review_net_N_...` after the finding it covers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use raft::prelude::{Entry, MessageType};
use tokio::net::TcpStream;
use vaultfleet::transport::{Envelope, Transport, TransportError};

use super::*;
use crate::wire::frame::RaftHeader;

fn header(group: u64, from: u64, to: u64) -> RaftHeader {
    RaftHeader { group, from, to }
}

fn append(from: u64, to: u64, bytes: usize) -> raft::prelude::Message {
    let mut m = raft_message(from, to, 0);
    m.set_msg_type(MessageType::MsgAppend);
    let mut entry = Entry::default();
    entry.data = vec![7u8; bytes].into();
    m.entries = vec![entry].into();
    m
}

/// Opens a TCP connection that sends nothing.
async fn silent_connection(address: SocketAddr) -> TcpStream {
    TcpStream::connect(address).await.unwrap()
}

#[test]
fn review_net_1_handshakes_have_their_own_pool_per_ip_and_a_key_keeps_at_most_its_newest_connections(
) {
    let scene = Scene::new(|c| {
        c.handshake_timeout = Duration::from_millis(500);
        c.handshakes_per_ip_max = 4;
        c.connections_per_peer_key_max = 2;
    });
    let address = scene.transport.local_addr();
    // Three genuine connections of one key: the third closes the first.
    let mut first = scene.connect_peer();
    scene
        .runtime
        .block_on(first.send_message(header(1, 2, 1), &raft_message(2, 1, 1)));
    wait_until("the first connection's frame", || scene.inbox.len() == 1);
    let mut second = scene.connect_peer();
    scene
        .runtime
        .block_on(second.send_message(header(1, 2, 1), &raft_message(2, 1, 2)));
    wait_until("the second connection's frame", || scene.inbox.len() == 2);
    let mut third = scene.connect_peer();
    scene
        .runtime
        .block_on(third.send_message(header(1, 2, 1), &raft_message(2, 1, 3)));
    wait_until("the third connection's frame", || scene.inbox.len() == 3);
    assert!(
        scene.runtime.block_on(first.closed_by_responder()),
        "the oldest connection of the key is closed"
    );
    assert_eq!(scene.transport.stats().connections_replaced, 1);

    // Replaying the third connection's first handshake message: the responder
    // answers, but no transport record follows, so it never counts as
    // established and evicts nothing.
    let recorded = third.transcript.sent[0].clone();
    scene.runtime.block_on(async {
        let mut replays = Vec::new();
        for _ in 0..3 {
            let (reader, writer, reply) = replay(address, &recorded, &[]).await;
            assert!(reply.is_some());
            replays.push((reader, writer));
        }
        wait_until("the replays time out unconfirmed", || {
            scene.transport.stats().handshakes_unconfirmed == 3
        });
    });
    let stats = scene.transport.stats();
    assert_eq!(stats.connections_replaced, 1, "{stats:#?}");
    assert_eq!(stats.connections_accepted, 3);
    scene.runtime.block_on(async {
        second
            .send_message(header(1, 2, 1), &raft_message(2, 1, 4))
            .await;
        third
            .send_message(header(1, 2, 1), &raft_message(2, 1, 5))
            .await;
    });
    wait_until("both genuine connections still deliver", || {
        scene.inbox.len() == 5
    });

    // Silent connections from one address take at most `handshakes_per_ip_max`
    // handshake slots; the next one is refused at once, and established
    // connections are untouched.
    scene.runtime.block_on(async {
        let mut silent = Vec::new();
        for _ in 0..4 {
            silent.push(silent_connection(address).await);
        }
        let refused = silent_connection(address).await;
        let (read, _write) = refused.into_split();
        let mut reader = FramedRead::new(read, record_codec());
        let ended = tokio::time::timeout(Duration::from_millis(400), reader.next()).await;
        assert!(
            matches!(ended, Ok(None | Some(Err(_)))),
            "the fifth handshaking connection from one address is closed at once"
        );
        drop(silent);
    });
    let stats = scene.transport.stats();
    assert_eq!(stats.handshakes_refused_ip_limit, 1, "{stats:#?}");
    scene
        .runtime
        .block_on(third.send_message(header(1, 2, 1), &raft_message(2, 1, 6)));
    wait_until("the established connection still delivers", || {
        scene.inbox.len() == 6
    });
}

#[test]
fn review_net_3_a_frame_limit_that_cannot_carry_one_entry_is_refused_at_start() {
    let mut config = loopback_config();
    config.frame_bytes_max = 1 << 20;
    config.entry_bytes_max = 1 << 20;
    let directory = PeerDirectory::new(FLEET, [1], StaticSecret::generate().unwrap()).unwrap();
    let refused = NetTransport::start(directory.clone(), config.clone());
    assert!(
        matches!(
            refused,
            Err(crate::NetError::Config(crate::ConfigError::FrameBelowEntry {
                required,
                ..
            })) if required > 3 << 20
        ),
        "{refused:?}"
    );
    config.entry_bytes_max = 256 << 10;
    NetTransport::start(directory, config)
        .expect("a frame of three entries and overhead is enough")
        .shutdown();
}

#[test]
fn review_net_5_nothing_queued_is_sealed_for_a_key_the_directory_dropped() {
    // The sender's runtime has one worker. While a task holds it, frames are
    // queued for the peer and the peer's key is dropped; when the worker is
    // free the connection's writer sees both at once. It must close without
    // sealing a byte of them. Several rounds: an unbiased `select!` picked
    // the queue about one time in three.
    let (own, other) = (
        StaticSecret::generate().unwrap(),
        StaticSecret::generate().unwrap(),
    );
    let mut config = loopback_config();
    config.backoff_max = Duration::from_millis(100);
    let sender =
        NetTransport::start(PeerDirectory::new(FLEET, [1], own.clone()).unwrap(), config).unwrap();
    let receiver = NetTransport::start(
        PeerDirectory::new(FLEET, [2], other.clone()).unwrap(),
        loopback_config(),
    )
    .unwrap();
    let pinned = {
        let mut d = (*sender.directory()).clone();
        d.insert(2, entry(receiver.local_addr(), &other)).unwrap();
        d
    };
    let mut d = (*receiver.directory()).clone();
    d.insert(1, entry(sender.local_addr(), &own)).unwrap();
    receiver.update_directory(d).unwrap();
    let inbox = Arc::new(Collect::default());
    receiver.register(1, 2, inbox.clone()).unwrap();
    let mut dropped = pinned.clone();
    dropped.remove(2);
    let runtime = sender.runtime_handle();
    for round in 1..=12u64 {
        sender.update_directory(pinned.clone()).unwrap();
        let marker = round << 32;
        wait_until("the link is up again", || {
            let _ = sender.send(Envelope {
                group: 1,
                message: raft_message(1, 2, marker - 1),
            });
            std::thread::sleep(Duration::from_millis(10));
            inbox
                .0
                .lock()
                .iter()
                .any(|e| e.message.commit == marker - 1)
        });
        let closed = sender.stats().connections_closed_key_dropped;
        let (holding, held) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        runtime.spawn(async move {
            holding.send(()).unwrap();
            let _ = released.recv_timeout(Duration::from_secs(5));
        });
        held.recv().unwrap();
        for i in 0..8 {
            sender
                .send(Envelope {
                    group: 1,
                    message: raft_message(1, 2, marker + i),
                })
                .expect("queued while the writer waits for the worker");
        }
        sender.update_directory(dropped.clone()).unwrap();
        release.send(()).unwrap();
        wait_until("the key-dropped close", || {
            sender.stats().connections_closed_key_dropped > closed
        });
        std::thread::sleep(Duration::from_millis(50));
        let leaked: Vec<u64> = inbox
            .0
            .lock()
            .iter()
            .map(|e| e.message.commit)
            .filter(|&c| c >= marker)
            .collect();
        assert!(
            leaked.is_empty(),
            "round {round}: frames queued before the key was dropped were sent after it: {leaked:?}"
        );
    }
    sender.shutdown();
    receiver.shutdown();
}

#[test]
fn review_net_6_an_unpinned_claimed_id_is_ignored_and_counted_not_refused() {
    let scene = Scene::new(|_| {});
    // 99 is pinned to nobody, 3 to another process, 1 is the responder's own.
    let dir = scene.peer_directory(FLEET, &[2, 3, 99], &scene.peer);
    let mut peer = scene
        .runtime
        .block_on(RawPeer::connect(
            scene.transport.local_addr(),
            &dir,
            &scene.responder,
        ))
        .expect("stale or unknown claims do not refuse the handshake");
    scene.runtime.block_on(async {
        peer.send_message(header(1, 2, 1), &raft_message(2, 1, 1))
            .await;
        // The claim of 3 gives no right to speak as 3.
        peer.send_message(header(1, 3, 1), &raft_message(3, 1, 2))
            .await;
    });
    wait_until("the honest frame", || scene.inbox.len() == 1);
    wait_until("the forged frame's drop", || {
        scene.transport.stats().frames_dropped_forged_from == 1
    });
    let stats = scene.transport.stats();
    assert_eq!(stats.hello_claims_ignored, 2, "{stats:#?}");
    assert_eq!(stats.connections_accepted, 1);
}

#[test]
fn review_net_7_processes_with_different_frame_limits_send_with_the_smaller() {
    let (a_key, b_key) = (
        StaticSecret::generate().unwrap(),
        StaticSecret::generate().unwrap(),
    );
    let mut small = loopback_config();
    small.frame_bytes_max = 64 << 10;
    small.entry_bytes_max = 16 << 10;
    let a = NetTransport::start(
        PeerDirectory::new(FLEET, [1], a_key.clone()).unwrap(),
        small,
    )
    .unwrap();
    let b = NetTransport::start(
        PeerDirectory::new(FLEET, [2], b_key.clone()).unwrap(),
        loopback_config(),
    )
    .unwrap();
    for (t, id, addr, key) in [
        (&a, 2, b.local_addr(), &b_key),
        (&b, 1, a.local_addr(), &a_key),
    ] {
        let mut d = (*t.directory()).clone();
        d.insert(id, entry(addr, key)).unwrap();
        t.update_directory(d).unwrap();
    }
    let inbox = Arc::new(Collect::default());
    a.register(1, 1, inbox.clone()).unwrap();
    wait_until("a first message from b", || {
        let _ = b.send(Envelope {
            group: 1,
            message: raft_message(2, 1, 1),
        });
        std::thread::sleep(Duration::from_millis(20));
        inbox.len() > 0
    });
    // 100 KiB is within b's own limit but above a's.
    let refused = b.send(Envelope {
        group: 1,
        message: append(2, 1, 100 << 10),
    });
    assert!(
        matches!(refused, Err(TransportError::TooLarge { bytes_max, .. }) if bytes_max == 64 << 10),
        "{refused:?}"
    );
    let delivered = inbox.len();
    b.send(Envelope {
        group: 1,
        message: append(2, 1, 40 << 10),
    })
    .expect("within both limits");
    wait_until("the append within both limits", || {
        inbox.len() == delivered + 1
    });
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!(sa.frames_oversize, 0, "{sa:#?}");
    assert_eq!(sb.connections_dialed, 1, "the link did not flap: {sb:#?}");
    a.shutdown();
    b.shutdown();
}

/// Warnings (and errors) logged by the transport's accept path, process-wide.
static WARNINGS: AtomicU64 = AtomicU64::new(0);

struct CountWarnings;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CountWarnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() <= tracing::Level::WARN && meta.target() == "vaultfleet_net::transport" {
            WARNINGS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[test]
fn review_net_8_refused_handshakes_are_counted_not_logged_above_debug() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        use tracing_subscriber::layer::SubscriberExt;
        let subscriber = tracing_subscriber::registry().with(CountWarnings);
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
    });
    let scene = Scene::new(|_| {});
    let before = WARNINGS.load(Ordering::Relaxed);
    let stranger = StaticSecret::generate().unwrap();
    let dir = scene.peer_directory(FLEET, &[2], &stranger);
    for _ in 0..20 {
        let refused = scene.runtime.block_on(RawPeer::connect(
            scene.transport.local_addr(),
            &dir,
            &scene.responder,
        ));
        assert!(refused.is_err());
    }
    wait_until("every refusal counted", || {
        scene.transport.stats().handshakes_refused_unpinned == 20
    });
    assert_eq!(
        WARNINGS.load(Ordering::Relaxed) - before,
        0,
        "an unauthenticated flood must not flood the logs"
    );
}

#[test]
fn review_net_9c_counts_above_what_tokio_can_allocate_are_refused_with_typed_errors() {
    for (what, set) in [
        (
            "queue_frames_max",
            (|c: &mut NetConfig| c.queue_frames_max = usize::MAX) as fn(&mut NetConfig),
        ),
        ("inbound_connections_max", |c| {
            c.inbound_connections_max = usize::MAX
        }),
        ("handshakes_max", |c| c.handshakes_max = usize::MAX),
    ] {
        let mut config = loopback_config();
        set(&mut config);
        assert!(
            matches!(config.validate(), Err(crate::ConfigError::AboveLimit { what: w, .. }) if w == what),
            "{what}: {:?}",
            config.validate()
        );
        let directory = PeerDirectory::new(FLEET, [1], StaticSecret::generate().unwrap()).unwrap();
        assert!(NetTransport::start(directory, config).is_err(), "{what}");
    }
}

#[test]
fn review_net_9b_a_replica_not_hosted_here_cannot_be_pinned_to_this_process_key() {
    let own = StaticSecret::generate().unwrap();
    let mut directory = PeerDirectory::new(FLEET, [1], own.clone()).unwrap();
    directory
        .insert(1, entry(SocketAddr::from(([127, 0, 0, 1], 1)), &own))
        .unwrap();
    assert_eq!(
        directory.insert(2, entry(SocketAddr::from(([127, 0, 0, 1], 1)), &own)),
        Err(crate::DirectoryError::ForeignIdOnOwnKey { id: 2 })
    );
}
