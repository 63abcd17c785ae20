//! The vault workload: simulated users register a backup key, recover it with
//! right and wrong codes, and delete it, through the real [`BackupVault`] and the
//! real OPAQUE flows of [`VaultServer`] and [`ClientLoginFlow`], with every
//! message subject to the simulator's faults.
//!
//! Each simulated client plays a user's device and the vault service it talks
//! to: the OPAQUE computations happen around the commands the client proposes
//! (`consume`, then `reset` or `delete`), exactly as `VaultService` does them
//! around consensus. Randomness comes from a seeded RNG and a seeded soft HSM, so
//! runs stay reproducible.
//!
//! Invariants, checked over the whole run:
//!
//! * **Guess limit.** Per user and registration, the attempts the fleet answered
//!   between two successful recoveries (in ticket order: a success at ticket `t`
//!   forgives every attempt up to `t`) never exceed `max_attempts`, under every
//!   fault. Attempts are counted per (ticket, credential request), so two
//!   guesses given one ticket count twice (and are reported as such). A reset whose outcome the client never learnt counts as a success
//!   only once an outcome shows the record forgiven through exactly its ticket
//!   (proof that it committed); otherwise it forgives nothing.
//! * **Locked means locked.** Once an attempt erased a record, no recovery of that
//!   registration succeeds unless it is the erasing attempt's own (which puts the
//!   record back), and no success yields anything but the registered secret.
//! * **Tickets.** Each answered guess has its own ticket, and tickets follow the
//!   log: a consume applied at a later index has a greater ticket. Concurrent
//!   clients put several consumes of one user into one batched entry (one log
//!   index), which is where tickets once were shared.
//! * **Codes.** The right code always opens the fleet's answer; a wrong code never does.
//! * **Durability and recoverability.** In the converged fleet, every user whose
//!   registration was acknowledged is still registered (or was deleted, or is
//!   locked), and a registered user's secret is recoverable with the right code:
//!   the checker runs a full recovery against a copy of the converged state.

use std::collections::{BTreeMap, BTreeSet};

use rand::{Rng, SeedableRng};
use rand_chacha::{ChaCha20Rng, ChaCha8Rng};
use sha2::{Digest, Sha256};
use vaultfleet::state_machine::{CaptureError, RestoreError};
use vaultfleet::{SoftHsm, StateMachine};
use vaultfleet_vault::wire::{
    vault_client_request, vault_command, VaultClientRequest, VaultCommand, VaultLoginFinish,
    VaultLoginPurpose, VaultOutcome, VaultRequestId, VaultStatus,
};
use vaultfleet_vault::{
    authenticate_request, registration_secret_digest, BackupVault, ClientLoginFlow,
    ClientRegistrationFlow, KsfParams, LoginOpened, Registration, RegistrationTerms, UserId,
    UserView, VaultError, VaultKeys, VaultServer, VerifiedLogin,
};

use crate::workload::{OpKind, Operation, Record, Workload};

const KSF: KsfParams = KsfParams::TESTS_ONLY;

fn user_id(key: u64) -> UserId {
    UserId::new(format!("user-{key}")).expect("user-<u64> is within the user id bounds")
}

fn code(key: u64) -> Vec<u8> {
    format!("recovery code of user {key}").into_bytes()
}

fn secret(key: u64) -> Vec<u8> {
    format!("backup key of user {key}").into_bytes()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    Recover,
    Delete,
}

/// A login in flight: the client's OPAQUE state and what it is trying.
struct Attempt {
    flow: ClientLoginFlow,
    guess: Vec<u8>,
    right: bool,
    purpose: Purpose,
}

/// Where one simulated client is in its current flow.
enum Step {
    Idle,
    Registering,
    Login(Attempt),
    /// The same consume proposed again (a client re-sending its request through
    /// another service): it must return the same ticket and spend nothing.
    Duplicate {
        op: Operation,
        ticket: u64,
        then: Box<Step>,
    },
    Redelivering {
        ticket: u64,
        then: Box<Step>,
    },
    /// The follow-up of a proven login, proposed next.
    Queued {
        op: Operation,
        login: VerifiedLogin,
        purpose: Purpose,
    },
    Finishing {
        login: VerifiedLogin,
        purpose: Purpose,
    },
}

/// One user's answered tickets, by the log index they were applied at.
type TicketsByIndex = BTreeMap<u64, BTreeSet<u64>>;
/// Answered attempts of one registration: (ticket, SHA-256 of the credential
/// request).
type Attempts = BTreeSet<(u64, [u8; 32])>;

/// What the run established, per user and registration generation.
#[derive(Default, Debug)]
struct Facts {
    /// Attempts the fleet answered (consume committed with OK): (ticket, SHA-256
    /// of the credential request), so a ticket given to two guesses counts twice.
    answered: BTreeMap<(u64, u64), Attempts>,
    /// Per user, the tickets answered at each log index (`applied_at`).
    tickets_at: BTreeMap<u64, TicketsByIndex>,
    /// The credential request each answered ticket was spent for.
    ticket_requests: BTreeMap<(u64, u64), [u8; 32]>,
    /// Re-delivered consumes that correctly got their first ticket back.
    redelivered: u64,
    /// Tickets of recoveries whose reset is known to have committed.
    forgiving: BTreeMap<(u64, u64), BTreeSet<u64>>,
    /// Tickets of recoveries whose reset's outcome is unknown: forgiveness only
    /// once some outcome shows the record forgiven through exactly that ticket.
    uncertain: BTreeMap<(u64, u64), BTreeSet<u64>>,
    /// Every `forgiven_through` an outcome showed, per user and generation. Only
    /// the command of ticket `t`'s own login sets it to exactly `t`, so seeing `t`
    /// proves that command committed.
    forgiven_seen: BTreeMap<(u64, u64), BTreeSet<u64>>,
    /// Recoveries whose success was observed: (applied at, ticket).
    succeeded: BTreeMap<(u64, u64), BTreeSet<(u64, u64)>>,
    /// The attempt that erased each registration: (ticket, applied at).
    erased: BTreeMap<(u64, u64), (u64, u64)>,
    /// Users whose registration was acknowledged.
    registered: BTreeSet<u64>,
    /// Users a delete may have reached.
    deletes: BTreeSet<u64>,
    /// Broken expectations seen while the run went on.
    errors: Vec<String>,
}

impl Facts {
    /// A recovery's reset at `ticket`: forgiveness if it is known to have
    /// committed, else uncertain until an outcome proves it did.
    fn note_reset(&mut self, g: (u64, u64), ticket: u64, committed: bool) {
        let set = if committed {
            &mut self.forgiving
        } else {
            &mut self.uncertain
        };
        set.entry(g).or_default().insert(ticket);
    }

    /// Notes what an outcome shows about `key`'s record.
    fn saw(&mut self, key: u64, o: &VaultOutcome) {
        if let Some(r) = o.record.as_ref() {
            self.forgiven_seen
                .entry((key, r.generation))
                .or_default()
                .insert(r.forgiven_through);
        }
    }

    /// The forgiveness points: known resets, and uncertain ones proven committed.
    fn forgiveness(&self) -> BTreeMap<(u64, u64), BTreeSet<u64>> {
        let mut all = self.forgiving.clone();
        for (g, tickets) in &self.uncertain {
            let seen = self.forgiven_seen.get(g);
            for t in tickets {
                if seen.is_some_and(|s| s.contains(t)) {
                    all.entry(*g).or_default().insert(*t);
                }
            }
        }
        all
    }
}

/// The [`BackupVault`] as the engine drives it when it batches. The engine
/// applies every command of one log entry at that entry's index, in order; the
/// simulated replicas commit one command per entry, so this machine shows the
/// vault `per_entry` consecutive entries as one index (`index.div_ceil(per_entry)`):
/// the vault sees exactly the calls a batching leader would make. (A "batch"
/// may here straddle a snapshot, which the engine never does: a harder case.)
#[derive(Debug, Clone, PartialEq)]
pub struct BatchedVault {
    vault: BackupVault,
    per_entry: u64,
}

impl BatchedVault {
    /// A vault shown `per_entry` (at least 1) log entries per index.
    pub fn new(per_entry: u64) -> Self {
        Self {
            vault: BackupVault::new(),
            per_entry: per_entry.max(1),
        }
    }

    /// The vault inside.
    pub fn vault(&self) -> &BackupVault {
        &self.vault
    }
}

impl StateMachine for BatchedVault {
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8> {
        self.vault.apply(index.div_ceil(self.per_entry), command)
    }

    fn query(&self, query: &[u8]) -> Vec<u8> {
        self.vault.query(query)
    }

    fn snapshot(&self) -> Result<Vec<u8>, CaptureError> {
        self.vault.snapshot()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        self.vault.restore(snapshot)
    }
}

/// The Backup Key Vault as a simulator workload.
pub struct VaultWorkload {
    /// Users (the linearizability checker's keys).
    pub users: u64,
    /// Attempts each registration allows.
    pub max_attempts: u32,
    /// Log entries the vault is shown as one batched index ([`BatchedVault`]).
    pub per_entry: u64,
    server: VaultServer<SoftHsm>,
    rng: ChaCha20Rng,
    /// The latest registration generation seen per user: what a registration
    /// is issued at (as `VaultService` reads it from the fleet).
    generations: BTreeMap<u64, u64>,
    steps: Vec<Step>,
    sequences: Vec<u64>,
    facts: Facts,
}

impl std::fmt::Debug for VaultWorkload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultWorkload")
            .field("users", &self.users)
            .field("max_attempts", &self.max_attempts)
            .field("per_entry", &self.per_entry)
            .finish_non_exhaustive()
    }
}

fn decode(bytes: &[u8]) -> Option<VaultOutcome> {
    vaultfleet::wire::decode(bytes, "vault outcome").ok()
}

fn status(o: &VaultOutcome) -> VaultStatus {
    o.status.enum_value_or(VaultStatus::VAULT_MALFORMED)
}

impl VaultWorkload {
    /// `users` users allowing `max_attempts` (1 to 255) attempts each; `seed`
    /// seeds the fleet's soft HSM, the clients' OPAQUE randomness and how many
    /// entries the vault sees batched at one index (1 to 4).
    pub fn new(users: u64, max_attempts: u32, seed: u64) -> Self {
        let hsm = SoftHsm::from_seed(seed ^ 0x7661_756c_7400_0000);
        let sealed = VaultKeys::provision(&hsm).unwrap_or_default();
        let keys = VaultKeys::open(hsm, &sealed, 1, 1)
            .unwrap_or_else(|e| panic!("a fresh soft HSM opens its own vault keys: {e}"));
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        Self {
            users: users.max(1),
            max_attempts: max_attempts.clamp(1, 255),
            per_entry: rng.gen_range(1..=4),
            server: VaultServer::new(keys),
            rng,
            generations: BTreeMap::new(),
            steps: Vec::new(),
            sequences: Vec::new(),
            facts: Facts::default(),
        }
    }

    fn request_id(&mut self, client: usize) -> VaultRequestId {
        if self.sequences.len() <= client {
            self.sequences.resize(client + 1, 0);
        }
        self.sequences[client] += 1;
        let mut id = VaultRequestId::new();
        id.client = client as u64 + 1;
        id.sequence = self.sequences[client];
        id
    }

    fn set(&mut self, client: usize, step: Step) {
        while self.steps.len() <= client {
            self.steps.push(Step::Idle);
        }
        self.steps[client] = step;
    }

    fn take(&mut self, client: usize) -> Step {
        match self.steps.get_mut(client) {
            Some(s) => std::mem::replace(s, Step::Idle),
            None => Step::Idle,
        }
    }

    fn register_op(&mut self, client: usize, key: u64) -> Option<Operation> {
        let user = user_id(key);
        let flow =
            ClientRegistrationFlow::start_with_insecure_rng(&mut self.rng, &code(key)).ok()?;
        let digest = registration_secret_digest(&user, &secret(key));
        // Issued at the latest generation this run saw: if a delete committed
        // unseen since, the fleet refuses it as stale, as it must.
        let issued_generation = self.generations.get(&key).copied().unwrap_or(0);
        let terms = RegistrationTerms {
            max_attempts: self.max_attempts,
            secret_digest: &digest,
            issued_generation,
        };
        let started = self
            .server
            .registration_start(&user, flow.request(), &terms)
            .ok()?;
        let upload = flow
            .finish_with_insecure_rng(&mut self.rng, &code(key), &started.response, &KSF)
            .ok()?;
        let id = self.request_id(client);
        let secret = secret(key);
        let command = self
            .server
            .register_command(
                &id,
                &user,
                &Registration {
                    upload: &upload,
                    nonce: &started.nonce,
                    tag: &started.tag,
                    secret: &secret,
                    max_attempts: self.max_attempts,
                    issued_generation: started.issued_generation,
                },
            )
            .ok()?;
        self.set(client, Step::Registering);
        Some(Operation {
            key,
            kind: OpKind::Command(command),
        })
    }

    fn login_op(
        &mut self,
        client: usize,
        key: u64,
        right: bool,
        purpose: Purpose,
    ) -> Option<Operation> {
        let guess = if right {
            code(key)
        } else {
            format!("guess {} for user {key}", self.rng.gen::<u32>()).into_bytes()
        };
        let flow = ClientLoginFlow::start_with_insecure_rng(&mut self.rng, &guess).ok()?;
        let id = self.request_id(client);
        let command = self
            .server
            .consume_command(&id, &user_id(key), flow.request())
            .ok()?;
        self.set(
            client,
            Step::Login(Attempt {
                flow,
                guess,
                right,
                purpose,
            }),
        );
        Some(Operation {
            key,
            kind: OpKind::Command(command),
        })
    }

    /// The consume committed: answer it as the service would, and open the answer
    /// as the client would.
    fn on_consumed(
        &mut self,
        client: usize,
        key: u64,
        o: VaultOutcome,
        consume: &Operation,
        attempt: Attempt,
    ) {
        let Attempt {
            flow,
            guess,
            right,
            purpose,
        } = attempt;
        let user = user_id(key);
        let Some(record) = o.record.clone().into_option() else {
            self.facts.errors.push(format!(
                "user {key}: a consume answered OK without its record"
            ));
            return;
        };
        let generation = record.generation;
        let request: [u8; 32] = Sha256::digest(flow.request()).into();
        self.facts
            .answered
            .entry((key, generation))
            .or_default()
            .insert((o.ticket, request));
        self.facts
            .tickets_at
            .entry(key)
            .or_default()
            .entry(o.applied_at)
            .or_default()
            .insert(o.ticket);
        if let Some(other) = self.facts.ticket_requests.insert((key, o.ticket), request) {
            if other != request {
                self.facts.errors.push(format!(
                    "user {key}: ticket {} was given to two different guesses",
                    o.ticket
                ));
            }
        }
        if o.erased {
            self.facts
                .erased
                .insert((key, generation), (o.ticket, o.applied_at));
        }
        let (login, response) =
            match self
                .server
                .login_respond(&user, flow.request(), o.ticket, record, o.erased)
            {
                Ok(x) => x,
                Err(e) => {
                    self.facts.errors.push(format!(
                        "user {key}: the service cannot answer a committed attempt: {e}"
                    ));
                    return;
                }
            };
        let opened = flow.finish_with_insecure_rng(&mut self.rng, &guess, &response, &KSF);
        // Now and then the same consume is re-delivered (the client re-sends its
        // request through another service): it must get this ticket back.
        let redeliver = self.rng.gen_bool(0.1) && !o.erased;
        let then = |step: Step| {
            if redeliver {
                Step::Duplicate {
                    op: consume.clone(),
                    ticket: o.ticket,
                    then: Box::new(step),
                }
            } else {
                step
            }
        };
        match (right, opened) {
            (true, Ok(Some(opened))) => {
                let id = self.request_id(client);
                let finish = finish_request(&self.server, &user, id, &opened, purpose);
                // A network attacker now and then rewrites the finish on its way
                // (another purpose, another request id): it must not verify.
                if self.rng.gen_bool(0.1) {
                    let mut forged = finish.clone();
                    if self.rng.gen_bool(0.5) {
                        if let Some(vault_client_request::Op::LoginFinish(f)) = forged.op.as_mut() {
                            f.purpose = match purpose {
                                Purpose::Recover => VaultLoginPurpose::VAULT_DELETE,
                                Purpose::Delete => VaultLoginPurpose::VAULT_RECOVER,
                            }
                            .into();
                        }
                    } else if let Some(r) = forged.request.as_mut() {
                        r.sequence ^= 1;
                    }
                    match self.server.login_finish(&login, &forged) {
                        Err(VaultError::IntentNotAuthentic) => {}
                        other => self.facts.errors.push(format!(
                            "user {key}: an altered login finish was not refused as \
                             unauthentic: {other:?}"
                        )),
                    }
                }
                let login = match self.server.login_finish(&login, &finish) {
                    Ok(v) => v,
                    Err(e) => {
                        self.facts.errors.push(format!(
                            "user {key}: the service refused a correct finalization: {e}"
                        ));
                        return;
                    }
                };
                let command = match purpose {
                    Purpose::Recover => self.server.reset_command(&login),
                    Purpose::Delete => self.server.delete_command(&login),
                };
                let command = match command {
                    Ok(c) => c,
                    Err(e) => {
                        self.facts.errors.push(format!(
                            "user {key}: a verified login cannot build its command: {e}"
                        ));
                        return;
                    }
                };
                let op = Operation {
                    key,
                    kind: OpKind::Command(command),
                };
                self.set(client, then(Step::Queued { op, login, purpose }));
            }
            (true, _) => self.facts.errors.push(format!(
                "user {key}: the right code did not open the fleet's answer to ticket {}",
                o.ticket
            )),
            (false, Ok(Some(_))) => self.facts.errors.push(format!(
                "user {key}: a wrong code opened the fleet's answer to ticket {}",
                o.ticket
            )),
            (false, _) => self.set(client, then(Step::Idle)),
        }
    }

    fn on_finished(
        &mut self,
        key: u64,
        login: VerifiedLogin,
        purpose: Purpose,
        output: Option<&[u8]>,
    ) {
        let g = (key, login.generation());
        let outcome = output.and_then(decode);
        match (purpose, outcome) {
            (Purpose::Recover, None) => self.facts.note_reset(g, login.ticket(), false),
            (Purpose::Recover, Some(o)) if status(&o) == VaultStatus::VAULT_OK => {
                self.facts.note_reset(g, login.ticket(), true);
                self.facts
                    .succeeded
                    .entry(g)
                    .or_default()
                    .insert((o.applied_at, login.ticket()));
                let record = o
                    .record
                    .into_option()
                    .unwrap_or_else(|| login.record().clone());
                match self.server.open_secret(&user_id(key), &record) {
                    Ok(s) if s.as_slice() == secret(key).as_slice() => {}
                    Ok(_) => self
                        .facts
                        .errors
                        .push(format!("user {key}: a recovery yielded another secret")),
                    Err(e) => self.facts.errors.push(format!(
                        "user {key}: a recovered record's secret does not open: {e}"
                    )),
                }
            }
            (Purpose::Recover, Some(_)) => {}
            (Purpose::Delete, _) => {
                self.facts.deletes.insert(key);
            }
        }
    }
}

impl Workload for VaultWorkload {
    type Machine = BatchedVault;
    // The vault's own invariants (above) replace a sequential model: attempt
    // tickets come from the vault's ticket clock, which runs with the log's
    // batching, which no model can predict. The guess counter's
    // linearizability is checked by the `GuessCounter` workload.
    type Model = ();

    fn machine(&self) -> BatchedVault {
        BatchedVault::new(self.per_entry)
    }

    fn next_operation(&mut self, client: usize, rng: &mut ChaCha8Rng) -> Operation {
        match self.take(client) {
            Step::Queued { op, login, purpose } => {
                self.set(client, Step::Finishing { login, purpose });
                return op;
            }
            Step::Duplicate { op, ticket, then } => {
                self.set(client, Step::Redelivering { ticket, then });
                return op;
            }
            _ => {}
        }
        loop {
            let key = rng.gen_range(0..self.users);
            let mut roll = rng.gen_range(0..100);
            // Every fourth user is under attack: almost only wrong guesses, so
            // records reach their limit and the erase paths run.
            if key % 4 == 3 && (15..=49).contains(&roll) && rng.gen_bool(0.9) {
                roll = 50;
            }
            let op = match roll {
                0..=14 => self.register_op(client, key),
                15..=49 => self.login_op(client, key, true, Purpose::Recover),
                50..=89 => self.login_op(client, key, false, Purpose::Recover),
                90..=92 => self.login_op(client, key, true, Purpose::Delete),
                _ => {
                    self.set(client, Step::Idle);
                    Some(Operation {
                        key,
                        kind: OpKind::Read(BackupVault::query_user(user_id(key).as_bytes())),
                    })
                }
            };
            if let Some(op) = op {
                return op;
            }
        }
    }

    fn observe(&mut self, client: usize, op: &Operation, output: Option<&[u8]>) {
        let key = op.key;
        if let Some(o) = output.and_then(decode) {
            self.facts.saw(key, &o);
            let g = self.generations.entry(key).or_insert(0);
            *g = (*g).max(o.generation);
        }
        match self.take(client) {
            Step::Registering => {
                if output
                    .and_then(decode)
                    .is_some_and(|o| status(&o) == VaultStatus::VAULT_OK)
                {
                    self.facts.registered.insert(key);
                }
            }
            Step::Login(attempt) => {
                if let Some(o) = output.and_then(decode) {
                    if status(&o) == VaultStatus::VAULT_OK {
                        self.on_consumed(client, key, o, op, attempt);
                    }
                }
            }
            Step::Redelivering { ticket, then } => {
                if let Some(o) = output.and_then(decode) {
                    if status(&o) == VaultStatus::VAULT_OK {
                        if o.ticket == ticket {
                            self.facts.redelivered += 1;
                        } else {
                            self.facts.errors.push(format!(
                                "user {key}: a re-delivered consume spent ticket {} instead of \
                                 returning ticket {ticket}",
                                o.ticket
                            ));
                        }
                    }
                }
                self.set(client, *then);
            }
            Step::Finishing { login, purpose } => self.on_finished(key, login, purpose, output),
            Step::Queued { .. } | Step::Duplicate { .. } | Step::Idle => {}
        }
    }

    fn step(&self, _state: &(), _op: &Operation, _output: Option<&[u8]>) -> Option<()> {
        Some(())
    }

    fn check_history(&self, _history: &[Record]) -> Result<(), String> {
        let f = &self.facts;
        if let Some(e) = f.errors.first() {
            return Err(e.clone());
        }
        check_guess_limit(f, self.max_attempts)
    }

    fn check_final(&self, machine: &BatchedVault, _history: &[Record]) -> Result<(), String> {
        let machine = machine.vault();
        for &key in &self.facts.registered {
            let user = user_id(key);
            let missing = "an acknowledged registration is missing from the converged fleet";
            match machine.user(user.as_bytes()) {
                None => return Err(format!("user {key}: {missing}")),
                Some(UserView::Deleted { .. }) if !self.facts.deletes.contains(&key) => {
                    return Err(format!(
                        "user {key}: deleted, but no delete was ever issued"
                    ))
                }
                Some(UserView::Registered { .. }) => {
                    // Recover it for real against a copy of the converged state.
                    let mut copy = machine.clone();
                    recover_on(&self.server, &mut copy, key).map_err(|e| {
                        format!(
                            "user {key}: registered, yet not recoverable with the right code: {e}"
                        )
                    })?;
                }
                Some(UserView::Deleted { .. } | UserView::Locked { .. }) => {}
            }
        }
        Ok(())
    }

    fn describe(&self, op: &Operation, output: Option<&[u8]>) -> String {
        let what = match &op.kind {
            OpKind::Read(_) => "status".to_string(),
            OpKind::Command(c) => match vaultfleet::wire::decode::<VaultCommand>(c, "command") {
                Ok(c) => match c.op {
                    Some(vault_command::Op::Register(_)) => "register".into(),
                    Some(vault_command::Op::Consume(_)) => "consume".into(),
                    Some(vault_command::Op::Reset(r)) => format!("reset(ticket {})", r.ticket),
                    Some(vault_command::Op::Delete(d)) => format!("delete(ticket {})", d.ticket),
                    Some(vault_command::Op::Replace(_)) => "replace".into(),
                    _ => "?".into(),
                },
                Err(_) => "?".into(),
            },
        };
        let out = match output.and_then(decode) {
            None => "unknown".to_string(),
            Some(o) => format!(
                "{:?} ticket {} left {} gen {}{}",
                status(&o),
                o.ticket,
                o.attempts_left,
                o.generation,
                if o.erased { " erased" } else { "" }
            ),
        };
        format!("{what}(user {}) -> {out}", op.key)
    }
}

/// The guess-limit and locked-means-locked oracles over what the run observed.
fn check_guess_limit(f: &Facts, max_attempts: u32) -> Result<(), String> {
    let forgiveness = f.forgiveness();
    for (g, answered) in &f.answered {
        let empty = BTreeSet::new();
        let forgiving = forgiveness.get(g).unwrap_or(&empty);
        // Attempts between consecutive forgiveness points were all spent at
        // once when the last of them was answered.
        let mut from: u64 = 0;
        for &to in forgiving.iter().chain(std::iter::once(&u64::MAX)) {
            let n = answered
                .range((from.saturating_add(1), [0; 32])..=(to, [0xff; 32]))
                .count();
            if n > max_attempts as usize {
                return Err(format!(
                    "user {} (registration {}): {n} attempts answered between successes \
                         at tickets {from} and {to}; the limit is {}",
                    g.0, g.1, max_attempts
                ));
            }
            from = to;
        }
    }
    for (g, &(erasing, erased_at)) in &f.erased {
        // Only the erasing attempt's own login may bring the record back; until
        // it does, no recovery applied after the erase may succeed.
        let reinstated = forgiveness.get(g).is_some_and(|s| s.contains(&erasing));
        if reinstated {
            continue;
        }
        let empty = BTreeSet::new();
        let succeeded = f.succeeded.get(g).unwrap_or(&empty);
        if let Some((at, t)) = succeeded.iter().find(|(at, _)| *at > erased_at) {
            return Err(format!(
                "user {} (registration {}): the record was erased at index {erased_at}, \
                     yet the recovery of ticket {t}, applied at {at}, yielded its secret",
                g.0, g.1
            ));
        }
    }
    check_ticket_order(f)
}

/// Tickets follow the log: every ticket answered at an index is greater than
/// every ticket answered at a lower index (for the same user; tickets are
/// unique across users too, but the run only sees each user's).
fn check_ticket_order(f: &Facts) -> Result<(), String> {
    for (key, by_index) in &f.tickets_at {
        let mut before: Option<(u64, u64)> = None;
        for (&at, tickets) in by_index {
            let (Some(&low), Some(&high)) = (tickets.first(), tickets.last()) else {
                continue;
            };
            if let Some((prev_at, prev_high)) = before {
                if low <= prev_high {
                    return Err(format!(
                        "user {key}: ticket {low} answered at index {at} is not after                          ticket {prev_high} answered at index {prev_at}"
                    ));
                }
            }
            before = Some((at, high));
        }
    }
    Ok(())
}

fn finish_purpose(purpose: Purpose) -> VaultLoginPurpose {
    match purpose {
        Purpose::Recover => VaultLoginPurpose::VAULT_RECOVER,
        Purpose::Delete => VaultLoginPurpose::VAULT_DELETE,
    }
}

/// The client's `LoginFinish` for `opened`, authenticated to its session as
/// `VaultClient` sends it (the simulator has no login ids: the login is held
/// by the client itself).
fn finish_request(
    server: &VaultServer<SoftHsm>,
    user: &UserId,
    id: VaultRequestId,
    opened: &LoginOpened,
    purpose: Purpose,
) -> VaultClientRequest {
    let mut f = VaultLoginFinish::new();
    f.credential_finalization = opened.finalization.clone();
    f.purpose = finish_purpose(purpose).into();
    let mut r = VaultClientRequest::new();
    r.request = Some(id).into();
    r.op = Some(vault_client_request::Op::LoginFinish(f));
    authenticate_request(server.group(), user, &opened.session_key, &mut r);
    r
}

/// A whole recovery with the right code against `machine` directly.
fn recover_on(
    server: &VaultServer<SoftHsm>,
    machine: &mut BackupVault,
    key: u64,
) -> Result<(), String> {
    let user = user_id(key);
    let mut rng = ChaCha20Rng::seed_from_u64(key);
    let flow = ClientLoginFlow::start_with_insecure_rng(&mut rng, &code(key))
        .map_err(|e| e.to_string())?;
    let mut id = VaultRequestId::new();
    id.client = u64::MAX;
    id.sequence = 1;
    let index = u64::MAX / 2;
    let consume = server
        .consume_command(&id, &user, flow.request())
        .map_err(|e| e.to_string())?;
    let o = decode(&machine.apply(index, &consume)).ok_or("undecodable outcome")?;
    if status(&o) != VaultStatus::VAULT_OK {
        return Err(format!("consume answered {:?}: {}", status(&o), o.detail));
    }
    let record = o.record.clone().into_option().ok_or("no record")?;
    let (login, response) = server
        .login_respond(&user, flow.request(), o.ticket, record, o.erased)
        .map_err(|e| e.to_string())?;
    let opened = flow
        .finish_with_insecure_rng(&mut rng, &code(key), &response, &KSF)
        .map_err(|e| e.to_string())?
        .ok_or("the right code did not open the answer")?;
    id.sequence = 2;
    let finish = finish_request(server, &user, id, &opened, Purpose::Recover);
    let login = server
        .login_finish(&login, &finish)
        .map_err(|e| e.to_string())?;
    let reset = server.reset_command(&login).map_err(|e| e.to_string())?;
    let reset = decode(&machine.apply(index + 1, &reset)).ok_or("undecodable")?;
    if status(&reset) != VaultStatus::VAULT_OK {
        return Err(format!(
            "reset answered {:?}: {}",
            status(&reset),
            reset.detail
        ));
    }
    let record = reset.record.into_option().ok_or("no record")?;
    let s = server
        .open_secret(&user, &record)
        .map_err(|e| e.to_string())?;
    if s.as_slice() != secret(key).as_slice() {
        return Err("another secret came back".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vaultfleet_vault::wire::VaultRecord;

    /// One answered attempt per ticket, each with its own credential request.
    fn attempts(tickets: &[u64]) -> Attempts {
        tickets.iter().map(|&t| (t, [t as u8; 32])).collect()
    }

    #[test]
    fn finding_tickets_sim_oracle_counts_two_guesses_on_one_ticket_twice() {
        // A limit of 2; a ticket shared by two guesses (as when tickets were log
        // indexes and one entry held both) plus one more: three attempts.
        let g = (1, 1);
        let mut f = Facts::default();
        let mut answered = attempts(&[10, 11]);
        answered.insert((10, [0xee; 32]));
        f.answered.insert(g, answered);
        let e = check_guess_limit(&f, 2).expect_err("three guesses, a limit of 2");
        assert!(e.contains("3 attempts answered"), "{e}");
        // Distinct tickets, one per guess, pass.
        f.answered.insert(g, attempts(&[10, 11]));
        assert_eq!(check_guess_limit(&f, 2), Ok(()));
    }

    #[test]
    fn finding_tickets_sim_oracle_wants_tickets_in_log_order() {
        let mut f = Facts::default();
        let at = f.tickets_at.entry(7).or_default();
        at.insert(10, [10, 11].into_iter().collect());
        at.insert(11, [12].into_iter().collect());
        assert_eq!(check_guess_limit(&f, 10), Ok(()));
        // A later index with a ticket not after the earlier index's: refused.
        f.tickets_at
            .entry(7)
            .or_default()
            .insert(12, [11].into_iter().collect());
        let e = check_guess_limit(&f, 10).expect_err("out of log order");
        assert!(e.contains("is not after"), "{e}");
    }

    #[test]
    fn finding_low_sim_oracle_counts_only_resets_known_to_have_committed() {
        // A limit of 2; attempts at tickets 10..=13; the recovery of ticket 11
        // sent its reset, whose outcome the client never learnt.
        let g = (1, 1);
        let mut f = Facts::default();
        f.answered.insert(g, attempts(&[10, 11, 12, 13]));
        f.note_reset(g, 11, false);
        assert!(
            check_guess_limit(&f, 2).is_err(),
            "four attempts and no reset known to have committed: over the limit of 2"
        );
        // An outcome showing the record forgiven through exactly 11 proves that
        // reset committed: two attempts on each side of it.
        let mut r = VaultRecord::new();
        r.generation = 1;
        r.forgiven_through = 11;
        let mut o = VaultOutcome::new();
        o.record = Some(r).into();
        f.saw(1, &o);
        assert_eq!(check_guess_limit(&f, 2), Ok(()));
        // Forgiven through another ticket proves nothing about 11's reset.
        let mut f2 = Facts::default();
        f2.answered.insert(g, attempts(&[10, 11, 12, 13]));
        f2.note_reset(g, 11, false);
        let mut r = VaultRecord::new();
        r.generation = 1;
        r.forgiven_through = 9;
        let mut o = VaultOutcome::new();
        o.record = Some(r).into();
        f2.saw(1, &o);
        assert!(check_guess_limit(&f2, 2).is_err());
    }
}
