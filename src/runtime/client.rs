//! `Client`: a cloneable handle through which application threads use a fleet of
//! in-process nodes. It registers a session, numbers every command, finds the
//! leader, and retries on leader changes and timeouts with the same (session,
//! sequence) — so a retried command is applied at most once.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use raft::StateRole;

use super::api::NodeApi;
use super::node::{NodeHandle, ResponseSlot};
use super::{Notify, Slot};
use crate::replica::{MembershipChange, Reply, RequestError};
use crate::wire::Request;
use crate::ReplicaId;

/// Timeouts of a [`Client`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientConfig {
    /// How long one call (with all its retries) may take.
    pub timeout: Duration,
    /// How long to wait for one node before trying another.
    pub attempt_timeout: Duration,
    /// Pause before retrying when no leader is known.
    pub retry_backoff: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            attempt_timeout: Duration::from_millis(1500),
            retry_backoff: Duration::from_millis(20),
        }
    }
}

/// Why a client call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The fleet answered with an error retrying cannot fix.
    #[error("request rejected: {0}")]
    Rejected(RequestError),
    /// No answer in time: no leader, no majority, or every node stopped. A command
    /// may or may not have been applied.
    #[error("fleet unavailable: no outcome after {attempts} attempts in {waited:?}{}", match .last { Some(e) => format!(" (last error: {e})"), None => String::new() })]
    Unavailable {
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        waited: Duration,
        /// The last retryable error seen.
        last: Option<RequestError>,
    },
    /// The fleet's reply did not fit the request (a bug; please report it).
    #[error("unexpected reply: expected {expected}, got {got} (a bug; please report it)")]
    UnexpectedReply {
        /// The kind of reply the request calls for.
        expected: &'static str,
        /// The kind of reply that came.
        got: &'static str,
    },
    /// [`PendingCommand::wait`] was called on a command that already finished.
    #[error("the command already finished; its outcome was returned before")]
    AlreadyFinished,
    /// A client needs at least one node.
    #[error("a client needs at least one node handle")]
    NoNodes,
}

/// `pause` jittered uniformly over `[pause / 2, pause * 3 / 2]`, drawn from the
/// operating system's random source: clients that lost their leader together
/// (an election, a killed leader's process) do not retry in lock step. The
/// mean stays `pause`. This is the runtime (never a simulated run), so OS
/// randomness is fine here.
fn jittered(pause: Duration) -> Duration {
    use rand::RngCore;
    let nanos = u64::try_from(pause.as_nanos()).unwrap_or(u64::MAX);
    if nanos < 2 {
        return pause;
    }
    // Never a panic: if the OS source fails, the pause is not jittered.
    let mut draw = [0u8; 8];
    if rand::rngs::OsRng.try_fill_bytes(&mut draw).is_err() {
        return pause;
    }
    let low = nanos / 2;
    let high = nanos.saturating_add(nanos / 2);
    let draw = u64::from_le_bytes(draw);
    let offset = match (high - low).checked_add(1) {
        Some(values) => draw % values,
        None => draw,
    };
    Duration::from_nanos(low + offset)
}

fn retryable(e: &RequestError) -> bool {
    matches!(
        e,
        RequestError::NotLeader { .. }
            | RequestError::Dropped
            | RequestError::TimedOut
            | RequestError::LeaderChanged
            | RequestError::Overloaded
            | RequestError::Stopped
            // Not applied; a retry with the same sequence once older responses are
            // acknowledged keeps the command at most once.
            | RequestError::TooManyOutstanding { .. }
    )
}

struct Inner {
    nodes: Vec<Arc<dyn NodeApi>>,
    session: u64,
    next_sequence: AtomicU64,
    outstanding: Mutex<BTreeSet<u64>>,
    leader: AtomicUsize,
    cfg: ClientConfig,
}

/// A cloneable client session on a fleet of nodes. Clones share the session:
/// commands from any clone are deduplicated together.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("session", &self.inner.session)
            .field("nodes", &self.inner.nodes.len())
            .finish()
    }
}

/// Picks the node most likely to lead: the last one that answered, else the one
/// that says it leads with the highest term, else the leader someone names.
fn likely_leader(nodes: &[Arc<dyn NodeApi>], last: usize) -> usize {
    // The common case, checked without reading every node's status.
    if nodes
        .get(last)
        .is_some_and(|n| n.role() == StateRole::Leader && !n.is_stopped())
    {
        return last;
    }
    let statuses: Vec<_> = nodes.iter().map(|n| n.status()).collect();
    if let Some((i, _)) = statuses
        .iter()
        .enumerate()
        .filter(|(i, s)| s.role == StateRole::Leader && !nodes[*i].is_stopped())
        .max_by_key(|(_, s)| s.term)
    {
        return i;
    }
    let named = statuses.iter().filter_map(|s| s.leader).max();
    named
        .and_then(|l| nodes.iter().position(|n| n.id() == l))
        .unwrap_or(last % nodes.len().max(1))
}

/// A call in progress: which node has it, and the retry state.
struct Call {
    started: Instant,
    deadline: Instant,
    attempts: u32,
    last: Option<RequestError>,
    target: usize,
    slot: Option<ResponseSlot>,
}

impl Call {
    fn new(inner: &Inner) -> Self {
        let started = Instant::now();
        Call {
            started,
            deadline: started + inner.cfg.timeout,
            attempts: 0,
            last: None,
            target: likely_leader(&inner.nodes, inner.leader.load(Ordering::Relaxed)),
            slot: None,
        }
    }

    fn unavailable(&self) -> ClientError {
        ClientError::Unavailable {
            attempts: self.attempts,
            waited: self.started.elapsed(),
            last: self.last.clone(),
        }
    }

    /// Submits to the current target. `Ok(None)` means submitted.
    fn submit(
        &mut self,
        inner: &Inner,
        submit: &mut dyn FnMut(&dyn NodeApi) -> Result<ResponseSlot, RequestError>,
    ) -> Result<(), RequestError> {
        self.attempts += 1;
        let slot = submit(inner.nodes[self.target].as_ref())?;
        self.slot = Some(slot);
        Ok(())
    }

    /// Handles a retryable error: picks the next target and maybe pauses.
    fn redirect(&mut self, inner: &Inner, error: RequestError, pause: bool) {
        let n = inner.nodes.len();
        self.target = match &error {
            RequestError::NotLeader { leader: Some(l) } => inner
                .nodes
                .iter()
                .position(|h| h.id() == *l)
                .filter(|&i| i != self.target)
                .unwrap_or((self.target + 1) % n),
            _ => {
                let guess = likely_leader(&inner.nodes, (self.target + 1) % n);
                if guess == self.target {
                    (self.target + 1) % n
                } else {
                    guess
                }
            }
        };
        let known_leader = matches!(error, RequestError::NotLeader { leader: Some(_) });
        self.last = Some(error);
        self.slot = None;
        if pause && !known_leader {
            let left = self.deadline.saturating_duration_since(Instant::now());
            std::thread::sleep(jittered(inner.cfg.retry_backoff).min(left));
        }
    }

    /// Drives the call to an outcome, blocking.
    fn finish(
        mut self,
        inner: &Inner,
        submit: &mut dyn FnMut(&dyn NodeApi) -> Result<ResponseSlot, RequestError>,
    ) -> Result<Reply, ClientError> {
        loop {
            let now = Instant::now();
            if now >= self.deadline {
                return Err(self.unavailable());
            }
            let outcome = match self.slot.take() {
                Some(slot) => {
                    let wait = (self.deadline - now).min(inner.cfg.attempt_timeout);
                    slot.wait(wait).unwrap_or(Err(RequestError::TimedOut))
                }
                None => match self.submit(inner, submit) {
                    Ok(()) => continue,
                    Err(e) => Err(e),
                },
            };
            match outcome {
                Ok(reply) => {
                    inner.leader.store(self.target, Ordering::Relaxed);
                    return Ok(reply);
                }
                Err(e) if retryable(&e) => self.redirect(inner, e, true),
                Err(e) => return Err(ClientError::Rejected(e)),
            }
        }
    }
}

/// A command submitted without waiting; poll or wait for its response.
pub struct PendingCommand {
    client: Client,
    request: Request,
    call: Option<Call>,
    notify: Option<Notify>,
}

impl std::fmt::Debug for PendingCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingCommand")
            .field("sequence", &self.request.sequence)
            .finish()
    }
}

impl PendingCommand {
    /// The command's sequence number in the session.
    pub fn sequence(&self) -> u64 {
        self.request.sequence
    }

    fn submitter<'a>(
        request: &'a Request,
        notify: &'a Option<Notify>,
    ) -> impl FnMut(&dyn NodeApi) -> Result<ResponseSlot, RequestError> + 'a {
        move |node: &dyn NodeApi| match notify {
            None => {
                let slot = ResponseSlot::default();
                node.propose_into(request.clone(), Arc::clone(&slot))?;
                Ok(slot)
            }
            Some(n) => {
                let slot: ResponseSlot = Arc::new(Slot::with_notify(Arc::clone(n)));
                node.propose_into(request.clone(), Arc::clone(&slot))?;
                Ok(slot)
            }
        }
    }

    /// Checks for the outcome without blocking; re-submits on a retryable error.
    /// `None` while the command is still under way.
    pub fn poll(&mut self) -> Option<Result<Bytes, ClientError>> {
        let inner = Arc::clone(&self.client.inner);
        let call = self.call.as_mut()?;
        // A reply already there is taken without reading the clock (a clock
        // read per poll was 1.7% of a 256-client bench's samples); the
        // deadline is checked only when there is none, or an error that would
        // be retried.
        let ready = match &call.slot {
            Some(slot) => slot.try_take(),
            None => None,
        };
        if !matches!(ready, Some(Ok(_))) && Instant::now() >= call.deadline {
            if let Some(Err(e)) = ready {
                call.last = Some(e);
            }
            let e = call.unavailable();
            return Some(self.done(Err(e)));
        }
        let outcome = match (ready, &call.slot) {
            (Some(outcome), _) => outcome,
            (None, Some(_)) => return None,
            (None, None) => {
                let mut submit = Self::submitter(&self.request, &self.notify);
                match call.submit(&inner, &mut submit) {
                    Ok(()) => return None,
                    Err(e) => Err(e),
                }
            }
        };
        match outcome {
            Ok(reply) => {
                inner.leader.store(call.target, Ordering::Relaxed);
                Some(self.done(applied(reply)))
            }
            Err(e) if retryable(&e) => {
                call.redirect(&inner, e, false);
                // Resubmit to the next target at once, so a caller that waits for
                // notifications is notified again. If that fails too, the next
                // poll (a caller's timer) tries again.
                let resubmitted = {
                    let mut submit = Self::submitter(&self.request, &self.notify);
                    call.submit(&inner, &mut submit)
                };
                match resubmitted {
                    Ok(()) => None,
                    Err(e) if retryable(&e) => {
                        call.redirect(&inner, e, false);
                        None
                    }
                    Err(e) => Some(self.done(Err(ClientError::Rejected(e)))),
                }
            }
            Err(e) => Some(self.done(Err(ClientError::Rejected(e)))),
        }
    }

    /// Blocks until the outcome, retrying as needed.
    pub fn wait(mut self) -> Result<Bytes, ClientError> {
        let Some(call) = self.call.take() else {
            return Err(ClientError::AlreadyFinished);
        };
        let inner = Arc::clone(&self.client.inner);
        let result = {
            let mut submit = Self::submitter(&self.request, &self.notify);
            call.finish(&inner, &mut submit).and_then(applied)
        };
        self.done(result)
    }

    fn done(&mut self, result: Result<Bytes, ClientError>) -> Result<Bytes, ClientError> {
        self.call = None;
        self.client
            .inner
            .outstanding
            .lock()
            .remove(&self.request.sequence);
        result
    }
}

impl Drop for PendingCommand {
    fn drop(&mut self) {
        if self.call.is_some() {
            self.client
                .inner
                .outstanding
                .lock()
                .remove(&self.request.sequence);
        }
    }
}

/// A proposal as a [`Future`]: what [`Client::propose_future`] returns.
///
/// Runtime-agnostic (no tokio): the command's slots are made with a notify that
/// wakes the stored [`Waker`]; each poll takes the outcome if it arrived, follows
/// a `NotLeader` hint or re-submits a retryable error with the same sequence
/// (as [`PendingCommand::poll`] does), and checks the call's deadline.
struct ProposeFuture {
    pending: PendingCommand,
    waker: Arc<Mutex<Option<Waker>>>,
    /// When a wake-up for a re-submission is due, if one is scheduled: polls
    /// before it schedule none (one timer entry per future at a time).
    retry_at: Option<Instant>,
}

impl Future for ProposeFuture {
    type Output = Result<Bytes, ClientError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.pending.call.is_none() {
            return Poll::Ready(Err(ClientError::AlreadyFinished));
        }
        // Store the waker before looking at the slot: a fill in between wakes it.
        *this.waker.lock() = Some(cx.waker().clone());
        if let Some(result) = this.pending.poll() {
            return Poll::Ready(result);
        }
        // A re-submission the node refused at once left no slot to notify us:
        // ask to be polled again after a jittered pause (once: an earlier poll
        // may have asked already).
        if this.pending.call.as_ref().is_some_and(|c| c.slot.is_none()) {
            let now = Instant::now();
            if this.retry_at.is_none_or(|at| now >= at) {
                let at = now + jittered(this.pending.client.inner.cfg.retry_backoff);
                this.retry_at = Some(at);
                super::timer::wake_at(at, cx.waker().clone());
            }
        }
        Poll::Pending
    }
}

fn applied(reply: Reply) -> Result<Bytes, ClientError> {
    match reply {
        Reply::Applied(bytes) => Ok(bytes),
        other => Err(unexpected("an applied command's response", &other)),
    }
}

fn unexpected(expected: &'static str, got: &Reply) -> ClientError {
    let got = match got {
        Reply::Applied(_) => "an applied command's response",
        Reply::Read(_) => "a read's answer",
        Reply::SessionRegistered(_) => "a session registration",
        Reply::MembershipChanged(_) => "a membership change",
        Reply::StateDigest(_) => "a state digest",
    };
    ClientError::UnexpectedReply { expected, got }
}

impl Client {
    /// Registers a new session with the fleet of `nodes` (the leader is found
    /// among them).
    pub fn connect(nodes: Vec<NodeHandle>, cfg: ClientConfig) -> Result<Client, ClientError> {
        let nodes = nodes
            .into_iter()
            .map(|n| Arc::new(n) as Arc<dyn NodeApi>)
            .collect();
        Self::connect_to(nodes, cfg)
    }

    /// Registers a new session with the fleet of `nodes`, reached in any way
    /// (in process, or over a network crate's client protocol): the same leader
    /// finding, retries and at-most-once session as [`Client::connect`].
    pub fn connect_to(
        nodes: Vec<Arc<dyn NodeApi>>,
        cfg: ClientConfig,
    ) -> Result<Client, ClientError> {
        if nodes.is_empty() {
            return Err(ClientError::NoNodes);
        }
        let mut inner = Inner {
            nodes,
            session: 0,
            next_sequence: AtomicU64::new(1),
            outstanding: Mutex::new(BTreeSet::new()),
            leader: AtomicUsize::new(0),
            cfg,
        };
        let reply = Call::new(&inner).finish(&inner, &mut |n| n.register_session())?;
        match reply {
            Reply::SessionRegistered(id) => inner.session = id,
            other => return Err(unexpected("a session registration", &other)),
        }
        Ok(Client {
            inner: Arc::new(inner),
        })
    }

    /// The session id the fleet issued.
    pub fn session(&self) -> u64 {
        self.inner.session
    }

    /// Submits `command` and returns at once; the response is collected with
    /// [`PendingCommand::poll`] or [`PendingCommand::wait`].
    pub fn propose_async(&self, command: impl Into<Bytes>) -> PendingCommand {
        self.propose_pending(command.into(), None)
    }

    /// As [`Client::propose_async`], and calls `notify` whenever an answer (or a
    /// retryable error) for the command arrives, so one thread can drive many
    /// pending commands: wait for notifications, then [`PendingCommand::poll`]
    /// the command they name.
    ///
    /// `notify` runs on the node's thread: it must be quick and must not block
    /// (sending on an unbounded channel, unparking a thread). A resubmission the
    /// node refused at once (overloaded, stopped) produces no notification, so
    /// also poll every pending command on a timer (tens of milliseconds).
    pub fn propose_notify(&self, command: impl Into<Bytes>, notify: Notify) -> PendingCommand {
        self.propose_pending(command.into(), Some(notify))
    }

    fn propose_pending(&self, command: Bytes, notify: Option<Notify>) -> PendingCommand {
        // Draw the sequence under the lock that publishes it as outstanding, so no
        // clone computes an `acked_below` past a sequence not yet inserted.
        let (sequence, acked_below) = {
            let mut outstanding = self.inner.outstanding.lock();
            let sequence = self.inner.next_sequence.fetch_add(1, Ordering::Relaxed);
            outstanding.insert(sequence);
            (sequence, outstanding.first().copied().unwrap_or(sequence))
        };
        let mut request = Request::new();
        request.client_id = self.inner.session;
        request.sequence = sequence;
        request.acked_below = acked_below;
        request.command = command;
        let mut pending = PendingCommand {
            client: self.clone(),
            request,
            call: Some(Call::new(&self.inner)),
            notify,
        };
        // Submit now; errors are handled by the first poll or wait.
        if let Some(call) = pending.call.as_mut() {
            let mut submit = PendingCommand::submitter(&pending.request, &pending.notify);
            if let Err(e) = call.submit(&self.inner, &mut submit) {
                let slot: ResponseSlot = match &pending.notify {
                    Some(n) => Arc::new(Slot::with_notify(Arc::clone(n))),
                    None => Arc::default(),
                };
                let _ = slot.fill(Err(e));
                call.slot = Some(slot);
            }
        }
        pending
    }

    /// Proposes `command` as a [`Future`] that resolves to the state machine's
    /// response: the async counterpart of [`Client::propose`], with the same
    /// leader finding, `NotLeader` hints, retries with the same sequence and
    /// at-most-once session. It needs no particular async runtime.
    ///
    /// The command is submitted at once (as [`Client::propose_async`] does);
    /// the future is woken when an answer arrives. A retryable answer
    /// (`NotLeader`, a lost connection, `Overloaded`) is re-submitted to the
    /// next node during the poll it wakes; a re-submission refused at once is
    /// tried again on a poll after a jittered `retry_backoff`.
    ///
    /// Timeouts: every poll checks the client's `timeout` and resolves to
    /// [`ClientError::Unavailable`] once it has passed, but nothing polls an
    /// idle future at its deadline, and `attempt_timeout` (abandon a silent
    /// node for another) is not applied. Wrap the future in your runtime's
    /// timeout (`tokio::time::timeout(cfg.timeout, ...)`) for a hard bound, or
    /// poll it on a timer.
    pub fn propose_future(
        &self,
        command: impl Into<Bytes>,
    ) -> impl Future<Output = Result<Bytes, ClientError>> + Send + 'static {
        let waker: Arc<Mutex<Option<Waker>>> = Arc::default();
        let cell = Arc::clone(&waker);
        let notify: Notify = Arc::new(move || {
            let waker = cell.lock().take();
            if let Some(waker) = waker {
                waker.wake();
            }
        });
        ProposeFuture {
            pending: self.propose_pending(command.into(), Some(notify)),
            waker,
            retry_at: None,
        }
    }

    /// Proposes `command` and waits for the state machine's response, retrying on
    /// leader changes; the command is applied at most once.
    pub fn propose(&self, command: impl Into<Bytes>) -> Result<Bytes, ClientError> {
        self.propose_async(command).wait()
    }

    /// A linearizable read: it observes every command acknowledged before it began.
    pub fn read(&self, query: impl Into<Vec<u8>>) -> Result<Vec<u8>, ClientError> {
        let query = query.into();
        let inner = &self.inner;
        match Call::new(inner).finish(inner, &mut |n| n.read(query.clone()))? {
            Reply::Read(bytes) => Ok(bytes),
            other => Err(unexpected("a read's answer", &other)),
        }
    }

    /// Applies one membership change through the leader.
    pub fn change_membership(&self, change: MembershipChange) -> Result<Reply, ClientError> {
        let inner = &self.inner;
        Call::new(inner).finish(inner, &mut |n| n.change_membership(change.clone()))
    }

    /// Promotes learner `id` once it has caught up, waiting up to the client's
    /// timeout for it to do so.
    pub fn promote_when_caught_up(&self, id: ReplicaId) -> Result<Reply, ClientError> {
        let deadline = Instant::now() + self.inner.cfg.timeout;
        loop {
            match self.change_membership(MembershipChange::Promote { id }) {
                Err(ClientError::Rejected(RequestError::NotCaughtUp { .. }))
                    if Instant::now() < deadline =>
                {
                    std::thread::sleep(self.inner.cfg.retry_backoff);
                }
                other => return other,
            }
        }
    }

    /// Hands leadership to `to` and waits until `to` reports that it leads.
    pub fn transfer_leader(&self, to: ReplicaId) -> Result<(), ClientError> {
        let inner = &self.inner;
        let started = Instant::now();
        let mut attempts = 0;
        let target = inner
            .nodes
            .iter()
            .find(|n| n.id() == to)
            .ok_or(ClientError::Rejected(RequestError::NotLeader {
                leader: None,
            }))?;
        while started.elapsed() < inner.cfg.timeout {
            if target.status().role == StateRole::Leader {
                return Ok(());
            }
            attempts += 1;
            let leader = likely_leader(&inner.nodes, inner.leader.load(Ordering::Relaxed));
            let _ = inner.nodes[leader].transfer_leader(to);
            std::thread::sleep(inner.cfg.retry_backoff * 5);
        }
        Err(ClientError::Unavailable {
            attempts,
            waited: started.elapsed(),
            last: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_pauses_are_jittered_around_the_backoff() {
        let pause = Duration::from_millis(20);
        let draws: BTreeSet<Duration> = (0..64).map(|_| jittered(pause)).collect();
        assert!(
            draws.iter().all(|d| *d >= pause / 2 && *d <= pause * 3 / 2),
            "{draws:?}"
        );
        assert!(
            draws.len() > 32,
            "clients do not pause in lock step: {draws:?}"
        );
        assert_eq!(jittered(Duration::ZERO), Duration::ZERO);
    }
}
