//! One timer thread for the runtime's futures: wakes a `Waker` at a deadline.
//! The engine depends on no async runtime, so a future that must be polled
//! again later (a re-submission a node refused at once) asks this thread. One
//! thread serves the process, started on first use; if it cannot be started,
//! a waker is woken at once and the executor polls again.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::Waker;
use std::time::Instant;

/// Deadlines kept at most; beyond it a waker is woken at once (its future polls
/// again early, which is only a little wasted work).
const ENTRIES_MAX: usize = 1 << 16;

struct Entry {
    at: Instant,
    seq: u64,
    waker: Waker,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    /// Reversed: the heap's top is the earliest deadline.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Entry>,
    seq: u64,
}

struct Timer {
    queue: Mutex<Queue>,
    changed: Condvar,
}

fn timer() -> Option<&'static Arc<Timer>> {
    static TIMER: OnceLock<Option<Arc<Timer>>> = OnceLock::new();
    TIMER
        .get_or_init(|| {
            let timer = Arc::new(Timer {
                queue: Mutex::new(Queue::default()),
                changed: Condvar::new(),
            });
            let runs = Arc::clone(&timer);
            std::thread::Builder::new()
                .name("vaultfleet-timer".into())
                .spawn(move || run(&runs))
                .ok()
                .map(|_| timer)
        })
        .as_ref()
}

fn run(timer: &Timer) {
    let mut due = Vec::new();
    let mut queue = timer.queue.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let now = Instant::now();
        while queue.heap.peek().is_some_and(|e| e.at <= now) {
            if let Some(e) = queue.heap.pop() {
                due.push(e.waker);
            }
        }
        if !due.is_empty() {
            drop(queue);
            for waker in due.drain(..) {
                waker.wake();
            }
            queue = timer.queue.lock().unwrap_or_else(|e| e.into_inner());
            continue;
        }
        queue = match queue.heap.peek().map(|e| e.at) {
            Some(at) => {
                let wait = at.saturating_duration_since(now);
                timer
                    .changed
                    .wait_timeout(queue, wait)
                    .map(|(q, _)| q)
                    .unwrap_or_else(|e| e.into_inner().0)
            }
            None => timer.changed.wait(queue).unwrap_or_else(|e| e.into_inner()),
        };
    }
}

/// Wakes `waker` at `at` (or at once, if the timer thread cannot run or holds
/// [`ENTRIES_MAX`] deadlines already).
pub(crate) fn wake_at(at: Instant, waker: Waker) {
    let Some(timer) = timer() else {
        waker.wake();
        return;
    };
    let mut queue = timer.queue.lock().unwrap_or_else(|e| e.into_inner());
    if queue.heap.len() >= ENTRIES_MAX {
        drop(queue);
        waker.wake();
        return;
    }
    queue.seq += 1;
    let seq = queue.seq;
    let earliest = queue.heap.peek().is_none_or(|e| at < e.at);
    queue.heap.push(Entry { at, seq, waker });
    drop(queue);
    if earliest {
        timer.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
    use std::task::Wake;
    use std::time::Duration;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, AtomicOrdering::SeqCst);
        }
    }

    #[test]
    fn wakers_are_woken_at_their_deadlines_in_order_and_not_before() {
        let late = Arc::new(Count(AtomicUsize::new(0)));
        let soon = Arc::new(Count(AtomicUsize::new(0)));
        let start = Instant::now();
        wake_at(
            start + Duration::from_secs(3600),
            Waker::from(Arc::clone(&late)),
        );
        wake_at(
            start + Duration::from_millis(20),
            Waker::from(Arc::clone(&soon)),
        );
        let deadline = start + Duration::from_secs(10);
        while soon.0.load(AtomicOrdering::SeqCst) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            soon.0.load(AtomicOrdering::SeqCst),
            1,
            "the near deadline fired"
        );
        assert!(
            start.elapsed() >= Duration::from_millis(20),
            "not before it"
        );
        assert_eq!(late.0.load(AtomicOrdering::SeqCst), 0, "the far one waits");
    }
}
