//! `Pool`: a fixed set of worker threads that drive any number of replicas, of
//! any groups and any log store and state machine types — the shape of TiKV's
//! raftstore batch system.
//!
//! Each replica is a mailbox with a `scheduled` flag and a boxed `Fsm` (the same
//! `Driver` a [`Node`](super::Node) runs). A push that raises the flag puts the
//! replica on the pool's [`ReadyQueue`]; a parked worker is woken only then, and
//! only if one is parked. A worker's turn of a replica is one `Driver::turn`:
//! everything that was in its mailbox, its tick if due, its Ready cycles. The
//! turn ends with [`Mailbox::end_turn`](vaultfleet_sync::Mailbox::end_turn): the flag
//! goes down only if nothing arrived meanwhile, else the replica goes to the
//! back of the queue. A timer thread schedules replicas whose tick is due (ticks
//! are aligned on a grid, so one timer wake serves every replica of a tick) and
//! watches the workers: a turn longer than `stall_after` (a store blocked in
//! `sync`) starts a spare worker so that `workers` threads keep serving the
//! others; when the stalled turn ends, one thread too many retires.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::node::{fail_input, Driver, Fsm, NodeConfig, NodeHandle, Shared};
use super::telemetry;
use super::{end_of_turn, Pop, ReadyQueue};
use crate::replica::{ReplicaError, RequestError};
use crate::state_machine::StateMachine;
use crate::storage::LogStore;
use crate::transport::Transport;
use crate::ReplicaId;

/// Settings of a [`Pool`].
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Worker threads serving turns (spares come on top while some are stalled).
    pub workers: usize,
    /// The timer's granularity: it wakes at least this often to schedule the
    /// replicas whose tick is due and to look for stalled workers. A replica's
    /// own tick length is its [`NodeConfig::tick_interval`].
    pub tick_interval: Duration,
    /// A turn running longer than this counts as a stall
    /// ([`telemetry::POOL_STALLS`]) and a spare worker is started.
    pub stall_after: Duration,
    /// Most spare workers running at once.
    pub spare_workers_max: usize,
    /// How long a worker that finds the queue empty watches it before it
    /// parks (yielding its core between looks); `ZERO` turns it off. A
    /// replica's hops (client → leader → followers → leader) come a few
    /// microseconds apart, so a short watch saves most of their wake-ups; a
    /// busy pool never finds the queue empty and never watches.
    ///
    /// The cost: under a light, steady load (inputs less than `spin` apart)
    /// the watchers never park, and each keeps a core busy in `sched_yield`
    /// calls that any runnable thread on that core preempts. Under a CPU quota
    /// (a container's `cpu.max`) that time counts against the quota; set
    /// `ZERO` there, or fewer [`watchers`](Self::watchers).
    pub spin: Duration,
    /// Most workers watching the empty queue at once (see [`spin`](Self::spin));
    /// `0` turns watching off, as a `ZERO` spin does.
    /// Two by default: a leader's turn queues its followers at once (two in a
    /// fleet of three), and with one watcher the second worker parked, and a
    /// push woke it for every commit.
    pub watchers: usize,
}

impl PoolConfig {
    /// Defaults: 2 workers, a 10 ms timer, a stall after 500 ms, up to 8 spares,
    /// a 50 µs spin by at most 2 watchers.
    pub fn new() -> Self {
        Self {
            workers: 2,
            tick_interval: Duration::from_millis(10),
            stall_after: Duration::from_millis(500),
            spare_workers_max: 8,
            spin: Duration::from_micros(50),
            watchers: 2,
        }
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a [`Pool`] could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The OS refused a thread.
    #[error("could not start a pool thread")]
    Spawn {
        /// The OS's error.
        #[source]
        source: std::io::Error,
    },
}

/// Locks, ignoring poisoning: a worker's panic is contained in its turn, and the
/// pool's own structures stay consistent at every point it could interrupt them.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One replica on the pool.
struct Entry {
    shared: Arc<Shared>,
    /// The replica; held by the worker running its turn (and `None` once stopped).
    fsm: Mutex<Option<Box<dyn Fsm>>>,
    /// When its next tick is due, in nanoseconds since the pool's epoch.
    next_tick: AtomicU64,
    /// Its tick length in nanoseconds (at least 1).
    tick_nanos: u64,
    /// Why it stopped on its own (an error, a panic), for `shutdown`.
    outcome: Mutex<Option<ReplicaError>>,
    /// Inputs its last turn took from its mailbox: stored by that turn's
    /// worker, read by the timer for the pool's mailbox gauges.
    depth: AtomicUsize,
    /// Its mailbox's capacity.
    capacity: usize,
}

/// How a replica's handles reach its pool: a push that raises the mailbox's
/// flag queues the replica. Weak, so handles never keep a pool alive.
pub(super) struct PoolLink {
    inner: Weak<Inner>,
    entry: Weak<Entry>,
}

impl PoolLink {
    /// Puts the replica on the ready queue (its flag was just raised).
    pub(super) fn schedule(&self) {
        if let (Some(inner), Some(entry)) = (self.inner.upgrade(), self.entry.upgrade()) {
            inner.queue.push(entry);
        }
    }
}

/// A worker's turn in progress, as the monitor sees it.
struct WorkerSlot {
    /// Nanoseconds since the epoch plus one when its turn began; 0 when idle.
    busy_since: AtomicU64,
    /// Counted in `Counts::stalled` (changed under the `counts` lock only).
    stalled: AtomicBool,
}

struct Counts {
    /// Worker threads alive (spares included).
    live: usize,
    /// Of them, those in a turn counted as stalled.
    stalled: usize,
    /// Every worker's slot.
    slots: Vec<Arc<WorkerSlot>>,
}

struct Inner {
    cfg: PoolConfig,
    epoch: Instant,
    queue: ReadyQueue<Arc<Entry>>,
    entries: Mutex<Vec<Arc<Entry>>>,
    counts: Mutex<Counts>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Set when the pool stops; the timer sleeps on `timer_wake`.
    stopping: Mutex<bool>,
    timer_wake: Condvar,
    /// Workers watching the empty queue ([`PoolConfig::watchers`]).
    watching: AtomicUsize,
    /// This pool among the process's pools, for the mailbox gauges.
    serial: u64,
}

/// Serial numbers of the process's pools.
static POOL_SERIALS: AtomicU64 = AtomicU64::new(0);

impl Inner {
    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn forget(&self, entry: &Arc<Entry>) {
        lock(&self.entries).retain(|e| !Arc::ptr_eq(e, entry));
    }

    /// Starts one worker thread (its `live` count already taken).
    fn start_worker(self: &Arc<Self>) -> Result<(), PoolError> {
        let slot = Arc::new(WorkerSlot {
            busy_since: AtomicU64::new(0),
            stalled: AtomicBool::new(false),
        });
        // Registered before the thread runs, so its exit always finds it.
        lock(&self.counts).slots.push(Arc::clone(&slot));
        let inner = Arc::clone(self);
        let thread_slot = Arc::clone(&slot);
        let thread = std::thread::Builder::new()
            .name("vaultfleet-pool-worker".into())
            .spawn(move || work(&inner, &thread_slot))
            .map_err(|source| {
                lock(&self.counts).slots.retain(|s| !Arc::ptr_eq(s, &slot));
                PoolError::Spawn { source }
            })?;
        let mut threads = lock(&self.threads);
        threads.retain(|t| !t.is_finished());
        threads.push(thread);
        Ok(())
    }
}

/// A worker: takes replicas off the ready queue and runs their turns until
/// the pool stops or it is one worker too many.
fn work(inner: &Arc<Inner>, slot: &Arc<WorkerSlot>) {
    /// Un-counts the worker however it exits (a panic that escaped a turn's
    /// `catch_unwind` included), so `live` and the slots stay true.
    struct Exit<'a> {
        inner: &'a Inner,
        slot: &'a Arc<WorkerSlot>,
    }
    impl Exit<'_> {
        fn uncount(&self, counts: &mut Counts) {
            counts.live -= 1;
            if self.slot.stalled.swap(false, Ordering::AcqRel) {
                counts.stalled -= 1;
            }
            counts.slots.retain(|s| !Arc::ptr_eq(s, self.slot));
        }
    }
    impl Drop for Exit<'_> {
        fn drop(&mut self) {
            self.uncount(&mut lock(&self.inner.counts));
        }
    }
    let exit = Exit { inner, slot };
    loop {
        {
            let mut counts = lock(&inner.counts);
            if counts.live - counts.stalled > inner.cfg.workers {
                // Un-counted under the same lock as the check, so two workers
                // never both retire for one spare too many.
                exit.uncount(&mut counts);
                std::mem::forget(exit);
                return;
            }
        }
        let found = watch(inner).unwrap_or_else(|| inner.queue.pop(Duration::from_secs(1)));
        let entry = match found {
            Pop::Item(entry) => entry,
            Pop::Empty => continue,
            Pop::Closed => return,
        };
        slot.busy_since
            .store(inner.nanos(Instant::now()) + 1, Ordering::Release);
        let again = turn(inner, &entry);
        {
            let mut counts = lock(&inner.counts);
            slot.busy_since.store(0, Ordering::Release);
            if slot.stalled.swap(false, Ordering::AcqRel) {
                counts.stalled -= 1;
            }
        }
        if again {
            inner.queue.push(entry);
        }
    }
}

/// Watches the queue for up to `spin` before the worker parks, if fewer than
/// `watchers` workers watch already: what it takes from the queue (an item,
/// or that it closed), or `None` to park. An item another worker took first
/// does not end the watch (a worker that parked then was woken by the next
/// push, the very wake-up the watch is there to save).
fn watch(inner: &Inner) -> Option<Pop<Arc<Entry>>> {
    let cfg = &inner.cfg;
    // A busy pool finds an item at once and never watches.
    if cfg.spin.is_zero() || !inner.queue.looks_empty() {
        return None;
    }
    let deadline = Instant::now().checked_add(cfg.spin)?;
    if inner.watching.fetch_add(1, Ordering::Relaxed) >= cfg.watchers {
        inner.watching.fetch_sub(1, Ordering::Relaxed);
        return None;
    }
    let found = loop {
        if !inner.queue.looks_empty() {
            match inner.queue.pop(Duration::ZERO) {
                Pop::Empty => {}
                taken => break Some(taken),
            }
        }
        if Instant::now() >= deadline {
            break None;
        }
        // Yielding rather than spinning hot: a thread with work (a client's
        // driver, another worker) gets the core first.
        std::thread::yield_now();
    };
    inner.watching.fetch_sub(1, Ordering::Relaxed);
    found
}

/// Runs one turn of `entry`; returns whether to queue it again.
fn turn(inner: &Inner, entry: &Arc<Entry>) -> bool {
    let mut held = lock(&entry.fsm);
    let Some(fsm) = held.as_mut() else {
        return false; // stopped meanwhile
    };
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| fsm.turn()));
    let stopped = match outcome {
        Ok(Ok(true)) => None,
        Ok(Ok(false)) => Some(None),
        Ok(Err(e)) => Some(Some(e)),
        Err(_) => {
            tracing::error!(
                replica = entry.shared.id,
                "replica panicked in its turn; stopped"
            );
            Some(Some(ReplicaError::Failed {
                id: entry.shared.id,
            }))
        }
    };
    if let Some(error) = stopped {
        // As a Node's thread does on its way out: clients fail fast with
        // `Stopped`, the replica (and its store) is dropped.
        fail_mailbox(&entry.shared);
        // Finished and dropped (its store closed) and its outcome recorded
        // before the lock goes: a `shutdown` waiting on it sees both.
        finish(held.take());
        *lock(&entry.outcome) = error;
        drop(held);
        inner.forget(entry);
        return false;
    }
    let due = fsm.next_tick();
    let more = fsm.more();
    // One store into the replica's own entry per turn; the timer sums.
    entry.depth.store(fsm.last_inputs(), Ordering::Relaxed);
    drop(held);
    entry.next_tick.store(inner.nanos(due), Ordering::Release);
    // Work left (a restore's backlog) counts as a due tick: the replica goes
    // to the back of the ready queue, behind the others' turns.
    end_of_turn(&entry.shared.mailbox, || more || Instant::now() >= due)
}

/// Closes a replica's mailbox and fails what it held with `Stopped`,
/// containing a panic of a client's callback (a slot's `Notify`).
fn fail_mailbox(shared: &Shared) {
    let left = shared.mailbox.close();
    let _ = std::panic::catch_unwind(AssertUnwindSafe(move || {
        for input in left {
            fail_input(input, RequestError::Stopped);
        }
    }));
}

/// Fails what a stopped replica still held and drops it, containing a panic
/// of either (the replica may be broken).
fn finish(fsm: Option<Box<dyn Fsm>>) {
    if let Some(mut fsm) = fsm {
        let _ = std::panic::catch_unwind(AssertUnwindSafe(move || {
            fsm.finish();
            drop(fsm);
        }));
    }
}

/// The timer: schedules replicas whose tick is due and starts spare workers
/// for stalled ones, until the pool stops.
fn time(inner: &Arc<Inner>) {
    let mut ready = Vec::new();
    // The timer also watches for stalls: it wakes at least every half
    // `stall_after`, so a turn blocked that long is counted whatever the
    // tick interval (a node ticking once a second, say).
    let watch = nanos_of(inner.cfg.stall_after / 2).max(1_000_000);
    loop {
        let now = Instant::now();
        let now_ns = inner.nanos(now);
        let mut next = now_ns
            .saturating_add(nanos_of(inner.cfg.tick_interval))
            .min(now_ns.saturating_add(watch));
        // The mailbox gauges, from the walk the timer makes anyway: no lock
        // per push, no scan per turn.
        let mut gauges = telemetry::PoolGauges {
            deepest: 0,
            sum: 0,
            capacity: None,
            workers: 0,
        };
        for entry in lock(&inner.entries).iter() {
            let depth = entry.depth.load(Ordering::Relaxed);
            gauges.deepest = gauges.deepest.max(depth);
            gauges.sum = gauges.sum.saturating_add(depth);
            gauges.capacity = Some(
                gauges
                    .capacity
                    .map_or(entry.capacity, |c| c.min(entry.capacity)),
            );
            let due = entry.next_tick.load(Ordering::Acquire);
            if due <= now_ns {
                if entry.shared.mailbox.schedule() {
                    ready.push(Arc::clone(entry));
                }
                // Its turn (the one just scheduled, or one in progress that
                // refused the schedule) moves its next tick to the grid point
                // after now: the timer wakes for that one too.
                let after = (now_ns - due) / entry.tick_nanos + 1;
                next = next.min(due.saturating_add(after.saturating_mul(entry.tick_nanos)));
            } else {
                next = next.min(due);
            }
        }
        for entry in ready.drain(..) {
            inner.queue.push(entry);
        }
        gauges.workers = monitor(inner, now_ns);
        // Every wake, not only on a change: a recorder that expires idle
        // gauges (the node daemon's, after 15 s) must not drop a steady one.
        telemetry::pool_gauges(inner.serial, Some(gauges));
        let stopping = lock(&inner.stopping);
        if *stopping {
            return;
        }
        let wait = Duration::from_nanos(next.saturating_sub(inner.nanos(Instant::now())));
        let stopping = match inner.timer_wake.wait_timeout(stopping, wait) {
            Ok((guard, _)) => guard,
            Err(e) => e.into_inner().0,
        };
        if *stopping {
            return;
        }
    }
}

fn nanos_of(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Counts the turns that became stalls and starts spares so that `workers`
/// threads are free of stalled turns (within `spare_workers_max`). Returns
/// the live workers, spares included.
fn monitor(inner: &Arc<Inner>, now_ns: u64) -> usize {
    let stall_after = nanos_of(inner.cfg.stall_after);
    let mut counts = lock(&inner.counts);
    let mut new_stalls = 0;
    for slot in &counts.slots {
        let since = slot.busy_since.load(Ordering::Acquire);
        if since != 0
            && now_ns.saturating_sub(since - 1) > stall_after
            && !slot.stalled.swap(true, Ordering::AcqRel)
        {
            new_stalls += 1;
        }
    }
    counts.stalled += new_stalls;
    if new_stalls > 0 {
        metrics::counter!(telemetry::POOL_STALLS).increment(new_stalls as u64);
        tracing::warn!(
            stalled = counts.stalled,
            "pool worker(s) stalled in a turn; starting spares"
        );
    }
    let cap = inner.cfg.workers + inner.cfg.spare_workers_max;
    let mut start = 0;
    while counts.live - counts.stalled < inner.cfg.workers && counts.live < cap {
        counts.live += 1;
        start += 1;
    }
    drop(counts);
    for _ in 0..start {
        if let Err(e) = inner.start_worker() {
            lock(&inner.counts).live -= 1;
            tracing::error!("could not start a spare pool worker: {e}");
        }
    }
    lock(&inner.counts).live
}

/// A fixed set of worker threads driving any number of replicas (see the
/// module documentation). Dropping it stops every replica on it.
pub struct Pool {
    inner: Arc<Inner>,
    timer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let counts = lock(&self.inner.counts);
        f.debug_struct("Pool")
            .field("workers", &self.inner.cfg.workers)
            .field("live", &counts.live)
            .field("stalled", &counts.stalled)
            .field("replicas", &lock(&self.inner.entries).len())
            .finish()
    }
}

impl Pool {
    /// Starts the workers and the timer.
    pub fn new(cfg: PoolConfig) -> Result<Pool, PoolError> {
        let workers = cfg.workers.max(1);
        let inner = Arc::new(Inner {
            cfg: PoolConfig { workers, ..cfg },
            epoch: Instant::now(),
            queue: ReadyQueue::new(),
            entries: Mutex::new(Vec::new()),
            counts: Mutex::new(Counts {
                live: 0,
                stalled: 0,
                slots: Vec::new(),
            }),
            threads: Mutex::new(Vec::new()),
            stopping: Mutex::new(false),
            timer_wake: Condvar::new(),
            watching: AtomicUsize::new(0),
            serial: POOL_SERIALS.fetch_add(1, Ordering::Relaxed),
        });
        // From here on, dropping `pool` stops whatever started.
        let mut pool = Pool { inner, timer: None };
        for _ in 0..workers {
            lock(&pool.inner.counts).live += 1;
            if let Err(e) = pool.inner.start_worker() {
                lock(&pool.inner.counts).live -= 1;
                return Err(e);
            }
        }
        let inner = Arc::clone(&pool.inner);
        pool.timer = Some(
            std::thread::Builder::new()
                .name("vaultfleet-pool-timer".into())
                .spawn(move || time(&inner))
                .map_err(|source| PoolError::Spawn { source })?,
        );
        Ok(pool)
    }

    /// Starts a replica on `store` with `machine` on this pool, as
    /// [`Node::spawn`](super::Node::spawn) does on a thread of its own. Its
    /// mailbox size, catch-up rule and tick length come from `cfg`; its ticks
    /// fall on a grid shared by every replica of the same tick length, so one
    /// timer wake serves them all.
    pub fn spawn<L: LogStore, S: StateMachine>(
        &self,
        cfg: NodeConfig,
        store: L,
        machine: S,
        transport: Arc<dyn Transport>,
    ) -> Result<PooledNode, ReplicaError> {
        let inner = &self.inner;
        let mut driver = Driver::new(&cfg, store, machine, transport)?;
        // The grid point after the store is open: opening and replaying it
        // are no elapsed ticks.
        let interval = nanos_of(cfg.tick_interval).max(1);
        let now = inner.nanos(Instant::now());
        let first = (now / interval + 1).saturating_mul(interval);
        driver.set_first_tick(inner.epoch + Duration::from_nanos(first));
        let shared = Arc::clone(&driver.shared);
        let entry = Arc::new(Entry {
            shared: Arc::clone(&shared),
            fsm: Mutex::new(Some(Box::new(driver))),
            next_tick: AtomicU64::new(first),
            tick_nanos: interval,
            outcome: Mutex::new(None),
            depth: AtomicUsize::new(0),
            capacity: cfg.mailbox_inputs_max.max(1),
        });
        let link = PoolLink {
            inner: Arc::downgrade(inner),
            entry: Arc::downgrade(&entry),
        };
        if shared.pool.set(link).is_err() {
            unreachable!("a new replica's pool link is set once");
        }
        lock(&inner.entries).push(Arc::clone(&entry));
        Ok(PooledNode {
            handle: NodeHandle::from_shared(shared),
            entry: Some(entry),
            pool: Arc::downgrade(inner),
        })
    }

    /// Replicas on the pool.
    pub fn replicas(&self) -> usize {
        lock(&self.inner.entries).len()
    }

    /// Worker threads alive, spares included.
    pub fn live_workers(&self) -> usize {
        lock(&self.inner.counts).live
    }

    /// Workers now in a turn counted as a stall (each one has a spare, within
    /// `spare_workers_max`).
    pub fn stalled_workers(&self) -> usize {
        lock(&self.inner.counts).stalled
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // First every mailbox closes, failing what it held: from here on a
        // request to any replica is refused with `Stopped` at once, even while
        // some store is stalled and its worker cannot be joined.
        let entries = std::mem::take(&mut *lock(&self.inner.entries));
        for entry in &entries {
            fail_mailbox(&entry.shared);
        }
        *lock(&self.inner.stopping) = true;
        self.inner.timer_wake.notify_all();
        if let Some(t) = self.timer.take() {
            let _ = t.join();
        }
        // The timer is gone: this pool's replicas leave the mailbox gauges.
        telemetry::pool_gauges(self.inner.serial, None);
        for entry in self.inner.queue.close() {
            drop(entry);
        }
        // Replicas no worker holds are finished now (their pending requests
        // fail); one in a turn is finished once its worker lets it go.
        let mut busy = Vec::new();
        for entry in entries {
            let free = match entry.fsm.try_lock() {
                Ok(mut held) => {
                    finish(held.take());
                    true
                }
                Err(_) => false,
            };
            if !free {
                busy.push(entry);
            }
        }
        // Workers finish the turn they are in (a stalled one waits for its store).
        let threads = std::mem::take(&mut *lock(&self.inner.threads));
        for t in threads {
            let _ = t.join();
        }
        for entry in busy {
            stop(&entry);
        }
    }
}

/// Stops a replica: closes its mailbox (failing what it held with
/// `Stopped`), waits for a running turn to end, fails its pending requests and
/// drops it — under the replica's lock, so whoever stops it second returns
/// only once its store is closed.
fn stop(entry: &Entry) {
    fail_mailbox(&entry.shared);
    let mut held = lock(&entry.fsm);
    finish(held.take());
}

/// A replica running on a [`Pool`]: the same surface as a
/// [`Node`](super::Node). Dropping it stops the replica.
pub struct PooledNode {
    handle: NodeHandle,
    entry: Option<Arc<Entry>>,
    pool: Weak<Inner>,
}

impl std::fmt::Debug for PooledNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledNode")
            .field("id", &self.handle.id())
            .finish()
    }
}

impl PooledNode {
    /// A handle to this replica.
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// The replica's id.
    pub fn id(&self) -> ReplicaId {
        self.handle.id()
    }

    /// Stops the replica: pending requests complete with
    /// [`RequestError::Stopped`], a turn in progress ends first, and the store
    /// is closed. Returns the error that stopped it earlier, if one did.
    pub fn shutdown(mut self) -> Result<(), ReplicaError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), ReplicaError> {
        let Some(entry) = self.entry.take() else {
            return Ok(());
        };
        stop(&entry);
        if let Some(inner) = self.pool.upgrade() {
            inner.forget(&entry);
        }
        let outcome = lock(&entry.outcome).take();
        match outcome {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for PooledNode {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
