//! `Mailbox`: the bounded queue between the threads that feed a node (clients,
//! the transport) and the node's own thread. The node drains it whole, so every
//! input that arrived during one Ready cycle is handled — and persisted — by the
//! next cycle together (group commit).
//!
//! Invariants (checked by the loom models in `tests/loom.rs`): an item pushed
//! before `close` is either drained or returned by `close`; a drain that waits is
//! woken by the next push or by `close`; the queue never holds more than its
//! capacity.

use std::time::Duration;

use super::sync::{lock, Condvar, Mutex};

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
}

/// A bounded multi-producer, single-consumer queue drained in batches.
pub struct Mailbox<T> {
    state: Mutex<State<T>>,
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
            }),
            ready: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    /// Queues `item` without blocking.
    pub fn push(&self, item: T) -> Result<(), PushError<T>> {
        let mut s = lock(&self.state);
        if s.closed {
            return Err(PushError::Closed(item));
        }
        if s.queue.len() >= self.capacity {
            return Err(PushError::Full(item));
        }
        s.queue.push(item);
        debug_assert!(s.queue.len() <= self.capacity);
        if s.waiting {
            s.waiting = false;
            drop(s);
            self.ready.notify_one();
        }
        Ok(())
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
        let left = std::mem::take(&mut s.queue);
        drop(s);
        self.ready.notify_all();
        left
    }

    /// True once closed.
    pub fn is_closed(&self) -> bool {
        lock(&self.state).closed
    }
}
