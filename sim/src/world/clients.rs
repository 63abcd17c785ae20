//! The clients: each runs one operation at a time from the workload, registers a
//! session before its first command, follows leader hints, retries after
//! timeouts and errors, and gives up (outcome unknown) after a deadline. Every
//! invocation and answer goes into the history the checkers read.
//!
//! A retry that does not follow a hint goes to a random replica while the
//! chaos runs (more interleavings), and to the next replica in turn once the
//! faults have healed, as the runtime's `Client` does: a cursor that hints do
//! not move, so every host is tried within as many attempts as there are
//! hosts. Random picks alone gave no such bound: at swarm seed 35217 a client
//! drew only dead or removed hosts 25 times in a row while a removed replica,
//! still running, kept hinting at a dead leader, and its command was still
//! pending 20 s after healing.

use rand::Rng;
use vaultfleet::replica::{Completion, Reply};
use vaultfleet::wire::Request;
use vaultfleet::RequestError;

use super::events::Event;
use super::{Phase, Simulation};
use crate::workload::{OpKind, Operation, Record, Workload};

const CLIENT_ATTEMPT_TIMEOUT_US: u64 = 1_000_000;
const CLIENT_OP_TIMEOUT_US: u64 = 10_000_000;

/// What a client sends to a replica.
pub(super) enum ClientRequest {
    Register,
    Command(Request),
    Read(Vec<u8>),
}

pub(super) struct Pending {
    pub(super) record: usize,
    pub(super) op: Operation,
    pub(super) sequence: u64,
    pub(super) deadline: u64,
}

pub(in crate::world) struct SimClient {
    pub(in crate::world) session: Option<u64>,
    pub(in crate::world) next_sequence: u64,
    pub(in crate::world) op: u64,
    pub(in crate::world) attempt: u64,
    pub(in crate::world) target: usize,
    /// The next host to try in turn after the faults heal (hints do not move it).
    pub(in crate::world) cursor: usize,
    pub(in crate::world) current: Option<Pending>,
}

impl<W: Workload> Simulation<W> {
    /// The replica a retry goes to when no hint names one: random during the
    /// chaos, the next in turn once the faults have healed (module doc).
    fn retry_target(&mut self, client: usize) -> usize {
        let n = self.hosts.len().max(1);
        if self.phase == Phase::Liveness {
            let c = &mut self.clients[client];
            c.cursor = (c.cursor + 1) % n;
            c.cursor
        } else {
            self.rng.gen_range(0..n)
        }
    }

    pub(super) fn client_delay(&mut self) -> u64 {
        self.rng.gen_range(200..2_000)
    }

    /// A client request or reply lost on the way (the network's drop rate, in the
    /// safety phase): the client's timer retries, and the fleet's deduplication
    /// must keep a retried command from applying twice.
    pub(super) fn client_message_lost(&mut self) -> bool {
        let drop = self.opts.faults.drop;
        self.phase == Phase::Safety && drop > 0.0 && self.rng.gen_bool(drop)
    }

    pub(super) fn complete(&mut self, h: usize, completion: Completion) {
        if self.admin_completion(&completion) {
            return;
        }
        let Some((client, op)) = self.hosts[h].requests.remove(&completion.id) else {
            return;
        };
        self.reply_to(client, op, completion.result);
    }

    /// Sends a replica's answer back to a client, over the (lossy) network.
    pub(super) fn reply_to(&mut self, client: usize, op: u64, result: Result<Reply, RequestError>) {
        if self.client_message_lost() {
            return;
        }
        let delay = self.client_delay();
        self.schedule(delay, Event::ClientReply { client, op, result });
    }

    /// Runs to the end and reports.
    pub(super) fn wake(&mut self, client: usize, op: u64, attempt: u64, resend: bool) {
        let c = &self.clients[client];
        if c.op != op || c.attempt != attempt {
            return; // a stale timer
        }
        match &c.current {
            None => self.start_operation(client),
            Some(p) if self.now >= p.deadline => self.give_up(client),
            // Back-off over: resend to the replica chosen (a leader hint, or a
            // random one after an error).
            Some(_) if resend => self.send_current(client),
            Some(_) => {
                // No answer in time: try another replica.
                self.clients[client].target = self.retry_target(client);
                self.send_current(client);
            }
        }
    }

    /// Starts a new attempt of `client` and wakes it after `after` µs: to resend
    /// to its chosen replica (`resend`), or else to move on.
    pub(super) fn wake_later(&mut self, client: usize, after: u64, resend: bool) {
        let c = &mut self.clients[client];
        c.attempt += 1;
        let (op, attempt) = (c.op, c.attempt);
        self.schedule(
            after,
            Event::ClientWake {
                client,
                op,
                attempt,
                resend,
            },
        );
    }

    pub(super) fn start_operation(&mut self, client: usize) {
        if self.phase != Phase::Safety {
            return;
        }
        self.workload.clock(self.now);
        let op = self.workload.next_operation(client, &mut self.rng);
        self.order += 1;
        self.history.push(Record {
            client,
            op: op.clone(),
            invoked: self.order,
            completed: None,
            output: None,
            invoked_at_us: self.now,
        });
        let c = &mut self.clients[client];
        c.op += 1;
        let sequence = if matches!(op.kind, OpKind::Command(_)) {
            c.next_sequence += 1;
            c.next_sequence - 1
        } else {
            0
        };
        c.current = Some(Pending {
            record: self.history.len() - 1,
            op,
            sequence,
            deadline: self.now + CLIENT_OP_TIMEOUT_US,
        });
        self.send_current(client);
    }

    pub(super) fn send_current(&mut self, client: usize) {
        let c = &mut self.clients[client];
        let Some(p) = c.current.as_ref() else {
            return;
        };
        let request = match (&p.op.kind, c.session) {
            (OpKind::Read(q), _) => ClientRequest::Read(q.clone()),
            (OpKind::Command(_), None) => ClientRequest::Register,
            (OpKind::Command(cmd), Some(session)) => {
                let mut r = Request::new();
                r.client_id = session;
                r.sequence = p.sequence;
                r.acked_below = p.sequence;
                r.command = cmd.clone().into();
                ClientRequest::Command(r)
            }
        };
        c.attempt += 1;
        let (op, attempt, host) = (c.op, c.attempt, c.target);
        let delay = self.client_delay();
        if !self.client_message_lost() {
            self.schedule(
                delay,
                Event::ClientArrive {
                    host,
                    client,
                    op,
                    request,
                },
            );
        }
        // Without an answer in time, the client tries another replica.
        self.schedule(
            CLIENT_ATTEMPT_TIMEOUT_US,
            Event::ClientWake {
                client,
                op,
                attempt,
                resend: false,
            },
        );
    }

    pub(super) fn arrive(&mut self, h: usize, client: usize, op: u64, request: ClientRequest) {
        let id = self.next_request;
        let Some(r) = self.hosts[h].replica.as_mut() else {
            return; // the host is down: the client's timer retries elsewhere
        };
        self.next_request += 1;
        let result = match request {
            ClientRequest::Register => r.register_session(id),
            ClientRequest::Command(req) => r.propose(id, req),
            ClientRequest::Read(q) => r.read(id, q),
        };
        match result {
            Ok(()) => {
                self.hosts[h].requests.insert(id, (client, op));
                self.pump(h);
            }
            Err(e) => self.reply_to(client, op, Err(e)),
        }
    }

    pub(super) fn reply(&mut self, client: usize, op: u64, result: Result<Reply, RequestError>) {
        if self.clients[client].op != op || self.clients[client].current.is_none() {
            return; // an answer to an operation already finished
        }
        let retry_soon = |sim: &mut Self, random_target: bool| {
            if random_target {
                sim.clients[client].target = sim.retry_target(client);
            }
            let backoff = sim.rng.gen_range(10_000..100_000);
            sim.wake_later(client, backoff, true);
        };
        match result {
            Ok(Reply::SessionRegistered(session)) => {
                // Only the first registration counts: a second session for the
                // same command would let it apply twice.
                if self.clients[client].session.is_none() {
                    self.clients[client].session = Some(session);
                    self.send_current(client);
                }
            }
            Ok(Reply::Applied(output)) => self.operation_done(client, output.into()),
            Ok(Reply::Read(output)) => self.operation_done(client, output),
            Ok(Reply::MembershipChanged(_) | Reply::StateDigest(_)) => {}
            Err(RequestError::NotLeader { leader: Some(l) }) => {
                if let Some(t) = (l as usize)
                    .checked_sub(1)
                    .filter(|t| *t < self.hosts.len())
                {
                    self.clients[client].target = t;
                }
                retry_soon(self, false);
            }
            Err(RequestError::SessionExpired { .. }) => {
                // This attempt was not applied, but an earlier one may have been
                // before the session was evicted: the outcome is unknown.
                self.clients[client].session = None;
                self.give_up(client);
            }
            Err(
                RequestError::NotLeader { leader: None }
                | RequestError::Dropped
                | RequestError::TimedOut
                | RequestError::LeaderChanged
                | RequestError::Overloaded
                | RequestError::Stopped
                | RequestError::TooManyOutstanding { .. },
            ) => retry_soon(self, true),
            Err(e) => {
                let detail = e.to_string();
                self.note(|| format!("client {client}: unexpected answer {detail}"));
                self.give_up(client);
            }
        }
    }

    /// `client`'s current operation was answered with `output`: record it and
    /// start the next one after a think time.
    fn operation_done(&mut self, client: usize, output: Vec<u8>) {
        let Some(p) = self.clients[client].current.take() else {
            return;
        };
        self.order += 1;
        self.workload.clock(self.now);
        self.workload.observe(client, &p.op, Some(&output));
        let rec = &mut self.history[p.record];
        rec.completed = Some(self.order);
        rec.output = Some(output);
        self.stats.ops_completed += 1;
        let think = self.rng.gen_range(0..50_000);
        self.wake_later(client, think, false);
    }

    pub(super) fn give_up(&mut self, client: usize) {
        let Some(p) = self.clients[client].current.take() else {
            return;
        };
        self.stats.ops_unknown += 1;
        self.workload.clock(self.now);
        self.workload.observe(client, &p.op, None);
        if self.phase == Phase::Liveness {
            let what = self.workload.describe(&p.op, None);
            self.violate(
                "liveness: pending operations finish once faults heal",
                format!("client {client} gave up on {what} during the liveness phase"),
            );
        }
        self.wake_later(client, 1_000, false);
    }
}

/// `count` clients, spread over the `n` replicas for their first attempt.
pub(super) fn build(count: usize, n: usize) -> Vec<SimClient> {
    (0..count)
        .map(|c| SimClient {
            session: None,
            next_sequence: 1,
            op: 0,
            attempt: 0,
            target: c % n,
            cursor: c % n,
            current: None,
        })
        .collect()
}
