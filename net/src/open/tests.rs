//! The open channel over loopback: NX and NK, the caller's check before any
//! application byte, limits, and connections that break the rules.
#![allow(clippy::disallowed_methods)]

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::keys::StaticSecret;

#[derive(Debug, thiserror::Error)]
#[error("refused by the test's check")]
struct NotThisServer;

fn channel() -> ChannelId {
    ChannelId::new("vaultfleet-test", "fleet-1").unwrap()
}

fn server_with(
    payload: &[u8],
    handler: Arc<dyn OpenHandler>,
    tweak: impl FnOnce(&mut OpenServerConfig),
) -> OpenServer {
    let mut config = OpenServerConfig::new("127.0.0.1:0".parse().unwrap());
    tweak(&mut config);
    OpenServer::start(
        channel(),
        StaticSecret::generate().unwrap(),
        payload.to_vec(),
        handler,
        config,
    )
    .unwrap()
}

fn reverser() -> Arc<dyn OpenHandler> {
    Arc::new(|r: &[u8]| Some(r.iter().rev().copied().collect()))
}

fn client_config() -> OpenClientConfig {
    OpenClientConfig {
        request_timeout: Duration::from_secs(10),
        ..OpenClientConfig::default()
    }
}

fn accept_all(_: &[u8; 32], _: &[u8]) -> Result<(), NotThisServer> {
    Ok(())
}

/// Polls `cond` on the server's stats for up to five seconds.
/// A connection to the server at `addr` on [`channel`] that proves its key and
/// is accepted whatever it is.
fn connect_proving(addr: SocketAddr) -> OpenConnection {
    OpenConnection::connect(
        addr,
        &channel(),
        ServerKey::Prove,
        &client_config(),
        accept_all,
    )
    .unwrap()
}

fn wait_stats(server: &OpenServer, what: &str, cond: impl Fn(&OpenStats) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if cond(&server.stats()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{what}: {:?}", server.stats());
}

#[test]
fn nx_hands_the_client_the_key_and_payload_to_check_then_requests_flow() {
    let server = server_with(b"the bundle", reverser(), |_| {});
    let expected = server.public_key();
    let mut seen = None;
    let mut conn = OpenConnection::connect(
        server.local_addr(),
        &channel(),
        ServerKey::Prove,
        &client_config(),
        |key: &[u8; 32], payload: &[u8]| {
            seen = Some((*key, payload.to_vec()));
            Ok::<(), NotThisServer>(())
        },
    )
    .unwrap();
    assert_eq!(
        seen,
        Some((*expected.as_bytes(), b"the bundle".to_vec())),
        "the check sees the proved key and the payload"
    );
    assert_eq!(conn.server_key(), expected);
    assert_eq!(conn.pattern(), Pattern::Nx);
    assert_eq!(conn.call(b"abc").unwrap(), b"cba");
    // A request spanning several records, and its reply.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut reversed = big.clone();
    reversed.reverse();
    assert_eq!(conn.call(&big).unwrap(), reversed);
    let stats = server.stats();
    assert_eq!(stats.handshakes_completed, 1);
    assert_eq!(stats.requests_received, 2);
    assert_eq!(stats.replies_answered, 2);
}

#[test]
fn a_server_the_check_refuses_receives_no_frame() {
    let server = server_with(b"not what the client wants", reverser(), |_| {});
    let refused = OpenConnection::connect(
        server.local_addr(),
        &channel(),
        ServerKey::Prove,
        &client_config(),
        |_: &[u8; 32], _: &[u8]| Err(NotThisServer),
    );
    match refused {
        Err(ConnectError::Refused { key, .. }) => assert_eq!(key, server.public_key()),
        other => panic!("{other:?}"),
    }
    wait_stats(&server, "the session ends without a request", |s| {
        s.sessions_without_requests == 1
    });
    let stats = server.stats();
    assert_eq!(stats.handshakes_completed, 1);
    assert_eq!(stats.requests_received, 0);
}

#[test]
fn nk_needs_the_pinned_key_and_the_same_channel() {
    let server = server_with(b"p", reverser(), |_| {});
    let mut conn = OpenConnection::connect(
        server.local_addr(),
        &channel(),
        ServerKey::Pinned(server.public_key()),
        &client_config(),
        |key: &[u8; 32], payload: &[u8]| {
            assert_eq!(payload, b"p");
            (key == server.public_key().as_bytes())
                .then_some(())
                .ok_or(NotThisServer)
        },
    )
    .unwrap();
    assert_eq!(conn.pattern(), Pattern::Nk);
    assert_eq!(conn.call(b"xy").unwrap(), b"yx");

    let other = StaticSecret::generate().unwrap().public_key();
    let wrong = OpenConnection::connect(
        server.local_addr(),
        &channel(),
        ServerKey::Pinned(other),
        &client_config(),
        accept_all,
    );
    assert!(matches!(wrong, Err(ConnectError::Channel(_))), "{wrong:?}");
    for other_channel in [
        ChannelId::new("vaultfleet-test", "fleet-2").unwrap(),
        ChannelId::new("another-service", "fleet-1").unwrap(),
    ] {
        let r = OpenConnection::connect(
            server.local_addr(),
            &other_channel,
            ServerKey::Prove,
            &client_config(),
            accept_all,
        );
        assert!(matches!(r, Err(ConnectError::Channel(_))), "{r:?}");
    }
    // NK's first message is authenticated to the server's key: a wrong pin
    // fails at the server. NX's first message is a bare ephemeral key, so the
    // server cannot tell another channel's client: it answers, the client
    // fails to read the answer and leaves without a request.
    wait_stats(
        &server,
        "one failed handshake, two sessions left unused",
        |s| s.handshakes_failed == 1 && s.sessions_without_requests == 2,
    );
    assert_eq!(server.stats().requests_received, 1);
}

#[test]
fn garbage_and_oversize_frames_close_only_their_connection() {
    let server = server_with(b"", reverser(), |c| c.request_bytes_max = 1000);
    let mut good = connect_proving(server.local_addr());
    // A first record that is no handshake.
    let mut raw = TcpStream::connect(server.local_addr()).unwrap();
    raw.write_all(&[0, 5, 9, 9, 9, 9, 9]).unwrap();
    wait_stats(&server, "the garbage handshake fails", |s| {
        s.handshakes_failed == 1
    });
    // A request above the server's limit (the client allows more).
    let mut big = connect_proving(server.local_addr());
    assert!(big.call(&[1u8; 5000]).is_err());
    assert!(matches!(big.call(b"again"), Err(ChannelError::Broken)));
    wait_stats(&server, "the oversize frame is refused", |s| {
        s.frames_refused == 1
    });
    assert_eq!(good.call(b"still fine").unwrap(), b"enif llits");
    assert_eq!(server.stats().requests_received, 1);
}

#[test]
fn beyond_handlers_max_a_request_is_busy_and_no_answer_is_unavailable() {
    let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let entered = parking_lot::Mutex::new(entered_tx);
    let release = parking_lot::Mutex::new(release_rx);
    let handler = Arc::new(move |r: &[u8]| {
        if r == b"block" {
            entered.lock().send(()).ok();
            release.lock().recv_timeout(Duration::from_secs(10)).ok();
            return Some(b"released".to_vec());
        }
        (r != b"none").then(|| r.to_vec())
    });
    let server = server_with(b"", handler, |c| c.handlers_max = 1);
    let addr: SocketAddr = server.local_addr();
    let connect = || connect_proving(addr);
    let mut first = connect();
    let blocked = std::thread::spawn(move || first.call(b"block"));
    entered_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let mut second = connect();
    assert!(matches!(second.call(b"hello"), Err(ChannelError::Busy)));
    release_tx.send(()).unwrap();
    assert_eq!(blocked.join().unwrap().unwrap(), b"released");
    // Busy left the connection usable; a handler with no answer is unavailable.
    assert_eq!(second.call(b"hello").unwrap(), b"hello");
    assert!(matches!(
        second.call(b"none"),
        Err(ChannelError::Unavailable)
    ));
    assert_eq!(second.call(b"ok").unwrap(), b"ok");
    let stats = server.stats();
    assert_eq!(
        (
            stats.replies_busy,
            stats.replies_unavailable,
            stats.replies_answered
        ),
        (1, 1, 3)
    );
}

#[test]
fn limits_hold_beyond_connections_max_and_on_payload_size() {
    let server = server_with(b"", reverser(), |c| c.connections_max = 1);
    let mut first = connect_proving(server.local_addr());
    let second = OpenConnection::connect(
        server.local_addr(),
        &channel(),
        ServerKey::Prove,
        &client_config(),
        accept_all,
    );
    assert!(
        matches!(second, Err(ConnectError::Channel(_))),
        "{second:?}"
    );
    assert_eq!(first.call(b"ab").unwrap(), b"ba");
    assert_eq!(server.stats().connections_refused_full, 1);
    assert!(matches!(
        server.set_payload(vec![0; PAYLOAD_BYTES_MAX + 1]),
        Err(ChannelError::PayloadTooLarge { .. })
    ));
    // The largest payload fits in NX's second message.
    server.set_payload(vec![7; PAYLOAD_BYTES_MAX]).unwrap();
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    let payload_len = loop {
        // The first connection's slot frees once the server saw it close.
        let r = OpenConnection::connect(
            server.local_addr(),
            &channel(),
            ServerKey::Prove,
            &client_config(),
            |_: &[u8; 32], p: &[u8]| {
                assert_eq!(p.len(), PAYLOAD_BYTES_MAX);
                Ok::<(), NotThisServer>(())
            },
        );
        match r {
            Ok(_) => break PAYLOAD_BYTES_MAX,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("{e:?}"),
        }
    };
    assert_eq!(payload_len, PAYLOAD_BYTES_MAX);
}
