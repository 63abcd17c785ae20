//! `ReadyQueue`: a pool's queue of replicas with work, and [`end_of_turn`], the
//! hand-off with which a worker's turn of a replica ends.
//!
//! Invariants (loom models in `tests/loom.rs`): a push wakes a parked worker; an
//! item pushed before `close` is popped or returned by `close`; a replica whose
//! mailbox received an item while its turn ended is queued again.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::mailbox::Mailbox;
use crate::primitives::{lock, Condvar, Mutex};

/// What [`ReadyQueue::pop`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Pop<T> {
    /// The item at the front.
    Item(T),
    /// Nothing arrived before the timeout.
    Empty,
    /// The queue is closed.
    Closed,
}

struct QueueState<T> {
    items: VecDeque<T>,
    parked: usize,
    closed: bool,
}

/// The pool's queue of replicas with work: FIFO, multi-producer,
/// multi-consumer. A push wakes a worker only if one is parked (checked with
/// loom in `tests/loom.rs`).
pub struct ReadyQueue<T> {
    state: Mutex<QueueState<T>>,
    wake: Condvar,
    /// Items queued, as last stored under the lock: a hint for a spinning
    /// worker only (a pop always takes the lock and looks again).
    queued: AtomicUsize,
}

impl<T> std::fmt::Debug for ReadyQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = lock(&self.state);
        f.debug_struct("ReadyQueue")
            .field("queued", &s.items.len())
            .field("parked", &s.parked)
            .field("closed", &s.closed)
            .finish()
    }
}

impl<T> Default for ReadyQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> ReadyQueue<T> {
    /// An empty, open queue.
    pub fn new() -> Self {
        Self {
            state: Mutex::new(QueueState {
                items: VecDeque::new(),
                parked: 0,
                closed: false,
            }),
            wake: Condvar::new(),
            queued: AtomicUsize::new(0),
        }
    }

    /// Whether the queue looked empty when last changed (a hint, without the
    /// lock).
    pub fn looks_empty(&self) -> bool {
        self.queued.load(Ordering::Relaxed) == 0
    }

    /// Queues `item` at the back; wakes one parked worker if any is parked.
    /// Returns `false` (dropping the item) once the queue is closed.
    pub fn push(&self, item: T) -> bool {
        let mut s = lock(&self.state);
        if s.closed {
            return false;
        }
        s.items.push_back(item);
        self.queued.store(s.items.len(), Ordering::Relaxed);
        if s.parked > 0 {
            drop(s);
            self.wake.notify_one();
        }
        true
    }

    /// Takes the item at the front, parking up to `timeout` for one.
    pub fn pop(&self, timeout: Duration) -> Pop<T> {
        let mut s = lock(&self.state);
        loop {
            if s.closed {
                return Pop::Closed;
            }
            if let Some(item) = s.items.pop_front() {
                self.queued.store(s.items.len(), Ordering::Relaxed);
                return Pop::Item(item);
            }
            if timeout.is_zero() {
                return Pop::Empty;
            }
            s.parked += 1;
            let (guard, timed_out) = match self.wake.wait_timeout(s, timeout) {
                Ok((guard, t)) => (guard, t.timed_out()),
                Err(e) => {
                    let (guard, t) = e.into_inner();
                    (guard, t.timed_out())
                }
            };
            s = guard;
            s.parked -= 1;
            if timed_out && s.items.is_empty() && !s.closed {
                return Pop::Empty;
            }
        }
    }

    /// Closes the queue: pushes are refused, parked workers wake, pops return
    /// [`Pop::Closed`]. Returns what was queued.
    pub fn close(&self) -> Vec<T> {
        let mut s = lock(&self.state);
        s.closed = true;
        let left = s.items.drain(..).collect();
        self.queued.store(0, Ordering::Relaxed);
        drop(s);
        self.wake.notify_all();
        left
    }
}

/// Ends a worker's turn of a replica whose mailbox is `mailbox`; returns
/// whether the worker must queue the replica again (at the back of the ready
/// queue): items arrived during the turn, or its next tick is already due
/// (`tick_due`, asked only if nothing arrived) and nobody else — the timer —
/// raised its flag first. A closed mailbox is never queued again. The loom
/// models in `tests/loom.rs` call this very function.
pub fn end_of_turn<T>(mailbox: &Mailbox<T>, tick_due: impl FnOnce() -> bool) -> bool {
    mailbox.end_turn() || (tick_due() && mailbox.schedule())
}
