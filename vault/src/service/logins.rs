//! The logins a service keeps between two client messages, and the answers to
//! the finishes it concluded (so a repeated finish learns what was done).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use super::telemetry;
use crate::server::{PendingLogin, VerifiedLogin};
use crate::user_id::UserId;
use crate::wire::VaultReplyBody;

/// A login the service keeps between two client messages.
pub(super) struct Held {
    /// When it was filed (or last moved on), on the driver's clock.
    pub(super) at: Duration,
    pub(super) login: PendingLogin,
    /// The `LoginStart` request id it answers.
    pub(super) request: (u64, u64),
    /// The OPAQUE credential response sent for it: a re-delivered `LoginStart`
    /// (same request id, so the fleet gives the same attempt back) gets it
    /// again, and no second login.
    pub(super) response: Vec<u8>,
    /// After a verified `VAULT_REREGISTER_START` finish: the login, awaiting
    /// the new registration's upload (its session key authenticates it).
    pub(super) proven: Option<VerifiedLogin>,
    /// The digest of that finish and the reply it got: the same finish again
    /// (a retry after a lost reply, or a copy delivered first) gets it again.
    pub(super) proven_reply: Option<([u8; 32], VaultReplyBody)>,
    /// The digest of the finish whose command is being committed now: a copy
    /// of it is told to ask again, anything else finds no login.
    pub(super) committing: Option<[u8; 32]>,
}

/// Where a login is filed besides its id: its user and its `LoginStart`'s
/// request id (client, sequence), which it knows before the consume commits.
type LoginKey = (UserId, u64, u64);

fn login_key(user: &UserId, request: (u64, u64)) -> LoginKey {
    (user.clone(), request.0, request.1)
}

/// A finish whose command committed: its request's digest and the reply it got.
struct Concluded {
    at: Duration,
    digest: [u8; 32],
    reply: VaultReplyBody,
}

/// The logins kept, by login id and by (user, request id): one per consume.
/// Concluded finishes are remembered as long as a login lives, so the same
/// finish delivered again (a client's retry, or a copy an attacker held back)
/// is answered with the outcome that was committed, never applied twice and
/// never mistaken for a lost login.
#[derive(Default)]
pub(super) struct Logins {
    by_id: BTreeMap<u64, Held>,
    by_request: BTreeMap<LoginKey, u64>,
    concluded: BTreeMap<u64, Concluded>,
    /// Concluded logins in the order they concluded (oldest first).
    concluded_order: VecDeque<u64>,
}

impl Logins {
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    pub(super) fn of_user(&self, user: &UserId) -> usize {
        self.by_request
            .range(login_key(user, (0, 0))..=login_key(user, (u64::MAX, u64::MAX)))
            .count()
    }

    pub(super) fn get(&self, id: u64) -> Option<&Held> {
        self.by_id.get(&id)
    }

    pub(super) fn get_mut(&mut self, id: u64) -> Option<&mut Held> {
        self.by_id.get_mut(&id)
    }

    pub(super) fn id_of(&self, user: &UserId, request: (u64, u64)) -> Option<u64> {
        self.by_request.get(&login_key(user, request)).copied()
    }

    pub(super) fn insert(&mut self, id: u64, held: Held) {
        self.by_request
            .insert(login_key(held.login.user(), held.request), id);
        self.by_id.insert(id, held);
    }

    /// Marks login `id` as committing the finish of `digest`; false if it is
    /// already committing one (or is gone). The login keeps its time: marking
    /// it never extends its life, so a finish cannot be kept pending past
    /// `login_ttl` by re-delivering it.
    pub(super) fn begin_commit(&mut self, id: u64, digest: [u8; 32]) -> bool {
        match self.by_id.get_mut(&id) {
            Some(h) if h.committing.is_none() => {
                h.committing = Some(digest);
                true
            }
            _ => false,
        }
    }

    /// The commit of login `id` did not happen (or is not known to have): the
    /// login stays for the client's retry.
    pub(super) fn abort_commit(&mut self, id: u64) {
        if let Some(h) = self.by_id.get_mut(&id) {
            h.committing = None;
        }
    }

    /// The commit of login `id`'s finish `digest` is done: the login goes, its
    /// reply stays for a repeat of the same finish. At most `cap` replies are
    /// kept; beyond it the oldest is forgotten (a repeat of that finish then
    /// finds no login, as after a restart of the service).
    pub(super) fn conclude(
        &mut self,
        id: u64,
        digest: [u8; 32],
        reply: VaultReplyBody,
        now: Duration,
        cap: usize,
    ) {
        self.remove(id);
        while self.concluded.len() >= cap.max(1) {
            let Some(oldest) = self.concluded_order.pop_front() else {
                break;
            };
            self.concluded.remove(&oldest);
        }
        let entry = Concluded {
            at: now,
            digest,
            reply,
        };
        if self.concluded.insert(id, entry).is_none() {
            self.concluded_order.push_back(id);
        }
    }

    /// The reply a concluded login's finish got, if `digest` is that finish's.
    pub(super) fn concluded_reply(&self, id: u64, digest: &[u8; 32]) -> Option<&VaultReplyBody> {
        self.concluded
            .get(&id)
            .filter(|c| &c.digest == digest)
            .map(|c| &c.reply)
    }

    /// Whether login `id` is committing the finish of `digest` now.
    pub(super) fn is_committing(&self, id: u64, digest: &[u8; 32]) -> bool {
        self.by_id
            .get(&id)
            .is_some_and(|h| h.committing.as_ref() == Some(digest))
    }

    fn remove(&mut self, id: u64) -> Option<Held> {
        let held = self.by_id.remove(&id)?;
        self.by_request
            .remove(&login_key(held.login.user(), held.request));
        Some(held)
    }

    /// Forgets what is older than `ttl` at `now`. A login being committed
    /// expires too (its driver may have given up on the step); a commit that
    /// ends after that still answers its client.
    ///
    /// A login that expires unproven is counted as a wrong code: an OPAQUE
    /// client that typed a wrong code cannot finish, so its login ends here
    /// (an abandoned login looks the same). If its attempt was the user's
    /// last, the record stays erased: a lock-out.
    pub(super) fn expire(&mut self, now: Duration, ttl: Duration) {
        let alive = |at: Duration| now.saturating_sub(at) < ttl;
        let gone: Vec<u64> = self
            .by_id
            .iter()
            .filter(|(_, h)| !alive(h.at))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            let Some(held) = self.remove(id) else {
                continue;
            };
            if held.proven.is_none() && held.committing.is_none() {
                metrics::counter!(telemetry::WRONG_CODES).increment(1);
                if held.login.erased() {
                    metrics::counter!(telemetry::LOCKOUTS).increment(1);
                }
            }
        }
        while let Some(&oldest) = self.concluded_order.front() {
            if self.concluded.get(&oldest).is_some_and(|c| alive(c.at)) {
                break;
            }
            self.concluded_order.pop_front();
            self.concluded.remove(&oldest);
        }
    }

    pub(super) fn clear(&mut self) {
        self.by_id.clear();
        self.by_request.clear();
        self.concluded.clear();
        self.concluded_order.clear();
    }
}
