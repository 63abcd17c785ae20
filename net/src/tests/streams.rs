//! Streamed snapshots at the frame level: an honest stream is written into the
//! receiver's snapshot files and its message delivered; every malformed or
//! hostile stream is refused (a refused frame comes back), nothing is
//! delivered, no file is left, and the connection stays usable. And a sender
//! whose stream the receiver refuses hears `Failed`.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use raft::prelude::{Message, MessageType};
use vaultfleet::codec::Codec as _;
use vaultfleet::replica::encode_message;
use vaultfleet::snapshot::{
    DirFiles, MemFiles, SnapshotDescriptor, SnapshotFileError, SnapshotFiles, SnapshotReader,
    CHUNK_BYTES_MIN,
};
use vaultfleet::transport::{Envelope, Inbox, SnapshotSent};

use super::*;
use crate::wire::frame::{
    encode_stream_data, encode_stream_end, encode_stream_open, Frame, FrameAssembler, StreamHeader,
};

/// An inbox with snapshot files in a directory of its own.
struct FilesInbox {
    got: Collect,
    files: Arc<DirFiles>,
    _dir: tempfile::TempDir,
}

impl FilesInbox {
    fn new() -> Arc<Self> {
        let dir = tempfile::tempdir().unwrap();
        let files = Arc::new(DirFiles::open(dir.path(), CHUNK_BYTES_MIN, None, 1).unwrap());
        Arc::new(Self {
            got: Collect::default(),
            files,
            _dir: dir,
        })
    }

    /// The names of the files in the snapshot directory.
    fn file_names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self._dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Inbox for FilesInbox {
    fn deliver(&self, envelope: Envelope) {
        self.got.deliver(envelope);
    }

    fn snapshot_files(&self) -> Option<Arc<dyn SnapshotFiles>> {
        Some(self.files.clone())
    }
}

/// A snapshot of `bytes` bytes (pattern `fill`) by replica 2 at index 10,
/// term 2, in 64 KiB chunks: its descriptor and its chunks.
fn snapshot(bytes: usize, fill: u8) -> (SnapshotDescriptor, Vec<Bytes>) {
    let files = MemFiles::new(CHUNK_BYTES_MIN, None, 2);
    let mut w = files.create(1, 2, 10, 2).unwrap();
    w.write_all(&vec![fill; bytes]).unwrap();
    let d = w.finish().unwrap();
    let mut r = files.open(&d).unwrap();
    let mut chunks = Vec::new();
    while let Some((_, chunk)) = r.next_chunk().unwrap() {
        chunks.push(chunk);
    }
    (d, chunks)
}

fn snapshot_message(d: &SnapshotDescriptor) -> Message {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgSnapshot);
    m.from = 2;
    m.to = 1;
    let meta = m.mut_snapshot().mut_metadata();
    meta.index = d.index;
    meta.term = d.term;
    // A format-2 payload naming `d`, as a leader's.
    let mut payload = vaultfleet::wire::SnapshotPayload::new();
    payload.format_version = 2;
    payload.descriptor = d.to_bytes().expect("descriptor");
    m.mut_snapshot().data = vaultfleet::wire::encode(&payload).expect("payload").into();
    m
}

fn stream(id: u64) -> StreamHeader {
    StreamHeader {
        raft: RaftHeader {
            group: 1,
            from: 2,
            to: 1,
        },
        stream: id,
    }
}

impl RawPeer {
    async fn open_stream(&mut self, id: u64, descriptor: &[u8], d: &SnapshotDescriptor) {
        let message = encode_message(&snapshot_message(d)).unwrap();
        self.send_plaintext(&encode_stream_open(stream(id), descriptor, &message))
            .await;
    }

    async fn data(&mut self, id: u64, seq: u32, data: &[u8]) {
        self.send_plaintext(&encode_stream_data(stream(id), seq, data))
            .await;
    }

    async fn end(&mut self, id: u64) {
        self.send_plaintext(&encode_stream_end(stream(id))).await;
    }

    /// Reads frames from the responder until `n` refused frames came (at
    /// most [`WAIT`]); returns their stream ids.
    async fn refusals(&mut self, n: usize) -> Vec<u64> {
        let mut assembler = FrameAssembler::new(crate::wire::frame::FRAME_BYTES_LIMIT);
        let mut ids = Vec::new();
        let mut plaintext = vec![0u8; crate::wire::record::NOISE_MESSAGE_BYTES_MAX];
        let read = tokio::time::timeout(WAIT, async {
            while ids.len() < n {
                let Some(Ok(record)) = self.reader.next().await else {
                    return;
                };
                let len = self.noise.read_message(&record, &mut plaintext).unwrap();
                assembler.push(&plaintext[..len]);
                while let Some(body) = assembler.next_frame().unwrap() {
                    if let Frame::StreamRefused { stream } = Frame::decode(&body).unwrap() {
                        ids.push(stream);
                    }
                }
            }
        })
        .await;
        assert!(read.is_ok(), "timed out waiting for {n} refusals: {ids:?}");
        ids
    }
}

#[test]
fn an_honest_stream_lands_in_the_receivers_files_before_its_message_is_delivered() {
    let scene = Scene::new(|_| {});
    let inbox = FilesInbox::new();
    scene.transport.register(1, 1, inbox.clone()).unwrap();
    let (d, chunks) = snapshot(200 << 10, 7);
    assert_eq!(chunks.len(), 4);
    let mut peer = scene.connect_peer();
    scene.runtime.block_on(async {
        peer.open_stream(1, &d.to_bytes().unwrap(), &d).await;
        for (seq, chunk) in chunks.iter().enumerate() {
            // Each chunk in two parts, as a sender under a small frame limit cuts it.
            let half = chunk.len() / 2;
            peer.data(1, seq as u32, &chunk[..half]).await;
            peer.data(1, seq as u32, &chunk[half..]).await;
        }
        peer.end(1).await;
    });
    wait_until("the delivery", || inbox.got.len() == 1);
    assert!(inbox.files.is_complete(&d), "the file was received whole");
    let stats = scene.transport.stats();
    assert_eq!(stats.streams_received, 1, "{stats:#?}");
    assert_eq!(stats.streams_refused, 0, "{stats:#?}");
    assert_eq!(stats.stream_bytes_received, 200 << 10);
    let got = inbox.got.0.lock()[0].clone();
    assert_eq!(got.message.get_msg_type(), MessageType::MsgSnapshot);
    assert_eq!(got.message.get_snapshot().get_metadata().index, 10);
}

#[test]
fn malformed_and_hostile_streams_are_refused_nothing_delivered_no_file_left() {
    let scene = Scene::new(|c| c.snapshot_file_bytes_max = 1 << 20);
    let inbox = FilesInbox::new();
    scene.transport.register(1, 1, inbox.clone()).unwrap();
    // Group 5's replica 1 keeps no snapshot files.
    let plain = Arc::new(Collect::default());
    scene.transport.register(5, 1, plain.clone()).unwrap();
    let (d, chunks) = snapshot(200 << 10, 7);
    let good = d.to_bytes().unwrap();
    let (big, _) = snapshot((1 << 20) + 1, 1);
    let (other, other_chunks) = snapshot(200 << 10, 8);
    let mut peer = scene.connect_peer();
    let refused = scene.runtime.block_on(async {
        // 1. A descriptor that breaks its rules (the chunk count edited).
        // (format, group, creator, index, term, id, total, chunk size: the
        // chunk count's last byte is at 64.)
        let mut bytes = good.clone();
        bytes[64] ^= 1;
        peer.open_stream(1, &bytes, &d).await;
        peer.data(1, 0, &chunks[0]).await;
        // 2. A chunk out of order.
        peer.open_stream(2, &good, &d).await;
        peer.data(2, 1, &chunks[1]).await;
        // 3. A chunk above its length.
        peer.open_stream(3, &good, &d).await;
        let mut oversize = chunks[0].to_vec();
        oversize.push(0);
        peer.data(3, 0, &oversize).await;
        // 4. The end before every chunk.
        peer.open_stream(4, &good, &d).await;
        peer.data(4, 0, &chunks[0]).await;
        peer.end(4).await;
        // 5. Above snapshot_file_bytes_max.
        peer.open_stream(5, &big.to_bytes().unwrap(), &big).await;
        // 6. Another snapshot's chunks under this descriptor: the digest
        //    fails at the end.
        assert_ne!(other.digest, d.digest);
        peer.open_stream(6, &good, &d).await;
        for (seq, chunk) in other_chunks.iter().enumerate() {
            peer.data(6, seq as u32, chunk).await;
        }
        peer.end(6).await;
        // 7. A replica that keeps no snapshot files.
        let mut to_plain = stream(7);
        to_plain.raft.group = 5;
        let files5 = MemFiles::new(CHUNK_BYTES_MIN, None, 2);
        let mut w = files5.create(5, 2, 10, 2).unwrap();
        w.write_all(&[1; 100]).unwrap();
        let d5 = w.finish().unwrap();
        let message = encode_message(&snapshot_message(&d5)).unwrap();
        peer.send_plaintext(&encode_stream_open(
            to_plain,
            &d5.to_bytes().unwrap(),
            &message,
        ))
        .await;
        // 8. Data for a stream never opened.
        peer.data(8, 0, &chunks[0]).await;
        peer.refusals(8).await
    });
    let mut refused = refused;
    refused.sort_unstable();
    assert_eq!(refused, (1..=8).collect::<Vec<u64>>());
    let stats = scene.transport.stats();
    assert_eq!(stats.streams_refused, 8, "{stats:#?}");
    assert_eq!(stats.streams_received, 0);
    assert_eq!(inbox.got.len(), 0, "nothing delivered");
    assert_eq!(plain.len(), 0, "nothing delivered");
    wait_until("no partial file left", || inbox.file_names().is_empty());
    assert!(!inbox.files.is_complete(&d));
    assert_eq!(
        scene.transport.streams_receiving(),
        0,
        "every slot given back"
    );
    // The connection is still up: an honest stream after the refused ones
    // goes through.
    scene.runtime.block_on(async {
        peer.open_stream(9, &good, &d).await;
        for (seq, chunk) in chunks.iter().enumerate() {
            peer.data(9, seq as u32, chunk).await;
        }
        peer.end(9).await;
    });
    wait_until("the honest stream", || inbox.got.len() == 1);
    assert_eq!(scene.transport.stats().connections_closed_protocol, 0);
}

/// A reader that hands out its first chunk, then waits for `go` before the rest.
struct HeldReader {
    inner: Box<dyn SnapshotReader>,
    go: Arc<AtomicBool>,
    given: u32,
}

impl SnapshotReader for HeldReader {
    fn descriptor(&self) -> &SnapshotDescriptor {
        self.inner.descriptor()
    }

    fn next_chunk(&mut self) -> Result<Option<(u32, Bytes)>, SnapshotFileError> {
        if self.given >= 1 {
            let start = Instant::now();
            while !self.go.load(Ordering::Acquire) && start.elapsed() < WAIT {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        self.given += 1;
        self.inner.next_chunk()
    }
}

#[test]
fn a_sender_whose_stream_is_refused_hears_failed_and_one_that_is_taken_hears_written() {
    // The receiver: replica 1, whose group 1 inbox keeps files and whose
    // group 5 inbox keeps none.
    let receiver_secret = StaticSecret::generate().unwrap();
    let sender_secret = StaticSecret::generate().unwrap();
    let receiver = NetTransport::start(
        PeerDirectory::new(FLEET, [1], receiver_secret.clone()).unwrap(),
        loopback_config(),
    )
    .unwrap();
    let sender = NetTransport::start(
        PeerDirectory::new(FLEET, [2], sender_secret.clone()).unwrap(),
        loopback_config(),
    )
    .unwrap();
    for t in [&receiver, &sender] {
        let mut d = (*t.directory()).clone();
        d.insert(1, entry(receiver.local_addr(), &receiver_secret))
            .unwrap();
        d.insert(2, entry(sender.local_addr(), &sender_secret))
            .unwrap();
        t.update_directory(d).unwrap();
    }
    let inbox = FilesInbox::new();
    receiver.register(1, 1, inbox.clone()).unwrap();
    let plain = Arc::new(Collect::default());
    receiver.register(5, 1, plain.clone()).unwrap();

    let files = MemFiles::new(CHUNK_BYTES_MIN, None, 2);
    let write = |group: u64| {
        let mut w = files.create(group, 2, 10, 2).unwrap();
        w.write_all(&vec![3u8; 300 << 10]).unwrap();
        w.finish().unwrap()
    };
    let (d1, d5) = (write(1), write(5));
    let outcome = |d: &SnapshotDescriptor, group: u64, go: Arc<AtomicBool>| {
        let (tx, rx) = std::sync::mpsc::channel();
        let envelope = Envelope {
            group,
            message: snapshot_message(d),
        };
        // The link dials on the first send; retry while it is down.
        let start = Instant::now();
        loop {
            let tx = tx.clone();
            let sent = sender.try_send_snapshot_stream(
                envelope.clone(),
                Box::new(HeldReader {
                    inner: files.open(d).unwrap(),
                    go: go.clone(),
                    given: 0,
                }),
                Box::new(move |s| {
                    let _ = tx.send(s);
                }),
            );
            if sent.is_ok() {
                break;
            }
            assert!(start.elapsed() < WAIT, "the sender never queued: {sent:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
        rx
    };
    // Refused at its open frame (no files at group 5's replica); the reader
    // holds its second chunk until the receiver refused, so the refusal
    // reaches the sender before its end frame could be written.
    let go = Arc::new(AtomicBool::new(false));
    let refused = outcome(&d5, 5, go.clone());
    wait_until("the receiver's refusal", || {
        receiver.stats().streams_refused >= 1
    });
    wait_until("the sender hears it", || {
        sender.stats().streams_refused_by_peer >= 1
    });
    go.store(true, Ordering::Release);
    assert_eq!(refused.recv_timeout(WAIT), Ok(SnapshotSent::Failed));
    assert_eq!(plain.len(), 0);
    // An honest one is written, received and delivered.
    let taken = outcome(&d1, 1, Arc::new(AtomicBool::new(true)));
    assert_eq!(taken.recv_timeout(WAIT), Ok(SnapshotSent::Written));
    wait_until("the delivery", || inbox.got.len() == 1);
    assert!(inbox.files.is_complete(&d1));
    let (s, r) = (sender.stats(), receiver.stats());
    assert_eq!(s.streams_sent, 1, "{s:#?}");
    assert_eq!(s.streams_send_failed, 1, "{s:#?}");
    // The honest file, and at most the first chunk of the refused one
    // (sent or not, depending on when the refusal came back).
    assert!(
        (300 << 10..=(300 + 64) << 10).contains(&s.stream_bytes_sent),
        "{s:#?}"
    );
    assert_eq!(r.streams_received, 1, "{r:#?}");
    sender.shutdown();
    receiver.shutdown();
}

/// Issue 18 review of the TCP streams, H2: progress is a whole chunk.
#[test]
fn a_stream_dribbling_one_byte_per_timeout_does_not_hold_a_slot_for_ever() {
    let scene = Scene::new(|c| {
        c.snapshot_streams_max = 1;
        c.snapshot_chunk_timeout = Duration::from_millis(300);
    });
    let inbox = FilesInbox::new();
    scene.transport.register(1, 1, inbox.clone()).unwrap();
    let inbox2 = FilesInbox::new();
    scene.transport.register(2, 1, inbox2.clone()).unwrap();
    let (d, chunks) = snapshot(200 << 10, 7);
    let files2 = MemFiles::new(CHUNK_BYTES_MIN, None, 2);
    let mut w = files2.create(2, 2, 10, 2).unwrap();
    w.write_all(&[1; 100]).unwrap();
    let d2 = w.finish().unwrap();
    let mut peer = scene.connect_peer();
    let refused = scene.runtime.block_on(async {
        peer.open_stream(1, &d.to_bytes().unwrap(), &d).await;
        // One byte every 100 ms for 20 timeouts: 60 bytes in 6 s.
        for i in 0..60 {
            peer.data(1, 0, &chunks[0][i..i + 1]).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut h = stream(2);
        h.raft.group = 2;
        let message = encode_message(&snapshot_message(&d2)).unwrap();
        peer.send_plaintext(&encode_stream_open(h, &d2.to_bytes().unwrap(), &message))
            .await;
        // Give the receiver time to answer (a refusal, if any).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let stats = scene.transport.stats();
        (
            stats.streams_refused,
            stats.streams_abandoned,
            scene.transport.streams_receiving(),
        )
    });
    let (refused, abandoned, receiving) = refused;
    // The dribbling stream made no whole chunk within the timeout: it was
    // dropped (its later frames refused once, as an unknown stream), and the
    // second stream holds the slot rather than being refused as busy.
    assert!(abandoned >= 1, "the dribbling stream was never dropped");
    assert!(
        refused <= 1,
        "refused {refused}: the second stream was refused"
    );
    assert_eq!(receiving, 1, "the second stream holds the slot");
}

/// Issue 18 review of the TCP streams, L4: the open's message must name the
/// streamed descriptor, not another file the receiver may hold.
#[test]
fn an_open_whose_message_names_another_descriptor_is_refused() {
    let scene = Scene::new(|_| {});
    let inbox = FilesInbox::new();
    scene.transport.register(1, 1, inbox.clone()).unwrap();
    let (d, _) = snapshot(100 << 10, 3);
    let (other, _) = snapshot(100 << 10, 4);
    assert_ne!(d, other);
    let mut peer = scene.connect_peer();
    let refused = scene.runtime.block_on(async {
        let message = encode_message(&snapshot_message(&other)).unwrap();
        peer.send_plaintext(&encode_stream_open(
            stream(1),
            &d.to_bytes().unwrap(),
            &message,
        ))
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        scene.transport.stats().streams_refused
    });
    assert_eq!(refused, 1, "the open naming another descriptor is refused");
}
