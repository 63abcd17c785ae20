//! A node's inbox never drops a streamed snapshot's message in silence
//! (review 3 of the delivered frame, MEDIUM-3): with the node's mailbox
//! full, `Inbox::deliver_snapshot` keeps a few beside it for the next turn
//! and says `Dropped` beyond them, so the transport refuses the stream
//! instead of telling the leader it was delivered; a message for another
//! group is refused too. (The transport's side, a refusal and no
//! delivered frame, is tested in the crate's stream tests.)
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use raft::prelude::{Message, MessageType};
use vaultfleet::replica::ReplicaConfig;
use vaultfleet::runtime::{Node, NodeConfig};
use vaultfleet::transport::{Dropped, Envelope, Inbox, TransportError};
use vaultfleet::{FleetConfig, KvStore, MemLog, MemberSpec, Replica, RequestError, Transport};

/// Every wait gives up (and fails the test) after this long.
const WAIT: Duration = Duration::from_secs(20);

/// A transport whose `send` holds the node's thread until the test opens
/// it: the node takes nothing from its mailbox meanwhile.
#[derive(Default)]
struct HeldTransport {
    open: Mutex<bool>,
    opened: Condvar,
    sends: AtomicUsize,
}

impl HeldTransport {
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

impl Transport for HeldTransport {
    fn send(&self, _envelope: Envelope) -> Result<(), TransportError> {
        self.sends.fetch_add(1, Ordering::AcqRel);
        let open = self.open.lock().unwrap();
        let _ = self
            .opened
            .wait_timeout_while(open, WAIT, |open| !*open)
            .unwrap();
        Ok(())
    }
}

fn snapshot_from_leader(group: u64) -> Envelope {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgSnapshot);
    m.from = 2;
    m.to = 1;
    m.term = 2;
    m.mut_snapshot().mut_metadata().index = 10;
    m.mut_snapshot().mut_metadata().term = 2;
    Envelope { group, message: m }
}

#[test]
fn a_full_mailbox_refuses_a_snapshot_rather_than_drop_it() {
    let fleet = FleetConfig::new(vec![
        MemberSpec::voter(1, "dc-a"),
        MemberSpec::voter(2, "dc-b"),
        MemberSpec::voter(3, "dc-c"),
    ]);
    let mut log = MemLog::new();
    Replica::bootstrap(&mut log, &KvStore::default(), &fleet).expect("bootstrap");
    let mut config = NodeConfig::new(ReplicaConfig::new(1));
    config.mailbox_inputs_max = 4;
    let transport = Arc::new(HeldTransport::default());
    let node = Node::spawn(config, log, KvStore::default(), transport.clone()).expect("spawn");
    let handle = node.handle();
    let group = 1;
    // Another group's snapshot is never taken.
    assert_eq!(
        handle.deliver_snapshot(snapshot_from_leader(group + 1)),
        Err(Dropped)
    );
    // The node campaigns at its election timeout and its thread is held in
    // the first send; then its mailbox fills.
    let start = Instant::now();
    while transport.sends.load(Ordering::Acquire) == 0 {
        assert!(start.elapsed() < WAIT, "the node never sent");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut queued = 0;
    loop {
        match handle.transfer_leader(2) {
            Ok(()) => queued += 1,
            Err(RequestError::Overloaded) => break,
            Err(e) => panic!("unexpected refusal: {e}"),
        }
        assert!(queued <= 4, "the mailbox took more than its capacity");
    }
    // Two wait beside the full mailbox for the node's next turn; a third is
    // refused, never dropped in silence.
    for _ in 0..2 {
        assert_eq!(
            handle.deliver_snapshot(snapshot_from_leader(group)),
            Ok(()),
            "a snapshot that found the mailbox full was not kept for the next turn"
        );
    }
    assert_eq!(
        handle.deliver_snapshot(snapshot_from_leader(group)),
        Err(Dropped),
        "a full mailbox took more snapshots than it keeps (or dropped one in silence)"
    );
    transport.open();
    node.shutdown().expect("clean shutdown");
}
