//! `Slot`: a one-shot response slot. The node thread fills it once; the client
//! thread waits on it (with a timeout) or polls it.
//!
//! Invariants (loom models in `tests/loom.rs`): a value filled is taken exactly
//! once; a waiter is woken by the fill; a second fill is refused.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::primitives::{lock, Condvar, Mutex};

/// Called once a slot is filled: lets one thread wait for many slots (a
/// benchmark driver, an event loop) instead of one thread per slot.
pub type Notify = Arc<dyn Fn() + Send + Sync>;

/// A value that arrives once.
pub struct Slot<T> {
    value: Mutex<Inner<T>>,
    filled: Condvar,
    notify: Option<Notify>,
}

struct Inner<T> {
    state: SlotState<T>,
    /// Threads blocked in `wait`: a fill only signals the condvar when there is
    /// one (signalling costs a system call even when nobody waits).
    waiters: u32,
}

enum SlotState<T> {
    Empty,
    Full(T),
    Taken,
}

impl<T> std::fmt::Debug for Slot<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &lock(&self.value).state {
            SlotState::Empty => "empty",
            SlotState::Full(_) => "full",
            SlotState::Taken => "taken",
        };
        f.debug_struct("Slot").field("state", &state).finish()
    }
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Slot<T> {
    /// An empty slot.
    pub fn new() -> Self {
        Self::build(None)
    }

    /// An empty slot that calls `notify` once it is filled.
    pub fn with_notify(notify: Notify) -> Self {
        Self::build(Some(notify))
    }

    fn build(notify: Option<Notify>) -> Self {
        Self {
            value: Mutex::new(Inner {
                state: SlotState::Empty,
                waiters: 0,
            }),
            filled: Condvar::new(),
            notify,
        }
    }

    /// Fills the slot; returns the value back if it was filled before.
    pub fn fill(&self, value: T) -> Result<(), T> {
        let mut v = lock(&self.value);
        if !matches!(v.state, SlotState::Empty) {
            return Err(value);
        }
        v.state = SlotState::Full(value);
        let waiters = v.waiters;
        drop(v);
        if waiters > 0 {
            self.filled.notify_all();
        }
        if let Some(notify) = &self.notify {
            // A panicking callback must not unwind through the node's thread (it
            // may run while that thread already unwinds, failing its slots).
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| notify()));
        }
        Ok(())
    }

    /// Takes the value if it has arrived.
    pub fn try_take(&self) -> Option<T> {
        let mut v = lock(&self.value);
        match std::mem::replace(&mut v.state, SlotState::Taken) {
            SlotState::Full(value) => Some(value),
            other => {
                v.state = other;
                None
            }
        }
    }

    /// Waits up to `timeout` for the value and takes it.
    pub fn wait(&self, timeout: Duration) -> Option<T> {
        let deadline = Instant::now().checked_add(timeout);
        let mut v = lock(&self.value);
        loop {
            if let SlotState::Full(_) = v.state {
                if let SlotState::Full(value) = std::mem::replace(&mut v.state, SlotState::Taken) {
                    return Some(value);
                }
            }
            if matches!(v.state, SlotState::Taken) {
                return None;
            }
            let left = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(3600),
            };
            if left.is_zero() {
                return None;
            }
            v.waiters += 1;
            v = match self.filled.wait_timeout(v, left) {
                Ok((guard, _)) => guard,
                Err(e) => e.into_inner().0,
            };
            v.waiters -= 1;
        }
    }
}
