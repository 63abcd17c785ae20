//! loom models of the runtime's structures shared between client threads and the
//! node thread: the `Mailbox` (proposal queue) and the `Slot` (response slot).
//! loom explores every interleaving; its `Condvar::wait_timeout` never times out,
//! so a lost wakeup shows up as a deadlock instead of being hidden by a timeout.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test --release --test loom`
#![cfg(loom)]

use std::time::Duration;

use loom::sync::Arc;
use loom::thread;
use vaultfleet::runtime::{Mailbox, PushError, Slot};

const WAIT: Duration = Duration::from_secs(1);

#[test]
fn every_pushed_item_is_drained_and_no_wakeup_is_lost() {
    loom::model(|| {
        let mailbox = Arc::new(Mailbox::new(8));
        let producers: Vec<_> = (0..2u32)
            .map(|i| {
                let m = Arc::clone(&mailbox);
                thread::spawn(move || m.push(i).expect("room for two"))
            })
            .collect();
        let mut got = Vec::new();
        let mut batch = Vec::new();
        while got.len() < 2 {
            assert!(mailbox.drain(&mut batch, WAIT));
            got.append(&mut batch);
        }
        for p in producers {
            p.join().expect("producer");
        }
        got.sort_unstable();
        assert_eq!(got, vec![0, 1]);
    });
}

#[test]
fn close_wakes_a_waiting_drain_and_hands_back_what_was_queued() {
    loom::model(|| {
        let mailbox = Arc::new(Mailbox::new(8));
        let closer = {
            let m = Arc::clone(&mailbox);
            thread::spawn(move || {
                let pushed = m.push(7u32).is_ok();
                let left = m.close();
                (pushed, left)
            })
        };
        let mut drained = Vec::new();
        let mut batch = Vec::new();
        while mailbox.drain(&mut batch, WAIT) {
            drained.append(&mut batch);
        }
        let (pushed, left) = closer.join().expect("closer");
        assert!(pushed);
        // The item is either drained before the close or handed back by it: never both, never lost.
        assert_eq!(drained.len() + left.len(), 1);
        assert!(matches!(mailbox.push(8), Err(PushError::Closed(8))));
    });
}

#[test]
fn the_mailbox_never_holds_more_than_its_capacity() {
    loom::model(|| {
        let mailbox = Arc::new(Mailbox::new(1));
        let handles: Vec<_> = (0..2u32)
            .map(|i| {
                let m = Arc::clone(&mailbox);
                thread::spawn(move || m.push(i).is_ok())
            })
            .collect();
        let accepted = handles
            .into_iter()
            .map(|h| h.join().expect("pusher"))
            .filter(|ok| *ok)
            .count();
        let mut batch = Vec::new();
        mailbox.drain(&mut batch, Duration::ZERO);
        assert_eq!(accepted, 1);
        assert_eq!(batch.len(), 1);
    });
}

#[test]
fn a_filled_slot_wakes_its_waiter_and_is_taken_once() {
    loom::model(|| {
        let slot = Arc::new(Slot::new());
        let filler = {
            let s = Arc::clone(&slot);
            thread::spawn(move || {
                assert!(s.fill(42u32).is_ok());
                assert_eq!(s.fill(43), Err(43), "a second fill is refused");
            })
        };
        assert_eq!(slot.wait(WAIT), Some(42));
        assert_eq!(slot.try_take(), None);
        filler.join().expect("filler");
    });
}

#[test]
fn a_notifying_slot_calls_back_after_its_value_is_in_place() {
    use loom::sync::atomic::{AtomicBool, Ordering};
    loom::model(|| {
        let notified = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&notified);
        let slot = Arc::new(Slot::with_notify(std::sync::Arc::new(move || {
            flag.store(true, Ordering::Release);
        })));
        let filler = {
            let s = Arc::clone(&slot);
            thread::spawn(move || {
                assert!(s.fill(7u32).is_ok());
            })
        };
        while !notified.load(Ordering::Acquire) {
            thread::yield_now();
        }
        assert_eq!(
            slot.try_take(),
            Some(7),
            "notified means the value is there"
        );
        filler.join().expect("filler");
    });
}
