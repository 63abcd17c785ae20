//! `ChannelNetwork`: an in-process network of replicas for tests, examples and
//! benchmarks. Links without delay deliver straight into the receiver's inbox;
//! delayed links go through one delivery thread fed by a crossbeam channel and
//! ordered by due time. A cut link drops messages silently, like a partition.
// The in-process network delays messages on a thread of its own, in wall-clock time.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::{Mutex, RwLock};

use super::{Envelope, Inbox, SnapshotDone, SnapshotSent, Transport, TransportError};
use crate::config::FleetConfig;
use crate::snapshot::{SnapshotFiles, SnapshotReader};
use crate::ReplicaId;

#[derive(Default)]
struct Links {
    delay: BTreeMap<(ReplicaId, ReplicaId), Duration>,
    cut: BTreeSet<(ReplicaId, ReplicaId)>,
}

struct Shared {
    inboxes: RwLock<BTreeMap<ReplicaId, Arc<dyn Inbox>>>,
    links: RwLock<Links>,
}

impl Shared {
    fn deliver(&self, envelope: Envelope) -> Result<(), TransportError> {
        let to = envelope.message.to;
        let inbox = self.inboxes.read().get(&to).cloned();
        match inbox {
            Some(inbox) => {
                inbox.deliver(envelope);
                Ok(())
            }
            None => Err(TransportError::UnknownPeer(to)),
        }
    }
}

struct Delayed {
    due: Instant,
    seq: u64,
    envelope: Envelope,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // BinaryHeap is a max-heap: reverse for earliest-due first.
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

/// An in-process network: register each replica's inbox, hand each replica a
/// [`ChannelTransport`], and shape links (delay, cut) while it runs.
#[derive(Clone)]
pub struct ChannelNetwork {
    shared: Arc<Shared>,
    delayed: Sender<Delayed>,
    seq: Arc<Mutex<u64>>,
    _delivery: Arc<DeliveryThread>,
}

/// Joins the delivery thread when the last clone of the network is dropped. Each
/// clone drops its `delayed` sender before this guard (field order), so by then
/// the channel is disconnected and the thread's receive loop has ended.
struct DeliveryThread {
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for DeliveryThread {
    fn drop(&mut self) {
        if let Some(h) = self.handle.lock().take() {
            let _ = h.join();
        }
    }
}

impl std::fmt::Debug for ChannelNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelNetwork")
            .field(
                "replicas",
                &self.shared.inboxes.read().keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Default for ChannelNetwork {
    fn default() -> Self {
        Self::new()
    }
}

impl ChannelNetwork {
    /// An empty network.
    pub fn new() -> Self {
        let shared = Arc::new(Shared {
            inboxes: RwLock::new(BTreeMap::new()),
            links: RwLock::new(Links::default()),
        });
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread_shared = Arc::clone(&shared);
        let handle = std::thread::Builder::new()
            .name("vaultfleet-net".into())
            .spawn(move || delivery_loop(&thread_shared, &rx))
            .ok();
        Self {
            shared,
            delayed: tx,
            seq: Arc::new(Mutex::new(0)),
            _delivery: Arc::new(DeliveryThread {
                handle: Mutex::new(handle),
            }),
        }
    }

    /// Routes messages for replica `id` to `inbox` (replacing an earlier one).
    pub fn register(&self, id: ReplicaId, inbox: Arc<dyn Inbox>) {
        self.shared.inboxes.write().insert(id, inbox);
    }

    /// Stops routing messages to replica `id`.
    pub fn unregister(&self, id: ReplicaId) {
        self.shared.inboxes.write().remove(&id);
    }

    /// The transport replica `from` sends with.
    pub fn transport(&self, from: ReplicaId) -> Arc<ChannelTransport> {
        Arc::new(ChannelTransport {
            from,
            network: self.clone(),
        })
    }

    /// Sets the one-way delay of both directions between `a` and `b`.
    pub fn set_delay(&self, a: ReplicaId, b: ReplicaId, delay: Duration) {
        let mut links = self.shared.links.write();
        for key in [(a, b), (b, a)] {
            if delay.is_zero() {
                links.delay.remove(&key);
            } else {
                links.delay.insert(key, delay);
            }
        }
    }

    /// Models datacenters: `intra` between replicas of one datacenter, `inter`
    /// between datacenters.
    pub fn set_datacenter_delays(&self, fleet: &FleetConfig, intra: Duration, inter: Duration) {
        for a in &fleet.members {
            for b in &fleet.members {
                if a.id < b.id {
                    let d = if a.datacenter == b.datacenter {
                        intra
                    } else {
                        inter
                    };
                    self.set_delay(a.id, b.id, d);
                }
            }
        }
    }

    /// Cuts both directions between `a` and `b`: messages are silently lost.
    pub fn cut(&self, a: ReplicaId, b: ReplicaId) {
        let mut links = self.shared.links.write();
        links.cut.insert((a, b));
        links.cut.insert((b, a));
    }

    /// Cuts every link between the replicas in `side` and all others (a whole
    /// datacenter cut off, for example).
    pub fn isolate(&self, side: &[ReplicaId]) {
        let others: Vec<ReplicaId> = self
            .shared
            .inboxes
            .read()
            .keys()
            .copied()
            .filter(|id| !side.contains(id))
            .collect();
        for &a in side {
            for &b in &others {
                self.cut(a, b);
            }
        }
    }

    /// Restores every cut link.
    pub fn heal(&self) {
        self.shared.links.write().cut.clear();
    }

    fn send_from(&self, from: ReplicaId, envelope: Envelope) -> Result<(), TransportError> {
        let to = envelope.message.to;
        let delay = {
            let links = self.shared.links.read();
            if links.cut.contains(&(from, to)) {
                return Ok(());
            }
            links.delay.get(&(from, to)).copied()
        };
        match delay {
            None => self.shared.deliver(envelope),
            Some(delay) => {
                if !self.shared.inboxes.read().contains_key(&to) {
                    return Err(TransportError::UnknownPeer(to));
                }
                let seq = {
                    let mut s = self.seq.lock();
                    *s += 1;
                    *s
                };
                let item = Delayed {
                    due: Instant::now() + delay,
                    seq,
                    envelope,
                };
                self.delayed.send(item).map_err(|_| TransportError::Closed)
            }
        }
    }
}

fn delivery_loop(shared: &Shared, rx: &Receiver<Delayed>) {
    let mut heap: BinaryHeap<Delayed> = BinaryHeap::new();
    loop {
        let now = Instant::now();
        while heap.peek().is_some_and(|d| d.due <= now) {
            if let Some(d) = heap.pop() {
                let (from, to) = (d.envelope.message.from, d.envelope.message.to);
                // A link cut while the message was in flight loses it too.
                if !shared.links.read().cut.contains(&(from, to)) {
                    let _ = shared.deliver(d.envelope);
                }
            }
        }
        let received = match heap.peek() {
            Some(next) => rx.recv_timeout(next.due.saturating_duration_since(now)),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match received {
            Ok(d) => heap.push(d),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// One replica's sending end of a [`ChannelNetwork`].
pub struct ChannelTransport {
    from: ReplicaId,
    network: ChannelNetwork,
}

impl std::fmt::Debug for ChannelTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelTransport")
            .field("from", &self.from)
            .finish()
    }
}

impl Transport for ChannelTransport {
    fn send(&self, envelope: Envelope) -> Result<(), TransportError> {
        self.network.send_from(self.from, envelope)
    }

    /// Copies the chunks into the receiver's snapshot files on a thread of
    /// its own (a cut link fails the copy), then sends the message as any
    /// other; reports `Written` once it is sent.
    fn send_snapshot_stream(
        &self,
        envelope: Envelope,
        body: Box<dyn SnapshotReader>,
        done: SnapshotDone,
    ) -> Result<(), TransportError> {
        let (from, to) = (self.from, envelope.message.to);
        let inbox = self
            .network
            .shared
            .inboxes
            .read()
            .get(&to)
            .cloned()
            .ok_or(TransportError::UnknownPeer(to))?;
        let files = inbox
            .admit_snapshot(from, body.descriptor())
            .map_err(|refused| {
                tracing::warn!(from, to, %refused, "streamed snapshot refused by its receiver");
                TransportError::Unreachable(to)
            })?;
        let network = self.network.clone();
        std::thread::Builder::new()
            .name(format!("vf-snap-send-{from}-{to}"))
            .spawn(move || {
                let sent = copy_chunks(&network, from, to, body, &*files)
                    .and_then(|()| network.send_from(from, envelope).map_err(|_| ()));
                done(match sent {
                    Ok(()) => SnapshotSent::Written,
                    Err(()) => SnapshotSent::Failed,
                });
            })
            .map(|_| ())
            .map_err(|_| TransportError::Unreachable(to))
    }
}

/// Moves a snapshot's chunks from the sender's files to the receiver's,
/// chunk by chunk, failing if the link is cut meanwhile.
fn copy_chunks(
    network: &ChannelNetwork,
    from: ReplicaId,
    to: ReplicaId,
    body: Box<dyn SnapshotReader>,
    files: &dyn SnapshotFiles,
) -> Result<(), ()> {
    let links = &network.shared.links;
    match crate::snapshot::copy_snapshot(body, files, || !links.read().cut.contains(&(from, to))) {
        Ok(true) => Ok(()),
        Ok(false) => Err(()),
        Err(e) => {
            tracing::warn!(from, to, error = %e, "streamed snapshot not received");
            Err(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::prelude::Message;

    #[derive(Default)]
    struct Collect(Mutex<Vec<u64>>);
    impl Inbox for Collect {
        fn deliver(&self, envelope: Envelope) {
            self.0.lock().push(envelope.message.commit);
        }
    }

    fn envelope(from: u64, to: u64, tag: u64) -> Envelope {
        let mut message = Message::default();
        message.from = from;
        message.to = to;
        message.commit = tag;
        Envelope { group: 1, message }
    }

    #[test]
    fn delivers_direct_delayed_and_drops_on_cut_links() {
        let net = ChannelNetwork::new();
        let inbox = Arc::new(Collect::default());
        net.register(2, inbox.clone());
        let t1 = net.transport(1);
        t1.send(envelope(1, 2, 7)).unwrap();
        assert_eq!(*inbox.0.lock(), vec![7]);
        assert_eq!(
            t1.send(envelope(1, 3, 0)),
            Err(TransportError::UnknownPeer(3))
        );
        net.cut(1, 2);
        t1.send(envelope(1, 2, 8)).unwrap();
        net.heal();
        net.set_delay(1, 2, Duration::from_millis(5));
        t1.send(envelope(1, 2, 9)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while inbox.0.lock().len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            *inbox.0.lock(),
            vec![7, 9],
            "the message sent over the cut link is lost"
        );
    }
}
