//! Tests of the transport against peers that misbehave. The raw peer below uses
//! the crate's own handshake with a key the responder pins (an authenticated but
//! hostile process), then writes whatever records and frames a test wants.
// Tests wait in wall-clock time, bounded.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod attacks;
mod review;
mod streams;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::StreamExt;
use parking_lot::Mutex;
use raft::prelude::{Message, MessageType};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio_util::codec::FramedRead;
use vaultfleet::replica::encode_message;
use vaultfleet::transport::{Envelope, Inbox};

use crate::connection::RecordReader;
use crate::handshake::{initiate, Transcript};
use crate::wire::frame::{encode_raft, RaftHeader};
use crate::wire::record::{put_record, record_codec, seal_records};
use crate::{HandshakeError, NetConfig, NetTransport, PeerDirectory, PeerEntry, StaticSecret};

/// Every wait in these tests gives up (and fails) after this long.
const WAIT: Duration = Duration::from_secs(10);

pub(crate) const FLEET: &str = "test-fleet";

/// An inbox that keeps what it is given.
#[derive(Default)]
pub(crate) struct Collect(pub Mutex<Vec<Envelope>>);

impl Inbox for Collect {
    fn deliver(&self, envelope: Envelope) {
        self.0.lock().push(envelope);
    }
}

impl Collect {
    pub fn len(&self) -> usize {
        self.0.lock().len()
    }
}

pub(crate) fn loopback_config() -> NetConfig {
    let mut config = NetConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
    config.worker_threads = 1;
    config
}

pub(crate) fn entry(address: SocketAddr, secret: &StaticSecret) -> PeerEntry {
    PeerEntry {
        address,
        datacenter: "dc-a".into(),
        public_key: secret.public_key(),
    }
}

/// Polls `cond` until it holds, failing the test after [`WAIT`].
pub(crate) fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub(crate) fn raft_message(from: u64, to: u64, commit: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgHeartbeat);
    m.from = from;
    m.to = to;
    m.commit = commit;
    m
}

/// A responder process hosting replica 1 of group 1; replica 2 is the raw
/// peer's (pinned), replica 3 belongs to a third process (pinned, another key).
pub(crate) struct Scene {
    pub transport: NetTransport,
    pub inbox: Arc<Collect>,
    pub responder: StaticSecret,
    pub peer: StaticSecret,
    /// Replica 3's key (a third process).
    pub third: StaticSecret,
    pub runtime: tokio::runtime::Runtime,
}

impl Scene {
    pub fn new(tweak: impl FnOnce(&mut NetConfig)) -> Self {
        let responder = StaticSecret::generate().unwrap();
        let peer = StaticSecret::generate().unwrap();
        let third = StaticSecret::generate().unwrap();
        let mut config = loopback_config();
        tweak(&mut config);
        let directory = PeerDirectory::new(FLEET, [1], responder.clone()).unwrap();
        let transport = NetTransport::start(directory, config).unwrap();
        let mut directory = (*transport.directory()).clone();
        let here = transport.local_addr();
        directory.insert(1, entry(here, &responder)).unwrap();
        directory
            .insert(2, entry(SocketAddr::from(([127, 0, 0, 1], 9)), &peer))
            .unwrap();
        directory
            .insert(3, entry(SocketAddr::from(([127, 0, 0, 1], 10)), &third))
            .unwrap();
        transport.update_directory(directory).unwrap();
        let inbox = Arc::new(Collect::default());
        transport.register(1, 1, inbox.clone()).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Self {
            transport,
            inbox,
            responder,
            peer,
            third,
            runtime,
        }
    }

    /// The raw peer's own directory: it hosts `ids`, proves `secret`, and pins
    /// the responder as replica 1.
    pub fn peer_directory(&self, fleet: &str, ids: &[u64], secret: &StaticSecret) -> PeerDirectory {
        let mut d = PeerDirectory::new(fleet, ids.iter().copied(), secret.clone()).unwrap();
        d.insert(1, entry(self.transport.local_addr(), &self.responder))
            .unwrap();
        d
    }

    /// Connects the third process (replica 3, pinned) as a raw peer.
    pub fn connect_third(&self) -> RawPeer {
        let dir = self.peer_directory(FLEET, &[3], &self.third);
        self.runtime
            .block_on(RawPeer::connect(
                self.transport.local_addr(),
                &dir,
                &self.responder,
            ))
            .expect("the third process completes its handshake")
    }

    /// Connects the pinned raw peer (replica 2).
    pub fn connect_peer(&self) -> RawPeer {
        let dir = self.peer_directory(FLEET, &[2], &self.peer);
        self.runtime
            .block_on(RawPeer::connect(
                self.transport.local_addr(),
                &dir,
                &self.responder,
            ))
            .expect("the pinned peer completes its handshake")
    }
}

/// A process speaking the protocol by hand.
pub(crate) struct RawPeer {
    pub reader: RecordReader,
    pub writer: OwnedWriteHalf,
    pub noise: snow::TransportState,
    pub transcript: Transcript,
    /// Every record written after the handshake, as sent.
    pub records: Vec<Vec<u8>>,
}

impl RawPeer {
    pub async fn connect(
        address: SocketAddr,
        directory: &PeerDirectory,
        responder: &StaticSecret,
    ) -> Result<Self, HandshakeError> {
        let stream = TcpStream::connect(address)
            .await
            .map_err(HandshakeError::Io)?;
        let (read, mut writer) = stream.into_split();
        let mut reader = FramedRead::new(read, record_codec());
        let mut transcript = Transcript::default();
        let session = tokio::time::timeout(
            WAIT,
            initiate(
                &mut reader,
                &mut writer,
                directory,
                responder.public_key(),
                crate::NetConfig::default().frame_bytes_max,
                Some(&mut transcript),
            ),
        )
        .await
        .map_err(|_| HandshakeError::Timeout)??;
        Ok(Self {
            reader,
            writer,
            noise: session.noise,
            transcript,
            records: Vec::new(),
        })
    }

    /// Seals `plaintext` into records and writes them.
    pub async fn send_plaintext(&mut self, plaintext: &[u8]) {
        let mut out = BytesMut::new();
        seal_records(&mut self.noise, plaintext, &mut out).unwrap();
        self.records.push(out.to_vec());
        let _ = self.writer.write_all(&out).await;
    }

    /// Sends a raft frame with `header` around `payload`.
    pub async fn send_frame(&mut self, header: RaftHeader, payload: &[u8]) {
        self.send_plaintext(&encode_raft(header, payload)).await;
    }

    /// Sends a raft frame holding `message` under `header`.
    pub async fn send_message(&mut self, header: RaftHeader, message: &Message) {
        self.send_frame(header, &encode_message(message).unwrap())
            .await;
    }

    /// True if the responder closes the connection within [`WAIT`]
    /// (keepalives it sends meanwhile are read and skipped).
    pub async fn closed_by_responder(&mut self) -> bool {
        matches!(
            tokio::time::timeout(WAIT, async {
                loop {
                    match self.reader.next().await {
                        None | Some(Err(_)) => return,
                        Some(Ok(_)) => {}
                    }
                }
            })
            .await,
            Ok(())
        )
    }
}

/// Writes `records` (raw bytes, as recorded) on a fresh connection.
pub(crate) async fn replay(
    address: SocketAddr,
    first: &[u8],
    records: &[Vec<u8>],
) -> (RecordReader, OwnedWriteHalf, Option<Vec<u8>>) {
    let stream = TcpStream::connect(address).await.unwrap();
    let (read, mut writer) = stream.into_split();
    let mut reader = FramedRead::new(read, record_codec());
    let mut out = BytesMut::new();
    put_record(&mut out, first);
    writer.write_all(&out).await.unwrap();
    // Wait for the responder's reply before replaying the session, as the
    // original initiator did.
    let reply = match tokio::time::timeout(WAIT, reader.next()).await {
        Ok(Some(Ok(reply))) => Some(reply.to_vec()),
        _ => None,
    };
    for record in records {
        let _ = writer.write_all(record).await;
    }
    (reader, writer, reply)
}
