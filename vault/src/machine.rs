//! `BackupVault`: the replicated state machine of the Backup Key Vault.
//!
//! It holds, per user, the OPAQUE registration record and the user's secret
//! sealed under the fleet's HSM record key, and enforces the guess limit. It
//! never sees a recovery code, a session key or a plain-text secret, and it draws
//! no randomness: every random value (OPAQUE nonces, the credential nonce, AEAD
//! nonces) is drawn by the [`VaultService`](super::VaultService) before the command
//! is proposed, so `apply` is a pure function of the log. Its outcomes carry only
//! this crate's own text, never a dependency's error message, so every build
//! answers the same bytes.
//!
//! The rules, each applied atomically by one committed command:
//!
//! * **consume** spends one attempt and returns the record it was counted
//!   against; only then may a service answer a login. The attempt gets a
//!   *ticket* from the vault's ticket clock (below): unique, and ordered as the
//!   consumes are in the log. A consume re-delivered with the same request id
//!   and the same credential request gets the same ticket and spends nothing; the
//!   same request id with another credential request is refused.
//! * The consume that spends the **last** attempt erases the record (OPAQUE record
//!   and sealed secret) in the same command. Only a successful login on that very
//!   ticket can put it back (a `reset` carrying the record, checked against the
//!   digest kept in the tombstone); any other request gets "locked" for good.
//! * **reset** (a login proved the code) forgives every attempt whose ticket is at
//!   or before its own: attempts ordered after it in the log stay spent, so two
//!   recoveries at once each spend their own attempt, and a replayed reset can
//!   never forgive an attempt made after it.
//! * **replace** (re-registration) and **delete** need a ticket that is spent and
//!   not yet forgiven in the current generation: only a login that proved the
//!   current code can authorise them, and each ticket authorises one of them once.
//! * **register** only creates a record for a user who has none (never
//!   registered, or deleted). A locked user stays locked: re-registering to get a
//!   fresh counter is exactly the attack that must be impossible.
//!
//! **Tickets.** The engine applies every command of one batched log entry at
//! the same index, so a ticket cannot be the log index: two consumes of one
//! batch would share it, and a `reset` of the right login would forgive a wrong
//! guess batched with it. The vault keeps a clock, the last ticket it issued;
//! each consume and each registration takes the next value, `max(last + 1,
//! index)`. Every replica applies the same commands in the same order, so every
//! replica issues the same tickets. A record's `registered_at` and
//! `forgiven_through` are values of the same clock. Tickets of earlier builds
//! were plain log indexes: a new ticket is at least its command's index, so it
//! is greater than every ticket issued at a lower index, and new tickets only
//! appear at indexes above the old ones (the snapshot carries the clock; one of
//! an earlier build has none, and the greatest ticket it holds stands in).

mod stream;
mod user;

use std::io::{Read, Write};

use sha2::{Digest, Sha256};

use crate::limits::{MAX_ATTEMPTS_LIMIT, USER_ID_MAX};
use crate::user_id::UserId;
use crate::wire::{self};
use crate::wire::{
    vault_command, VaultCommand, VaultOutcome, VaultRecord, VaultRegister, VaultRequestId,
    VaultSeen, VaultSnapshot, VaultStatus,
};
use user::{record_digest, Standing, UserState};
use vaultfleet::replica::INDEX_MAX;
use vaultfleet::state_machine::{CaptureError, CowMap, RestoreError, SnapshotView, StateMachine};

/// Concluded consumes remembered per user for de-duplication; consumes whose
/// ticket is still spent are always remembered.
const SEEN_MAX: usize = 64;
/// Registrations (credential nonces) remembered per user; a user who has
/// registered this many times must use a new user id.
const REGISTRATIONS_MAX: usize = 1024;
/// Upper bound on a stored record field (OPAQUE record, sealed secret).
const FIELD_MAX: usize = 4096;
/// The length of a consume's request digest (SHA-256), in bytes.
const REQUEST_DIGEST_BYTES: usize = 32;
/// The length of a credential nonce, in bytes.
const CREDENTIAL_NONCE_BYTES: usize = 32;
/// The longest registration tag (an HMAC-SHA256), in bytes.
const REGISTRATION_TAG_MAX: usize = 32;

// The ticket clock takes `max(last + 1, index)`, and the engine's indexes stop
// at INDEX_MAX: at least 2^63 tickets remain above the largest index, centuries
// of consumes at any rate a fleet commits. Beyond u64::MAX the vault refuses
// (`Malformed::TicketsExhausted`), never wraps. No bound on commands per entry is
// needed: a batch's commands each take their own value.
const _: () = assert!(INDEX_MAX <= u64::MAX / 2);

/// What the vault knows about one user, as [`BackupVault::user`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserView {
    /// Registered: the generation, the attempts left and the limit.
    Registered {
        /// Registration generation (1 for the first registration).
        generation: u64,
        /// Attempts left before the record is erased.
        attempts_left: u32,
        /// The limit chosen at registration.
        max_attempts: u32,
    },
    /// The record was erased after its last attempt; it never comes back.
    Locked {
        /// The generation that was erased.
        generation: u64,
    },
    /// Deleted by its owner; a new registration may follow.
    Deleted {
        /// The generation that was deleted.
        generation: u64,
    },
}

/// Why a command is refused as malformed. Its text is the outcome's detail:
/// this crate's own words, the same in every build (never a dependency's error
/// text, which could differ between replicas running different builds).
#[derive(Debug, Clone, Copy, thiserror::Error)]
enum Malformed {
    #[error("vault command does not decode")]
    Undecodable,
    #[error("user id must be 1..={USER_ID_MAX} bytes")]
    UserId,
    #[error("vault command without a request id")]
    NoRequestId,
    #[error("vault command has no operation")]
    NoOperation,
    #[error("replace without a record")]
    ReplaceWithoutRecord,
    #[error("max_attempts {0} is outside 1..={MAX_ATTEMPTS_LIMIT}")]
    MaxAttempts(u32),
    #[error(
        "a registration needs an OPAQUE record, a sealed secret and a 32-byte credential nonce"
    )]
    RegistrationIncomplete,
    #[error("a registration field exceeds {FIELD_MAX} bytes")]
    FieldTooLong,
    #[error("request digest must be 32 bytes")]
    DigestLength,
    #[error("this user id has registered {REGISTRATIONS_MAX} times; use a new user id")]
    TooManyRegistrations,
    #[error("generation exhausted")]
    GenerationExhausted,
    #[error("the vault's ticket clock is exhausted")]
    TicketsExhausted,
}

/// The replicated Backup Key Vault (see the module documentation for its rules).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackupVault {
    /// Every user, in key order; a [`CowMap`] so that a snapshot view of a
    /// large vault costs O(leaves), not a copy.
    users: CowMap<UserId, UserState>,
    /// The ticket clock: the last ticket issued (to a consume or a
    /// registration), 0 before the first (see the module documentation).
    last_ticket: u64,
}

/// The ticket the clock issues next for a command applied at `index`: unique,
/// after every ticket issued so far, and at least `index` (so after every
/// ticket of an earlier build, which were log indexes). `None` when the clock
/// is exhausted: the command is refused, the clock never wraps.
fn next_ticket(last_ticket: u64, index: u64) -> Option<u64> {
    let next = last_ticket.checked_add(1)?.max(index);
    debug_assert!(next > last_ticket && next >= index);
    Some(next)
}

fn outcome(status: VaultStatus, detail: impl Into<String>) -> VaultOutcome {
    let mut o = VaultOutcome::new();
    o.status = status.into();
    o.detail = detail.into();
    o
}

fn malformed(why: Malformed) -> VaultOutcome {
    outcome(VaultStatus::VAULT_MALFORMED, why.to_string())
}

fn not_registered() -> VaultOutcome {
    outcome(VaultStatus::VAULT_NOT_REGISTERED, "no record for this user")
}

fn attempts_left(r: &VaultRecord) -> u32 {
    r.max_attempts.saturating_sub(r.spent.len() as u32)
}

/// The outcome of a step that acted on `r`: status OK, its generation and the
/// attempts left.
fn ok_with(r: &VaultRecord, detail: &'static str) -> VaultOutcome {
    let mut o = outcome(VaultStatus::VAULT_OK, detail);
    o.generation = r.generation;
    o.attempts_left = attempts_left(r);
    o.max_attempts = r.max_attempts;
    o.registration_tag = r.registration_tag.clone();
    o
}

/// True when `r` is exactly the registration that `record` stores (a retry).
fn same_registration(record: &VaultRecord, r: &VaultRegister) -> bool {
    record.opaque_record == r.opaque_record
        && record.credential_nonce == r.credential_nonce
        && record.max_attempts == r.max_attempts
        && record.registration_tag == r.registration_tag
}

fn check_register(r: &VaultRegister) -> Result<(), Malformed> {
    if r.max_attempts == 0 || r.max_attempts > MAX_ATTEMPTS_LIMIT {
        return Err(Malformed::MaxAttempts(r.max_attempts));
    }
    if r.opaque_record.is_empty()
        || r.sealed_secret.is_empty()
        || r.credential_nonce.len() != CREDENTIAL_NONCE_BYTES
    {
        return Err(Malformed::RegistrationIncomplete);
    }
    if r.opaque_record.len() > FIELD_MAX
        || r.sealed_secret.len() > FIELD_MAX
        || r.registration_tag.len() > REGISTRATION_TAG_MAX
    {
        return Err(Malformed::FieldTooLong);
    }
    Ok(())
}

fn new_record(r: VaultRegister, generation: u64, registered_at: u64) -> VaultRecord {
    let mut rec = VaultRecord::new();
    rec.opaque_record = r.opaque_record;
    rec.sealed_secret = r.sealed_secret;
    rec.credential_nonce = r.credential_nonce;
    rec.max_attempts = r.max_attempts;
    rec.registration_tag = r.registration_tag;
    rec.generation = generation;
    rec.registered_at = registered_at;
    rec
}

/// What a login needs of `r`: all of it but the sealed secret.
fn login_view(r: &VaultRecord) -> VaultRecord {
    let mut login = r.clone();
    login.sealed_secret.clear();
    login
}

/// The outcome for a registration issued at generation `issued` applied to a
/// user now at `now`: a delete or replace came between (or it is a replay).
fn stale(issued: u64, now: u64) -> VaultOutcome {
    let mut o = outcome(
        VaultStatus::VAULT_REGISTRATION_STALE,
        "this registration was issued before the user's latest delete or replace: start a new registration",
    );
    o.generation = now.max(issued);
    o
}

/// The outcome for a user who is not registered: locked or deleted.
fn unregistered(standing: &Standing, locked_detail: &'static str) -> VaultOutcome {
    match standing {
        Standing::Locked { .. } => outcome(VaultStatus::VAULT_LOCKED, locked_detail),
        Standing::Registered { .. } | Standing::Deleted { .. } => not_registered(),
    }
}

impl BackupVault {
    /// An empty vault.
    pub fn new() -> Self {
        Self::default()
    }

    /// What the vault holds for `user` (read directly; replicated reads go
    /// through [`BackupVault::query_user`] and the log).
    pub fn user(&self, user: &[u8]) -> Option<UserView> {
        let u = self.users.get(user)?;
        Some(match &u.standing {
            Standing::Registered { record } => UserView::Registered {
                generation: record.generation,
                attempts_left: attempts_left(record),
                max_attempts: record.max_attempts,
            },
            Standing::Locked { generation, .. } => UserView::Locked {
                generation: *generation,
            },
            Standing::Deleted { generation } => UserView::Deleted {
                generation: *generation,
            },
        })
    }

    /// Number of users the vault knows (registered, locked or deleted).
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True when the vault knows no user.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Adds `user` as freshly registered, without a command: for benchmarks
    /// that need a vault of millions of users and no OPAQUE work. The record
    /// (192-byte OPAQUE record, 72-byte sealed secret, 32-byte nonce and tag,
    /// derived from `seed`) has the sizes of a real one; the registration takes
    /// the next ticket, as a `register` would. Returns false (nothing changes)
    /// when `user` is not a valid id or already known.
    ///
    /// It changes replicated state outside `apply`, so it exists only with the
    /// `bench-hooks` feature (the bench and proptest crates turn it on) and in
    /// this crate's own tests.
    #[doc(hidden)]
    #[cfg(any(test, feature = "bench-hooks"))]
    pub fn insert_user_for_bench(&mut self, user: &[u8], seed: u64) -> bool {
        let Ok(user) = UserId::new(user) else {
            return false;
        };
        if self.users.contains_key(&user) {
            return false;
        }
        let Some(ticket) = next_ticket(self.last_ticket, 0) else {
            return false;
        };
        let bytes = |len: usize, salt: u64| -> Vec<u8> {
            let mut h = Sha256::new();
            h.update(seed.to_be_bytes());
            h.update(salt.to_be_bytes());
            let block: [u8; 32] = h.finalize().into();
            block.iter().copied().cycle().take(len).collect()
        };
        let mut record = VaultRecord::new();
        record.opaque_record = bytes(192, 1);
        record.sealed_secret = bytes(72, 2);
        record.credential_nonce = bytes(CREDENTIAL_NONCE_BYTES, 3);
        record.registration_tag = bytes(REGISTRATION_TAG_MAX, 4);
        record.max_attempts = crate::limits::DEFAULT_MAX_ATTEMPTS;
        record.generation = 1;
        record.registered_at = ticket;
        let used_nonce = Sha256::digest(&record.credential_nonce).to_vec();
        self.users.insert(
            user,
            UserState {
                standing: Standing::Registered { record },
                seen: Vec::new(),
                used_nonces: vec![used_nonce],
            },
        );
        self.last_ticket = ticket;
        true
    }

    /// Encodes a query for `user`'s status; [`BackupVault::query`] answers with a
    /// `VaultOutcome` (status, attempts left, generation; never the record).
    pub fn query_user(user: &[u8]) -> Vec<u8> {
        user.to_vec()
    }

    fn apply_command(&mut self, index: u64, c: VaultCommand) -> VaultOutcome {
        let Ok(user) = UserId::new(c.user) else {
            return malformed(Malformed::UserId);
        };
        let Some(request) = c.request.into_option() else {
            return malformed(Malformed::NoRequestId);
        };
        match c.op {
            Some(vault_command::Op::Register(r)) => self.register(index, user, r),
            Some(vault_command::Op::Consume(x)) => {
                self.consume(index, &user, request, x.request_digest)
            }
            Some(vault_command::Op::Reset(x)) => {
                self.reset(&user, x.ticket, x.generation, x.reinstate.into_option())
            }
            Some(vault_command::Op::Replace(x)) => match x.record.into_option() {
                Some(r) => self.replace(
                    index,
                    &user,
                    Authority {
                        ticket: x.ticket,
                        generation: x.generation,
                        reinstate: x.reinstate.into_option(),
                    },
                    r,
                ),
                None => malformed(Malformed::ReplaceWithoutRecord),
            },
            Some(vault_command::Op::Delete(x)) => self.delete(
                &user,
                Authority {
                    ticket: x.ticket,
                    generation: x.generation,
                    reinstate: x.reinstate.into_option(),
                },
            ),
            None => malformed(Malformed::NoOperation),
        }
    }

    fn register(&mut self, index: u64, user: UserId, r: VaultRegister) -> VaultOutcome {
        if let Err(e) = check_register(&r) {
            return malformed(e);
        }
        let last_ticket = self.last_ticket;
        let u = self.users.get_or_insert_with(user, UserState::default);
        match &u.standing {
            Standing::Locked { .. } => outcome(
                VaultStatus::VAULT_LOCKED,
                "this user's record was erased after its last attempt; it cannot be registered again",
            ),
            Standing::Registered { record } if same_registration(record, &r) => {
                // The same registration delivered again (a retry): it succeeded.
                ok_with(record, "already applied")
            }
            Standing::Registered { record }
                if record.opaque_record == r.opaque_record
                    || record.credential_nonce == r.credential_nonce =>
            {
                // This registration's record or nonce with another limit, secret
                // or record: one of the two was altered on the way. Never "the
                // same registration again", which would report the altered one
                // as the client's success.
                let mut o = outcome(
                    VaultStatus::VAULT_REGISTRATION_CONFLICT,
                    "this registration is stored with other fields (altered on the way)",
                );
                o.generation = record.generation;
                o.max_attempts = record.max_attempts;
                o.registration_tag = record.registration_tag.clone();
                o
            }
            Standing::Registered { record } => {
                let mut o = outcome(
                    VaultStatus::VAULT_ALREADY_REGISTERED,
                    "already registered: re-register through a login with the current code",
                );
                o.generation = record.generation;
                o.attempts_left = attempts_left(record);
                o
            }
            Standing::Deleted { generation } => {
                if let Some(issued) = r.issued_generation {
                    if issued != *generation {
                        return stale(issued, *generation);
                    }
                }
                let Some(ticket) = next_ticket(last_ticket, index) else {
                    return malformed(Malformed::TicketsExhausted);
                };
                match Self::new_generation(u, r, ticket) {
                    Ok(o) => {
                        self.last_ticket = ticket;
                        o
                    }
                    Err(o) => o,
                }
            }
        }
    }

    /// Installs `r` as the user's next generation, registered at clock value
    /// `ticket` (the caller advances the clock to it on success), unless its
    /// credential nonce was registered before (a replayed registration).
    fn new_generation(
        u: &mut UserState,
        r: VaultRegister,
        ticket: u64,
    ) -> Result<VaultOutcome, VaultOutcome> {
        let nonce_digest = Sha256::digest(&r.credential_nonce).to_vec();
        if u.used_nonces.contains(&nonce_digest) {
            return Err(outcome(
                VaultStatus::VAULT_REQUEST_REUSED,
                "this registration was used before (a replay): start a new registration",
            ));
        }
        if u.used_nonces.len() >= REGISTRATIONS_MAX {
            return Err(malformed(Malformed::TooManyRegistrations));
        }
        let Some(generation) = u.standing.generation().checked_add(1) else {
            return Err(malformed(Malformed::GenerationExhausted));
        };
        u.used_nonces.push(nonce_digest);
        let record = new_record(r, generation, ticket);
        let o = ok_with(&record, "");
        u.standing = Standing::Registered { record };
        Ok(o)
    }

    fn consume(
        &mut self,
        index: u64,
        user: &UserId,
        request: VaultRequestId,
        digest: Vec<u8>,
    ) -> VaultOutcome {
        if digest.len() != REQUEST_DIGEST_BYTES {
            return malformed(Malformed::DigestLength);
        }
        let Some(u) = self.users.get_mut(user) else {
            return not_registered();
        };
        let Some(ticket) = next_ticket(self.last_ticket, index) else {
            return malformed(Malformed::TicketsExhausted);
        };
        let repeat = u
            .seen
            .iter()
            .find(|s| {
                s.request
                    .as_ref()
                    .is_some_and(|r| r.client == request.client && r.sequence == request.sequence)
            })
            .cloned();
        match repeat {
            Some(seen) => Self::consume_again(u, &seen, &digest),
            None => {
                let (o, spent) = Self::spend(u, ticket, request, digest);
                if spent {
                    self.last_ticket = ticket;
                }
                o
            }
        }
    }

    /// A re-delivered consume: the same ticket, nothing spent.
    fn consume_again(u: &UserState, seen: &VaultSeen, digest: &[u8]) -> VaultOutcome {
        if seen.request_digest != digest {
            return outcome(
                VaultStatus::VAULT_REQUEST_REUSED,
                "this request id was used for another credential request",
            );
        }
        match &u.standing {
            Standing::Registered { record: r }
                if r.generation == seen.generation && r.spent.contains(&seen.ticket) =>
            {
                let mut o = ok_with(r, "");
                o.ticket = seen.ticket;
                o.record = Some(login_view(r)).into();
                o
            }
            Standing::Registered { .. } => outcome(
                VaultStatus::VAULT_BAD_TICKET,
                "this attempt was already concluded; start a new login",
            ),
            standing => unregistered(standing, "record erased"),
        }
    }

    /// A new consume: spends one attempt at `ticket` (the clock's next value),
    /// and erases the record if it was the last. True when it spent `ticket`
    /// (the caller then advances the clock to it).
    fn spend(
        u: &mut UserState,
        ticket: u64,
        request: VaultRequestId,
        digest: Vec<u8>,
    ) -> (VaultOutcome, bool) {
        let UserState {
            standing,
            seen: seen_table,
            ..
        } = u;
        let Standing::Registered { record: r } = standing else {
            let o = unregistered(standing, "the record was erased after its last attempt");
            return (o, false);
        };
        // The clock only moves forward, so a fresh ticket is in no table yet.
        debug_assert!(r.spent.iter().all(|&t| t < ticket));
        debug_assert!(seen_table.iter().all(|s| s.ticket < ticket));
        r.spent.push(ticket);
        let mut seen = VaultSeen::new();
        seen.request = Some(request).into();
        seen.request_digest = digest;
        seen.ticket = ticket;
        seen.generation = r.generation;
        seen_table.push(seen);
        // Forget the oldest concluded consumes beyond SEEN_MAX; a consume whose
        // ticket is still spent is always remembered (at most max_attempts).
        while seen_table.len() > SEEN_MAX + r.spent.len() {
            match seen_table.iter().position(|s| !r.spent.contains(&s.ticket)) {
                Some(i) => {
                    seen_table.remove(i);
                }
                None => break,
            }
        }
        let mut o = ok_with(r, "");
        o.ticket = ticket;
        if o.attempts_left == 0 {
            // The last attempt: erase in this same command. The record goes to the
            // proposing service only, for this attempt's login to put it back.
            o.record = standing.erase(ticket).into();
            o.erased = true;
            debug_assert!(matches!(standing, Standing::Locked { ticket: t, .. } if *t == ticket));
        } else {
            o.record = Some(login_view(r)).into();
        }
        (o, true)
    }

    fn reset(
        &mut self,
        user: &UserId,
        ticket: u64,
        generation: u64,
        reinstate: Option<VaultRecord>,
    ) -> VaultOutcome {
        let Some(u) = self.users.get_mut(user) else {
            return not_registered();
        };
        match &mut u.standing {
            Standing::Locked { .. } => {
                if let Err(o) = Self::reinstate(u, ticket, generation, reinstate) {
                    return o;
                }
                let Standing::Registered { record: r } = &u.standing else {
                    return not_registered();
                };
                let mut o = ok_with(r, "reinstated");
                o.ticket = ticket;
                o.record = Some(r.clone()).into();
                o
            }
            Standing::Deleted { .. } => not_registered(),
            Standing::Registered { record: r } => {
                if r.generation != generation {
                    return outcome(
                        VaultStatus::VAULT_BAD_TICKET,
                        "the login was for an earlier registration",
                    );
                }
                if r.spent.contains(&ticket) {
                    r.spent.retain(|&t| t > ticket);
                    r.forgiven_through = r.forgiven_through.max(ticket);
                } else if ticket > r.forgiven_through || ticket < r.registered_at {
                    return outcome(VaultStatus::VAULT_BAD_TICKET, "no such attempt");
                }
                // else: already forgiven (a duplicate); nothing changes.
                let mut o = ok_with(r, "");
                o.ticket = ticket;
                o.record = Some(r.clone()).into();
                o
            }
        }
    }

    /// Puts back the record erased by `ticket`'s consume, if `record` is exactly
    /// it: the erasing attempt's login proved the code. Every attempt is forgiven.
    fn reinstate(
        u: &mut UserState,
        ticket: u64,
        generation: u64,
        record: Option<VaultRecord>,
    ) -> Result<(), VaultOutcome> {
        let locked = || {
            outcome(
                VaultStatus::VAULT_LOCKED,
                "the record was erased after its last attempt",
            )
        };
        let Some(mut r) = record else {
            return Err(locked());
        };
        let Standing::Locked {
            generation: locked_generation,
            ticket: locked_ticket,
            digest,
        } = &u.standing
        else {
            return Err(locked());
        };
        if *locked_generation != generation
            || r.generation != generation
            || *locked_ticket != ticket
            || record_digest(&r) != *digest
        {
            return Err(locked());
        }
        r.spent.clear();
        r.forgiven_through = ticket;
        u.standing = Standing::Registered { record: r };
        Ok(())
    }

    /// The record `authority.ticket` may act on as the authority of a proven
    /// login: the ticket must be spent and not forgiven in the current
    /// generation, or be the attempt that erased the record (which `reinstate`
    /// then puts back).
    fn authorised(u: &mut UserState, authority: Authority) -> Result<(), VaultOutcome> {
        let Authority {
            ticket,
            generation,
            reinstate,
        } = authority;
        match &u.standing {
            Standing::Locked { .. } => {
                Self::reinstate(u, ticket, generation, reinstate)?;
                // The erasing attempt is the authority; keep it spent for the caller.
                if let Standing::Registered { record } = &mut u.standing {
                    record.spent.push(ticket);
                }
                Ok(())
            }
            Standing::Deleted { .. } => Err(not_registered()),
            Standing::Registered { record: r } => {
                if r.generation != generation || !r.spent.contains(&ticket) {
                    return Err(outcome(
                        VaultStatus::VAULT_BAD_TICKET,
                        "the login does not authorise this (used already, or for another registration)",
                    ));
                }
                Ok(())
            }
        }
    }

    fn replace(
        &mut self,
        index: u64,
        user: &UserId,
        authority: Authority,
        new: VaultRegister,
    ) -> VaultOutcome {
        if let Err(e) = check_register(&new) {
            return malformed(e);
        }
        let Some(ticket) = next_ticket(self.last_ticket, index) else {
            return malformed(Malformed::TicketsExhausted);
        };
        let Some(u) = self.users.get_mut(user) else {
            return not_registered();
        };
        // Check the nonce before touching anything: a refused replace must leave
        // the user exactly as it was.
        let nonce_digest = Sha256::digest(&new.credential_nonce).to_vec();
        if u.used_nonces.contains(&nonce_digest) {
            // The same replacement again (a service re-proposing it after the
            // fleet's answer was lost): the record it made, if it is still the
            // current one, the one right after this login's generation. Nothing
            // changes; any other reuse of the nonce is a replay.
            if let Standing::Registered { record } = &u.standing {
                if same_registration(record, &new)
                    && authority.generation.checked_add(1) == Some(record.generation)
                {
                    return ok_with(record, "already applied");
                }
            }
            return outcome(
                VaultStatus::VAULT_REQUEST_REUSED,
                "this registration was used before (a replay): start a new registration",
            );
        }
        // The registration was issued for this login's generation: a stale one
        // (issued before a later delete or replace) is refused.
        if let Some(issued) = new.issued_generation {
            if issued != authority.generation {
                return stale(issued, authority.generation);
            }
        }
        let before = u.clone();
        if let Err(o) = Self::authorised(u, authority) {
            return o;
        }
        match Self::new_generation(u, new, ticket) {
            Ok(o) => {
                self.last_ticket = ticket;
                o
            }
            Err(o) => {
                *u = before;
                o
            }
        }
    }

    fn delete(&mut self, user: &UserId, authority: Authority) -> VaultOutcome {
        let Some(u) = self.users.get_mut(user) else {
            return not_registered();
        };
        // The same delete again (a service re-proposing it after the fleet's
        // answer was lost), or another login of the same generation: the user
        // is deleted at the generation the login proved. Nothing changes, and a
        // holder of that generation's code learns nothing a status read would
        // not tell.
        if let Standing::Deleted { generation } = u.standing {
            if generation == authority.generation {
                let mut o = outcome(VaultStatus::VAULT_OK, "already deleted");
                o.generation = generation;
                return o;
            }
        }
        if let Err(o) = Self::authorised(u, authority) {
            return o;
        }
        let generation = u.standing.generation();
        u.standing = Standing::Deleted { generation };
        let mut o = outcome(VaultStatus::VAULT_OK, "deleted");
        o.generation = generation;
        o
    }
}

/// What a replace or delete presents as its authority: a proven login's ticket
/// in a generation, and the erased record when that ticket was the last attempt.
struct Authority {
    ticket: u64,
    generation: u64,
    reinstate: Option<VaultRecord>,
}

impl StateMachine for BackupVault {
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8> {
        let mut o = match wire::decode::<VaultCommand>(command, "vault command") {
            Ok(c) => self.apply_command(index, c),
            Err(_) => malformed(Malformed::Undecodable),
        };
        o.applied_at = index;
        wire::encode_bounded(&o)
    }

    fn query(&self, query: &[u8]) -> Vec<u8> {
        let o = match self.user(query) {
            None => not_registered(),
            Some(UserView::Registered {
                generation,
                attempts_left,
                ..
            }) => {
                let mut o = outcome(VaultStatus::VAULT_OK, "");
                o.generation = generation;
                o.attempts_left = attempts_left;
                o
            }
            Some(UserView::Locked { generation }) => {
                let mut o = outcome(VaultStatus::VAULT_LOCKED, "record erased");
                o.generation = generation;
                o
            }
            Some(UserView::Deleted { generation }) => {
                let mut o = outcome(VaultStatus::VAULT_NOT_REGISTERED, "deleted");
                o.generation = generation;
                o
            }
        };
        wire::encode_bounded(&o)
    }

    fn snapshot(&self) -> Result<Vec<u8>, CaptureError> {
        let mut s = VaultSnapshot::new();
        s.users = self
            .users
            .iter()
            .map(|(user, state)| state.to_wire(user))
            .collect();
        s.last_ticket = Some(self.last_ticket);
        // Nothing bounds the number of users, so a vault can outgrow one protocol
        // buffer (2 GiB): that is an error the replica survives, never a panic.
        Ok(wire::encode(&s)?)
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        // `decode_whole`: a snapshot cut inside its last user is refused, not
        // read as a user without its last fields (fewer spent tickets, no
        // seen registrations).
        let s: VaultSnapshot = wire::decode_whole(snapshot, "vault snapshot")?;
        let mut users = CowMap::new();
        let mut greatest = 0;
        for w in s.users {
            let (user, state) = UserState::from_wire(w)?;
            greatest = greatest.max(state.greatest_ticket());
            if users.insert(user, state).is_some() {
                return Err(RestoreError::Malformed {
                    what: "vault snapshot lists a user twice",
                });
            }
        }
        // The clock must be at or after every ticket the state holds, or it would
        // issue one of them again. A snapshot of an earlier build has no clock:
        // its tickets were log indexes, at most the snapshot's index, and every
        // later apply has a greater index, which the clock then takes.
        let last_ticket = match s.last_ticket {
            Some(clock) if clock < greatest => {
                return Err(RestoreError::Malformed {
                    what: "vault snapshot holds a ticket after its ticket clock",
                })
            }
            Some(clock) => clock,
            None => greatest,
        };
        self.users = users;
        self.last_ticket = last_ticket;
        Ok(())
    }

    /// Streams the snapshot user by user: the bytes of [`BackupVault::snapshot`]
    /// (and no 2 GiB bound), never held whole.
    fn snapshot_to(&self, out: &mut dyn Write) -> Result<(), CaptureError> {
        stream::write_snapshot(self.users.iter(), self.last_ticket, out)
    }

    /// A view of the users' map, taken in O(leaves): the replica's thread pays
    /// no encoding for it.
    fn snapshot_view(&self) -> Result<Box<dyn SnapshotView>, CaptureError> {
        Ok(Box::new(stream::VaultView {
            users: self.users.view(),
            last_ticket: self.last_ticket,
        }))
    }

    /// Parses the stream one bounded user record at a time, with every check of
    /// [`BackupVault::restore`]; the vault is unchanged on an error.
    fn restore_from(&mut self, input: &mut dyn Read) -> Result<(), RestoreError> {
        let restored = stream::read_snapshot(input)?;
        self.users = restored.users;
        self.last_ticket = restored.last_ticket;
        Ok(())
    }

    fn blank(&self) -> Option<Self> {
        Some(Self::new())
    }
}

/// Decodes what [`BackupVault`] answered.
pub(crate) fn decode_outcome(bytes: &[u8]) -> Result<VaultOutcome, wire::DecodeError> {
    wire::decode(bytes, "vault outcome")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{VaultConsume, VaultDelete, VaultReplace, VaultReset, VaultUserState};

    /// Review finding: `restore` read a snapshot cut inside its last user as a
    /// user without its last fields (protobuf takes a nested message as
    /// ending where the bytes end). Every cut inside the last user's record
    /// is refused now.
    #[test]
    fn a_snapshot_cut_inside_its_last_user_is_refused() {
        let mut v = BackupVault::new();
        for (i, user) in ["alice", "bob", "carol"].iter().enumerate() {
            assert!(v.insert_user_for_bench(user.as_bytes(), i as u64));
        }
        let bytes = v.snapshot().unwrap();
        // The top-level fields: (start, end) of each `users` record (field 1).
        let mut records = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let tag = bytes[at];
            let mut len = 0usize;
            let mut shift = 0;
            let mut p = at + 1;
            loop {
                let b = bytes[p];
                len |= usize::from(b & 0x7f) << shift;
                shift += 7;
                p += 1;
                if b & 0x80 == 0 {
                    break;
                }
            }
            if tag == 0x0a {
                records.push((p, p + len));
                at = p + len;
            } else {
                break; // the ticket clock, a varint field, comes last
            }
        }
        assert_eq!(records.len(), 3);
        let (start, end) = records[2];
        let mut refused = 0;
        for cut in start + 1..end {
            assert!(
                BackupVault::new().restore(&bytes[..cut]).is_err(),
                "a snapshot cut at byte {cut} of the last user's {start}..{end} was restored"
            );
            refused += 1;
        }
        assert!(
            refused > 100,
            "the last user's record is {} bytes",
            end - start
        );
        // What the lenient decoder makes of the same cuts: some decode.
        let lenient = (start + 1..end)
            .filter(|&cut| wire::decode::<VaultSnapshot>(&bytes[..cut], "vault snapshot").is_ok())
            .count();
        assert!(lenient > 0, "protobuf's own decoder refuses the cuts too");
        // The whole snapshot still restores.
        let mut back = BackupVault::new();
        back.restore(&bytes).unwrap();
        assert_eq!(back.snapshot().unwrap(), bytes);
    }

    fn id(client: u64, sequence: u64) -> VaultRequestId {
        let mut r = VaultRequestId::new();
        r.client = client;
        r.sequence = sequence;
        r
    }

    fn reg(max: u32, tag: u8) -> VaultRegister {
        let mut r = VaultRegister::new();
        r.opaque_record = vec![tag; 64];
        r.sealed_secret = vec![tag ^ 0xff; 48];
        r.credential_nonce = vec![tag; 32];
        r.max_attempts = max;
        r
    }

    fn cmd(user: &str, request: VaultRequestId, op: vault_command::Op) -> Vec<u8> {
        let mut c = VaultCommand::new();
        c.user = user.as_bytes().to_vec();
        c.request = Some(request).into();
        c.op = Some(op);
        wire::encode_bounded(&c)
    }

    fn consume(
        v: &mut BackupVault,
        index: u64,
        user: &str,
        request: VaultRequestId,
        digest: u8,
    ) -> VaultOutcome {
        let mut x = VaultConsume::new();
        x.request_digest = vec![digest; 32];
        decode_outcome(&v.apply(index, &cmd(user, request, vault_command::Op::Consume(x)))).unwrap()
    }

    fn reset(
        v: &mut BackupVault,
        index: u64,
        user: &str,
        ticket: u64,
        generation: u64,
        reinstate: Option<VaultRecord>,
    ) -> VaultOutcome {
        let mut x = VaultReset::new();
        x.ticket = ticket;
        x.generation = generation;
        x.reinstate = reinstate.into();
        decode_outcome(&v.apply(index, &cmd(user, id(9, index), vault_command::Op::Reset(x))))
            .unwrap()
    }

    fn status(o: &VaultOutcome) -> VaultStatus {
        o.status.enum_value_or(VaultStatus::VAULT_MALFORMED)
    }

    fn registered(max: u32) -> BackupVault {
        let mut v = BackupVault::new();
        let o = decode_outcome(&v.apply(
            1,
            &cmd("alice", id(1, 1), vault_command::Op::Register(reg(max, 1))),
        ))
        .unwrap();
        assert_eq!(status(&o), VaultStatus::VAULT_OK);
        assert_eq!(o.generation, 1);
        v
    }

    #[test]
    fn every_consume_spends_and_the_last_one_erases() {
        let mut v = registered(3);
        for (i, left) in [(10, 2), (11, 1)] {
            let o = consume(&mut v, i, "alice", id(2, i), i as u8);
            assert_eq!(
                (status(&o), o.ticket, o.attempts_left, o.erased),
                (VaultStatus::VAULT_OK, i, left, false)
            );
        }
        let o = consume(&mut v, 12, "alice", id(2, 12), 12);
        assert_eq!(
            (status(&o), o.attempts_left, o.erased),
            (VaultStatus::VAULT_OK, 0, true)
        );
        assert!(
            o.record.is_some(),
            "the last attempt's login still needs the record"
        );
        assert_eq!(v.user(b"alice"), Some(UserView::Locked { generation: 1 }));
        assert!(
            !v.snapshot()
                .unwrap()
                .windows(48)
                .any(|w| w == [0xfe; 48].as_slice()),
            "the sealed secret is gone from the state"
        );
        let o = consume(&mut v, 13, "alice", id(2, 13), 13);
        assert_eq!(status(&o), VaultStatus::VAULT_LOCKED);
        // Re-registering a locked user is refused: the counter can never be reset that way.
        let o = decode_outcome(&v.apply(
            14,
            &cmd("alice", id(3, 1), vault_command::Op::Register(reg(3, 7))),
        ))
        .unwrap();
        assert_eq!(status(&o), VaultStatus::VAULT_LOCKED);
    }

    #[test]
    fn the_last_attempts_login_alone_can_reinstate_the_exact_record() {
        let mut v = registered(1);
        let o = consume(&mut v, 10, "alice", id(2, 1), 1);
        assert!(o.erased);
        let record = o.record.clone().unwrap();
        let mut forged = record.clone();
        forged.max_attempts = 255;
        assert_eq!(
            status(&reset(&mut v, 11, "alice", 10, 1, Some(forged))),
            VaultStatus::VAULT_LOCKED
        );
        assert_eq!(
            status(&reset(&mut v, 12, "alice", 9, 1, Some(record.clone()))),
            VaultStatus::VAULT_LOCKED
        );
        assert_eq!(
            status(&reset(&mut v, 13, "alice", 10, 1, None)),
            VaultStatus::VAULT_LOCKED
        );
        let o = reset(&mut v, 14, "alice", 10, 1, Some(record));
        assert_eq!((status(&o), o.attempts_left), (VaultStatus::VAULT_OK, 1));
        assert_eq!(
            v.user(b"alice"),
            Some(UserView::Registered {
                generation: 1,
                attempts_left: 1,
                max_attempts: 1
            })
        );
    }

    #[test]
    fn a_reset_forgives_only_attempts_ordered_before_it() {
        let mut v = registered(10);
        for i in 10..14 {
            consume(&mut v, i, "alice", id(2, i), i as u8);
        }
        // The attempt at 12 proved the code: 10, 11, 12 are forgiven, 13 stays spent.
        let o = reset(&mut v, 20, "alice", 12, 1, None);
        assert_eq!((status(&o), o.attempts_left), (VaultStatus::VAULT_OK, 9));
        // Replayed, it changes nothing.
        let o = reset(&mut v, 21, "alice", 12, 1, None);
        assert_eq!((status(&o), o.attempts_left), (VaultStatus::VAULT_OK, 9));
        // A ticket that was never issued is refused.
        assert_eq!(
            status(&reset(&mut v, 22, "alice", 15, 1, None)),
            VaultStatus::VAULT_BAD_TICKET
        );
        assert_eq!(
            status(&reset(&mut v, 23, "alice", 13, 2, None)),
            VaultStatus::VAULT_BAD_TICKET
        );
    }

    #[test]
    fn a_redelivered_consume_spends_once_and_a_reused_id_is_refused() {
        let mut v = registered(10);
        let a = consume(&mut v, 10, "alice", id(2, 1), 0xaa);
        let b = consume(&mut v, 11, "alice", id(2, 1), 0xaa);
        assert_eq!((a.ticket, b.ticket, b.attempts_left), (10, 10, 9));
        let c = consume(&mut v, 12, "alice", id(2, 1), 0xbb);
        assert_eq!(status(&c), VaultStatus::VAULT_REQUEST_REUSED);
        assert_eq!(
            v.user(b"alice"),
            Some(UserView::Registered {
                generation: 1,
                attempts_left: 9,
                max_attempts: 10
            })
        );
    }

    #[test]
    fn replace_and_delete_need_an_unforgiven_ticket_of_the_current_generation() {
        let mut v = registered(10);
        consume(&mut v, 10, "alice", id(2, 1), 1);
        let mut x = VaultReplace::new();
        x.ticket = 9;
        x.generation = 1;
        x.record = Some(reg(5, 2)).into();
        let o = decode_outcome(&v.apply(
            11,
            &cmd("alice", id(2, 2), vault_command::Op::Replace(x.clone())),
        ))
        .unwrap();
        assert_eq!(status(&o), VaultStatus::VAULT_BAD_TICKET);
        x.ticket = 10;
        let o = decode_outcome(&v.apply(
            12,
            &cmd("alice", id(2, 3), vault_command::Op::Replace(x.clone())),
        ))
        .unwrap();
        assert_eq!(
            (status(&o), o.generation, o.attempts_left),
            (VaultStatus::VAULT_OK, 2, 5)
        );
        // The ticket is used up, and belongs to generation 1 anyway.
        x.record = Some(reg(5, 4)).into();
        let o =
            decode_outcome(&v.apply(13, &cmd("alice", id(2, 4), vault_command::Op::Replace(x))))
                .unwrap();
        assert_eq!(status(&o), VaultStatus::VAULT_BAD_TICKET);
        consume(&mut v, 14, "alice", id(2, 5), 5);
        let mut d = VaultDelete::new();
        d.ticket = 14;
        d.generation = 2;
        let o = decode_outcome(&v.apply(15, &cmd("alice", id(2, 6), vault_command::Op::Delete(d))))
            .unwrap();
        assert_eq!(status(&o), VaultStatus::VAULT_OK);
        assert_eq!(v.user(b"alice"), Some(UserView::Deleted { generation: 2 }));
        let o = decode_outcome(&v.apply(
            16,
            &cmd("alice", id(3, 1), vault_command::Op::Register(reg(10, 3))),
        ))
        .unwrap();
        assert_eq!((status(&o), o.generation), (VaultStatus::VAULT_OK, 3));
    }

    /// Review of the service core (H2): a service whose fleet step timed out
    /// re-proposes the same delete or replace under a new runtime sequence (the
    /// engine cannot deduplicate it). The repeat must report what the first
    /// did, not "not registered" or "reused", which the client would report
    /// as a failure of an operation that took effect.
    #[test]
    fn review_h2_a_repeated_delete_or_replace_reports_what_the_first_did() {
        let mut v = registered(10);
        consume(&mut v, 10, "alice", id(2, 1), 1);
        let mut x = VaultReplace::new();
        x.ticket = 10;
        x.generation = 1;
        x.record = Some(reg(5, 2)).into();
        let replace = |seq| cmd("alice", id(2, seq), vault_command::Op::Replace(x.clone()));
        let first = decode_outcome(&v.apply(11, &replace(2))).unwrap();
        assert_eq!(
            (status(&first), first.generation),
            (VaultStatus::VAULT_OK, 2)
        );
        let again = decode_outcome(&v.apply(12, &replace(3))).unwrap();
        assert_eq!(
            (status(&again), again.generation, again.max_attempts),
            (VaultStatus::VAULT_OK, 2, 5)
        );
        assert_eq!(again.registration_tag, first.registration_tag);
        assert_eq!(
            v.user(b"alice"),
            Some(UserView::Registered {
                generation: 2,
                attempts_left: 5,
                max_attempts: 5
            }),
            "applied once"
        );
        // The same nonce with other fields is still a replay.
        let mut other = x.clone();
        other.record = Some(reg(7, 2)).into();
        let o = decode_outcome(&v.apply(
            13,
            &cmd("alice", id(2, 4), vault_command::Op::Replace(other)),
        ))
        .unwrap();
        assert_eq!(status(&o), VaultStatus::VAULT_REQUEST_REUSED);
        // A delete, twice: deleted, then "already deleted" at that generation.
        consume(&mut v, 14, "alice", id(2, 5), 5);
        let mut d = VaultDelete::new();
        d.ticket = 14;
        d.generation = 2;
        let delete = |seq| cmd("alice", id(2, seq), vault_command::Op::Delete(d.clone()));
        let o = decode_outcome(&v.apply(15, &delete(6))).unwrap();
        assert_eq!((status(&o), o.generation), (VaultStatus::VAULT_OK, 2));
        let o = decode_outcome(&v.apply(16, &delete(7))).unwrap();
        assert_eq!((status(&o), o.generation), (VaultStatus::VAULT_OK, 2));
        assert_eq!(v.user(b"alice"), Some(UserView::Deleted { generation: 2 }));
        // A delete of another generation is not.
        let mut d1 = d.clone();
        d1.generation = 1;
        let o =
            decode_outcome(&v.apply(17, &cmd("alice", id(2, 8), vault_command::Op::Delete(d1))))
                .unwrap();
        assert_eq!(status(&o), VaultStatus::VAULT_NOT_REGISTERED);
    }

    #[test]
    fn review_f1_a_registration_issued_before_a_delete_or_replace_is_stale() {
        // Issued at generation 0 (a withheld first registration), never applied.
        let mut withheld = reg(10, 7);
        withheld.issued_generation = Some(0);
        // The client's retry registered generation 1; the user then deleted it.
        let mut v = BackupVault::new();
        let mut retry = reg(10, 1);
        retry.issued_generation = Some(0);
        let o = decode_outcome(&v.apply(
            1,
            &cmd("alice", id(1, 1), vault_command::Op::Register(retry)),
        ))
        .unwrap();
        assert_eq!((status(&o), o.generation), (VaultStatus::VAULT_OK, 1));
        consume(&mut v, 10, "alice", id(2, 1), 1);
        let mut d = VaultDelete::new();
        d.ticket = 10;
        d.generation = 1;
        let o = decode_outcome(&v.apply(11, &cmd("alice", id(2, 2), vault_command::Op::Delete(d))))
            .unwrap();
        assert_eq!(status(&o), VaultStatus::VAULT_OK);
        // The withheld registration, replayed after the delete: stale.
        let o = decode_outcome(&v.apply(
            12,
            &cmd("alice", id(9, 1), vault_command::Op::Register(withheld)),
        ))
        .unwrap();
        assert_eq!(status(&o), VaultStatus::VAULT_REGISTRATION_STALE, "{o:?}");
        assert_eq!(v.user(b"alice"), Some(UserView::Deleted { generation: 1 }));
        // One issued at the current generation applies.
        let mut fresh = reg(10, 8);
        fresh.issued_generation = Some(1);
        let o = decode_outcome(&v.apply(
            13,
            &cmd("alice", id(3, 1), vault_command::Op::Register(fresh)),
        ))
        .unwrap();
        assert_eq!((status(&o), o.generation), (VaultStatus::VAULT_OK, 2));
        // A replace issued for another generation than its login's: stale.
        consume(&mut v, 14, "alice", id(3, 2), 2);
        let mut x = VaultReplace::new();
        x.ticket = 14;
        x.generation = 2;
        let mut old = reg(10, 9);
        old.issued_generation = Some(1);
        x.record = Some(old).into();
        let o = decode_outcome(&v.apply(
            15,
            &cmd("alice", id(3, 3), vault_command::Op::Replace(x.clone())),
        ))
        .unwrap();
        assert_eq!(status(&o), VaultStatus::VAULT_REGISTRATION_STALE, "{o:?}");
        let mut current = reg(10, 10);
        current.issued_generation = Some(2);
        x.record = Some(current).into();
        let o =
            decode_outcome(&v.apply(16, &cmd("alice", id(3, 4), vault_command::Op::Replace(x))))
                .unwrap();
        assert_eq!((status(&o), o.generation), (VaultStatus::VAULT_OK, 3));
    }

    #[test]
    fn a_replayed_registration_never_comes_back_after_a_delete() {
        let mut v = registered(3);
        consume(&mut v, 10, "alice", id(2, 1), 1);
        let mut d = VaultDelete::new();
        d.ticket = 10;
        d.generation = 1;
        let o = decode_outcome(&v.apply(11, &cmd("alice", id(2, 2), vault_command::Op::Delete(d))))
            .unwrap();
        assert_eq!(status(&o), VaultStatus::VAULT_OK);
        // The old registration's bytes, replayed: refused, the user stays deleted.
        let o = decode_outcome(&v.apply(
            12,
            &cmd("alice", id(1, 1), vault_command::Op::Register(reg(3, 1))),
        ))
        .unwrap();
        assert_eq!(status(&o), VaultStatus::VAULT_REQUEST_REUSED);
        assert_eq!(v.user(b"alice"), Some(UserView::Deleted { generation: 1 }));
    }

    #[test]
    fn the_last_attempts_login_may_also_delete_or_replace() {
        for replace in [false, true] {
            let mut v = registered(1);
            let o = consume(&mut v, 10, "alice", id(2, 1), 1);
            assert!(o.erased);
            let record = o.record.clone().unwrap();
            let op = if replace {
                let mut x = VaultReplace::new();
                x.ticket = 10;
                x.generation = 1;
                x.record = Some(reg(5, 2)).into();
                x.reinstate = Some(record).into();
                vault_command::Op::Replace(x)
            } else {
                let mut x = VaultDelete::new();
                x.ticket = 10;
                x.generation = 1;
                x.reinstate = Some(record).into();
                vault_command::Op::Delete(x)
            };
            let o = decode_outcome(&v.apply(11, &cmd("alice", id(2, 2), op))).unwrap();
            assert_eq!(status(&o), VaultStatus::VAULT_OK);
            let expected = if replace {
                UserView::Registered {
                    generation: 2,
                    attempts_left: 5,
                    max_attempts: 5,
                }
            } else {
                UserView::Deleted { generation: 1 }
            };
            assert_eq!(v.user(b"alice"), Some(expected));
        }
    }

    #[test]
    fn a_command_without_a_request_id_is_refused() {
        let mut v = registered(3);
        let mut c = VaultCommand::new();
        c.user = b"alice".to_vec();
        let mut x = VaultConsume::new();
        x.request_digest = vec![1; 32];
        c.op = Some(vault_command::Op::Consume(x));
        let o = decode_outcome(&v.apply(5, &wire::encode_bounded(&c))).unwrap();
        assert_eq!(status(&o), VaultStatus::VAULT_MALFORMED);
        assert_eq!(
            v.user(b"alice"),
            Some(UserView::Registered {
                generation: 1,
                attempts_left: 3,
                max_attempts: 3
            })
        );
    }

    #[test]
    fn registration_is_idempotent_but_never_overwrites() {
        let mut v = registered(10);
        let again = decode_outcome(&v.apply(
            2,
            &cmd("alice", id(1, 1), vault_command::Op::Register(reg(10, 1))),
        ))
        .unwrap();
        assert_eq!(status(&again), VaultStatus::VAULT_OK);
        let other = decode_outcome(&v.apply(
            3,
            &cmd("alice", id(5, 1), vault_command::Op::Register(reg(10, 9))),
        ))
        .unwrap();
        assert_eq!(status(&other), VaultStatus::VAULT_ALREADY_REGISTERED);
        for bad in [0, 256] {
            let o = decode_outcome(&v.apply(
                4,
                &cmd("bob", id(5, 2), vault_command::Op::Register(reg(bad, 2))),
            ))
            .unwrap();
            assert_eq!(status(&o), VaultStatus::VAULT_MALFORMED);
        }
    }

    #[test]
    fn finding_1_a_registration_redelivered_with_other_fields_is_a_conflict() {
        let mut v = BackupVault::new();
        let mut first = reg(3, 1);
        first.registration_tag = vec![0x11; 32];
        let o = decode_outcome(&v.apply(
            1,
            &cmd(
                "alice",
                id(1, 1),
                vault_command::Op::Register(first.clone()),
            ),
        ))
        .unwrap();
        assert_eq!((status(&o), o.max_attempts), (VaultStatus::VAULT_OK, 3));
        let mut limit = first.clone();
        limit.max_attempts = 255;
        let mut secret = first.clone();
        secret.registration_tag = vec![0x22; 32];
        secret.sealed_secret = vec![0x33; 48];
        let mut record = first.clone();
        record.opaque_record = vec![0x44; 64];
        for (i, altered) in [limit, secret, record].into_iter().enumerate() {
            let o = decode_outcome(&v.apply(
                2 + i as u64,
                &cmd("alice", id(1, 2), vault_command::Op::Register(altered)),
            ))
            .unwrap();
            assert_eq!(
                status(&o),
                VaultStatus::VAULT_REGISTRATION_CONFLICT,
                "case {i}: {o:?}"
            );
            assert_eq!(o.max_attempts, 3, "the outcome says what is stored");
        }
        // The very same registration again (a retry, re-sealed): already applied.
        let mut again = first.clone();
        again.sealed_secret = vec![0x55; 48];
        let o = decode_outcome(&v.apply(
            9,
            &cmd("alice", id(1, 3), vault_command::Op::Register(again)),
        ))
        .unwrap();
        assert_eq!(
            (status(&o), o.max_attempts, o.registration_tag.clone()),
            (VaultStatus::VAULT_OK, 3, vec![0x11; 32])
        );
        assert_eq!(
            v.user(b"alice"),
            Some(UserView::Registered {
                generation: 1,
                attempts_left: 3,
                max_attempts: 3
            })
        );
    }

    fn delete_cmd(ticket: u64, generation: u64) -> vault_command::Op {
        let mut d = VaultDelete::new();
        d.ticket = ticket;
        d.generation = generation;
        vault_command::Op::Delete(d)
    }

    #[test]
    fn the_snapshot_keeps_its_format() {
        // alice: locked by her last attempt; bob: deleted; carol: registered.
        let mut v = registered(1);
        let erased = consume(&mut v, 10, "alice", id(2, 1), 1);
        v.apply(
            11,
            &cmd("bob", id(3, 1), vault_command::Op::Register(reg(3, 2))),
        );
        consume(&mut v, 12, "bob", id(3, 2), 2);
        v.apply(13, &cmd("bob", id(3, 3), delete_cmd(12, 1)));
        v.apply(
            14,
            &cmd("carol", id(4, 1), vault_command::Op::Register(reg(3, 3))),
        );
        let s: VaultSnapshot = wire::decode(&v.snapshot().unwrap(), "vault snapshot").unwrap();
        let users: Vec<_> = s.users.iter().map(|u| u.user.as_slice()).collect();
        assert_eq!(users, [&b"alice"[..], b"bob", b"carol"]);
        let (alice, bob, carol) = (&s.users[0], &s.users[1], &s.users[2]);
        let erased = erased.record.into_option().unwrap();
        assert!(alice.record.is_none() && alice.locked);
        assert_eq!(
            (
                alice.generation,
                alice.locked_ticket,
                alice.locked_digest.clone()
            ),
            (1, 10, record_digest(&erased).to_vec())
        );
        assert!(bob.record.is_none() && !bob.locked);
        assert_eq!((bob.generation, bob.locked_ticket), (1, 0));
        assert!(bob.locked_digest.is_empty());
        assert_eq!(bob.used_nonces.len(), 1);
        let record = carol.record.as_ref().unwrap();
        assert_eq!((carol.generation, record.generation), (1, 1));
        assert!(!carol.locked && carol.locked_ticket == 0 && carol.locked_digest.is_empty());
        let mut copy = BackupVault::new();
        copy.restore(&v.snapshot().unwrap()).unwrap();
        assert_eq!(copy, v);
        assert_eq!(copy.snapshot().unwrap(), v.snapshot().unwrap());
    }

    #[test]
    fn a_snapshot_holding_an_impossible_user_is_refused() {
        let mut v = registered(1);
        consume(&mut v, 10, "alice", id(2, 1), 1);
        let good: VaultSnapshot = wire::decode(&v.snapshot().unwrap(), "vault snapshot").unwrap();
        let tamper = |f: &dyn Fn(&mut VaultUserState)| {
            let mut s = good.clone();
            f(&mut s.users[0]);
            BackupVault::new().restore(&wire::encode_bounded(&s))
        };
        assert!(tamper(&|_| {}).is_ok());
        let refused: [&dyn Fn(&mut VaultUserState); 5] = [
            &|u| u.record = Some(reg_record()).into(),
            &|u| u.locked_digest.truncate(31),
            &|u| u.locked = false,
            &|u| u.user.clear(),
            &|u| u.user = vec![b'x'; USER_ID_MAX + 1],
        ];
        for f in refused {
            assert!(matches!(tamper(f), Err(RestoreError::Malformed { .. })));
        }
    }

    /// A named edit of a user's snapshot form (mutation tests).
    type UserEdit<'a> = (&'a str, &'a dyn Fn(&mut VaultUserState));
    /// An edit of a registration (mutation tests).
    type RegisterEdit<'a> = &'a dyn Fn(&mut VaultRegister);

    /// Restores `good` with its one user changed by `f` (mutation tests of
    /// `UserState::from_wire`): `Ok` when the vault takes it.
    fn restore_tampered(
        good: &VaultSnapshot,
        f: impl FnOnce(&mut VaultUserState),
    ) -> Result<(), RestoreError> {
        let mut s = good.clone();
        f(&mut s.users[0]);
        BackupVault::new().restore(&wire::encode_bounded(&s))
    }

    /// The snapshot of a vault holding one registered user ("alice", limit 3).
    fn registered_snapshot() -> VaultSnapshot {
        let v = registered(3);
        wire::decode(&v.snapshot().unwrap(), "vault snapshot").unwrap()
    }

    fn refused(r: Result<(), RestoreError>) -> bool {
        matches!(r, Err(RestoreError::Malformed { .. }))
    }

    fn record_of(u: &mut VaultUserState) -> &mut VaultRecord {
        u.record.as_mut().unwrap()
    }

    #[test]
    fn mutant_user_from_wire_refuses_each_inconsistent_record_field_alone() {
        let good = registered_snapshot();
        assert!(restore_tampered(&good, |_| {}).is_ok());
        // Each inconsistency alone is refused.
        let bad: [UserEdit<'_>; 9] = [
            ("generation", &|u| u.generation += 1),
            ("record generation", &|u| record_of(u).generation += 1),
            ("spent beyond limit", &|u| {
                record_of(u).spent = vec![1, 1, 1, 1]
            }),
            ("zero limit", &|u| record_of(u).max_attempts = 0),
            ("limit too high", &|u| {
                record_of(u).max_attempts = MAX_ATTEMPTS_LIMIT + 1;
            }),
            ("long record", &|u| {
                record_of(u).opaque_record = vec![1; FIELD_MAX + 1];
            }),
            ("long secret", &|u| {
                record_of(u).sealed_secret = vec![1; FIELD_MAX + 1];
            }),
            ("long tag", &|u| {
                record_of(u).registration_tag = vec![1; REGISTRATION_TAG_MAX + 1];
            }),
            ("registered with a lock ticket", &|u| u.locked_ticket = 1),
        ];
        for (what, f) in bad {
            assert!(refused(restore_tampered(&good, f)), "{what} restored");
        }
    }

    #[test]
    fn mutant_user_from_wire_takes_every_record_field_at_its_limit() {
        let good = registered_snapshot();
        let at_limit: [UserEdit<'_>; 6] = [
            ("every attempt spent", &|u| {
                record_of(u).spent = vec![1, 1, 1]
            }),
            ("the highest limit", &|u| {
                record_of(u).max_attempts = MAX_ATTEMPTS_LIMIT;
            }),
            ("the longest record", &|u| {
                record_of(u).opaque_record = vec![1; FIELD_MAX];
            }),
            ("the longest secret", &|u| {
                record_of(u).sealed_secret = vec![1; FIELD_MAX];
            }),
            ("the longest tag", &|u| {
                record_of(u).registration_tag = vec![1; REGISTRATION_TAG_MAX];
            }),
            ("a limit of one", &|u| record_of(u).max_attempts = 1),
        ];
        for (what, f) in at_limit {
            assert!(restore_tampered(&good, f).is_ok(), "{what} refused");
        }
    }

    #[test]
    fn mutant_user_from_wire_refuses_lock_fields_of_a_user_not_locked() {
        // bob: registered, then deleted (no record, not locked).
        let mut v = BackupVault::new();
        v.apply(
            1,
            &cmd("bob", id(3, 1), vault_command::Op::Register(reg(3, 2))),
        );
        consume(&mut v, 2, "bob", id(3, 2), 2);
        let o = decode_outcome(&v.apply(3, &cmd("bob", id(3, 3), delete_cmd(2, 1)))).unwrap();
        assert_eq!(status(&o), VaultStatus::VAULT_OK);
        let deleted: VaultSnapshot =
            wire::decode(&v.snapshot().unwrap(), "vault snapshot").unwrap();
        assert!(restore_tampered(&deleted, |_| {}).is_ok());
        assert!(refused(restore_tampered(&deleted, |u| u.locked_ticket = 2)));
        assert!(refused(restore_tampered(&deleted, |u| {
            u.locked_digest = vec![0; 32];
        })));
        let mut copy = BackupVault::new();
        copy.restore(&v.snapshot().unwrap()).unwrap();
        assert_eq!(copy.user(b"bob"), Some(UserView::Deleted { generation: 1 }));
    }

    #[test]
    fn mutant_user_from_wire_bounds_the_seen_and_nonce_tables_exactly() {
        let good = registered_snapshot();
        let seen_max = SEEN_MAX + MAX_ATTEMPTS_LIMIT as usize + 1;
        let seen = |n: usize| {
            move |u: &mut VaultUserState| {
                let mut s = VaultSeen::new();
                s.ticket = 1;
                s.generation = 1;
                u.seen = vec![s; n];
            }
        };
        assert!(restore_tampered(&good, seen(seen_max)).is_ok());
        assert!(refused(restore_tampered(&good, seen(seen_max + 1))));
        let nonces = |n: usize| move |u: &mut VaultUserState| u.used_nonces = vec![vec![7; 32]; n];
        assert!(restore_tampered(&good, nonces(REGISTRATIONS_MAX)).is_ok());
        assert!(refused(restore_tampered(
            &good,
            nonces(REGISTRATIONS_MAX + 1)
        )));
    }

    #[test]
    fn mutant_user_greatest_ticket_holds_the_clock_back() {
        // Each place a ticket can sit in a user's state: the clock may not be
        // behind it.
        let good = registered_snapshot();
        let behind = |f: &dyn Fn(&mut VaultUserState)| {
            let mut s = good.clone();
            f(&mut s.users[0]);
            s.last_ticket = Some(99);
            let at = BackupVault::new().restore(&wire::encode_bounded(&s));
            s.last_ticket = Some(98);
            (
                at.is_ok(),
                refused(BackupVault::new().restore(&wire::encode_bounded(&s))),
            )
        };
        let places: [UserEdit<'_>; 4] = [
            ("spent", &|u| record_of(u).spent = vec![99]),
            ("registered at", &|u| record_of(u).registered_at = 99),
            ("forgiven through", &|u| record_of(u).forgiven_through = 99),
            ("seen", &|u| {
                let mut s = VaultSeen::new();
                s.ticket = 99;
                u.seen = vec![s];
            }),
        ];
        for (what, f) in places {
            assert_eq!(behind(f), (true, true), "a ticket {what}");
        }
    }

    #[test]
    fn mutant_machine_every_command_for_an_unknown_user_is_not_registered() {
        let mut v = registered(3);
        let unknown = |o: &VaultOutcome| status(o) == VaultStatus::VAULT_NOT_REGISTERED;
        assert!(unknown(&consume(&mut v, 10, "bob", id(2, 1), 1)));
        assert!(unknown(&reset(&mut v, 11, "bob", 10, 1, None)));
        let o = decode_outcome(&v.apply(12, &cmd("bob", id(2, 2), delete_cmd(10, 1)))).unwrap();
        assert!(unknown(&o));
        let mut x = VaultReplace::new();
        x.ticket = 10;
        x.generation = 1;
        x.record = Some(reg(3, 9)).into();
        let o = decode_outcome(&v.apply(13, &cmd("bob", id(2, 3), vault_command::Op::Replace(x))))
            .unwrap();
        assert!(unknown(&o));
        let o = decode_outcome(&v.query(&BackupVault::query_user(b"bob"))).unwrap();
        assert!(unknown(&o));
        assert_eq!(v.user(b"bob"), None);
    }

    fn register_outcome(
        v: &mut BackupVault,
        index: u64,
        user: &str,
        r: VaultRegister,
    ) -> VaultOutcome {
        decode_outcome(&v.apply(
            index,
            &cmd(user, id(7, index), vault_command::Op::Register(r)),
        ))
        .unwrap()
    }

    #[test]
    fn mutant_machine_check_register_refuses_each_bad_field_alone() {
        let bad: [(&str, RegisterEdit<'_>, &str); 10] = [
            ("no limit", &|r| r.max_attempts = 0, "max_attempts 0"),
            (
                "limit too high",
                &|r| r.max_attempts = MAX_ATTEMPTS_LIMIT + 1,
                "max_attempts 256",
            ),
            (
                "no record",
                &|r| r.opaque_record.clear(),
                "a registration needs",
            ),
            (
                "no secret",
                &|r| r.sealed_secret.clear(),
                "a registration needs",
            ),
            (
                "short nonce",
                &|r| r.credential_nonce.truncate(31),
                "a registration needs",
            ),
            (
                "long nonce",
                &|r| r.credential_nonce.push(0),
                "a registration needs",
            ),
            (
                "long record",
                &|r| r.opaque_record = vec![1; FIELD_MAX + 1],
                "a registration field exceeds",
            ),
            (
                "long secret",
                &|r| r.sealed_secret = vec![1; FIELD_MAX + 1],
                "a registration field exceeds",
            ),
            (
                "long tag",
                &|r| r.registration_tag = vec![1; REGISTRATION_TAG_MAX + 1],
                "a registration field exceeds",
            ),
            (
                "empty everything but the limit",
                &|r| {
                    r.opaque_record.clear();
                    r.sealed_secret.clear();
                },
                "a registration needs",
            ),
        ];
        for (i, (what, f, detail)) in bad.into_iter().enumerate() {
            let mut v = BackupVault::new();
            let mut r = reg(3, 1);
            f(&mut r);
            let o = register_outcome(&mut v, 1 + i as u64, "alice", r);
            assert_eq!(status(&o), VaultStatus::VAULT_MALFORMED, "{what}");
            assert!(o.detail.starts_with(detail), "{what}: {}", o.detail);
            assert!(v.user(b"alice").is_none(), "{what}");
        }
    }

    #[test]
    fn mutant_machine_check_register_takes_each_field_at_its_limit() {
        let at_limit: [(&str, RegisterEdit<'_>); 5] = [
            ("highest limit", &|r| r.max_attempts = MAX_ATTEMPTS_LIMIT),
            ("longest record", &|r| r.opaque_record = vec![1; FIELD_MAX]),
            ("longest secret", &|r| r.sealed_secret = vec![1; FIELD_MAX]),
            ("longest tag", &|r| {
                r.registration_tag = vec![1; REGISTRATION_TAG_MAX]
            }),
            ("limit of one", &|r| r.max_attempts = 1),
        ];
        for (what, f) in at_limit {
            let mut v = BackupVault::new();
            let mut r = reg(3, 1);
            f(&mut r);
            let o = register_outcome(&mut v, 1, "alice", r);
            assert_eq!(status(&o), VaultStatus::VAULT_OK, "{what}: {}", o.detail);
        }
    }

    #[test]
    fn mutant_machine_a_login_gets_the_record_without_its_sealed_secret() {
        let mut v = registered(3);
        let o = consume(&mut v, 10, "alice", id(2, 1), 1);
        let record = o.record.into_option().unwrap();
        let r = reg(3, 1);
        assert_eq!(
            (
                record.opaque_record,
                record.credential_nonce,
                record.generation
            ),
            (r.opaque_record, r.credential_nonce, 1)
        );
        assert!(
            record.sealed_secret.is_empty(),
            "a login never carries the sealed secret"
        );
    }

    #[test]
    fn mutant_machine_counts_its_users_and_answers_a_query_for_the_one_asked() {
        let mut v = BackupVault::new();
        assert!(v.is_empty());
        assert_eq!(v.len(), 0);
        register_outcome(&mut v, 1, "alice", reg(3, 1));
        register_outcome(&mut v, 2, "bob", reg(5, 2));
        assert!(!v.is_empty());
        assert_eq!(v.len(), 2);
        assert_eq!(BackupVault::query_user(b"bob"), b"bob".to_vec());
        let o = decode_outcome(&v.query(&BackupVault::query_user(b"bob"))).unwrap();
        assert_eq!(
            (status(&o), o.attempts_left, o.generation),
            (VaultStatus::VAULT_OK, 5, 1)
        );
    }

    #[test]
    fn mutant_machine_a_consume_redelivered_after_its_reset_gets_no_second_login() {
        let mut v = registered(3);
        let o = consume(&mut v, 10, "alice", id(2, 1), 0xaa);
        assert_eq!((status(&o), o.ticket), (VaultStatus::VAULT_OK, 10));
        assert_eq!(
            status(&reset(&mut v, 11, "alice", 10, 1, None)),
            VaultStatus::VAULT_OK
        );
        let again = consume(&mut v, 12, "alice", id(2, 1), 0xaa);
        assert_eq!(status(&again), VaultStatus::VAULT_BAD_TICKET);
        assert!(again.record.is_none(), "no record for a concluded attempt");
        assert_eq!(left(&v, b"alice"), 3);
    }

    #[test]
    fn mutant_machine_exactly_seen_max_concluded_consumes_are_remembered() {
        let mut v = registered(3);
        let mut index = 10;
        let cycle = |v: &mut BackupVault, index: &mut u64, n: u64| {
            let o = consume(v, *index, "alice", id(2, n), n as u8);
            assert_eq!(status(&o), VaultStatus::VAULT_OK);
            let o = reset(v, *index + 1, "alice", o.ticket, 1, None);
            assert_eq!(status(&o), VaultStatus::VAULT_OK);
            *index += 2;
        };
        // SEEN_MAX concluded consumes, and one more in flight when the last came:
        // all SEEN_MAX + 1 are remembered.
        for n in 1..=SEEN_MAX as u64 + 1 {
            cycle(&mut v, &mut index, n);
        }
        let first = consume(&mut v, index, "alice", id(2, 1), 1);
        assert_eq!(
            status(&first),
            VaultStatus::VAULT_BAD_TICKET,
            "the oldest is remembered"
        );
        assert_eq!(left(&v, b"alice"), 3);
        // One more: the oldest concluded one is forgotten, the next is not.
        cycle(&mut v, &mut index, SEEN_MAX as u64 + 2);
        let second = consume(&mut v, index, "alice", id(2, 2), 2);
        assert_eq!(
            status(&second),
            VaultStatus::VAULT_BAD_TICKET,
            "the second is remembered"
        );
        let first = consume(&mut v, index + 1, "alice", id(2, 1), 1);
        assert_eq!(
            (status(&first), first.ticket, left(&v, b"alice")),
            (VaultStatus::VAULT_OK, index + 1, 2),
            "the oldest was forgotten: a new attempt"
        );
    }

    #[test]
    fn mutant_machine_a_reset_forgives_again_only_inside_the_forgiven_range() {
        // Registered at clock value 1; attempt 10 forgiven: [1, 10] is the
        // forgiven range of this generation.
        let mut v = registered(3);
        consume(&mut v, 10, "alice", id(2, 1), 1);
        assert_eq!(
            status(&reset(&mut v, 11, "alice", 10, 1, None)),
            VaultStatus::VAULT_OK
        );
        // Its lower edge is inside (a duplicate: nothing changes).
        let o = reset(&mut v, 12, "alice", 1, 1, None);
        assert_eq!((status(&o), o.attempts_left), (VaultStatus::VAULT_OK, 3));
        // Below the registration: no attempt of this generation.
        assert_eq!(
            status(&reset(&mut v, 13, "alice", 0, 1, None)),
            VaultStatus::VAULT_BAD_TICKET
        );
        // Above the forgiven range and never spent.
        assert_eq!(
            status(&reset(&mut v, 14, "alice", 11, 1, None)),
            VaultStatus::VAULT_BAD_TICKET
        );
    }

    #[test]
    fn mutant_user_record_digest_covers_the_registration_tag() {
        // Only the erased record itself, its tag included, can be put back.
        let mut v = BackupVault::new();
        let mut r = reg(1, 1);
        r.registration_tag = vec![5; 32];
        assert_eq!(
            status(&register_outcome(&mut v, 1, "alice", r)),
            VaultStatus::VAULT_OK
        );
        let o = consume(&mut v, 10, "alice", id(2, 1), 1);
        assert!(o.erased);
        let erased = o.record.into_option().unwrap();
        let mut retagged = erased.clone();
        retagged.registration_tag = vec![6; 32];
        assert_eq!(
            status(&reset(&mut v, 11, "alice", 10, 1, Some(retagged))),
            VaultStatus::VAULT_LOCKED
        );
        let mut untagged = erased.clone();
        untagged.registration_tag.clear();
        assert_eq!(
            status(&reset(&mut v, 12, "alice", 10, 1, Some(untagged))),
            VaultStatus::VAULT_LOCKED
        );
        assert_eq!(
            status(&reset(&mut v, 13, "alice", 10, 1, Some(erased))),
            VaultStatus::VAULT_OK
        );
    }

    fn reg_record() -> VaultRecord {
        let r = reg(1, 1);
        new_record(r, 1, 1)
    }

    #[test]
    fn an_undecodable_command_gets_this_crates_own_words() {
        let mut v = BackupVault::new();
        let o = decode_outcome(&v.apply(3, b"\xff\xff\xff")).unwrap();
        assert_eq!(status(&o), VaultStatus::VAULT_MALFORMED);
        assert_eq!(o.detail, "vault command does not decode");
        assert_eq!(o.applied_at, 3);
        let long = cmd(
            &"x".repeat(USER_ID_MAX + 1),
            id(1, 1),
            vault_command::Op::Register(reg(3, 1)),
        );
        let o = decode_outcome(&v.apply(4, &long)).unwrap();
        assert_eq!(o.detail, format!("user id must be 1..={USER_ID_MAX} bytes"));
        assert!(v.is_empty());
    }

    fn left(v: &BackupVault, user: &[u8]) -> u32 {
        match v.user(user) {
            Some(UserView::Registered { attempts_left, .. }) => attempts_left,
            other => panic!("not registered: {other:?}"),
        }
    }

    #[test]
    fn finding_tickets_1_two_consumes_at_the_same_index_get_different_tickets() {
        // The engine applies every command of one batched entry at one index.
        let mut v = registered(10);
        v.apply(
            2,
            &cmd("bob", id(5, 1), vault_command::Op::Register(reg(10, 2))),
        );
        let a = consume(&mut v, 10, "alice", id(2, 1), 1);
        let b = consume(&mut v, 10, "alice", id(3, 1), 2);
        let c = consume(&mut v, 10, "bob", id(4, 1), 3);
        for o in [&a, &b, &c] {
            assert_eq!(status(o), VaultStatus::VAULT_OK, "{o:?}");
            assert_eq!(o.applied_at, 10);
        }
        assert_ne!(
            a.ticket, b.ticket,
            "two attempts of one batch share a ticket"
        );
        assert_ne!(a.ticket, c.ticket);
        assert_ne!(b.ticket, c.ticket);
        assert_eq!(left(&v, b"alice"), 8);
        // Each is de-duplicated on its own ticket.
        let again = consume(&mut v, 11, "alice", id(2, 1), 1);
        assert_eq!(
            (status(&again), again.ticket),
            (VaultStatus::VAULT_OK, a.ticket)
        );
        let again = consume(&mut v, 11, "alice", id(3, 1), 2);
        assert_eq!(
            (status(&again), again.ticket),
            (VaultStatus::VAULT_OK, b.ticket)
        );
        assert_eq!(left(&v, b"alice"), 8);
    }

    #[test]
    fn finding_tickets_2_a_guess_batched_after_the_right_login_stays_spent_after_its_reset() {
        let mut v = registered(4);
        // One entry: the user's right login, then the attacker's wrong guess.
        let right = consume(&mut v, 10, "alice", id(2, 1), 1);
        let wrong = consume(&mut v, 10, "alice", id(66, 1), 2);
        assert_eq!(
            (status(&right), status(&wrong)),
            (VaultStatus::VAULT_OK, VaultStatus::VAULT_OK)
        );
        assert_eq!(left(&v, b"alice"), 2);
        // The right login's reset forgives its own attempt, not the guess after it.
        let o = reset(&mut v, 11, "alice", right.ticket, 1, None);
        assert_eq!(status(&o), VaultStatus::VAULT_OK, "{o:?}");
        assert_eq!(o.attempts_left, 3, "the batched wrong guess was refunded");
        assert_eq!(left(&v, b"alice"), 3);
        let record = o.record.into_option().unwrap();
        assert_eq!(record.spent, vec![wrong.ticket]);
        assert_eq!(record.forgiven_through, right.ticket);
        // Replayed, the reset still forgives nothing more.
        let o = reset(&mut v, 12, "alice", right.ticket, 1, None);
        assert_eq!((status(&o), o.attempts_left), (VaultStatus::VAULT_OK, 3));
        // A guess batched before the right login is ordered before it: forgiven.
        let before = consume(&mut v, 13, "alice", id(66, 2), 3);
        let right = consume(&mut v, 13, "alice", id(2, 2), 4);
        assert!(before.ticket < right.ticket);
        assert_eq!(left(&v, b"alice"), 1);
        // Its reset forgives every attempt up to it: the old guess too.
        let o = reset(&mut v, 14, "alice", right.ticket, 1, None);
        assert_eq!((status(&o), o.attempts_left), (VaultStatus::VAULT_OK, 4));
    }

    #[test]
    fn finding_tickets_3_tickets_are_ordered_across_indexes_and_builds() {
        let mut v = registered(10);
        // Five consumes in one entry run the clock past the next index.
        let batch: Vec<u64> = (0..5)
            .map(|k| consume(&mut v, 10, "alice", id(2, k + 1), k as u8).ticket)
            .collect();
        let next = consume(&mut v, 11, "alice", id(3, 1), 9).ticket;
        let later = consume(&mut v, 40, "alice", id(3, 2), 10).ticket;
        let mut all = batch.clone();
        all.extend([next, later]);
        assert!(all.windows(2).all(|w| w[0] < w[1]), "{all:?}");
        assert!(
            batch[0] >= 10 && later >= 40,
            "a ticket is at least its index"
        );
        // A registration takes a clock value too: attempts of the new
        // generation are after it, attempts before it are no attempt of it.
        let before = consume(&mut v, 41, "alice", id(3, 3), 11).ticket;
        let o = decode_outcome(&v.apply(
            41,
            &cmd("carol", id(4, 1), vault_command::Op::Register(reg(3, 4))),
        ))
        .unwrap();
        assert_eq!(status(&o), VaultStatus::VAULT_OK);
        let first = consume(&mut v, 41, "carol", id(4, 2), 12).ticket;
        assert!(before < first);
        let o = reset(&mut v, 42, "carol", before, 1, None);
        assert_eq!(status(&o), VaultStatus::VAULT_BAD_TICKET, "{o:?}");
        // Across an upgrade: the state of an earlier build holds tickets that
        // are log indexes (here 20, at most the snapshot's index) and no clock.
        let mut old = VaultSnapshot::new();
        let mut u = VaultUserState::new();
        u.user = b"dave".to_vec();
        u.generation = 1;
        let mut r = new_record(reg(5, 5), 1, 5);
        r.spent = vec![20];
        u.record = Some(r).into();
        old.users.push(u);
        let mut upgraded = BackupVault::new();
        upgraded.restore(&wire::encode_bounded(&old)).unwrap();
        let new = consume(&mut upgraded, 21, "dave", id(5, 1), 1).ticket;
        assert!(new > 20);
        // The new login's reset forgives the old build's earlier attempt.
        let o = reset(&mut upgraded, 22, "dave", new, 1, None);
        assert_eq!((status(&o), o.attempts_left), (VaultStatus::VAULT_OK, 5));
    }

    #[test]
    fn finding_tickets_4_snapshot_and_restore_keep_tickets_unique() {
        let mut v = registered(10);
        let issued: Vec<u64> = (0..3)
            .map(|k| consume(&mut v, 10, "alice", id(2, k + 1), k as u8).ticket)
            .collect();
        let bytes = v.snapshot().unwrap();
        let mut copy = BackupVault::new();
        copy.restore(&bytes).unwrap();
        assert_eq!(copy, v);
        // The next entry's index (11) is below the clock (12): the restored
        // clock, not the index, keeps the next ticket new, alike on both.
        let a = consume(&mut v, 11, "alice", id(3, 1), 7);
        let b = consume(&mut copy, 11, "alice", id(3, 1), 7);
        assert_eq!(a, b);
        assert!(
            issued.iter().all(|&t| t < a.ticket),
            "{issued:?} {}",
            a.ticket
        );
        assert_eq!(copy, v);
        // A snapshot whose clock is behind a ticket it holds is refused.
        let mut s: VaultSnapshot = wire::decode(&bytes, "vault snapshot").unwrap();
        s.last_ticket = Some(issued[2] - 1);
        assert!(matches!(
            BackupVault::new().restore(&wire::encode_bounded(&s)),
            Err(RestoreError::Malformed { .. })
        ));
        // One without a clock (an earlier build's) takes its greatest ticket.
        s.last_ticket = None;
        let mut old = BackupVault::new();
        old.restore(&wire::encode_bounded(&s)).unwrap();
        let o = consume(&mut old, 11, "alice", id(3, 1), 7);
        assert!(issued.iter().all(|&t| t < o.ticket));
    }

    #[test]
    fn an_exhausted_ticket_clock_refuses_and_never_wraps() {
        let mut v = registered(10);
        v.last_ticket = u64::MAX;
        let o = consume(&mut v, 10, "alice", id(2, 1), 1);
        assert_eq!(status(&o), VaultStatus::VAULT_MALFORMED);
        assert_eq!(o.detail, Malformed::TicketsExhausted.to_string());
        assert_eq!(left(&v, b"alice"), 10);
        let o = decode_outcome(&v.apply(
            11,
            &cmd("bob", id(3, 1), vault_command::Op::Register(reg(3, 2))),
        ))
        .unwrap();
        assert_eq!(status(&o), VaultStatus::VAULT_MALFORMED);
        assert_eq!(v.last_ticket, u64::MAX);
    }

    #[test]
    fn snapshots_round_trip_and_garbage_is_an_error_response() {
        let mut v = registered(4);
        consume(&mut v, 10, "alice", id(2, 1), 1);
        let mut copy = BackupVault::new();
        copy.restore(&v.snapshot().unwrap()).unwrap();
        assert_eq!(copy, v);
        let o = decode_outcome(&v.apply(11, b"\xff\xff\xff")).unwrap();
        assert_eq!(status(&o), VaultStatus::VAULT_MALFORMED);
        assert!(copy.restore(b"\xff\xff\xff\xff").is_err());
    }
}
