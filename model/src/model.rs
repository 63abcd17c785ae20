//! The model itself: the state of one user's logins across the client, the
//! services, the network and the replicated log, the actions that move it, and
//! the properties the checker verifies in every reachable state.
//!
//! Each rule mirrors the code it stands for (`vault/src/service/core.rs`,
//! `service/logins.rs`, `machine.rs`); the comments name the function.

use std::fmt;

use stateright::{Model, Property};

/// A `LoginStart`'s request id (the client's sequence number); it also names
/// the guess, since its credential request blinds one code.
pub type Req = u8;
/// A value of the vault's ticket clock.
pub type Ticket = u8;

/// The code a login start was made with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Code {
    /// The user's code: the OPAQUE response opens and the finish proves it.
    Right,
    /// A wrong guess: the client learns it is wrong from the response.
    Wrong,
}

/// A login a service keeps: its id is unguessable in the real service (HSM
/// randomness); here it is the service, its incarnation and the start's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LoginId {
    /// The service that answered.
    pub svc: u8,
    /// The service's incarnation (a crash starts a new one).
    pub epoch: u8,
    /// The `LoginStart` it answers.
    pub req: Req,
}

/// A message in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Msg {
    /// Client to service: `LoginStart` (request id, credential request).
    Start {
        /// The service it is sent to.
        svc: u8,
        /// Its request id.
        req: Req,
        /// The code blinded in it.
        code: Code,
    },
    /// Client to the login's service: an authenticated `LoginFinish(RECOVER)`.
    /// Only a client that opened the response with the right code can make one
    /// (OPAQUE, and the intent tag under the session key).
    Finish {
        /// The login it finishes.
        login: LoginId,
    },
    /// Service to client: the credential response of a right-code login.
    Answer {
        /// The login it belongs to.
        login: LoginId,
    },
}

/// A command proposed to the replicated log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Cmd {
    /// `consume`: spend an attempt for this request id (deduplicated by it).
    Consume {
        /// The `LoginStart`'s request id.
        req: Req,
    },
    /// `reset(ticket)`, carrying the erased record if the login's consume erased it.
    Reset {
        /// The login's ticket.
        ticket: Ticket,
        /// The record the erasing consume handed over (the last attempt).
        reinstate: bool,
    },
}

/// Who waits for a proposal's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Waiter {
    /// A `LoginStart`'s consume (`Stage::Consume`).
    Consume {
        /// The service.
        svc: u8,
        /// Its incarnation when it proposed.
        epoch: u8,
        /// The request id.
        req: Req,
        /// The code of the start (the service does not know it; the model uses it
        /// to decide who can finish).
        code: Code,
    },
    /// A verified finish's reset (`Stage::Conclude`).
    Conclude {
        /// The login.
        login: LoginId,
    },
}

/// A proposal not yet committed (or committed and proposed again).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Proposal {
    /// The command.
    pub cmd: Cmd,
    /// The call waiting for it, if any (none after the driver gave up).
    pub waiter: Option<Waiter>,
}

/// The user's standing in the replicated state (`machine/user.rs`, `Standing`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Standing {
    /// A record: the tickets spent and not forgiven, and the greatest forgiven.
    Registered {
        /// Spent tickets, ascending.
        spent: Vec<Ticket>,
        /// The greatest ticket a success forgave.
        forgiven_through: Ticket,
    },
    /// Erased by the consume of `ticket`, its last attempt.
    Locked {
        /// The erasing ticket.
        ticket: Ticket,
    },
}

/// The replicated state: one linearizable log applied to the vault.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Log {
    /// Where the user stands.
    pub standing: Standing,
    /// The ticket clock.
    pub last_ticket: Ticket,
    /// The consumes applied: request id and ticket (`seen`), by request id.
    pub seen: Vec<(Req, Ticket)>,
}

impl Log {
    /// The ticket of `req`'s consume, if it committed.
    pub fn ticket_of(&self, req: Req) -> Option<Ticket> {
        self.seen.iter().find(|(r, _)| *r == req).map(|(_, t)| *t)
    }
}

/// A login kept by a service (`logins.rs`, `Held`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Held {
    /// Its id.
    pub id: LoginId,
    /// Its consume's ticket.
    pub ticket: Ticket,
    /// The code of its start.
    pub code: Code,
    /// Its consume erased the record (the last attempt).
    pub erased: bool,
    /// A finish's reset is being committed.
    pub committing: bool,
}

/// One service: its incarnation, its login table and its concluded finishes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Service {
    /// Incarnation (crashes so far).
    pub epoch: u8,
    /// The logins kept.
    pub logins: Vec<Held>,
    /// Logins whose finish concluded (their reply is kept for a repeat).
    pub concluded: Vec<LoginId>,
}

/// Counts of the faults the bounds allow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Used {
    /// Service crashes.
    pub crashes: u8,
    /// Leader changes: a proposal lost, timed out (committed later or never),
    /// committed with its answer lost, or committed twice.
    pub leader_changes: u8,
    /// Messages lost.
    pub drops: u8,
    /// Requests replayed by the attacker (or re-sent by the client).
    pub replays: u8,
}

/// What the checker remembers about the history (ghost state, not protocol state).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ghost {
    /// Wrong-code starts whose OPAQUE response left a service: each let the
    /// client test one guess (one request id blinds one code).
    pub answered_wrong: Vec<Req>,
    /// The greatest ticket a committed successful `reset` concluded.
    pub best_success: Option<Ticket>,
    /// Successful resets committed.
    pub successes: u8,
    /// The user is locked and no login can put the record back any more.
    pub locked_for_good: bool,
    /// A success committed after `locked_for_good`.
    pub success_after_lockout: bool,
    /// A right code on the last attempt put the erased record back.
    pub reinstated: bool,
}

/// The whole state.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    /// The replicated log's state.
    pub log: Log,
    /// Proposals not yet committed, sorted (a multiset).
    pub proposals: Vec<Proposal>,
    /// Messages in flight, sorted (a multiset): delivered in any order.
    pub net: Vec<Msg>,
    /// The services.
    pub services: Vec<Service>,
    /// The codes of the client's starts, by request id.
    pub starts: Vec<Code>,
    /// The finishes the client sent (the attacker may replay them).
    pub finishes: Vec<LoginId>,
    /// Faults spent.
    pub used: Used,
    /// Ghost state for the properties.
    pub ghost: Ghost,
}

impl State {
    /// Wrong guesses answered and not forgiven by a later success: those whose
    /// consume committed after the latest success (in ticket order), or never.
    pub fn unforgiven_wrong(&self) -> usize {
        self.ghost
            .answered_wrong
            .iter()
            .filter(
                |r| match (self.log.ticket_of(**r), self.ghost.best_success) {
                    (None, _) => true,
                    (Some(t), Some(best)) => t > best,
                    (Some(_), None) => true,
                },
            )
            .count()
    }

    /// Attempts left in the log (0 when locked).
    pub fn attempts_left(&self, max_attempts: u8) -> u8 {
        match &self.log.standing {
            Standing::Registered { spent, .. } => max_attempts.saturating_sub(spent.len() as u8),
            Standing::Locked { .. } => 0,
        }
    }
}

/// A protocol bug planted on purpose, to show the checker catches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Bug {
    /// The service sends the OPAQUE response when the start arrives, and
    /// proposes the `consume` after it (instead of waiting for the commit).
    AnswerBeforeConsume,
    /// The vault answers a re-delivered erasing consume with the erased record
    /// (instead of "locked"), so a replayed start reopens a locked user.
    ReplayReturnsErasedRecord,
    /// The vault refuses a reset on a locked user even from the erasing
    /// attempt's login (no reinstatement): the right code fails on the last
    /// attempt.
    NoReinstate,
}

/// The bounds (and the planted bug, if any) of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Bounds {
    /// The user's `max_attempts` (1..=5).
    pub max_attempts: u8,
    /// Services (1 or 2).
    pub services: u8,
    /// Login starts the client makes (each with the right code or a wrong one).
    pub logins: u8,
    /// Service crashes.
    pub crashes: u8,
    /// Leader changes (lost, late, silently committed or duplicated proposals).
    pub leader_changes: u8,
    /// Lost messages.
    pub drops: u8,
    /// Replayed requests.
    pub replays: u8,
    /// A planted bug, or `None` for the protocol as the code runs it.
    pub bug: Option<Bug>,
}

impl Default for Bounds {
    /// The bounds the test suite checks exhaustively.
    fn default() -> Self {
        Self {
            max_attempts: 2,
            services: 1,
            logins: 3,
            crashes: 1,
            leader_changes: 1,
            drops: 1,
            replays: 1,
            bug: None,
        }
    }
}

/// A step of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// The client starts a fresh login (a new request id) with `code` at `svc`.
    NewStart {
        /// The code.
        code: Code,
        /// The service.
        svc: u8,
    },
    /// A message arrives.
    Deliver(Msg),
    /// A message is lost.
    Drop(Msg),
    /// The attacker (or the client's retry) sends an old request again: a
    /// start to any service, a finish to its login's service.
    Replay(Msg),
    /// The proposal commits and its waiter gets the outcome.
    Commit(Proposal),
    /// The proposal commits; its waiter is told "not committed" (answer lost).
    CommitSilently(Proposal),
    /// The proposal commits and is answered, and a copy stays in the log's
    /// queue (proposed again across a leader change): it may commit again.
    Duplicate(Proposal),
    /// The driver gives up on the proposal ("not committed", as far as it
    /// knows) but it stays in the queue and may commit later.
    Timeout(Proposal),
    /// The proposal is lost (a leader change dropped it).
    Lose(Proposal),
    /// A service crashes and restarts: its login table and its calls are lost.
    Crash(u8),
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The outcome of a committed command, as the proposing service sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// A consume spent (or re-found) its attempt and handed over the record.
    Consumed { ticket: Ticket, erased: bool },
    /// A reset concluded (OK).
    Reset,
    /// Refused (LOCKED, BAD_TICKET, ...).
    Refused,
}

/// The login protocol of one user under [`Bounds`].
#[derive(Clone, Debug)]
pub struct LoginModel {
    /// The bounds checked.
    pub bounds: Bounds,
}

impl LoginModel {
    /// A model with `bounds`.
    pub fn new(bounds: Bounds) -> Self {
        Self { bounds }
    }

    /// The state after registration: no attempt spent.
    pub fn initial(&self) -> State {
        State {
            log: Log {
                standing: Standing::Registered {
                    spent: Vec::new(),
                    forgiven_through: 0,
                },
                // The registration took the first ticket (`registered_at`).
                last_ticket: 1,
                seen: Vec::new(),
            },
            proposals: Vec::new(),
            net: Vec::new(),
            services: (0..self.bounds.services.max(1))
                .map(|_| Service {
                    epoch: 0,
                    logins: Vec::new(),
                    concluded: Vec::new(),
                })
                .collect(),
            starts: Vec::new(),
            finishes: Vec::new(),
            used: Used::default(),
            ghost: Ghost::default(),
        }
    }

    /// The vault's `apply` of one command (`machine.rs`: `consume`,
    /// `consume_again`, `spend`, `reset`, `reinstate`).
    fn apply(&self, s: &mut State, cmd: Cmd) -> Outcome {
        let max = self.bounds.max_attempts.max(1) as usize;
        let log = &mut s.log;
        match cmd {
            Cmd::Consume { req } => {
                if let Some(seen) = log.ticket_of(req) {
                    // A re-delivered consume: the same ticket, nothing spent.
                    return match &log.standing {
                        Standing::Registered { spent, .. } if spent.contains(&seen) => {
                            Outcome::Consumed {
                                ticket: seen,
                                erased: false,
                            }
                        }
                        Standing::Registered { .. } => Outcome::Refused,
                        Standing::Locked { ticket }
                            if *ticket == seen
                                && self.bounds.bug == Some(Bug::ReplayReturnsErasedRecord) =>
                        {
                            Outcome::Consumed {
                                ticket: seen,
                                erased: true,
                            }
                        }
                        Standing::Locked { .. } => Outcome::Refused,
                    };
                }
                let Standing::Registered { spent, .. } = &mut log.standing else {
                    return Outcome::Refused;
                };
                let ticket = log.last_ticket + 1;
                log.last_ticket = ticket;
                spent.push(ticket);
                log.seen.push((req, ticket));
                log.seen.sort_unstable();
                if spent.len() >= max {
                    // The last attempt erases the record in this same command.
                    log.standing = Standing::Locked { ticket };
                    Outcome::Consumed {
                        ticket,
                        erased: true,
                    }
                } else {
                    Outcome::Consumed {
                        ticket,
                        erased: false,
                    }
                }
            }
            Cmd::Reset { ticket, reinstate } => {
                let ok = match &mut log.standing {
                    Standing::Registered {
                        spent,
                        forgiven_through,
                    } => {
                        if spent.contains(&ticket) {
                            spent.retain(|&t| t > ticket);
                            *forgiven_through = (*forgiven_through).max(ticket);
                            true
                        } else {
                            // Already forgiven (a duplicate) is OK; else no such attempt.
                            ticket <= *forgiven_through
                        }
                    }
                    Standing::Locked { ticket: erasing } => {
                        if reinstate
                            && *erasing == ticket
                            && self.bounds.bug != Some(Bug::NoReinstate)
                        {
                            log.standing = Standing::Registered {
                                spent: Vec::new(),
                                forgiven_through: ticket,
                            };
                            s.ghost.reinstated = true;
                            true
                        } else {
                            false
                        }
                    }
                };
                if ok {
                    let g = &mut s.ghost;
                    g.successes = g.successes.saturating_add(1);
                    g.best_success = Some(g.best_success.map_or(ticket, |b| b.max(ticket)));
                    if g.locked_for_good {
                        g.success_after_lockout = true;
                    }
                    Outcome::Reset
                } else {
                    Outcome::Refused
                }
            }
        }
    }

    /// A service's answer to a waiter (`ServiceCore::resume`); `None` is "not
    /// committed". A waiter of an earlier incarnation is gone.
    fn resume(&self, s: &mut State, waiter: Option<Waiter>, outcome: Option<Outcome>) {
        match waiter {
            None => {}
            Some(Waiter::Consume {
                svc,
                epoch,
                req,
                code,
            }) => {
                let service = &mut s.services[svc as usize];
                if service.epoch != epoch {
                    return;
                }
                let Some(Outcome::Consumed { ticket, erased }) = outcome else {
                    // Unavailable, or the fleet's refusal: no login, no response.
                    return;
                };
                let id = LoginId { svc, epoch, req };
                // `held_reply`: a re-delivered start gets the login kept for it.
                if !service.logins.iter().any(|h| h.id.req == req) {
                    service.logins.push(Held {
                        id,
                        ticket,
                        code,
                        erased,
                        committing: false,
                    });
                    service.logins.sort_unstable();
                }
                self.respond(s, id, code);
            }
            Some(Waiter::Conclude { login }) => {
                let service = &mut s.services[login.svc as usize];
                if service.epoch != login.epoch {
                    return;
                }
                match outcome {
                    // `Logins::conclude`: the login goes, its reply stays.
                    Some(_) => {
                        service.logins.retain(|h| h.id != login);
                        if !service.concluded.contains(&login) {
                            service.concluded.push(login);
                            service.concluded.sort_unstable();
                        }
                    }
                    // `abort_commit`: the login stays for the client's retry.
                    None => {
                        if let Some(h) = service.logins.iter_mut().find(|h| h.id == login) {
                            h.committing = false;
                        }
                    }
                }
            }
        }
    }

    /// The OPAQUE credential response leaves the service.
    fn respond(&self, s: &mut State, login: LoginId, code: Code) {
        match code {
            Code::Wrong => self.answered_wrong(s, login.req),
            Code::Right => push(&mut s.net, Msg::Answer { login }),
        }
    }

    fn answered_wrong(&self, s: &mut State, req: Req) {
        if !s.ghost.answered_wrong.contains(&req) {
            s.ghost.answered_wrong.push(req);
            s.ghost.answered_wrong.sort_unstable();
        }
    }

    /// A message arrives at its service (`ServiceCore::begin`) or the client.
    fn deliver(&self, s: &mut State, msg: Msg) {
        match msg {
            Msg::Start { svc, req, code } => {
                let epoch = s.services[svc as usize].epoch;
                if self.bounds.bug == Some(Bug::AnswerBeforeConsume) && code == Code::Wrong {
                    // The planted bug: the response (the guess's test) leaves now.
                    self.answered_wrong(s, req);
                }
                // `login_start`: the consume is proposed; nothing answers yet.
                push(
                    &mut s.proposals,
                    Proposal {
                        cmd: Cmd::Consume { req },
                        waiter: Some(Waiter::Consume {
                            svc,
                            epoch,
                            req,
                            code,
                        }),
                    },
                );
            }
            Msg::Finish { login } => {
                let service = &mut s.services[login.svc as usize];
                if service.epoch != login.epoch || service.concluded.contains(&login) {
                    // No such login here, or the committed outcome again.
                    return;
                }
                let Some(h) = service.logins.iter_mut().find(|h| h.id == login) else {
                    return;
                };
                if h.committing || h.code != Code::Right {
                    return;
                }
                // `conclude`: the login is marked committing; its reset is proposed.
                h.committing = true;
                let cmd = Cmd::Reset {
                    ticket: h.ticket,
                    reinstate: h.erased,
                };
                push(
                    &mut s.proposals,
                    Proposal {
                        cmd,
                        waiter: Some(Waiter::Conclude { login }),
                    },
                );
            }
            Msg::Answer { login } => {
                // The client opens the response with the right code and finishes.
                if !s.finishes.contains(&login) {
                    s.finishes.push(login);
                    s.finishes.sort_unstable();
                    push(&mut s.net, Msg::Finish { login });
                }
            }
        }
    }

    /// Updates the ghost's lock-out: locked, and no kept login of the erasing
    /// attempt with the right code, and no reset of it in the queue.
    fn settle(&self, s: &mut State) {
        if s.ghost.locked_for_good {
            return;
        }
        let Standing::Locked { ticket } = s.log.standing else {
            return;
        };
        let held = s.services.iter().any(|svc| {
            svc.logins
                .iter()
                .any(|h| h.ticket == ticket && h.code == Code::Right)
        });
        let queued = s
            .proposals
            .iter()
            .any(|p| matches!(p.cmd, Cmd::Reset { ticket: t, reinstate: true } if t == ticket));
        if !held && !queued {
            s.ghost.locked_for_good = true;
        }
    }

    /// The honest completion from `s`: a fresh right-code login at service 0,
    /// every step delivered and committed, nothing else happening. True when it
    /// ends in a success (the witness that the right code still works).
    pub fn honest_completion_succeeds(&self, s: &State) -> bool {
        self.honest_completion(s).is_some()
    }

    /// The actions of [`LoginModel::honest_completion_succeeds`]'s path, if it succeeds.
    pub fn honest_completion(&self, s: &State) -> Option<Vec<Action>> {
        let mut path = Vec::new();
        let req = s.starts.len() as Req;
        let step = |st: &State, a: Action, path: &mut Vec<Action>| {
            path.push(a);
            self.next_state(st, a)
        };
        let s1 = step(
            s,
            Action::NewStart {
                code: Code::Right,
                svc: 0,
            },
            &mut path,
        )?;
        let epoch = s1.services[0].epoch;
        let start = Msg::Start {
            svc: 0,
            req,
            code: Code::Right,
        };
        let s2 = step(&s1, Action::Deliver(start), &mut path)?;
        let consume = Proposal {
            cmd: Cmd::Consume { req },
            waiter: Some(Waiter::Consume {
                svc: 0,
                epoch,
                req,
                code: Code::Right,
            }),
        };
        let s3 = step(&s2, Action::Commit(consume), &mut path)?;
        let login = LoginId { svc: 0, epoch, req };
        let s4 = step(&s3, Action::Deliver(Msg::Answer { login }), &mut path)?;
        let s5 = step(&s4, Action::Deliver(Msg::Finish { login }), &mut path)?;
        let reset = *s5
            .proposals
            .iter()
            .find(|p| p.waiter == Some(Waiter::Conclude { login }))?;
        let s6 = step(&s5, Action::Commit(reset), &mut path)?;
        (s6.ghost.successes > s.ghost.successes && s6.ghost.best_success >= s.ghost.best_success)
            .then_some(path)
    }
}

/// Inserts `x` into the sorted multiset `v`.
fn push<T: Ord>(v: &mut Vec<T>, x: T) {
    let at = v.partition_point(|y| *y <= x);
    v.insert(at, x);
}

/// Removes one `x` from the multiset `v`; false if absent.
fn take<T: PartialEq>(v: &mut Vec<T>, x: &T) -> bool {
    match v.iter().position(|y| y == x) {
        Some(i) => {
            v.remove(i);
            true
        }
        None => false,
    }
}

impl Model for LoginModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![self.initial()]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        let b = &self.bounds;
        let services = s.services.len() as u8;
        if s.starts.len() < b.logins as usize {
            for code in [Code::Right, Code::Wrong] {
                for svc in 0..services {
                    actions.push(Action::NewStart { code, svc });
                }
            }
        }
        let mut last = None;
        for m in &s.net {
            if last == Some(m) {
                continue;
            }
            last = Some(m);
            actions.push(Action::Deliver(*m));
            if s.used.drops < b.drops {
                actions.push(Action::Drop(*m));
            }
        }
        if s.used.replays < b.replays {
            for (req, code) in s.starts.iter().enumerate() {
                for svc in 0..services {
                    actions.push(Action::Replay(Msg::Start {
                        svc,
                        req: req as Req,
                        code: *code,
                    }));
                }
            }
            for login in &s.finishes {
                actions.push(Action::Replay(Msg::Finish { login: *login }));
            }
        }
        let mut last = None;
        for p in &s.proposals {
            if last == Some(p) {
                continue;
            }
            last = Some(p);
            actions.push(Action::Commit(*p));
            if s.used.leader_changes < b.leader_changes {
                actions.push(Action::Lose(*p));
                if p.waiter.is_some() {
                    actions.push(Action::CommitSilently(*p));
                    actions.push(Action::Timeout(*p));
                    actions.push(Action::Duplicate(*p));
                }
            }
        }
        if s.used.crashes < b.crashes {
            for svc in 0..services {
                actions.push(Action::Crash(svc));
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match action {
            Action::NewStart { code, svc } => {
                let req = s.starts.len() as Req;
                s.starts.push(code);
                push(&mut s.net, Msg::Start { svc, req, code });
            }
            Action::Deliver(m) => {
                if !take(&mut s.net, &m) {
                    return None;
                }
                self.deliver(&mut s, m);
            }
            Action::Drop(m) => {
                if !take(&mut s.net, &m) {
                    return None;
                }
                s.used.drops += 1;
            }
            Action::Replay(m) => {
                s.used.replays += 1;
                push(&mut s.net, m);
            }
            Action::Commit(p) => {
                if !take(&mut s.proposals, &p) {
                    return None;
                }
                let o = self.apply(&mut s, p.cmd);
                self.resume(&mut s, p.waiter, Some(o));
            }
            Action::CommitSilently(p) => {
                if !take(&mut s.proposals, &p) {
                    return None;
                }
                s.used.leader_changes += 1;
                self.apply(&mut s, p.cmd);
                self.resume(&mut s, p.waiter, None);
            }
            Action::Duplicate(p) => {
                if !take(&mut s.proposals, &p) {
                    return None;
                }
                s.used.leader_changes += 1;
                let o = self.apply(&mut s, p.cmd);
                self.resume(&mut s, p.waiter, Some(o));
                push(
                    &mut s.proposals,
                    Proposal {
                        cmd: p.cmd,
                        waiter: None,
                    },
                );
            }
            Action::Timeout(p) => {
                if !take(&mut s.proposals, &p) {
                    return None;
                }
                s.used.leader_changes += 1;
                self.resume(&mut s, p.waiter, None);
                push(
                    &mut s.proposals,
                    Proposal {
                        cmd: p.cmd,
                        waiter: None,
                    },
                );
            }
            Action::Lose(p) => {
                if !take(&mut s.proposals, &p) {
                    return None;
                }
                s.used.leader_changes += 1;
                self.resume(&mut s, p.waiter, None);
            }
            Action::Crash(svc) => {
                s.used.crashes += 1;
                let service = s.services.get_mut(svc as usize)?;
                service.epoch += 1;
                service.logins.clear();
                service.concluded.clear();
            }
        }
        self.settle(&mut s);
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(PROP_WRONG_LIMIT, |m: &LoginModel, s: &State| {
                s.unforgiven_wrong() <= m.bounds.max_attempts as usize
            }),
            Property::always(PROP_RIGHT_CODE_WORKS, |m: &LoginModel, s: &State| {
                s.attempts_left(m.bounds.max_attempts) == 0
                    || s.starts.len() >= m.bounds.logins as usize
                    || m.honest_completion_succeeds(s)
            }),
            Property::always(PROP_LOCKED_STAYS, |_: &LoginModel, s: &State| {
                !s.ghost.success_after_lockout
            }),
            Property::sometimes(PROP_SOME_SUCCESS, |_: &LoginModel, s: &State| {
                s.ghost.successes > 0
            }),
            Property::sometimes(PROP_SOME_LOCKOUT, |_: &LoginModel, s: &State| {
                s.ghost.locked_for_good
            }),
            Property::sometimes(PROP_SOME_REINSTATE, |_: &LoginModel, s: &State| {
                s.ghost.reinstated
            }),
        ]
    }
}

/// (1) No more wrong codes answered between successes than `max_attempts`.
pub const PROP_WRONG_LIMIT: &str = "wrong codes answered since the last success <= max_attempts";
/// (2) While attempts remain, a right-code login can still succeed.
pub const PROP_RIGHT_CODE_WORKS: &str = "the right code works while attempts remain";
/// (3) A user locked for good never succeeds again.
pub const PROP_LOCKED_STAYS: &str = "a locked-out user stays locked";
/// Sanity: a success is reachable.
pub const PROP_SOME_SUCCESS: &str = "a success is reachable";
/// Sanity: a lock-out is reachable.
pub const PROP_SOME_LOCKOUT: &str = "a lock-out is reachable";
/// Sanity: the right code on the very last attempt succeeds (the record is put back).
pub const PROP_SOME_REINSTATE: &str = "a success on the last attempt is reachable";
