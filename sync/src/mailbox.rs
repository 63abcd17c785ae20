//! `Mailbox`: the bounded queue between the threads that feed a node (clients,
//! the transport) and the node's own thread. The node drains it whole, so every
//! input that arrived during one Ready cycle is handled — and persisted — by the
//! next cycle together (group commit).
//!
//! Invariants (checked by the loom models in `tests/loom.rs`): an item pushed
//! before `close` is either drained or returned by `close`; a drain that waits is
//! woken by the next push or by `close`; the queue never holds more than its
//! capacity.
//!
//! On a pool (`vaultfleet::runtime::Pool`) nobody waits on a mailbox: it carries a
//! `scheduled` flag instead. A push that raises the flag tells the pusher to put
//! the replica on the pool's ready queue; a worker's turn ends with
//! [`end_turn`](Mailbox::end_turn), which lowers the flag only if nothing is
//! queued — under the same lock as the pushes, so an item pushed while the turn
//! ends is never left unserved (the loom model
//! `a_push_racing_the_end_of_a_turn_is_served`).

use std::time::Duration;

use std::sync::atomic::Ordering;

use crate::primitives::{lock, AtomicBool, Condvar, Mutex};

/// Why an item was not queued; the item is handed back.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError<T> {
    /// The mailbox holds its capacity; back off.
    Full(T),
    /// The node stopped.
    Closed(T),
}

struct State<T> {
    queue: Vec<T>,
    closed: bool,
    waiting: bool,
    /// Queued on a pool's ready queue, or in a worker's turn.
    scheduled: bool,
}

/// A bounded multi-producer, single-consumer queue drained in batches.
pub struct Mailbox<T> {
    state: Mutex<State<T>>,
    /// `state.closed`, readable without the lock: clients ask whether a node
    /// stopped before each command they send it.
    closed: AtomicBool,
    ready: Condvar,
    capacity: usize,
}

impl<T> std::fmt::Debug for Mailbox<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = lock(&self.state);
        f.debug_struct("Mailbox")
            .field("queued", &s.queue.len())
            .field("capacity", &self.capacity)
            .field("closed", &s.closed)
            .finish()
    }
}

impl<T> Mailbox<T> {
    /// A mailbox holding at most `capacity` items.
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                queue: Vec::new(),
                closed: false,
                waiting: false,
                scheduled: false,
            }),
            closed: AtomicBool::new(false),
            ready: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    /// Queues `item` without blocking.
    pub fn push(&self, item: T) -> Result<(), PushError<T>> {
        self.push_scheduling(item).map(|_| ())
    }

    /// Queues `item` without blocking and raises the `scheduled` flag. Returns
    /// `true` if this push raised it: the caller must then schedule the
    /// mailbox's owner (exactly one pusher does, until the turn that follows
    /// calls [`end_turn`](Self::end_turn)).
    pub fn push_scheduling(&self, item: T) -> Result<bool, PushError<T>> {
        let mut s = lock(&self.state);
        if s.closed {
            return Err(PushError::Closed(item));
        }
        if s.queue.len() >= self.capacity {
            return Err(PushError::Full(item));
        }
        s.queue.push(item);
        debug_assert!(s.queue.len() <= self.capacity);
        let raised = !s.scheduled;
        s.scheduled = true;
        if s.waiting {
            s.waiting = false;
            drop(s);
            self.ready.notify_one();
        }
        Ok(raised)
    }

    /// Raises the `scheduled` flag without queuing anything (a tick is due).
    /// Returns `true` if it was down and the mailbox is open: the caller must
    /// then schedule the owner.
    pub fn schedule(&self) -> bool {
        let mut s = lock(&self.state);
        let raised = !s.scheduled && !s.closed;
        if raised {
            s.scheduled = true;
        }
        raised
    }

    /// Ends a turn of the mailbox's owner: if items arrived since the turn's
    /// drain, the flag stays up and `true` says to schedule the owner again
    /// (at the back of the queue); otherwise the flag goes down and the next
    /// push raises it.
    pub fn end_turn(&self) -> bool {
        let mut s = lock(&self.state);
        debug_assert!(s.scheduled, "a turn ends on a scheduled mailbox");
        let again = !s.queue.is_empty() && !s.closed;
        s.scheduled = again;
        again
    }

    /// Moves every queued item into `out` (which should be empty), waiting up to
    /// `timeout` for the first one. Returns `false` once the mailbox is closed and
    /// empty.
    pub fn drain(&self, out: &mut Vec<T>, timeout: Duration) -> bool {
        let mut s = lock(&self.state);
        if s.queue.is_empty() && !s.closed && !timeout.is_zero() {
            s.waiting = true;
            s = match self.ready.wait_timeout(s, timeout) {
                Ok((guard, _)) => guard,
                Err(e) => e.into_inner().0,
            };
            s.waiting = false;
        }
        std::mem::swap(out, &mut s.queue);
        !(s.closed && out.is_empty())
    }

    /// Closes the mailbox: later pushes fail with [`PushError::Closed`]; a waiting
    /// drain wakes. Returns the items still queued.
    pub fn close(&self) -> Vec<T> {
        let mut s = lock(&self.state);
        s.closed = true;
        self.closed.store(true, Ordering::Release);
        let left = std::mem::take(&mut s.queue);
        drop(s);
        self.ready.notify_all();
        left
    }

    /// True once closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}
