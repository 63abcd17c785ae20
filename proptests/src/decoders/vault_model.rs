//! The structure-aware target of the vault state machine: a sequence of
//! logins, registrations, deletions and replays (decoded from the fuzz input
//! with `arbitrary`) applied to [`BackupVault`] at the level of the replicated
//! commands, next to a model of what each command must do.
//!
//! OPAQUE itself is left out (it costs milliseconds per login, and the
//! state machine never sees a code): a *login start* is the `consume` a service
//! proposes before answering, a *right code* is the `reset` (or `delete`) a
//! service proposes once the client proved the code, carrying the record back
//! if its consume erased it, and a *wrong code* is a login that ends without a
//! command (its attempt stays spent). Replays re-deliver any earlier command,
//! as a retrying service or a replaying attacker would.
//!
//! Checked after every step, for every user: the vault's view equals the
//! model's (registered with `max_attempts - unforgiven attempts` left, locked,
//! deleted); never more than `max_attempts` wrong codes are answered between
//! successes; a locked user stays locked unless the very login that locked it
//! proves the code; tickets only grow. At `snapshot` steps a second vault is
//! restored from the snapshot, equals the first, and from then on answers
//! every command with the same bytes.

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Unstructured};
use vaultfleet::StateMachine;
use vaultfleet_vault::wire::{
    vault_command, VaultCommand, VaultConsume, VaultDelete, VaultOutcome, VaultRecord,
    VaultRegister, VaultRequestId, VaultReset, VaultStatus,
};
use vaultfleet_vault::{BackupVault, UserView};

/// Users the sequences act on.
const USERS: u8 = 3;
/// Steps per input: below the vault's memory of concluded consumes (64), so a
/// replayed consume is always recognised.
const STEPS_MAX: usize = 60;

#[derive(Arbitrary, Debug)]
enum Step {
    Register {
        user: u8,
        max_attempts: u8,
    },
    LoginStart {
        user: u8,
    },
    LoginFinish {
        login: u8,
        right: bool,
        delete: bool,
    },
    Replay {
        command: u8,
    },
    Snapshot,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Model {
    Never,
    Registered {
        generation: u64,
        max: u32,
        spent: Vec<u64>,
    },
    Locked {
        generation: u64,
        ticket: u64,
    },
    Deleted {
        generation: u64,
    },
}

/// A consume that committed and whose login has not finished.
#[derive(Clone, Debug)]
struct Login {
    user: u8,
    ticket: u64,
    generation: u64,
    reinstate: Option<VaultRecord>,
}

#[derive(Clone, Debug)]
enum Kind {
    /// A registration, and whether the vault counted it (a refused one
    /// re-delivered later is a first delivery).
    Register {
        max: u32,
        took_effect: bool,
    },
    Consume {
        ticket: Option<u64>,
    },
    Reset,
    Delete,
}

struct Run {
    vault: BackupVault,
    follower: Option<BackupVault>,
    models: BTreeMap<u8, Model>,
    /// Per user: the tickets of logins answered "wrong code" in the current
    /// generation, and the ticket of the last success (attempts up to it are
    /// forgiven, whenever their answer went out).
    wrong: BTreeMap<u8, (Vec<u64>, u64)>,
    logins: Vec<Login>,
    applied: Vec<(u8, Kind, Vec<u8>)>,
    index: u64,
    sequence: u64,
    last_ticket: u64,
}

fn user_id(user: u8) -> Vec<u8> {
    format!("user-{user}").into_bytes()
}

fn command(user: u8, client: u64, sequence: u64, op: vault_command::Op) -> Vec<u8> {
    let mut r = VaultRequestId::new();
    r.client = client;
    r.sequence = sequence;
    let mut c = VaultCommand::new();
    c.user = user_id(user);
    c.request = Some(r).into();
    c.op = Some(op);
    match vaultfleet_vault::wire::encode(&c) {
        Ok(b) => b,
        Err(e) => panic!("a vault command does not encode: {e}"),
    }
}

fn status(o: &VaultOutcome) -> VaultStatus {
    o.status.enum_value_or(VaultStatus::VAULT_MALFORMED)
}

impl Run {
    fn new() -> Self {
        Self {
            vault: BackupVault::new(),
            follower: None,
            models: (0..USERS).map(|u| (u, Model::Never)).collect(),
            wrong: BTreeMap::new(),
            logins: Vec::new(),
            applied: Vec::new(),
            index: 0,
            sequence: 0,
            last_ticket: 0,
        }
    }

    /// Applies `bytes` at the next index (to the follower too, which must
    /// answer the same bytes).
    fn apply(&mut self, bytes: &[u8]) -> VaultOutcome {
        self.index += 1;
        let answer = self.vault.apply(self.index, bytes);
        if let Some(f) = &mut self.follower {
            assert_eq!(
                f.apply(self.index, bytes),
                answer,
                "a vault restored from a snapshot answered differently"
            );
        }
        match vaultfleet_vault::wire::decode::<VaultOutcome>(&answer, "vault outcome") {
            Ok(o) => o,
            Err(e) => panic!("the vault answered bytes that are not an outcome: {e}"),
        }
    }

    fn next_request(&mut self) -> u64 {
        self.sequence += 1;
        self.sequence
    }

    fn register(&mut self, user: u8, max_attempts: u8) {
        let max = u32::from(max_attempts % 4) + 1;
        let seq = self.next_request();
        let mut r = VaultRegister::new();
        r.opaque_record = format!("record {seq}").into_bytes();
        r.sealed_secret = format!("secret {seq}").into_bytes();
        r.credential_nonce = sha2_32(&seq.to_be_bytes());
        r.max_attempts = max;
        let bytes = command(user, 1, seq, vault_command::Op::Register(r));
        let took_effect = self.apply_register(user, &bytes, Some(max));
        self.applied
            .push((user, Kind::Register { max, took_effect }, bytes));
    }

    /// A registration, never counted yet (`max` given) or replayed after it
    /// took effect. True if it took effect now.
    fn apply_register(&mut self, user: u8, bytes: &[u8], max: Option<u32>) -> bool {
        let before = self.models[&user].clone();
        let o = self.apply(bytes);
        let s = status(&o);
        match (&before, max) {
            (Model::Never, Some(max)) | (Model::Deleted { .. }, Some(max)) => {
                assert_eq!(s, VaultStatus::VAULT_OK, "a fresh registration: {o:?}");
                let generation = match before {
                    Model::Deleted { generation } => generation + 1,
                    _ => 1,
                };
                assert_eq!(o.generation, generation);
                self.models.insert(
                    user,
                    Model::Registered {
                        generation,
                        max,
                        spent: Vec::new(),
                    },
                );
                self.wrong.insert(user, (Vec::new(), 0));
                self.take_ticket(o.ticket);
                return true;
            }
            (Model::Locked { .. }, _) => {
                assert_eq!(
                    s,
                    VaultStatus::VAULT_LOCKED,
                    "a locked user registered: {o:?}"
                )
            }
            // A replayed registration never makes a new generation: its nonce
            // was used.
            (_, None) => assert!(
                s != VaultStatus::VAULT_OK || o.detail == "already applied",
                "a replayed registration took effect: {o:?}"
            ),
            (Model::Registered { .. }, Some(_)) => assert_ne!(s, VaultStatus::VAULT_OK),
        }
        false
    }

    fn take_ticket(&mut self, ticket: u64) {
        if ticket != 0 {
            assert!(ticket > self.last_ticket, "tickets must only grow");
            self.last_ticket = ticket;
        }
    }

    fn login_start(&mut self, user: u8) {
        let seq = self.next_request();
        let mut x = VaultConsume::new();
        x.request_digest = sha2_32(&[&seq.to_be_bytes()[..], b"credential request"].concat());
        let bytes = command(user, 2, seq, vault_command::Op::Consume(x));
        let ticket = self.apply_consume(user, &bytes);
        self.applied.push((user, Kind::Consume { ticket }, bytes));
    }

    /// A consume that the vault has not counted yet (fresh, or re-delivered
    /// after its first delivery was refused): it spends an attempt of a
    /// registered user, and the last one erases the record. Returns its ticket.
    fn apply_consume(&mut self, user: u8, bytes: &[u8]) -> Option<u64> {
        let o = self.apply(bytes);
        let s = status(&o);
        let model = self.models[&user].clone();
        match model {
            Model::Registered {
                generation,
                max,
                mut spent,
            } => {
                assert_eq!(
                    s,
                    VaultStatus::VAULT_OK,
                    "a consume of a registered user: {o:?}"
                );
                self.take_ticket(o.ticket);
                spent.push(o.ticket);
                assert_eq!(o.attempts_left as usize, max as usize - spent.len());
                let erased = spent.len() == max as usize;
                assert_eq!(o.erased, erased, "the last attempt erases the record");
                self.logins.push(Login {
                    user,
                    ticket: o.ticket,
                    generation,
                    reinstate: erased.then(|| o.record.clone().unwrap_or_default()),
                });
                self.models.insert(
                    user,
                    if erased {
                        Model::Locked {
                            generation,
                            ticket: o.ticket,
                        }
                    } else {
                        Model::Registered {
                            generation,
                            max,
                            spent,
                        }
                    },
                );
                Some(o.ticket)
            }
            Model::Locked { .. } => {
                assert_eq!(s, VaultStatus::VAULT_LOCKED, "a consume of a locked user");
                None
            }
            Model::Never | Model::Deleted { .. } => {
                assert_eq!(s, VaultStatus::VAULT_NOT_REGISTERED);
                None
            }
        }
    }

    fn login_finish(&mut self, login: u8, right: bool, delete: bool) {
        if self.logins.is_empty() {
            return;
        }
        let l = self.logins.remove(usize::from(login) % self.logins.len());
        if !right {
            let current = match &self.models[&l.user] {
                Model::Registered { generation, .. } | Model::Locked { generation, .. } => {
                    *generation == l.generation
                }
                Model::Never | Model::Deleted { .. } => false,
            };
            if current {
                self.wrong.entry(l.user).or_default().0.push(l.ticket);
            }
            return;
        }
        let seq = self.next_request();
        let (kind, op) = if delete {
            let mut x = VaultDelete::new();
            x.ticket = l.ticket;
            x.generation = l.generation;
            x.reinstate = l.reinstate.clone().into();
            (Kind::Delete, vault_command::Op::Delete(x))
        } else {
            let mut x = VaultReset::new();
            x.ticket = l.ticket;
            x.generation = l.generation;
            x.reinstate = l.reinstate.clone().into();
            (Kind::Reset, vault_command::Op::Reset(x))
        };
        let bytes = command(l.user, 3, seq, op);
        self.applied.push((l.user, kind.clone(), bytes.clone()));
        self.apply_authorised(l.user, &kind, &bytes, &l);
    }

    /// A reset or delete carrying the authority of login `l` (fresh or replayed).
    fn apply_authorised(&mut self, user: u8, kind: &Kind, bytes: &[u8], l: &Login) {
        let before = self.models[&user].clone();
        let o = self.apply(bytes);
        let s = status(&o);
        let ok = s == VaultStatus::VAULT_OK;
        let is_delete = matches!(kind, Kind::Delete);
        let after = match before.clone() {
            Model::Never => {
                assert!(!ok);
                before
            }
            Model::Deleted { generation } => {
                // Only the same delete again is OK; nothing changes.
                assert_eq!(ok, is_delete && generation == l.generation, "{o:?}");
                before
            }
            Model::Locked { generation, ticket } => {
                let proves = generation == l.generation && ticket == l.ticket;
                assert_eq!(ok, proves && l.reinstate.is_some(), "reinstate: {o:?}");
                if !ok {
                    assert_eq!(s, VaultStatus::VAULT_LOCKED);
                    before
                } else if is_delete {
                    Model::Deleted { generation }
                } else {
                    self.succeeded(user, l.ticket);
                    let max = match &l.reinstate {
                        Some(r) => r.max_attempts,
                        None => unreachable!(),
                    };
                    Model::Registered {
                        generation,
                        max,
                        spent: Vec::new(),
                    }
                }
            }
            Model::Registered {
                generation,
                max,
                mut spent,
            } => {
                let current = generation == l.generation;
                if is_delete {
                    assert_eq!(ok, current && spent.contains(&l.ticket), "delete: {o:?}");
                    if ok {
                        Model::Deleted { generation }
                    } else {
                        before
                    }
                } else {
                    if !current {
                        assert!(!ok, "a reset of an earlier generation: {o:?}");
                    }
                    if spent.contains(&l.ticket) {
                        assert!(ok && current, "a reset of a spent attempt: {o:?}");
                        // Attempts ordered after the login stay spent.
                        spent.retain(|&t| t > l.ticket);
                        self.succeeded(user, l.ticket);
                    }
                    Model::Registered {
                        generation,
                        max,
                        spent,
                    }
                }
            }
        };
        self.models.insert(user, after);
    }

    /// A login proved the code at `ticket`: every attempt up to it is forgiven.
    fn succeeded(&mut self, user: u8, ticket: u64) {
        let w = self.wrong.entry(user).or_default();
        w.1 = w.1.max(ticket);
    }

    fn replay(&mut self, command: u8) {
        if self.applied.is_empty() {
            return;
        }
        let which = usize::from(command) % self.applied.len();
        let (user, kind, bytes) = self.applied[which].clone();
        match kind {
            Kind::Register {
                max,
                took_effect: false,
            } => {
                let took_effect = self.apply_register(user, &bytes, Some(max));
                self.applied[which].1 = Kind::Register { max, took_effect };
            }
            Kind::Register { .. } => {
                self.apply_register(user, &bytes, None);
            }
            // Refused when first delivered, so never counted: this delivery
            // is its first effective one.
            Kind::Consume { ticket: None } => {
                let ticket = self.apply_consume(user, &bytes);
                self.applied[which].1 = Kind::Consume { ticket };
            }
            Kind::Consume { ticket } => {
                let view = self.vault.user(&user_id(user));
                let o = self.apply(&bytes);
                assert_eq!(
                    self.vault.user(&user_id(user)),
                    view,
                    "a replayed consume spent an attempt: {o:?}"
                );
                if status(&o) == VaultStatus::VAULT_OK {
                    assert_eq!(
                        Some(o.ticket),
                        ticket,
                        "a replayed consume got another ticket"
                    );
                }
            }
            Kind::Reset | Kind::Delete => {
                let Ok(c) = vaultfleet_vault::wire::decode::<VaultCommand>(&bytes, "command")
                else {
                    unreachable!()
                };
                let (ticket, generation, reinstate) = match c.op {
                    Some(vault_command::Op::Reset(x)) => (x.ticket, x.generation, x.reinstate),
                    Some(vault_command::Op::Delete(x)) => (x.ticket, x.generation, x.reinstate),
                    _ => unreachable!(),
                };
                let l = Login {
                    user,
                    ticket,
                    generation,
                    reinstate: reinstate.into_option(),
                };
                self.apply_authorised(user, &kind, &bytes, &l);
            }
        }
    }

    fn snapshot(&mut self) {
        let snap = match self.vault.snapshot() {
            Ok(s) => s,
            Err(e) => panic!("the vault does not snapshot: {e}"),
        };
        let mut f = BackupVault::new();
        if let Err(e) = f.restore(&snap) {
            panic!("the vault's snapshot does not restore: {e}");
        }
        assert_eq!(f, self.vault, "snapshot then restore gives another vault");
        assert_eq!(f.snapshot().ok(), Some(snap), "snapshot not stable");
        self.follower = Some(f);
    }

    fn check(&self) {
        for (&user, model) in &self.models {
            let view = self.vault.user(&user_id(user));
            let expected = match model {
                Model::Never => None,
                Model::Registered {
                    generation,
                    max,
                    spent,
                } => {
                    assert!(
                        spent.len() < *max as usize,
                        "more unforgiven attempts than allowed"
                    );
                    Some(UserView::Registered {
                        generation: *generation,
                        attempts_left: max - spent.len() as u32,
                        max_attempts: *max,
                    })
                }
                Model::Locked { generation, .. } => Some(UserView::Locked {
                    generation: *generation,
                }),
                Model::Deleted { generation } => Some(UserView::Deleted {
                    generation: *generation,
                }),
            };
            assert_eq!(
                view, expected,
                "user {user}: the vault and the model disagree"
            );
            if let Model::Registered { max, .. } = model {
                let wrong = self.wrong.get(&user).map_or(0, |(tickets, through)| {
                    tickets.iter().filter(|&&t| t > *through).count()
                });
                assert!(
                    wrong <= *max as usize,
                    "user {user}: {wrong} wrong codes answered between successes, limit {max}"
                );
            }
        }
    }
}

fn sha2_32(data: &[u8]) -> Vec<u8> {
    use sha2::{Digest as _, Sha256};
    Sha256::digest(data).to_vec()
}

/// Runs the command sequence that `data` encodes (see the module
/// documentation) and checks the vault against its model after every step.
pub fn vault_machine(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mut run = Run::new();
    for _ in 0..STEPS_MAX {
        let Ok(step) = Step::arbitrary(&mut u) else {
            break;
        };
        match step {
            Step::Register { user, max_attempts } => run.register(user % USERS, max_attempts),
            Step::LoginStart { user } => run.login_start(user % USERS),
            Step::LoginFinish {
                login,
                right,
                delete,
            } => run.login_finish(login, right, delete),
            Step::Replay { command } => run.replay(command),
            Step::Snapshot => run.snapshot(),
        }
        run.check();
    }
}
