//! The proxy's faults, seen from real sockets on loopback: each test builds
//! endpoints, links and a target, injects one kind of fault and checks what a
//! client sees. Waits are bounded; a delay is only ever asserted as a lower
//! bound, and "nothing arrives" only within a bounded wait.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep, timeout, Instant};
use vaultfleet_netem::{CutMode, Latency, Link, LinkMode, Proxy, ProxyConfig};

/// Bound on any wait that is expected to succeed.
const PATIENCE: Duration = Duration::from_secs(5);
/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);

fn start(default_seed: u64) -> Proxy {
    let seed = ProxyConfig::seed_from_env(default_seed).expect("seed");
    println!("netem seed {seed} (rerun with VAULTFLEET_NETEM_SEED={seed})");
    Proxy::start(ProxyConfig::new(seed)).expect("proxy")
}

/// An echo server on the test's runtime, counting the connections it accepted.
struct Echo {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

async fn echo_server() -> Echo {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Echo { addr, accepted }
}

async fn connect(link: &Link) -> TcpStream {
    let stream = timeout(PATIENCE, TcpStream::connect(link.addr()))
        .await
        .expect("connect in time")
        .expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

/// Writes `msg` and reads the echo back within [`PATIENCE`].
async fn round_trip(stream: &mut TcpStream, msg: &[u8]) {
    stream.write_all(msg).await.expect("write");
    let mut got = vec![0u8; msg.len()];
    timeout(PATIENCE, stream.read_exact(&mut got))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(got, msg);
}

/// Asserts nothing is readable within [`QUIET`].
async fn assert_quiet(stream: &mut TcpStream) {
    let mut buf = [0u8; 64];
    match timeout(QUIET, stream.read(&mut buf)).await {
        Err(_elapsed) => {}
        Ok(read) => panic!("expected silence, read {read:?}"),
    }
}

/// Asserts the next read fails with `ECONNRESET` within [`PATIENCE`].
async fn assert_reset(stream: &mut TcpStream) {
    let mut buf = [0u8; 64];
    let read = timeout(PATIENCE, stream.read(&mut buf))
        .await
        .expect("the reset arrives in time");
    assert_eq!(
        read.map_err(|e| e.kind()),
        Err(ErrorKind::ConnectionReset),
        "expected ECONNRESET"
    );
}

/// Asserts a new connection on `link` is reset: the kernel completes the
/// handshake before the proxy resets it, so either the connect itself reports
/// the reset (it arrived before the connect was polled) or the first read does.
async fn assert_refused(link: &Link) {
    let connected = timeout(PATIENCE, TcpStream::connect(link.addr()))
        .await
        .expect("connect in time");
    match connected {
        Ok(mut stream) => assert_reset(&mut stream).await,
        Err(error) => assert_eq!(error.kind(), ErrorKind::ConnectionReset),
    }
}

/// Polls `check` every 10 ms, at most [`PATIENCE`].
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

fn two_endpoints(proxy: &Proxy, target: SocketAddr) -> Link {
    proxy.add_endpoint("a", "dc1").expect("a");
    proxy.add_endpoint("b", "dc1").expect("b");
    proxy.set_target("b", target).expect("target");
    proxy.link("a", "b").expect("link")
}

#[tokio::test]
async fn latency_is_added_each_way() {
    let proxy = start(1);
    let echo = echo_server().await;
    let link = two_endpoints(&proxy, echo.addr);
    let there = Latency::fixed(Duration::from_millis(60)).with_jitter(Duration::from_millis(20));
    let back = Latency::fixed(Duration::from_millis(40));
    proxy.set_latency("a", "b", there).expect("latency");
    proxy.set_latency("b", "a", back).expect("latency");
    let mut client = connect(&link).await;
    for round in 0..4u8 {
        let started = Instant::now();
        round_trip(&mut client, &[round; 32]).await;
        let took = started.elapsed();
        assert!(
            took >= there.fixed + back.fixed,
            "round {round} took only {took:?}"
        );
    }
    // A counter moves just after its write returns: the reader may be faster.
    eventually("128 bytes counted each way", || {
        let stats = link.stats();
        (stats.bytes_from_to, stats.bytes_to_from) == (128, 128)
    })
    .await;
    let stats = link.stats();
    assert_eq!(stats.connections_accepted, 1);
    assert_eq!(stats.connections_live, 1);
    // The same link is returned again, not a second listener.
    assert_eq!(proxy.link("a", "b").expect("link").addr(), link.addr());
}

#[tokio::test]
async fn bandwidth_cap_slows_a_bulk_transfer() {
    let proxy = start(2);
    let echo = echo_server().await;
    let link = two_endpoints(&proxy, echo.addr);
    let bytes_per_sec = 128 * 1024;
    proxy
        .set_bandwidth("a", "b", NonZeroU64::new(bytes_per_sec))
        .expect("cap");
    let mut client = connect(&link).await;
    let payload = vec![7u8; 96 * 1024];
    let started = Instant::now();
    round_trip(&mut client, &payload).await;
    // Every chunk but the last waits for the ones before it to pay.
    let chunk = ProxyConfig::new(0).chunk_bytes_max as u64;
    let floor =
        Duration::from_secs_f64((payload.len() as u64 - chunk) as f64 / bytes_per_sec as f64);
    assert!(
        started.elapsed() >= floor,
        "took {:?}, floor {floor:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn partition_black_hole_holds_traffic_until_heal() {
    let proxy = start(3);
    let echo = echo_server().await;
    let link = two_endpoints(&proxy, echo.addr);
    let mut first = connect(&link).await;
    round_trip(&mut first, b"before").await;

    proxy.partition("a", "b", CutMode::BlackHole).expect("cut");
    first.write_all(b"during").await.expect("write");
    assert_quiet(&mut first).await;
    // A new connection is accepted but held: nothing reaches the target.
    let mut second = connect(&link).await;
    second.write_all(b"held").await.expect("write");
    assert_quiet(&mut second).await;
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(link.stats().bytes_from_to, 6);

    proxy.heal_partition("a", "b").expect("heal");
    // TCP semantics: the held bytes arrive, in order, once the cut heals.
    let mut got = [0u8; 6];
    timeout(PATIENCE, first.read_exact(&mut got))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(&got, b"during");
    let mut got = [0u8; 4];
    timeout(PATIENCE, second.read_exact(&mut got))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(&got, b"held");
    assert_eq!(echo.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn partition_reset_resets_and_refuses_until_heal() {
    let proxy = start(4);
    let echo = echo_server().await;
    let link = two_endpoints(&proxy, echo.addr);
    let mut client = connect(&link).await;
    round_trip(&mut client, b"ok").await;

    proxy.partition("b", "a", CutMode::Reset).expect("cut");
    assert_reset(&mut client).await;
    assert_refused(&link).await;
    let stats = link.stats();
    assert_eq!(stats.connections_reset, 1);
    assert_eq!(stats.connections_refused, 1);

    proxy.heal();
    let mut again = connect(&link).await;
    round_trip(&mut again, b"healed").await;
}

#[tokio::test]
async fn one_way_loss_stops_one_direction_while_the_other_flows() {
    let proxy = start(5);
    let target = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let link = two_endpoints(&proxy, target.local_addr().expect("addr"));
    let mut client = connect(&link).await;
    let (mut server, _) = timeout(PATIENCE, target.accept())
        .await
        .expect("in time")
        .expect("accept");

    proxy.set_loss("a", "b", true).expect("loss");
    client.write_all(b"ping").await.expect("write");
    assert_quiet(&mut server).await;
    server.write_all(b"pong").await.expect("write");
    let mut got = [0u8; 4];
    timeout(PATIENCE, client.read_exact(&mut got))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(&got, b"pong");
    eventually("4 bytes counted back", || link.stats().bytes_to_from == 4).await;
    assert_eq!(link.stats().bytes_from_to, 0);

    proxy.set_loss("a", "b", false).expect("loss off");
    timeout(PATIENCE, server.read_exact(&mut got))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(&got, b"ping");
}

#[tokio::test]
async fn resets_on_demand_and_at_a_seeded_rate() {
    let proxy = start(6);
    let echo = echo_server().await;
    let link = two_endpoints(&proxy, echo.addr);
    let mut client = connect(&link).await;
    round_trip(&mut client, b"one").await;
    link.reset_connections();
    assert_reset(&mut client).await;
    assert_eq!(link.stats().connections_reset, 1);

    // Connections opened after the reset are not touched by it.
    let mut fresh = connect(&link).await;
    round_trip(&mut fresh, b"two").await;

    proxy.set_reset_chance("a", "b", 1_000_000).expect("chance");
    let mut doomed = connect(&link).await;
    doomed.write_all(b"three").await.expect("write");
    assert_reset(&mut doomed).await;
    // An open connection draws at its next chunk.
    fresh.write_all(b"four").await.expect("write");
    assert_reset(&mut fresh).await;
    assert_eq!(link.stats().connections_reset, 3);
    assert!(proxy.set_reset_chance("a", "b", 1_000_001).is_err());
}

#[tokio::test]
async fn black_hole_reads_and_never_answers() {
    let proxy = start(7);
    let target = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let link = two_endpoints(&proxy, target.local_addr().expect("addr"));
    link.set_mode(LinkMode::BlackHole);
    let mut client = connect(&link).await;
    client.write_all(&[1u8; 1000]).await.expect("write");
    assert_quiet(&mut client).await;
    eventually("the black hole read all 1000 bytes", || {
        link.stats().bytes_discarded == 1000
    })
    .await;
    // Nothing was ever connected upstream.
    assert!(timeout(QUIET, target.accept()).await.is_err());
    assert_eq!(link.stats().bytes_from_to, 0);

    // The stream lost bytes: when the black hole ends it is reset, not resumed.
    link.set_mode(LinkMode::Forward);
    assert_reset(&mut client).await;
}

#[tokio::test]
async fn a_peer_that_never_reads_blocks_the_writer_only() {
    let proxy = start(8);
    let echo = echo_server().await;
    let link = two_endpoints(&proxy, echo.addr);
    proxy.add_endpoint("c", "dc1").expect("c");
    let other = proxy.link("c", "b").expect("link");
    link.set_mode(LinkMode::NeverRead);

    let mut stuck = connect(&link).await;
    let big = vec![0u8; 64 * 1024 * 1024];
    let write = timeout(Duration::from_secs(2), stuck.write_all(&big)).await;
    assert!(
        write.is_err(),
        "a 64 MiB write to a peer that never reads completed"
    );
    assert_eq!(link.stats().bytes_from_to, 0);

    // The proxy itself is not stalled: another link to the same target works.
    let mut fine = connect(&other).await;
    round_trip(&mut fine, b"still fine").await;
}

#[tokio::test]
async fn datacenter_cut_and_heal_with_dc_latency() {
    let proxy = start(9);
    let echo_b = echo_server().await;
    let echo_c = echo_server().await;
    proxy.add_endpoint("a", "east").expect("a");
    proxy.add_endpoint("b", "east").expect("b");
    proxy.add_endpoint("c", "west").expect("c");
    proxy.set_target("b", echo_b.addr).expect("b");
    proxy.set_target("c", echo_c.addr).expect("c");
    let a_b = proxy.link("a", "b").expect("link");
    let a_c = proxy.link("a", "c").expect("link");
    let inter = Latency::fixed(Duration::from_millis(50));
    proxy.set_dc_latency(Latency::ZERO, inter);

    let mut near = connect(&a_b).await;
    let mut far = connect(&a_c).await;
    let started = Instant::now();
    round_trip(&mut far, b"far").await;
    assert!(started.elapsed() >= inter.fixed * 2);

    proxy.cut_dc("west", CutMode::BlackHole).expect("cut");
    round_trip(&mut near, b"inside east").await;
    far.write_all(b"held").await.expect("write");
    assert_quiet(&mut far).await;
    proxy.heal_dc("west").expect("heal");
    let mut got = [0u8; 4];
    timeout(PATIENCE, far.read_exact(&mut got))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(&got, b"held");

    proxy.cut_dc("east", CutMode::Reset).expect("cut");
    assert_reset(&mut far).await;
    round_trip(&mut near, b"east still talks").await;
    assert!(proxy.cut_dc("north", CutMode::Reset).is_err());
    proxy.heal();
    let mut again = connect(&a_c).await;
    round_trip(&mut again, b"whole again").await;
}

#[tokio::test]
async fn shutdown_ends_every_task_and_closes_every_socket() {
    let proxy = start(10);
    let echo = echo_server().await;
    let link = two_endpoints(&proxy, echo.addr);
    proxy.add_endpoint("c", "dc2").expect("c");
    proxy.set_target("c", echo.addr).expect("c");
    let held_link = proxy.link("a", "c").expect("link");
    let mut forwarding = connect(&link).await;
    round_trip(&mut forwarding, b"up").await;
    proxy.partition("a", "c", CutMode::BlackHole).expect("cut");
    let mut held = connect(&held_link).await;
    eventually("both connections accepted", || {
        held_link.stats().connections_live == 1
    })
    .await;
    // Two accept loops and two connections.
    assert_eq!(proxy.live_tasks(), 4);

    proxy.shutdown(PATIENCE).expect("every task ends");
    assert_eq!(proxy.live_tasks(), 0);
    for stream in [&mut forwarding, &mut held] {
        let mut buf = [0u8; 8];
        let read = timeout(PATIENCE, stream.read(&mut buf))
            .await
            .expect("closed in time");
        assert!(
            matches!(read, Ok(0)),
            "expected end of stream, got {read:?}"
        );
    }
    let refused = TcpStream::connect(link.addr()).await;
    assert_eq!(
        refused.map(|_| ()).map_err(|e| e.kind()),
        Err(ErrorKind::ConnectionRefused)
    );
    assert!(proxy.link("b", "a").is_err());
}

#[tokio::test]
async fn dropping_the_proxy_in_async_code_closes_its_listeners() {
    let proxy = start(11);
    let echo = echo_server().await;
    let link = two_endpoints(&proxy, echo.addr);
    let addr = link.addr();
    let mut client = connect(&link).await;
    round_trip(&mut client, b"up").await;
    drop(proxy);
    let mut buf = [0u8; 8];
    let read = timeout(PATIENCE, client.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(
        matches!(read, Ok(0)),
        "expected end of stream, got {read:?}"
    );
    let mut refused = false;
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "the listener outlived the proxy");
}

#[test]
fn mesh_opens_one_link_per_directed_pair_from_sync_code() {
    let proxy = start(12);
    for (name, dc) in [("r1", "east"), ("r2", "east"), ("r3", "west")] {
        proxy.add_endpoint(name, dc).expect("endpoint");
    }
    let links = proxy.mesh().expect("mesh");
    let pairs: Vec<(String, String)> = links
        .iter()
        .map(|l| (l.from_endpoint(), l.to_endpoint()))
        .collect();
    let expected = [
        ("r1", "r2"),
        ("r1", "r3"),
        ("r2", "r1"),
        ("r2", "r3"),
        ("r3", "r1"),
        ("r3", "r2"),
    ];
    assert_eq!(pairs, expected.map(|(a, b)| (a.to_owned(), b.to_owned())));
    let mut addrs: Vec<SocketAddr> = links.iter().map(Link::addr).collect();
    addrs.sort();
    addrs.dedup();
    assert_eq!(addrs.len(), 6, "every directed pair has its own listener");
    let again: Vec<SocketAddr> = proxy.mesh().expect("mesh").iter().map(Link::addr).collect();
    assert_eq!(again, links.iter().map(Link::addr).collect::<Vec<_>>());
    assert_eq!(proxy.live_tasks(), 6);
    assert!(proxy.link("r1", "r1").is_err());
    assert!(proxy.link("r1", "nobody").is_err());
    assert!(proxy.add_endpoint("r1", "west").is_err());
    // No target yet: a connection is accepted and reset, and counted.
    let mut client = std::net::TcpStream::connect(links[0].addr()).expect("connect");
    client.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut buf = [0u8; 1];
    let read = std::io::Read::read(&mut client, &mut buf).map_err(|e| e.kind());
    assert_eq!(read, Err(ErrorKind::ConnectionReset));
    assert_eq!(links[0].stats().connections_refused, 1);
    proxy.shutdown(PATIENCE).expect("shutdown");
}
