//! `BackupVault`: the replicated state machine of the Backup Key Vault.
//!
//! It holds, per user, the OPAQUE registration record and the user's secret
//! sealed under the fleet's HSM record key, and enforces the guess limit. It
//! never sees a recovery code, a session key or a plain-text secret, and it draws
//! no randomness: every random value (OPAQUE nonces, the credential nonce, AEAD
//! nonces) is drawn by the [`VaultService`](super::VaultService) before the command
//! is proposed, so `apply` is a pure function of the log.
//!
//! The rules, each applied atomically by one committed command:
//!
//! * **consume** spends one attempt and returns the record it was counted
//!   against; only then may a service answer a login. The attempt's *ticket* is
//!   the log index of the consume. A consume re-delivered with the same request id
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

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::wire::{self};
use crate::wire::{
    vault_command, VaultCommand, VaultOutcome, VaultRecord, VaultRegister, VaultRequestId,
    VaultSeen, VaultSnapshot, VaultStatus, VaultUserState,
};
use vaultfleet::state_machine::{RestoreError, StateMachine};

/// The most attempts a registration may allow.
pub const MAX_ATTEMPTS_LIMIT: u32 = 255;
/// The attempts a registration allows unless it asks otherwise.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;
/// The longest user id, in bytes.
pub const USER_ID_MAX: usize = 256;
/// The longest secret a user may store, in bytes.
pub const SECRET_MAX: usize = 1024;
/// Concluded consumes remembered per user for de-duplication; consumes whose
/// ticket is still spent are always remembered.
const SEEN_MAX: usize = 64;
/// Registrations (credential nonces) remembered per user; a user who has
/// registered this many times must use a new user id.
const REGISTRATIONS_MAX: usize = 1024;
/// Upper bound on a stored record field (OPAQUE record, sealed secret).
const FIELD_MAX: usize = 4096;

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

#[derive(Debug, Clone, Default, PartialEq)]
struct User {
    record: Option<VaultRecord>,
    generation: u64,
    locked: bool,
    locked_ticket: u64,
    locked_digest: Vec<u8>,
    seen: Vec<VaultSeen>,
    used_nonces: Vec<Vec<u8>>,
}

/// The replicated Backup Key Vault (see the module documentation for its rules).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackupVault {
    users: BTreeMap<Vec<u8>, User>,
}

/// The digest that ties an erased record to the ticket that may reinstate it.
pub(crate) fn record_digest(r: &VaultRecord) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"vaultfleet/vault/record/v1");
    for field in [&r.opaque_record, &r.sealed_secret, &r.credential_nonce] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field);
    }
    h.update(r.max_attempts.to_be_bytes());
    h.update(r.generation.to_be_bytes());
    h.update(r.registered_at.to_be_bytes());
    h.finalize().into()
}

fn outcome(status: VaultStatus, detail: impl Into<String>) -> VaultOutcome {
    let mut o = VaultOutcome::new();
    o.status = status.into();
    o.detail = detail.into();
    o
}

fn attempts_left(r: &VaultRecord) -> u32 {
    r.max_attempts.saturating_sub(r.spent.len() as u32)
}

fn check_register(r: &VaultRegister) -> Result<(), String> {
    if r.max_attempts == 0 || r.max_attempts > MAX_ATTEMPTS_LIMIT {
        return Err(format!(
            "max_attempts {} is outside 1..={MAX_ATTEMPTS_LIMIT}",
            r.max_attempts
        ));
    }
    if r.opaque_record.is_empty() || r.sealed_secret.is_empty() || r.credential_nonce.len() != 32 {
        return Err(
            "a registration needs an OPAQUE record, a sealed secret and a 32-byte credential nonce"
                .into(),
        );
    }
    if r.opaque_record.len() > FIELD_MAX || r.sealed_secret.len() > FIELD_MAX {
        return Err(format!("a registration field exceeds {FIELD_MAX} bytes"));
    }
    Ok(())
}

fn new_record(r: VaultRegister, generation: u64, index: u64) -> VaultRecord {
    let mut rec = VaultRecord::new();
    rec.opaque_record = r.opaque_record;
    rec.sealed_secret = r.sealed_secret;
    rec.credential_nonce = r.credential_nonce;
    rec.max_attempts = r.max_attempts;
    rec.generation = generation;
    rec.registered_at = index;
    rec
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
        Some(match (&u.record, u.locked) {
            (Some(r), _) => UserView::Registered {
                generation: r.generation,
                attempts_left: attempts_left(r),
                max_attempts: r.max_attempts,
            },
            (None, true) => UserView::Locked {
                generation: u.generation,
            },
            (None, false) => UserView::Deleted {
                generation: u.generation,
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

    /// Encodes a query for `user`'s status; [`BackupVault::query`] answers with a
    /// `VaultOutcome` (status, attempts left, generation; never the record).
    pub fn query_user(user: &[u8]) -> Vec<u8> {
        user.to_vec()
    }

    fn apply_command(&mut self, index: u64, c: VaultCommand) -> VaultOutcome {
        if c.user.is_empty() || c.user.len() > USER_ID_MAX {
            return outcome(
                VaultStatus::VAULT_MALFORMED,
                format!("user id must be 1..={USER_ID_MAX} bytes"),
            );
        }
        let Some(request) = c.request.clone().into_option() else {
            return outcome(
                VaultStatus::VAULT_MALFORMED,
                "vault command without a request id",
            );
        };
        let user = c.user;
        match c.op {
            Some(vault_command::Op::Register(r)) => self.register(index, user, r),
            Some(vault_command::Op::Consume(x)) => {
                self.consume(index, user, request, x.request_digest)
            }
            Some(vault_command::Op::Reset(x)) => {
                self.reset(&user, x.ticket, x.generation, x.reinstate.into_option())
            }
            Some(vault_command::Op::Replace(x)) => match x.record.into_option() {
                Some(r) => self.replace(
                    index,
                    &user,
                    x.ticket,
                    x.generation,
                    r,
                    x.reinstate.into_option(),
                ),
                None => outcome(VaultStatus::VAULT_MALFORMED, "replace without a record"),
            },
            Some(vault_command::Op::Delete(x)) => {
                self.delete(&user, x.ticket, x.generation, x.reinstate.into_option())
            }
            None => outcome(
                VaultStatus::VAULT_MALFORMED,
                "vault command has no operation",
            ),
        }
    }

    fn register(&mut self, index: u64, user: Vec<u8>, r: VaultRegister) -> VaultOutcome {
        if let Err(e) = check_register(&r) {
            return outcome(VaultStatus::VAULT_MALFORMED, e);
        }
        let u = self.users.entry(user).or_default();
        if u.locked {
            return outcome(
                VaultStatus::VAULT_LOCKED,
                "this user's record was erased after its last attempt; it cannot be registered again",
            );
        }
        if let Some(rec) = &u.record {
            if rec.opaque_record == r.opaque_record && rec.credential_nonce == r.credential_nonce {
                // The same registration delivered again (a retry): it succeeded.
                let mut o = outcome(VaultStatus::VAULT_OK, "already applied");
                o.generation = rec.generation;
                o.attempts_left = attempts_left(rec);
                return o;
            }
            let mut o = outcome(
                VaultStatus::VAULT_ALREADY_REGISTERED,
                "already registered: re-register through a login with the current code",
            );
            o.generation = rec.generation;
            o.attempts_left = attempts_left(rec);
            return o;
        }
        match Self::new_generation(u, r, index) {
            Ok(o) => o,
            Err(o) => o,
        }
    }

    /// Installs `r` as the user's next generation, unless its credential nonce
    /// was registered before (a replayed registration).
    fn new_generation(
        u: &mut User,
        r: VaultRegister,
        index: u64,
    ) -> Result<VaultOutcome, VaultOutcome> {
        let nonce_digest = Sha256::digest(&r.credential_nonce).to_vec();
        if u.used_nonces.contains(&nonce_digest) {
            return Err(outcome(
                VaultStatus::VAULT_REQUEST_REUSED,
                "this registration was used before (a replay): start a new registration",
            ));
        }
        if u.used_nonces.len() >= REGISTRATIONS_MAX {
            return Err(outcome(
                VaultStatus::VAULT_MALFORMED,
                format!("this user id has registered {REGISTRATIONS_MAX} times; use a new user id"),
            ));
        }
        let Some(generation) = u.generation.checked_add(1) else {
            return Err(outcome(
                VaultStatus::VAULT_MALFORMED,
                "generation exhausted",
            ));
        };
        u.generation = generation;
        u.used_nonces.push(nonce_digest);
        let rec = new_record(r, generation, index);
        let mut o = outcome(VaultStatus::VAULT_OK, "");
        o.generation = rec.generation;
        o.attempts_left = attempts_left(&rec);
        u.record = Some(rec);
        Ok(o)
    }

    fn consume(
        &mut self,
        index: u64,
        user: Vec<u8>,
        request: VaultRequestId,
        digest: Vec<u8>,
    ) -> VaultOutcome {
        if digest.len() != 32 {
            return outcome(
                VaultStatus::VAULT_MALFORMED,
                "request digest must be 32 bytes",
            );
        }
        let Some(u) = self.users.get_mut(&user) else {
            return outcome(VaultStatus::VAULT_NOT_REGISTERED, "no record for this user");
        };
        // A re-delivered consume: same ticket, nothing spent.
        let repeat = u
            .seen
            .iter()
            .find(|s| {
                s.request
                    .as_ref()
                    .is_some_and(|r| r.client == request.client && r.sequence == request.sequence)
            })
            .cloned();
        if let Some(seen) = repeat {
            if seen.request_digest != digest {
                return outcome(
                    VaultStatus::VAULT_REQUEST_REUSED,
                    "this request id was used for another credential request",
                );
            }
            return match &u.record {
                Some(r) if r.generation == seen.generation && r.spent.contains(&seen.ticket) => {
                    let mut o = outcome(VaultStatus::VAULT_OK, "");
                    o.ticket = seen.ticket;
                    o.attempts_left = attempts_left(r);
                    o.generation = r.generation;
                    let mut login = r.clone();
                    login.sealed_secret.clear();
                    o.record = Some(login).into();
                    o
                }
                Some(_) => outcome(
                    VaultStatus::VAULT_BAD_TICKET,
                    "this attempt was already concluded; start a new login",
                ),
                None if u.locked => outcome(VaultStatus::VAULT_LOCKED, "record erased"),
                None => outcome(VaultStatus::VAULT_NOT_REGISTERED, "no record for this user"),
            };
        }
        if u.locked {
            return outcome(
                VaultStatus::VAULT_LOCKED,
                "the record was erased after its last attempt",
            );
        }
        let Some(r) = u.record.as_mut() else {
            return outcome(VaultStatus::VAULT_NOT_REGISTERED, "no record for this user");
        };
        r.spent.push(index);
        let mut seen = VaultSeen::new();
        seen.request = Some(request).into();
        seen.request_digest = digest;
        seen.ticket = index;
        seen.generation = r.generation;
        u.seen.push(seen);
        // Forget the oldest concluded consumes beyond SEEN_MAX; a consume whose
        // ticket is still spent is always remembered (at most max_attempts).
        while u.seen.len() > SEEN_MAX + r.spent.len() {
            match u.seen.iter().position(|s| !r.spent.contains(&s.ticket)) {
                Some(i) => {
                    u.seen.remove(i);
                }
                None => break,
            }
        }
        let mut o = outcome(VaultStatus::VAULT_OK, "");
        o.ticket = index;
        o.attempts_left = attempts_left(r);
        o.generation = r.generation;
        if o.attempts_left == 0 {
            // The last attempt: erase in this same command. The record goes to the
            // proposing service only, for this attempt's login to put it back.
            let erased = u.record.take().unwrap_or_default();
            u.locked = true;
            u.locked_ticket = index;
            u.locked_digest = record_digest(&erased).to_vec();
            o.record = Some(erased).into();
            o.erased = true;
        } else {
            // What a login needs, without the sealed secret.
            let mut login = r.clone();
            login.sealed_secret.clear();
            o.record = Some(login).into();
        }
        o
    }

    fn reset(
        &mut self,
        user: &[u8],
        ticket: u64,
        generation: u64,
        reinstate: Option<VaultRecord>,
    ) -> VaultOutcome {
        let Some(u) = self.users.get_mut(user) else {
            return outcome(VaultStatus::VAULT_NOT_REGISTERED, "no record for this user");
        };
        if u.locked {
            if let Err(o) = Self::reinstate(u, ticket, generation, reinstate) {
                return o;
            }
            let r = u.record.as_ref().cloned().unwrap_or_default();
            let mut o = outcome(VaultStatus::VAULT_OK, "reinstated");
            o.ticket = ticket;
            o.generation = r.generation;
            o.attempts_left = attempts_left(&r);
            o.record = Some(r).into();
            return o;
        }
        let Some(r) = u.record.as_mut() else {
            return outcome(VaultStatus::VAULT_NOT_REGISTERED, "no record for this user");
        };
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
        let mut o = outcome(VaultStatus::VAULT_OK, "");
        o.ticket = ticket;
        o.generation = r.generation;
        o.attempts_left = attempts_left(r);
        o.record = Some(r.clone()).into();
        o
    }

    /// Puts back the record erased by `ticket`'s consume, if `record` is exactly
    /// it: the erasing attempt's login proved the code. Every attempt is forgiven.
    fn reinstate(
        u: &mut User,
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
        if !u.locked
            || u.generation != generation
            || r.generation != generation
            || u.locked_ticket != ticket
            || record_digest(&r).as_slice() != u.locked_digest.as_slice()
        {
            return Err(locked());
        }
        r.spent.clear();
        r.forgiven_through = ticket;
        u.locked = false;
        u.locked_ticket = 0;
        u.locked_digest.clear();
        u.record = Some(r);
        Ok(())
    }

    /// The record `ticket` may act on as the authority of a proven login: the
    /// ticket must be spent and not forgiven in the current generation, or be
    /// the attempt that erased the record (which `reinstate` then puts back).
    fn authorised(
        u: &mut User,
        ticket: u64,
        generation: u64,
        reinstate: Option<VaultRecord>,
    ) -> Result<(), VaultOutcome> {
        if u.locked {
            Self::reinstate(u, ticket, generation, reinstate)?;
            // The erasing attempt is the authority; keep it spent for the caller.
            if let Some(r) = u.record.as_mut() {
                r.spent.push(ticket);
            }
            return Ok(());
        }
        let Some(r) = u.record.as_mut() else {
            return Err(outcome(
                VaultStatus::VAULT_NOT_REGISTERED,
                "no record for this user",
            ));
        };
        if r.generation != generation || !r.spent.contains(&ticket) {
            return Err(outcome(
                VaultStatus::VAULT_BAD_TICKET,
                "the login does not authorise this (used already, or for another registration)",
            ));
        }
        Ok(())
    }

    fn replace(
        &mut self,
        index: u64,
        user: &[u8],
        ticket: u64,
        generation: u64,
        new: VaultRegister,
        reinstate: Option<VaultRecord>,
    ) -> VaultOutcome {
        if let Err(e) = check_register(&new) {
            return outcome(VaultStatus::VAULT_MALFORMED, e);
        }
        let Some(u) = self.users.get_mut(user) else {
            return outcome(VaultStatus::VAULT_NOT_REGISTERED, "no record for this user");
        };
        // Check the nonce before touching anything: a refused replace must leave
        // the user exactly as it was.
        let nonce_digest = Sha256::digest(&new.credential_nonce).to_vec();
        if u.used_nonces.contains(&nonce_digest) {
            return outcome(
                VaultStatus::VAULT_REQUEST_REUSED,
                "this registration was used before (a replay): start a new registration",
            );
        }
        let before = u.clone();
        if let Err(o) = Self::authorised(u, ticket, generation, reinstate) {
            return o;
        }
        match Self::new_generation(u, new, index) {
            Ok(o) => o,
            Err(o) => {
                *u = before;
                o
            }
        }
    }

    fn delete(
        &mut self,
        user: &[u8],
        ticket: u64,
        generation: u64,
        reinstate: Option<VaultRecord>,
    ) -> VaultOutcome {
        let Some(u) = self.users.get_mut(user) else {
            return outcome(VaultStatus::VAULT_NOT_REGISTERED, "no record for this user");
        };
        if let Err(o) = Self::authorised(u, ticket, generation, reinstate) {
            return o;
        }
        u.record = None;
        let mut o = outcome(VaultStatus::VAULT_OK, "deleted");
        o.generation = u.generation;
        o
    }
}

impl StateMachine for BackupVault {
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8> {
        let mut o = match wire::decode::<VaultCommand>(command, "vault command") {
            Ok(c) => self.apply_command(index, c),
            Err(e) => outcome(VaultStatus::VAULT_MALFORMED, e.to_string()),
        };
        o.applied_at = index;
        wire::encode(&o)
    }

    fn query(&self, query: &[u8]) -> Vec<u8> {
        let o = match self.user(query) {
            None => outcome(VaultStatus::VAULT_NOT_REGISTERED, "no record for this user"),
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
        wire::encode(&o)
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut s = VaultSnapshot::new();
        s.users = self
            .users
            .iter()
            .map(|(name, u)| {
                let mut w = VaultUserState::new();
                w.user = name.clone();
                w.record = u.record.clone().into();
                w.generation = u.generation;
                w.locked = u.locked;
                w.locked_ticket = u.locked_ticket;
                w.locked_digest = u.locked_digest.clone();
                w.seen = u.seen.clone();
                w.used_nonces = u.used_nonces.clone();
                w
            })
            .collect();
        wire::encode(&s)
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        let s: VaultSnapshot =
            wire::decode(snapshot, "vault snapshot").map_err(|e| RestoreError(e.to_string()))?;
        let mut users = BTreeMap::new();
        for w in s.users {
            if w.user.is_empty() || w.user.len() > USER_ID_MAX {
                return Err(RestoreError(
                    "vault snapshot holds an invalid user id".into(),
                ));
            }
            let u = User {
                record: w.record.into_option(),
                generation: w.generation,
                locked: w.locked,
                locked_ticket: w.locked_ticket,
                locked_digest: w.locked_digest,
                seen: w.seen,
                used_nonces: w.used_nonces,
            };
            if u.locked && u.record.is_some() {
                return Err(RestoreError(
                    "vault snapshot holds a locked user with a record".into(),
                ));
            }
            if let Some(r) = &u.record {
                if r.generation != u.generation
                    || r.spent.len() > r.max_attempts as usize
                    || r.max_attempts == 0
                    || r.max_attempts > MAX_ATTEMPTS_LIMIT
                    || r.opaque_record.len() > FIELD_MAX
                    || r.sealed_secret.len() > FIELD_MAX
                {
                    return Err(RestoreError(
                        "vault snapshot holds an inconsistent record".into(),
                    ));
                }
            }
            if u.seen.len() > SEEN_MAX + MAX_ATTEMPTS_LIMIT as usize + 1
                || u.used_nonces.len() > REGISTRATIONS_MAX
            {
                return Err(RestoreError("vault snapshot holds oversized tables".into()));
            }
            if users.insert(w.user, u).is_some() {
                return Err(RestoreError("vault snapshot lists a user twice".into()));
            }
        }
        self.users = users;
        Ok(())
    }
}

/// Decodes what [`BackupVault`] answered.
pub(crate) fn decode_outcome(bytes: &[u8]) -> Result<VaultOutcome, wire::DecodeError> {
    wire::decode(bytes, "vault outcome")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{VaultConsume, VaultDelete, VaultReplace, VaultReset};

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
        wire::encode(&c)
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
            !v.snapshot().windows(48).any(|w| w == [0xfe; 48].as_slice()),
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
        let o = decode_outcome(&v.apply(5, &wire::encode(&c))).unwrap();
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
    fn snapshots_round_trip_and_garbage_is_an_error_response() {
        let mut v = registered(4);
        consume(&mut v, 10, "alice", id(2, 1), 1);
        let mut copy = BackupVault::new();
        copy.restore(&v.snapshot()).unwrap();
        assert_eq!(copy, v);
        let o = decode_outcome(&v.apply(11, b"\xff\xff\xff")).unwrap();
        assert_eq!(status(&o), VaultStatus::VAULT_MALFORMED);
        assert!(copy.restore(b"\xff\xff\xff\xff").is_err());
    }
}
