//! loom models of the runtime's structures shared between client threads and the
//! node thread: the `Mailbox` (proposal queue) and the `Slot` (response slot);
//! and of the pool's hand-off: the mailbox's `scheduled` flag and the
//! `ReadyQueue` of replicas with work.
//! loom explores every interleaving; its `Condvar::wait_timeout` never times out,
//! so a lost wakeup shows up as a deadlock instead of being hidden by a timeout.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test --release -p vaultfleet-sync --test loom`
#![cfg(loom)]

use std::time::Duration;

use loom::sync::Arc;
use loom::thread;
use vaultfleet_sync::{end_of_turn, Mailbox, Pop, PushError, ReadyQueue, Slot};

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

/// A pool worker's turn of the one replica of these models: drain its mailbox
/// into `got`, end the turn as the pool does (`end_of_turn`, no tick due),
/// queue it again if something arrived meanwhile.
fn serve(mailbox: &Mailbox<u32>, ready: &ReadyQueue<()>, got: &mut Vec<u32>) {
    let mut batch = Vec::new();
    assert!(mailbox.drain(&mut batch, Duration::ZERO));
    got.append(&mut batch);
    if end_of_turn(mailbox, || false) {
        assert!(ready.push(()));
    }
}

#[test]
fn a_push_racing_the_end_of_a_turn_is_served() {
    loom::model(|| {
        let mailbox = Arc::new(Mailbox::new(8));
        let ready = Arc::new(ReadyQueue::new());
        let producers: Vec<_> = (0..2u32)
            .map(|i| {
                let (m, q) = (Arc::clone(&mailbox), Arc::clone(&ready));
                thread::spawn(move || {
                    // Only the push that raised the flag schedules the replica.
                    if m.push_scheduling(i).expect("room for two") {
                        assert!(q.push(()));
                    }
                })
            })
            .collect();
        // The worker parks on the ready queue (never timing out under loom): a
        // lost wake-up or an unscheduled item is a deadlock loom reports.
        let mut got = Vec::new();
        while got.len() < 2 {
            assert_eq!(ready.pop(WAIT), Pop::Item(()));
            serve(&mailbox, &ready, &mut got);
        }
        for p in producers {
            p.join().expect("producer");
        }
        got.sort_unstable();
        assert_eq!(got, vec![0, 1]);
        // Served and idle: not queued again, and its flag is down (the next
        // push schedules it).
        assert_eq!(ready.pop(Duration::ZERO), Pop::Empty);
        assert!(mailbox.schedule(), "the flag went down");
    });
}

#[test]
fn a_replica_is_never_queued_twice_and_its_flag_never_sticks() {
    loom::model(|| {
        let mailbox = Arc::new(Mailbox::new(8));
        let ready = Arc::new(ReadyQueue::new());
        // The replica is in a worker's turn (scheduled, off the queue) while a
        // client pushes and the timer finds its tick due.
        assert!(mailbox.schedule());
        let producer = {
            let (m, q) = (Arc::clone(&mailbox), Arc::clone(&ready));
            thread::spawn(move || {
                if m.push_scheduling(1).expect("room") {
                    assert!(q.push(()));
                }
            })
        };
        let timer = {
            let (m, q) = (Arc::clone(&mailbox), Arc::clone(&ready));
            thread::spawn(move || {
                if m.schedule() {
                    assert!(q.push(()));
                }
            })
        };
        let mut got = Vec::new();
        serve(&mailbox, &ready, &mut got);
        producer.join().expect("producer");
        timer.join().expect("timer");
        // Serve what is queued: never more than one entry at a time.
        let mut turns = 0;
        while let Pop::Item(()) = ready.pop(Duration::ZERO) {
            turns += 1;
            assert!(turns <= 2, "queued at most once per raise of its flag");
            serve(&mailbox, &ready, &mut got);
        }
        assert_eq!(got, vec![1], "the push was served");
        assert!(mailbox.schedule(), "idle with the flag down");
    });
}

#[test]
fn p3_close_racing_the_end_of_a_turn_and_a_timer_never_queues_twice() {
    loom::model(|| {
        let mailbox = Arc::new(Mailbox::<u32>::new(8));
        let ready = Arc::new(ReadyQueue::new());
        // The replica is in a worker's turn; its next tick is already due when
        // the turn ends, the timer finds it due too, and the pool stops it.
        assert!(mailbox.schedule());
        let timer = {
            let (m, q) = (Arc::clone(&mailbox), Arc::clone(&ready));
            thread::spawn(move || {
                if m.schedule() {
                    assert!(q.push(()));
                }
            })
        };
        let closer = {
            let m = Arc::clone(&mailbox);
            thread::spawn(move || m.close().len())
        };
        if end_of_turn(&mailbox, || true) {
            assert!(ready.push(()));
        }
        timer.join().expect("timer");
        assert_eq!(closer.join().expect("closer"), 0);
        let mut queued = 0;
        while let Pop::Item(()) = ready.pop(Duration::ZERO) {
            queued += 1;
        }
        assert!(queued <= 1, "the replica is on the queue at most once");
        assert!(!mailbox.schedule(), "a closed mailbox is never scheduled");
    });
}

/// A parked worker: takes items until the queue closes, after `took`.
/// Parks without a timeout under loom: a lost wake-up (of a push or of the
/// close) is a deadlock loom reports.
fn take_until_closed(q: &ReadyQueue<u32>, mut took: Vec<u32>) -> Vec<u32> {
    while let Pop::Item(item) = q.pop(WAIT) {
        took.push(item);
    }
    took
}

#[test]
fn p3_two_workers_take_an_item_once_and_wake_on_close() {
    // Two parked workers, one push and the close: three threads on a condvar
    // is as far as loom explores in minutes with a bound on preemptions.
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(3);
    model.check(|| {
        let ready = Arc::new(ReadyQueue::new());
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let q = Arc::clone(&ready);
                thread::spawn(move || take_until_closed(&q, Vec::new()))
            })
            .collect();
        assert!(ready.push(1u32));
        let left = ready.close();
        assert!(!ready.push(2), "a closed queue refuses pushes");
        let mut all = left;
        for w in workers {
            all.extend(w.join().expect("worker"));
        }
        assert_eq!(all, vec![1], "the item taken or handed back, once");
    });
}

/// The pool's watch (`runtime::pool::watch`, 2026-12-04): a worker that found
/// the queue empty looks at `looks_empty` (a relaxed mirror of the length) and
/// takes with `pop(ZERO)` for a bounded while, then parks with `pop`; another
/// worker is parked. However the push and the close interleave with the
/// watch, the item is taken once (by a watcher, the parked worker, or handed
/// back by the close), a watcher that lost the race watches on, and nobody
/// sleeps through the close.
#[test]
fn a_watching_worker_and_a_parked_one_take_an_item_once_and_wake_on_close() {
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(3);
    model.check(|| {
        let ready = Arc::new(ReadyQueue::new());
        let watcher = {
            let q = Arc::clone(&ready);
            thread::spawn(move || {
                let mut took = Vec::new();
                // The watch: a bounded number of looks (the real one is
                // bounded by `spin`), taking only through `pop(ZERO)`.
                for _ in 0..2 {
                    if !q.looks_empty() {
                        match q.pop(Duration::ZERO) {
                            Pop::Item(item) => took.push(item),
                            Pop::Closed => return took,
                            Pop::Empty => {} // another worker was first
                        }
                    }
                    thread::yield_now();
                }
                // Then it parks, as `pop` does after a watch that found nothing.
                take_until_closed(&q, took)
            })
        };
        let parked = {
            let q = Arc::clone(&ready);
            thread::spawn(move || take_until_closed(&q, Vec::new()))
        };
        assert!(ready.push(1u32));
        let mut all = ready.close();
        all.extend(watcher.join().expect("watcher"));
        all.extend(parked.join().expect("parked worker"));
        assert_eq!(all, vec![1], "the item taken or handed back, once");
    });
}

/// Review 10: `is_closed` reads an atomic mirror of `state.closed` (6451fdf).
/// A client that saw the mailbox closed finds every later push refused, and a
/// push refused as closed is seen closed; a push that succeeded before the
/// close is either drained or handed back by `close`.
#[test]
fn is_closed_agrees_with_push_and_close() {
    loom::model(|| {
        let mailbox = Arc::new(Mailbox::<u32>::new(8));
        let client = {
            let m = Arc::clone(&mailbox);
            thread::spawn(move || {
                let seen_closed = m.is_closed();
                let pushed = m.push(1);
                if seen_closed {
                    assert!(matches!(pushed, Err(PushError::Closed(1))));
                }
                if matches!(pushed, Err(PushError::Closed(_))) {
                    assert!(m.is_closed(), "refused as closed, yet not closed");
                }
                pushed.is_ok()
            })
        };
        let left = mailbox.close();
        assert!(mailbox.is_closed());
        let pushed = client.join().expect("client");
        assert_eq!(
            left.len(),
            usize::from(pushed),
            "a pushed item is handed back"
        );
    });
}
