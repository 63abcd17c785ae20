//! The synchronisation primitives of the shared structures: std's, or loom's
//! when built with `RUSTFLAGS="--cfg loom"`, so that the loom models in
//! `tests/loom.rs` explore every interleaving of the real code.

#[cfg(loom)]
pub(crate) use loom::sync::{atomic::AtomicBool, Condvar, Mutex, MutexGuard};
#[cfg(not(loom))]
pub(crate) use std::sync::{atomic::AtomicBool, Condvar, Mutex, MutexGuard};

/// Locks, ignoring poisoning: the structures guarded here stay consistent at every
/// point a panic could interrupt them (single assignments and pushes).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
