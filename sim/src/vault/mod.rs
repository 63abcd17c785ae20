//! The vault workload: simulated users' devices register a backup key, recover
//! it with right and wrong codes, delete it and re-register it, through the
//! real vault service ([`ServiceCore`], one per replica, each with its own
//! replica's keys), the real OPAQUE client flows and the real [`BackupVault`],
//! with a network attacker between the devices and the services and every
//! fleet step subject to the simulator's faults.
//!
//! Each simulated client is one device at a time. It builds real
//! `VaultClientRequest` bytes and sends them to a service it picks (a login's
//! finish to the service that answered its start, as `VaultClient` does); the
//! [`attacker`](AttackRates) decides what reaches which service. A core that
//! waits on the fleet makes its step (a command or a read) the client's next
//! operation, and the output resumes it (`None`, the client gave up, is
//! `NotCommitted`). The cores' clock is the simulation's virtual time
//! ([`Workload::clock`]). Every reply is checked as `VaultClient::with_verifier`
//! checks it ([`verify_bundled_reply`]: the device's own `FleetVerifier`,
//! pinned to the witness and the operator, takes the response key from the
//! bundle the reply carries); a refused one counts as no reply, and the device
//! retries or gives up. Membership changes go through fleet epochs the
//! operator publishes (`epochs.rs`; `docs/simulation.md`). Now and then a
//! service restarts (forgets its logins).
//! Randomness comes from seeded RNGs and a seeded soft HSM: runs reproduce.
//!
//! Invariants, checked over the whole run:
//!
//! * **Guess limit.** Per user and registration, the attempts the fleet answered
//!   (every consume committed with OK, whoever's request it came from) between
//!   two successful recoveries (in ticket order) never exceed `max_attempts`. A
//!   reset whose outcome was never learnt forgives only once an outcome shows
//!   the record forgiven through exactly its ticket.
//! * **Locked means locked**, **tickets in log order**, one ticket per guess.
//! * **Re-delivery.** A `LoginStart` delivered again or replayed (same request
//!   id) gets its first ticket back while nothing changed the record.
//! * **Nothing the device did not send.** No altered request commits a reset,
//!   delete or replace; a committed registration's secret and limit are ones a
//!   device sent. A first registration's altered upload is the documented
//!   denial of service: allowed, but no device may report it done.
//! * **Codes and secrets.** The right code (of the committed registration) is
//!   never reported wrong; a wrong code never opens; a recovery yields exactly
//!   the registered secret.
//! * **Fleet epochs.** A device accepts a reply only under the key its
//!   replica has in a published epoch not older than the one before the
//!   newest it accepted, and not retired by a retirement it was handed (one
//!   byte for byte as the operator published it); and at the end the newest
//!   epoch lists exactly raft's converged configuration, and every device
//!   registers and recovers through every member's own service with it
//!   (`liveness.rs`).
//! * **Durability and recoverability.** In the converged fleet, every user a
//!   device registered is still registered (or was deleted, or is locked), with
//!   the devices' limit, and its secret is recoverable with its code: the
//!   checker runs a full recovery against a copy of the converged state.
//!
//! Every device operation ends as asked or with a failure it can name; the
//! counts per kind are [`VaultWorkload::outcomes`].

mod attacker;
mod epochs;
mod facts;
mod liveness;
#[cfg(test)]
mod tests;

pub use attacker::AttackRates;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::{ChaCha20Rng, ChaCha8Rng};
use sha2::{Digest, Sha256};
use vaultfleet::state_machine::{CaptureError, RestoreError};
use vaultfleet::{SoftHsm, StateMachine};
use vaultfleet_audit::fleet::{FleetArtifact, ReplicaKeys};
use vaultfleet_audit::{Bundle, FleetVerifier};
use vaultfleet_vault::wire::{
    vault_client_request, vault_command, VaultClientRequest, VaultCommand, VaultLoginFinish,
    VaultLoginPurpose, VaultLoginStart, VaultOutcome, VaultRecord, VaultRegister,
    VaultRegisterFinish, VaultRegisterStart, VaultReply, VaultReplyBody, VaultReplyStatus,
    VaultRequestId, VaultStatus,
};
use vaultfleet_vault::{
    authenticate_request, open_recovered_secret, registration_secret_digest, verify_bundled_reply,
    verify_pinned_reply, BackupVault, Call, ClientLoginFlow, ClientRegistrationFlow, FleetStep,
    KsfParams, LoginLimits, LoginOpened, NotCommitted, Progress, ReplyError, ServiceCore, UserId,
    UserView, VaultKeys, VaultPublicKeys, VaultServer, RETIREMENTS_MAX,
};

use crate::options::MembershipBug;
use crate::workload::{Converged, MemberChange, OpKind, Operation, Record, Workload};
use attacker::{Attacker, Delivery, Origin};
use epochs::Epochs;
use facts::{check_guess_limit, Facts};
use liveness::FinalDevice;

const KSF: KsfParams = KsfParams::TESTS_ONLY;
/// Sends of one request before the device gives up.
const TRIES: u32 = 3;
/// Percent of device operations before which a random service restarts.
const RESTART_PERCENT: u32 = 1;
/// The group of the simulated fleet.
const GROUP: u64 = 1;

fn user_id(key: u64) -> UserId {
    UserId::new(format!("user-{key}")).expect("user-<u64> is within the user id bounds")
}

/// The recovery code of `key`'s registration `version`.
fn code(key: u64, version: u64) -> Vec<u8> {
    format!("recovery code of user {key} v{version}").into_bytes()
}

/// The secret of `key`'s registration `version`.
fn secret(key: u64, version: u64) -> Vec<u8> {
    format!("backup key of user {key} v{version}").into_bytes()
}

/// The version of a secret of `key`'s, if it is one its devices register.
fn version_of(key: u64, s: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(s).ok()?;
    let v: u64 = text
        .strip_prefix(&format!("backup key of user {key} v"))?
        .parse()
        .ok()?;
    (secret(key, v) == s).then_some(v)
}

/// The key of a user id of this workload's (`user-<key>`, exactly).
fn key_of(user: &[u8]) -> Option<u64> {
    let key: u64 = std::str::from_utf8(user)
        .ok()?
        .strip_prefix("user-")?
        .parse()
        .ok()?;
    (user_id(key).as_bytes() == user).then_some(key)
}

fn decode(bytes: &[u8]) -> Option<VaultOutcome> {
    vaultfleet::wire::decode(bytes, "vault outcome").ok()
}

fn status(o: &VaultOutcome) -> VaultStatus {
    o.status.enum_value_or(VaultStatus::VAULT_MALFORMED)
}

fn reply_status(b: &VaultReplyBody) -> VaultReplyStatus {
    b.status.enum_value_or(VaultReplyStatus::REPLY_BAD_REQUEST)
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

    // The vault's own streaming paths, so streamed seeds take its frozen
    // views and restore off the replica's thread into a blank vault (the
    // counter workload keeps the defaults: captured whole, restored in place).
    fn snapshot_to(&self, out: &mut dyn std::io::Write) -> Result<(), CaptureError> {
        self.vault.snapshot_to(out)
    }

    fn snapshot_view(
        &self,
    ) -> Result<Box<dyn vaultfleet::state_machine::SnapshotView>, CaptureError> {
        self.vault.snapshot_view()
    }

    fn restore_from(&mut self, input: &mut dyn std::io::Read) -> Result<(), RestoreError> {
        self.vault.restore_from(input)
    }

    fn blank(&self) -> Option<Self> {
        Some(Self {
            vault: self.vault.blank()?,
            per_entry: self.per_entry,
        })
    }
}

/// How a device operation ended, as the device can name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DeviceOutcome {
    /// Done as asked (a recovery yielded exactly the user's secret).
    Succeeded,
    /// No service answered usably (no reply, unavailable, busy).
    Unavailable,
    /// A delete or re-registration whose finish got no usable answer: it may
    /// have been applied.
    OutcomeUnknown,
    /// Every reply to its last request failed the pinned-key check.
    RefusedReply,
    /// The signed reply did not confirm what was asked (limit, tag,
    /// generation, purpose) or its secret did not open.
    NotConfirmed,
    /// The code was wrong.
    WrongCode,
    /// The record was erased after its last attempt.
    Locked,
    /// The user has no record.
    NotRegistered,
    /// The user is registered already.
    AlreadyRegistered,
    /// The login was lost (its service restarted, or it expired).
    LoginLost,
    /// The service refused the request (bad request, stale, conflict).
    Rejected,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    Recover,
    Delete,
    Reregister,
}

impl Purpose {
    fn wire(self) -> VaultLoginPurpose {
        match self {
            Purpose::Recover => VaultLoginPurpose::VAULT_RECOVER,
            Purpose::Delete => VaultLoginPurpose::VAULT_DELETE,
            Purpose::Reregister => VaultLoginPurpose::VAULT_REREGISTER_START,
        }
    }
}

/// Where a device is in its operation (one per simulated client: size is
/// no concern).
#[allow(clippy::large_enum_variant)]
enum Stage {
    RegisterStart {
        flow: ClientRegistrationFlow,
        version: u64,
    },
    RegisterFinish {
        version: u64,
        tag: Vec<u8>,
        /// For a re-registration: the generation its login proved.
        login_generation: Option<u64>,
    },
    LoginStart {
        flow: ClientLoginFlow,
        guess: Vec<u8>,
        /// The version whose code is guessed (`None`: a wrong guess).
        guess_version: Option<u64>,
        purpose: Purpose,
        /// A re-registration's new flow and version.
        rereg: Option<(ClientRegistrationFlow, u64)>,
    },
    LoginFinish {
        guess_version: u64,
        purpose: Purpose,
        rereg: Option<(ClientRegistrationFlow, u64)>,
    },
}

/// A user's device and its one request outstanding (the same bytes on every
/// send, as `VaultClient` sends them).
struct Device {
    key: u64,
    stage: Stage,
    bytes: Vec<u8>,
    digest: [u8; 32],
    service: usize,
    /// Only `service` may answer (a login's finish, a re-registration's upload).
    pinned: bool,
    tries: u32,
    /// The last send's reply was refused by the pinned-key check.
    refused: bool,
    /// The login session (for a finish and a re-registration's upload).
    session: Option<LoginOpened>,
}

enum Item {
    Deliver(Delivery),
    /// The device's request did not arrive: it hears nothing.
    NoReply,
}

struct InFlight {
    delivery: Delivery,
    call: Call,
    step: FleetStep,
}

/// One vault service: a replica's [`ServiceCore`] and the fleet epoch it serves.
struct Service {
    /// Its replica's id.
    id: u64,
    core: ServiceCore<SoftHsm>,
    /// The epoch whose bundle it serves.
    epoch: u64,
    /// A reload the operator has asked for (its evidence and the witness's
    /// log, then SIGHUP): when, and to which epoch.
    reload: Option<(Duration, u64)>,
}

/// The replica `id`'s vault keys from the fleet's security world.
fn open_keys(world: &SoftHsm, sealed: &[u8], id: u64) -> VaultKeys<SoftHsm> {
    VaultKeys::open(world.clone(), sealed, GROUP, id)
        .unwrap_or_else(|e| panic!("a fresh soft HSM opens its own vault keys: {e}"))
}

/// Replica `id`'s service in datacenter `dc`, and its keys for the artifact.
fn open_service(
    world: &SoftHsm,
    sealed: &[u8],
    limits: LoginLimits,
    id: u64,
    dc: &str,
) -> (ServiceCore<SoftHsm>, ReplicaKeys) {
    let k = open_keys(world, sealed, id);
    let response = k
        .response_public_key()
        .unwrap_or_else(|e| panic!("a soft HSM signs: {e}"));
    let keys = epochs::replica_keys(id, dc, response, k.opaque_public_key());
    (ServiceCore::new(VaultServer::new(k), limits), keys)
}

/// What a device trusts: its [`FleetVerifier`], and what the epoch checker
/// knows of it.
struct DeviceTrust {
    verifier: FleetVerifier,
    /// The newest epoch of a reply it accepted (0: none yet).
    newest: u64,
    /// The newest epoch retired by a retirement it was handed (0: none).
    retired: u64,
    /// Under [`MembershipBug::DeviceKeepsOldKeys`]: every response key it
    /// verified, per replica.
    cached: BTreeMap<u64, BTreeSet<[u8; 32]>>,
    /// Under [`MembershipBug::DeviceTakesKeyFromNewestArtifact`]: each
    /// replica's key in the newest artifact it accepted that lists it.
    listed: BTreeMap<u64, (u64, [u8; 32])>,
}

#[derive(Default)]
struct Slot {
    device: Option<Device>,
    trust: Option<DeviceTrust>,
    queue: VecDeque<Item>,
    inflight: Option<InFlight>,
    sequence: u64,
}

/// The Backup Key Vault as a simulator workload: see the module docs.
pub struct VaultWorkload {
    /// Users (the linearizability checker's keys).
    pub users: u64,
    /// Attempts each registration allows.
    pub max_attempts: u32,
    /// Log entries the vault is shown as one batched index ([`BatchedVault`]).
    pub per_entry: u64,
    /// Test knob, a planted bug: devices accept a reply without checking that
    /// it answers their request (its request digest).
    pub bug_device_skips_digest_check: bool,
    /// Test knob, a planted bug of the fleet epochs' devices or operator
    /// ([`MembershipBug::DeviceKeepsOldKeys`],
    /// [`MembershipBug::DeviceIgnoresRetirements`],
    /// [`MembershipBug::DeviceTakesKeyFromNewestArtifact`],
    /// [`MembershipBug::EpochDropsReplica`]); the others are the world's.
    pub membership_bug: MembershipBug,
    /// The services devices know of (members, and removed ones still
    /// running), in the order they started.
    services: Vec<Service>,
    /// The fleet's security world: every replica's keys, the witness's and
    /// the operator's.
    world: SoftHsm,
    sealed: Vec<u8>,
    limits: LoginLimits,
    /// The operator's published fleet epochs.
    epochs: Epochs,
    /// Replica 1's server, for the checkers' own recoveries.
    server: VaultServer<SoftHsm>,
    rng: ChaCha20Rng,
    now: Duration,
    slots: Vec<Slot>,
    attacker: Attacker,
    facts: Facts,
    /// Per user, the version devices believe registered.
    believed: BTreeMap<u64, u64>,
    /// Per user, every version a device tried to register.
    tried: BTreeMap<u64, BTreeSet<u64>>,
    next_version: u64,
    outcomes: BTreeMap<DeviceOutcome, u64>,
    restarts: u64,
    /// Replies accepted under the epoch before the device's newest.
    previous_epoch_accepted: u64,
    /// Replies refused from replicas outside the newest epoch.
    non_member_refused: u64,
    /// Proposals of each consume: (user, client, sequence).
    consume_proposals: BTreeMap<(u64, u64, u64), u32>,
}

impl std::fmt::Debug for VaultWorkload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultWorkload")
            .field("users", &self.users)
            .field("max_attempts", &self.max_attempts)
            .field("per_entry", &self.per_entry)
            .field("services", &self.services.len())
            .finish_non_exhaustive()
    }
}

impl VaultWorkload {
    /// `users` users allowing `max_attempts` (1 to 255) attempts each, three
    /// services; `seed` seeds the fleet's soft HSM, the devices' OPAQUE
    /// randomness, the attacker and how many entries the vault sees batched
    /// at one index (1 to 4).
    ///
    /// Its epoch-1 artifact lists replicas 1 to 3: for a fleet of another
    /// size (`SimOptions::new` has 5 replicas) use
    /// [`VaultWorkload::for_fleet`], or the end-of-run check finds the newest
    /// epoch differing from raft's configuration.
    pub fn new(users: u64, max_attempts: u32, seed: u64) -> Self {
        Self::with_services(users, max_attempts, seed, 3)
    }

    /// As [`VaultWorkload::new`], with one service core per replica of a
    /// fleet of `services` (at least 1), one per datacenter.
    pub fn with_services(users: u64, max_attempts: u32, seed: u64, services: usize) -> Self {
        Self::for_fleet(users, max_attempts, seed, services, services)
    }

    /// As [`VaultWorkload::with_services`], the replicas spread round robin
    /// over `datacenters` datacenters (as the simulated fleet places them):
    /// the labels of the fleet's epoch-1 artifact.
    pub fn for_fleet(
        users: u64,
        max_attempts: u32,
        seed: u64,
        services: usize,
        datacenters: usize,
    ) -> Self {
        let world = SoftHsm::from_seed(seed ^ 0x7661_756c_7400_0000);
        let sealed = VaultKeys::provision(&world).unwrap_or_default();
        // Short logins, so they expire within a run.
        let limits = LoginLimits {
            login_ttl: Duration::from_secs(5),
            ..LoginLimits::default()
        };
        let n = services.max(1) as u64;
        let dcs = datacenters.clamp(1, services.max(1)) as u64;
        let members: Vec<(u64, String)> = (1..=n)
            .map(|id| (id, format!("dc-{}", (id - 1) % dcs)))
            .collect();
        let cores: Vec<(ServiceCore<SoftHsm>, ReplicaKeys)> = members
            .iter()
            .map(|(id, dc)| open_service(&world, &sealed, limits, *id, dc))
            .collect();
        let epochs = Epochs::new(
            world.clone(),
            cores.iter().map(|(_, k)| k.clone()).collect(),
        );
        let services = cores
            .into_iter()
            .map(|(core, k)| {
                core.serve(epochs.source(1));
                Service {
                    id: k.id,
                    core,
                    epoch: 1,
                    reload: None,
                }
            })
            .collect();
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        Self {
            users: users.max(1),
            max_attempts: max_attempts.clamp(1, 255),
            per_entry: rng.gen_range(1..=4),
            bug_device_skips_digest_check: false,
            membership_bug: MembershipBug::None,
            server: VaultServer::new(open_keys(&world, &sealed, 1)),
            services,
            world,
            sealed,
            limits,
            epochs,
            rng,
            now: Duration::ZERO,
            slots: Vec::new(),
            attacker: Attacker::new(AttackRates::DEFAULT),
            facts: Facts::default(),
            believed: BTreeMap::new(),
            tried: BTreeMap::new(),
            next_version: 1,
            outcomes: BTreeMap::new(),
            restarts: 0,
            consume_proposals: BTreeMap::new(),
            previous_epoch_accepted: 0,
            non_member_refused: 0,
        }
    }

    /// Sets the network attacker's rates ([`AttackRates::NONE`]: no attacker).
    pub fn with_attack_rates(mut self, rates: AttackRates) -> Self {
        self.attacker.rates = rates;
        self
    }

    /// Test knob, a planted bug: the attacker's altered finishes carry a valid
    /// intent tag, as if the services skipped the intent-tag check (the
    /// attacker is handed the device's session key).
    pub fn with_intent_tags_unchecked(mut self) -> Self {
        self.attacker.bug_tag_unchecked = true;
        self
    }

    /// The fleet's newest published epoch, and the newest epoch retired
    /// early (0: none).
    pub fn fleet_epochs(&self) -> (u64, u64) {
        (self.epochs.newest(), self.epochs.retired_through())
    }

    /// Replies devices accepted under the epoch before their newest (a
    /// service not yet reloaded, or a removed one still running), and
    /// replies of replicas outside the newest epoch they refused.
    pub fn epoch_stats(&self) -> (u64, u64) {
        (self.previous_epoch_accepted, self.non_member_refused)
    }

    /// How the devices' operations ended, per kind.
    pub fn outcomes(&self) -> &BTreeMap<DeviceOutcome, u64> {
        &self.outcomes
    }

    /// Attempts the fleet answered for the attacker's copies, alterations and
    /// replays, and re-delivered `LoginStart`s that got their ticket back.
    pub fn attack_stats(&self) -> (u64, u64) {
        (
            self.facts.attacker_attempts,
            self.facts.redelivered_same_ticket,
        )
    }

    fn slot(&mut self, client: usize) -> &mut Slot {
        if self.slots.len() <= client {
            self.slots.resize_with(client + 1, Slot::default);
        }
        &mut self.slots[client]
    }

    fn request(&mut self, client: usize, op: vault_client_request::Op) -> VaultClientRequest {
        let slot = self.slot(client);
        slot.sequence += 1;
        let mut id = VaultRequestId::new();
        id.client = client as u64 + 1;
        id.sequence = slot.sequence;
        let mut r = VaultClientRequest::new();
        r.request = Some(id).into();
        // The size of the newest checkpoint the device accepted, as
        // `VaultClient` names it: the reply's consistency proof starts there.
        r.known_checkpoint_size = self.trust(client).verifier.last_checkpoint_size();
        r.op = Some(op);
        r
    }

    /// Client `client`'s device's trust (pinned to the witness and the operator).
    fn trust(&mut self, client: usize) -> &mut DeviceTrust {
        let epochs = &self.epochs;
        let slot = &mut self.slots[client];
        slot.trust.get_or_insert_with(|| DeviceTrust {
            verifier: epochs.verifier(),
            newest: 0,
            retired: 0,
            cached: BTreeMap::new(),
            listed: BTreeMap::new(),
        })
    }

    /// Makes `r` the device's outstanding request, to `service`, and sends it.
    #[allow(clippy::too_many_arguments)]
    fn issue(
        &mut self,
        client: usize,
        key: u64,
        stage: Stage,
        r: &VaultClientRequest,
        service: usize,
        pinned: bool,
        session: Option<LoginOpened>,
    ) {
        let bytes = vaultfleet_vault::wire::encode_bounded(r);
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        self.slot(client).device = Some(Device {
            key,
            stage,
            bytes,
            digest,
            service,
            pinned,
            tries: TRIES,
            refused: false,
            session,
        });
        self.send(client);
    }

    /// Sends the device's request through the attacker.
    fn send(&mut self, client: usize) {
        let n = self.services.len();
        let Some(dev) = self.slots[client].device.as_ref() else {
            return;
        };
        let user = user_id(dev.key);
        let session = dev
            .session
            .as_ref()
            .map(|s| (&user, GROUP, s.session_key.as_slice()));
        let fate = self
            .attacker
            .fate(&mut self.rng, dev.key, dev.service, n, &dev.bytes, session);
        let slot = &mut self.slots[client];
        slot.queue
            .extend(fate.deliveries.into_iter().map(Item::Deliver));
        if fate.lost {
            slot.queue.push_back(Item::NoReply);
        }
    }

    fn end(&mut self, client: usize, outcome: DeviceOutcome) {
        *self.outcomes.entry(outcome).or_default() += 1;
        self.slot(client).device = None;
    }

    /// Starts a device operation for client `client`; a status read is
    /// returned as is.
    fn start_device(&mut self, client: usize, rng: &mut ChaCha8Rng) -> Option<Operation> {
        if rng.gen_range(0..100) < RESTART_PERCENT {
            let s = rng.gen_range(0..self.services.len());
            self.services[s].core.forget_logins();
            self.restarts += 1;
        }
        let key = rng.gen_range(0..self.users);
        let mut roll = rng.gen_range(0..100);
        // Every fourth user is under attack: almost only wrong guesses, so
        // records reach their limit and the erase paths run.
        if key % 4 == 3 && (15..=49).contains(&roll) && rng.gen_bool(0.9) {
            roll = 50;
        }
        let service = rng.gen_range(0..self.services.len());
        let believed = self.believed.get(&key).copied();
        match roll {
            0..=14 => self.start_register(client, key, service),
            15..=44 => self.start_login(client, key, service, believed, Purpose::Recover),
            45..=84 => self.start_login(client, key, service, None, Purpose::Recover),
            85..=88 => self.start_login(client, key, service, believed, Purpose::Delete),
            89..=93 => self.start_login(client, key, service, believed, Purpose::Reregister),
            _ => {
                return Some(Operation {
                    key,
                    kind: OpKind::Read(BackupVault::query_user(user_id(key).as_bytes())),
                })
            }
        }
        None
    }

    fn new_version(&mut self, key: u64) -> u64 {
        let v = self.next_version;
        self.next_version += 1;
        self.tried.entry(key).or_default().insert(v);
        v
    }

    fn start_register(&mut self, client: usize, key: u64, service: usize) {
        let version = self.new_version(key);
        let user = user_id(key);
        let Ok(flow) =
            ClientRegistrationFlow::start_with_insecure_rng(&mut self.rng, &code(key, version))
        else {
            return;
        };
        let mut start = VaultRegisterStart::new();
        start.user = user.as_bytes().to_vec();
        start.registration_request = flow.request().to_vec();
        start.max_attempts = self.max_attempts;
        start.secret_digest = registration_secret_digest(&user, &secret(key, version)).to_vec();
        let r = self.request(client, vault_client_request::Op::RegisterStart(start));
        let stage = Stage::RegisterStart { flow, version };
        self.issue(client, key, stage, &r, service, false, None);
    }

    fn start_login(
        &mut self,
        client: usize,
        key: u64,
        service: usize,
        version: Option<u64>,
        purpose: Purpose,
    ) {
        // A user no device registered yet: its device guesses version 0.
        let guess_version = match (purpose, version) {
            (Purpose::Recover, v) => v,
            (_, v) => Some(v.unwrap_or(0)),
        };
        let guess = match guess_version {
            Some(v) => code(key, v),
            None => format!("guess {} for user {key}", self.rng.gen::<u32>()).into_bytes(),
        };
        let Ok(flow) = ClientLoginFlow::start_with_insecure_rng(&mut self.rng, &guess) else {
            return;
        };
        let rereg = if purpose == Purpose::Reregister {
            let v = self.new_version(key);
            match ClientRegistrationFlow::start_with_insecure_rng(&mut self.rng, &code(key, v)) {
                Ok(f) => Some((f, v)),
                Err(_) => return,
            }
        } else {
            None
        };
        let mut start = VaultLoginStart::new();
        start.user = user_id(key).as_bytes().to_vec();
        start.credential_request = flow.request().to_vec();
        let r = self.request(client, vault_client_request::Op::LoginStart(start));
        let stage = Stage::LoginStart {
            flow,
            guess,
            guess_version,
            purpose,
            rereg,
        };
        self.issue(client, key, stage, &r, service, false, None);
    }

    /// Processes `client`'s queued deliveries until one waits on the fleet
    /// (its step is returned as the client's operation).
    fn drain(&mut self, client: usize) -> Option<Operation> {
        while let Some(item) = self.slot(client).queue.pop_front() {
            match item {
                Item::NoReply => self.device_reply(client, None),
                Item::Deliver(d) => match self.services[d.service].core.begin(&d.bytes, self.now) {
                    Progress::Reply(r) => self.route(client, &d, r),
                    Progress::Wait { call, step } => {
                        self.note_proposal(&step);
                        let op = step_op(d.key, &step);
                        self.slots[client].inflight = Some(InFlight {
                            delivery: d,
                            call,
                            step,
                        });
                        return Some(op);
                    }
                },
            }
        }
        None
    }

    /// The operator's reloads that are due.
    fn reload_due(&mut self) {
        for s in &mut self.services {
            if let Some((_, epoch)) = s.reload.filter(|(at, _)| *at <= self.now) {
                s.core.serve(self.epochs.source(epoch));
                s.epoch = epoch;
                s.reload = None;
            }
        }
    }

    /// Counts the proposals of each consume (user, request id): a consume
    /// proposed again may be answered at a later index with its first ticket.
    fn note_proposal(&mut self, step: &FleetStep) {
        let FleetStep::Propose(c) = step else {
            return;
        };
        let Ok(c) = vaultfleet::wire::decode::<VaultCommand>(c, "command") else {
            return;
        };
        if let (Some(vault_command::Op::Consume(_)), Some(key)) = (&c.op, key_of(&c.user)) {
            let id = c.request.clone().unwrap_or_default();
            *self
                .consume_proposals
                .entry((key, id.client, id.sequence))
                .or_default() += 1;
        }
    }

    /// A service's reply to delivery `d`: to the device (through the
    /// attacker) if it is the device's own request, else kept by the attacker.
    fn route(&mut self, client: usize, d: &Delivery, reply: Vec<u8>) {
        if d.origin == Origin::Genuine {
            let (reply, _swapped) = self.attacker.reply_path(&mut self.rng, reply);
            self.device_reply(client, Some(reply));
        } else {
            self.attacker.keep_reply(&reply);
        }
    }

    /// The device's reply check, as a `VaultClient` built with
    /// `with_verifier` makes it ([`verify_bundled_reply`]: retirements, the
    /// bundle with its consistency proof, the signature under the answering
    /// replica's key from that bundle, the request digest) for the reply of
    /// `service` to the request whose SHA-256 is `digest`, at its clock;
    /// then the epoch checker over what it accepted. Under the planted bugs
    /// it checks the digest the reply claims, drops the retirements, or falls
    /// back to a key it learnt before.
    fn check_reply(
        &mut self,
        client: usize,
        service: usize,
        digest: &[u8; 32],
        reply: &[u8],
    ) -> Result<VaultReplyBody, ReplyError> {
        let replica = self.services[service].id;
        let now = epochs::UNIX_AT_START + self.now.as_secs();
        let digest = if self.bug_device_skips_digest_check {
            let r: VaultReply = vaultfleet_vault::wire::decode(reply, "reply")?;
            let b: VaultReplyBody = vaultfleet_vault::wire::decode(&r.body, "body")?;
            b.request_digest.as_slice().try_into().unwrap_or([0; 32])
        } else {
            *digest
        };
        let bug = self.membership_bug;
        let handed = self.retired_through_in(reply);
        // The planted bug: the reply's retirements never reach the verifier.
        let stripped;
        let checked = if bug == MembershipBug::DeviceIgnoresRetirements {
            stripped = without_retirements(reply);
            stripped.as_deref().unwrap_or(reply)
        } else {
            reply
        };
        let trust = self.trust(client);
        trust.retired = trust.retired.max(handed);
        let body = match verify_bundled_reply(
            &mut trust.verifier,
            GROUP,
            replica,
            checked,
            &digest,
            now,
        ) {
            Ok(v) => {
                match bug {
                    MembershipBug::DeviceKeepsOldKeys => {
                        trust
                            .cached
                            .entry(replica)
                            .or_default()
                            .insert(v.response_key);
                    }
                    MembershipBug::DeviceTakesKeyFromNewestArtifact => {
                        for k in artifact_in(reply).map(|a| a.replicas).unwrap_or_default() {
                            let newer = trust.listed.get(&k.id).is_none_or(|(e, _)| *e <= v.epoch);
                            if newer {
                                trust.listed.insert(k.id, (v.epoch, k.response_key));
                            }
                        }
                    }
                    _ => {}
                }
                v.body
            }
            Err(e) => {
                // The planted bugs: a key learnt once is good for ever.
                let fallback: Vec<[u8; 32]> = match bug {
                    MembershipBug::DeviceKeepsOldKeys => trust
                        .cached
                        .get(&replica)
                        .into_iter()
                        .flatten()
                        .copied()
                        .collect(),
                    MembershipBug::DeviceTakesKeyFromNewestArtifact => trust
                        .listed
                        .get(&replica)
                        .map(|(_, k)| *k)
                        .into_iter()
                        .collect(),
                    _ => Vec::new(),
                };
                let body = fallback.iter().find_map(|key| {
                    let keys = VaultPublicKeys {
                        group: GROUP,
                        replicas: BTreeMap::from([(replica, *key)]),
                    };
                    verify_pinned_reply(&keys, replica, reply, &digest).ok()
                });
                if body.is_none() && !self.epochs.is_member(replica) {
                    self.non_member_refused += 1;
                }
                body.ok_or(e)?
            }
        };
        self.check_epoch(client, replica, reply, &digest);
        Ok(body)
    }

    /// The newest epoch retired by the retirements `reply` carries that the
    /// device's verifier was handed (0: none): only a reply that passes the
    /// shape check ([`verify_bundled_reply`] applies its retirements, a
    /// refused reply's too), and only retirements byte for byte ones the
    /// operator published (an altered one fails its signature check and is
    /// skipped).
    fn retired_through_in(&self, reply: &[u8]) -> u64 {
        let Ok(r) = vaultfleet_vault::wire::decode::<VaultReply>(reply, "reply") else {
            return 0;
        };
        if r.bundle.is_empty() || r.retirements.len() > RETIREMENTS_MAX {
            return 0;
        }
        r.retirements
            .iter()
            .filter_map(|b| self.epochs.published_retirement(b))
            .max()
            .unwrap_or(0)
    }

    /// The epoch checker, over a reply `client`'s device accepted from
    /// `replica`: the bundle it carries must be of an epoch the operator
    /// published whose artifact lists `replica` with the key that signed the
    /// reply; not older than the epoch before the newest the device accepted
    /// (the one epoch of grace `FleetVerifier` gives replicas still serving
    /// the previous epoch); and not retired by a retirement the device was
    /// handed. So a removed replica's key is refused once the device
    /// accepted the second epoch without it, or a retirement of the epochs
    /// that list it.
    fn check_epoch(&mut self, client: usize, replica: u64, reply: &[u8], digest: &[u8; 32]) {
        let epoch = bundle_epoch_in(reply);
        let signed = epoch
            .and_then(|e| self.epochs.artifact(e))
            .and_then(|a| a.replica(replica))
            .is_some_and(|k| {
                let keys = VaultPublicKeys {
                    group: GROUP,
                    replicas: BTreeMap::from([(replica, k.response_key)]),
                };
                verify_pinned_reply(&keys, replica, reply, digest).is_ok()
            });
        let trust = self.trust(client);
        let (newest, retired) = (trust.newest, trust.retired);
        if let Some(e) = epoch {
            trust.newest = trust.newest.max(e);
            if e + 1 == newest {
                self.previous_epoch_accepted += 1;
            }
        }
        let problem = match epoch {
            None => Some("bundle names no epoch".to_string()),
            Some(e) if !signed => Some(format!(
                "signature is not by the replica's response key in epoch {e}, the epoch of \
                 its bundle"
            )),
            Some(e) if e + 1 < newest => Some(format!(
                "bundle is of epoch {e}, older than the epoch before {newest}, the newest the \
                 device accepted"
            )),
            Some(e) if e <= retired => Some(format!(
                "bundle is of epoch {e}, retired (through {retired}) by a retirement the \
                 device was handed"
            )),
            Some(_) => None,
        };
        if let Some(p) = problem {
            self.facts.errors.push(format!(
                "fleet epochs: device {client} accepted a reply of replica {replica} whose {p}"
            ));
        }
    }

    /// The device hears `reply` (or nothing) to its outstanding request.
    fn device_reply(&mut self, client: usize, reply: Option<Vec<u8>>) {
        let Some(mut dev) = self.slot(client).device.take() else {
            return;
        };
        let body = match reply {
            Some(r) => match self.check_reply(client, dev.service, &dev.digest, &r) {
                Ok(b) => {
                    dev.refused = false;
                    Some(b)
                }
                Err(_) => {
                    dev.refused = true;
                    None
                }
            },
            None => {
                dev.refused = false;
                None
            }
        };
        let usable = body.filter(|b| {
            !matches!(
                reply_status(b),
                VaultReplyStatus::REPLY_UNAVAILABLE | VaultReplyStatus::REPLY_BUSY
            )
        });
        match usable {
            Some(b) => self.advance(client, dev, b),
            None => self.retry(client, dev),
        }
    }

    fn retry(&mut self, client: usize, mut dev: Device) {
        dev.tries = dev.tries.saturating_sub(1);
        if dev.tries > 0 {
            if !dev.pinned {
                dev.service = (dev.service + 1) % self.services.len();
            }
            self.slot(client).device = Some(dev);
            self.send(client);
            return;
        }
        let uncertain = match &dev.stage {
            Stage::LoginFinish { purpose, .. } => *purpose == Purpose::Delete,
            Stage::RegisterFinish {
                login_generation, ..
            } => login_generation.is_some(),
            _ => false,
        };
        let outcome = if uncertain {
            DeviceOutcome::OutcomeUnknown
        } else if dev.refused {
            DeviceOutcome::RefusedReply
        } else {
            DeviceOutcome::Unavailable
        };
        self.end(client, outcome);
    }

    /// The registration's upload for `b`, the answer to its start (a first
    /// registration's, or a re-registration's login finish): `None` if the
    /// answer does not open.
    fn register_finish(
        &mut self,
        flow: ClientRegistrationFlow,
        user: &UserId,
        key: u64,
        version: u64,
        b: &VaultReplyBody,
    ) -> Option<VaultRegisterFinish> {
        let upload = flow
            .finish_with_insecure_rng(
                &mut self.rng,
                &code(key, version),
                &b.registration_response,
                &KSF,
            )
            .ok()?;
        let mut f = VaultRegisterFinish::new();
        f.user = user.as_bytes().to_vec();
        f.registration_upload = upload;
        f.credential_nonce = b.credential_nonce.clone();
        f.nonce_tag = b.nonce_tag.clone();
        f.secret = secret(key, version);
        f.max_attempts = self.max_attempts;
        f.issued_generation = b.generation;
        Some(f)
    }

    fn failure(b: &VaultReplyBody) -> DeviceOutcome {
        match reply_status(b) {
            VaultReplyStatus::REPLY_NOT_REGISTERED => DeviceOutcome::NotRegistered,
            VaultReplyStatus::REPLY_LOCKED => DeviceOutcome::Locked,
            VaultReplyStatus::REPLY_ALREADY_REGISTERED => DeviceOutcome::AlreadyRegistered,
            VaultReplyStatus::REPLY_LOGIN_FAILED => DeviceOutcome::WrongCode,
            VaultReplyStatus::REPLY_LOGIN_UNKNOWN => DeviceOutcome::LoginLost,
            VaultReplyStatus::REPLY_UNAVAILABLE | VaultReplyStatus::REPLY_BUSY => {
                DeviceOutcome::Unavailable
            }
            _ => DeviceOutcome::Rejected,
        }
    }

    /// The right code of `key`'s registration `generation`, if the run saw it
    /// committed: a guess of `guess_version` is right iff it is that version.
    fn is_right(&self, key: u64, generation: u64, guess_version: u64) -> Option<bool> {
        self.facts
            .versions
            .get(&(key, generation))
            .map(|v| *v == guess_version)
    }

    /// A verified, usable reply to the device's request.
    fn advance(&mut self, client: usize, dev: Device, b: VaultReplyBody) {
        let ok = reply_status(&b) == VaultReplyStatus::REPLY_OK;
        let key = dev.key;
        let user = user_id(key);
        match dev.stage {
            Stage::RegisterStart { flow, version } => {
                if !ok {
                    return self.end(client, Self::failure(&b));
                }
                let Some(f) = self.register_finish(flow, &user, key, version, &b) else {
                    return self.end(client, DeviceOutcome::Rejected);
                };
                let r = self.request(client, vault_client_request::Op::RegisterFinish(f));
                let stage = Stage::RegisterFinish {
                    version,
                    tag: b.nonce_tag,
                    login_generation: None,
                };
                let service = (dev.service + 1) % self.services.len();
                self.issue(client, key, stage, &r, service, false, None);
            }
            Stage::RegisterFinish {
                version,
                tag,
                login_generation,
            } => {
                if !ok {
                    return self.end(client, Self::failure(&b));
                }
                // What VaultClient confirms: the limit, the tag, a newer generation.
                if b.max_attempts != self.max_attempts
                    || b.registration_tag != tag
                    || login_generation.is_some_and(|g| b.generation <= g)
                {
                    return self.end(client, DeviceOutcome::NotConfirmed);
                }
                self.facts.device_registered.insert((key, b.generation));
                self.facts.registered.insert(key);
                self.believed.insert(key, version);
                self.end(client, DeviceOutcome::Succeeded);
            }
            Stage::LoginStart {
                flow,
                guess,
                guess_version,
                purpose,
                rereg,
            } => {
                if !ok {
                    return self.end(client, Self::failure(&b));
                }
                let opened = flow.finish_with_insecure_rng(
                    &mut self.rng,
                    &guess,
                    &b.credential_response,
                    &KSF,
                );
                let right = guess_version.and_then(|v| self.is_right(key, b.generation, v));
                let opened = match opened {
                    Ok(Some(o)) => o,
                    Ok(None) => {
                        if right == Some(true) {
                            self.facts.errors.push(format!(
                                "user {key}: the device reported the right code of registration \
                                 {} wrong",
                                b.generation
                            ));
                        }
                        return self.end(client, DeviceOutcome::WrongCode);
                    }
                    Err(_) => return self.end(client, DeviceOutcome::Rejected),
                };
                let Some(guess_version) = guess_version.filter(|_| right != Some(false)) else {
                    self.facts.errors.push(format!(
                        "user {key}: a wrong code opened the fleet's answer (registration {})",
                        b.generation
                    ));
                    return self.end(client, DeviceOutcome::Rejected);
                };
                let mut f = VaultLoginFinish::new();
                f.login = b.login;
                f.credential_finalization = opened.finalization.clone();
                f.purpose = purpose.wire().into();
                if let Some((reg, v)) = &rereg {
                    f.registration_request = reg.request().to_vec();
                    f.max_attempts = self.max_attempts;
                    f.secret_digest = registration_secret_digest(&user, &secret(key, *v)).to_vec();
                }
                let mut r = self.request(client, vault_client_request::Op::LoginFinish(f));
                authenticate_request(GROUP, &user, &opened.session_key, &mut r);
                let stage = Stage::LoginFinish {
                    guess_version,
                    purpose,
                    rereg,
                };
                self.issue(client, key, stage, &r, dev.service, true, Some(opened));
            }
            Stage::LoginFinish {
                guess_version,
                purpose,
                rereg,
            } => {
                if !ok {
                    return self.end(client, Self::failure(&b));
                }
                if b.purpose != purpose.wire().into() {
                    return self.end(client, DeviceOutcome::NotConfirmed);
                }
                let Some(session) = dev.session else {
                    return self.end(client, DeviceOutcome::Rejected);
                };
                match (purpose, rereg) {
                    (Purpose::Recover, _) => {
                        let opened = open_recovered_secret(
                            &session.session_key,
                            &dev.digest,
                            &user,
                            &b.secret_nonce,
                            &b.encrypted_secret,
                        );
                        match opened {
                            Ok(s) if s.as_slice() == secret(key, guess_version).as_slice() => {
                                self.end(client, DeviceOutcome::Succeeded)
                            }
                            Ok(_) => {
                                self.facts.errors.push(format!(
                                    "user {key}: a recovery with the code of version \
                                     {guess_version} yielded another secret"
                                ));
                                self.end(client, DeviceOutcome::NotConfirmed)
                            }
                            Err(_) => self.end(client, DeviceOutcome::NotConfirmed),
                        }
                    }
                    (Purpose::Delete, _) => self.end(client, DeviceOutcome::Succeeded),
                    (Purpose::Reregister, Some((reg, version))) => {
                        let Some(mut f) = self.register_finish(reg, &user, key, version, &b) else {
                            return self.end(client, DeviceOutcome::Rejected);
                        };
                        f.login = b.login;
                        let mut r =
                            self.request(client, vault_client_request::Op::RegisterFinish(f));
                        authenticate_request(GROUP, &user, &session.session_key, &mut r);
                        let stage = Stage::RegisterFinish {
                            version,
                            tag: b.nonce_tag,
                            login_generation: Some(b.generation),
                        };
                        self.issue(client, key, stage, &r, dev.service, true, Some(session));
                    }
                    (Purpose::Reregister, None) => self.end(client, DeviceOutcome::Rejected),
                }
            }
        }
    }

    /// The fleet epochs at the end of a completed run ([`liveness`]). First
    /// the newest artifact must list exactly the replicas of raft's converged
    /// configuration (voters and learners, a plan of the operator's still
    /// under way applied ahead, [`Converged::expected_members`]): a replica
    /// the epochs dropped while raft keeps it (up-to-date devices refuse it)
    /// or one raft dropped while the epochs list it is caught here. Then,
    /// once the operator's pending reloads happened, every device of the run
    /// (its verifier as the run left it, or a fresh one if none) registers a
    /// fresh user through each member's own service and recovers it through
    /// the next member's, and must end on the newest epoch.
    fn check_final_epoch(
        &mut self,
        machine: &BackupVault,
        fleet: &Converged,
    ) -> Result<(), String> {
        // The operator's reloads are done once the fleet healed.
        self.now = self.now.max(Duration::from_micros(fleet.now_us));
        let last_reload = self
            .services
            .iter()
            .filter_map(|s| s.reload.map(|(at, _)| at))
            .max();
        self.now = self.now.max(last_reload.unwrap_or_default());
        self.reload_due();
        let newest = self.epochs.newest();
        let listed: BTreeSet<u64> = self
            .epochs
            .artifact(newest)
            .map(|a| a.replicas.iter().map(|k| k.id).collect())
            .unwrap_or_default();
        let expected = fleet.expected_members();
        if listed != expected {
            return Err(format!(
                "fleet epochs: the newest epoch {newest} lists replicas {listed:?}, raft's \
                 converged configuration (voters {:?}, learners {:?}; the operator's plan \
                 under way lists {:?} ahead, unlists {:?} ahead) has {expected:?}",
                fleet.voters, fleet.learners, fleet.listed_ahead, fleet.unlisted_ahead
            ));
        }
        let members: Vec<(usize, u64)> = expected
            .iter()
            .map(|&id| {
                self.services
                    .iter()
                    .position(|s| s.id == id)
                    .map(|i| (i, id))
                    .ok_or_else(|| format!("fleet epochs: member {id} has no service"))
            })
            .collect::<Result<_, _>>()?;
        let mut verifiers: Vec<FleetVerifier> = self
            .slots
            .iter()
            .filter_map(|s| s.trust.as_ref().map(|t| t.verifier.clone()))
            .collect();
        if verifiers.is_empty() {
            verifiers.push(self.epochs.verifier());
        }
        let mut copy = machine.clone();
        let mut index = u64::MAX / 4;
        let mut user = self.users + 1;
        for (d, verifier) in verifiers.into_iter().enumerate() {
            let mut device = FinalDevice {
                verifier,
                machine: &mut copy,
                index,
                now: self.now,
                sequence: 0,
                max_attempts: self.max_attempts,
            };
            for (i, &(s, id)) in members.iter().enumerate() {
                let (next, next_id) = members[(i + 1) % members.len()];
                let a = (&self.services[s].core, id);
                let b = (&self.services[next].core, next_id);
                device.register_and_recover(user, a, b).map_err(|e| {
                    format!(
                        "fleet epochs: with the final epoch {newest}, device {d} cannot register \
                         through replica {id}'s service and recover through replica \
                         {next_id}'s: {e}"
                    )
                })?;
                user += 1;
            }
            if device.verifier.newest_epoch() != Some(newest) {
                return Err(format!(
                    "fleet epochs: device {d} ended on epoch {:?}, not the final epoch {newest}",
                    device.verifier.newest_epoch()
                ));
            }
            index = device.index;
        }
        Ok(())
    }

    /// The secret version and limit of a registration a command commits, or
    /// why it is not one a device of `key` sent.
    fn registered_version(&self, key: u64, r: &VaultRegister) -> Result<u64, String> {
        let mut record = VaultRecord::new();
        record.opaque_record = r.opaque_record.clone();
        record.sealed_secret = r.sealed_secret.clone();
        record.credential_nonce = r.credential_nonce.clone();
        let s = self
            .server
            .open_secret(&user_id(key), &record)
            .map_err(|e| format!("its sealed secret does not open: {e}"))?;
        let v = version_of(key, &s).ok_or("its secret is none a device of the user sent")?;
        if r.max_attempts != self.max_attempts {
            return Err(format!(
                "its limit is {}, the devices ask {}",
                r.max_attempts, self.max_attempts
            ));
        }
        Ok(v)
    }

    /// What a committed (or not) command proposed by a service core shows.
    ///
    /// Facts go to the user the command names (an altered request may name
    /// another user than its device's); a user outside the run is ignored.
    fn on_command(&mut self, command: &[u8], output: Option<&[u8]>, origin: &Origin) {
        let Ok(c) = vaultfleet::wire::decode::<VaultCommand>(command, "command") else {
            return;
        };
        let Some(key) = key_of(&c.user).filter(|k| *k < self.users) else {
            return;
        };
        let o = output.and_then(decode);
        if let Some(o) = &o {
            self.facts.saw(key, o);
        }
        let committed = o.as_ref().filter(|o| status(o) == VaultStatus::VAULT_OK);
        let altered = |what: &str, f: &mut Facts| {
            if let Origin::Altered { message, field } = origin {
                f.errors.push(format!(
                    "user {key}: an altered request ({message}.{field} rewritten) made the \
                     fleet commit a {what}"
                ));
            }
        };
        match c.op {
            Some(vault_command::Op::Consume(x)) => {
                if let Some(o) = committed {
                    let id = c.request.clone().unwrap_or_default();
                    self.on_consumed(key, o, &x.request_digest, (id.client, id.sequence), origin);
                }
            }
            Some(vault_command::Op::Reset(r)) => {
                let g = (key, r.generation);
                match (&o, committed) {
                    (None, _) => self.facts.note_reset(g, r.ticket, false),
                    (_, Some(o)) => {
                        self.facts.note_reset(g, r.ticket, true);
                        self.facts
                            .succeeded
                            .entry(g)
                            .or_default()
                            .insert((o.applied_at, r.ticket));
                        *self.facts.changes.entry(key).or_default() += 1;
                        altered("reset", &mut self.facts);
                    }
                    _ => {}
                }
            }
            Some(vault_command::Op::Delete(_)) => {
                self.facts.deletes.insert(key);
                if committed.is_some() {
                    *self.facts.changes.entry(key).or_default() += 1;
                    altered("delete", &mut self.facts);
                }
            }
            Some(vault_command::Op::Replace(r)) => {
                if let Some(o) = committed {
                    *self.facts.changes.entry(key).or_default() += 1;
                    altered("replace", &mut self.facts);
                    let reg = r.record.clone().unwrap_or_default();
                    match self.registered_version(key, &reg) {
                        Ok(v) => {
                            self.facts.versions.insert((key, o.generation), v);
                        }
                        Err(e) => self.facts.errors.push(format!(
                            "user {key}: the fleet committed a replacement no device sent: {e}"
                        )),
                    }
                }
            }
            Some(vault_command::Op::Register(r)) => {
                if let Some(o) = committed {
                    *self.facts.changes.entry(key).or_default() += 1;
                    match self.registered_version(key, &r) {
                        Ok(v) => {
                            self.facts.versions.insert((key, o.generation), v);
                        }
                        Err(e) => self.facts.errors.push(format!(
                            "user {key}: the fleet committed a registration no device sent: {e}"
                        )),
                    }
                    if let Origin::Altered { field, .. } = origin {
                        if field == "registration_upload" {
                            // The documented denial of service.
                            self.facts.denied.insert((key, o.generation));
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// A consume committed with OK.
    fn on_consumed(
        &mut self,
        key: u64,
        o: &VaultOutcome,
        request_digest: &[u8],
        id: (u64, u64),
        origin: &Origin,
    ) {
        let Some(record) = o.record.as_ref() else {
            self.facts.errors.push(format!(
                "user {key}: a consume answered OK without its record"
            ));
            return;
        };
        let generation = record.generation;
        let request: [u8; 32] = request_digest.try_into().unwrap_or([0; 32]);
        let f = &mut self.facts;
        if *origin != Origin::Genuine {
            f.attacker_attempts += 1;
        }
        f.answered
            .entry((key, generation))
            .or_default()
            .insert((o.ticket, request));
        // A re-delivered consume gets its first ticket back at a later index:
        // tickets follow the log where they are first given, so only consumes
        // proposed once so far are placed.
        let proposed = self
            .consume_proposals
            .get(&(key, id.0, id.1))
            .copied()
            .unwrap_or(0);
        if proposed <= 1 && !f.ticket_requests.contains_key(&(key, o.ticket)) {
            f.tickets_at
                .entry(key)
                .or_default()
                .entry(o.applied_at)
                .or_default()
                .insert(o.ticket);
        }
        if let Some(other) = f.ticket_requests.insert((key, o.ticket), request) {
            if other != request {
                f.errors.push(format!(
                    "user {key}: ticket {} was given to two different guesses",
                    o.ticket
                ));
            }
        }
        if o.erased {
            f.erased.insert((key, generation), (o.ticket, o.applied_at));
        }
        let changes = f.changes.get(&key).copied().unwrap_or(0);
        match f.consumes.get(&(key, id.0, id.1)).copied() {
            Some((ticket, _, _)) if ticket == o.ticket => f.redelivered_same_ticket += 1,
            Some((ticket, g, at)) if g == generation && at == changes => {
                f.errors.push(format!(
                    "user {key}: a LoginStart delivered again (request {}/{}) spent ticket {} \
                     instead of returning ticket {ticket}",
                    id.0, id.1, o.ticket
                ));
            }
            _ => {
                f.consumes
                    .insert((key, id.0, id.1), (o.ticket, generation, changes));
            }
        }
    }
}

/// `reply` without the retirements it carries (`None`: undecodable).
fn without_retirements(reply: &[u8]) -> Option<Vec<u8>> {
    let mut r = vaultfleet_vault::wire::decode::<VaultReply>(reply, "reply").ok()?;
    r.retirements.clear();
    Some(vaultfleet_vault::wire::encode_bounded(&r))
}

/// The artifact of the bundle `reply` carries, if it decodes.
fn artifact_in(reply: &[u8]) -> Option<FleetArtifact> {
    let r = vaultfleet_vault::wire::decode::<VaultReply>(reply, "reply").ok()?;
    let b = Bundle::decode(&r.bundle).ok()?;
    FleetArtifact::decode(&b.artifact).ok()
}

/// The epoch of the bundle `reply` carries, if any.
fn bundle_epoch_in(reply: &[u8]) -> Option<u64> {
    let r = vaultfleet_vault::wire::decode::<VaultReply>(reply, "reply").ok()?;
    Bundle::decode(&r.bundle).ok().map(|b| b.epoch)
}

/// The operation that takes `step` for user `key`.
fn step_op(key: u64, step: &FleetStep) -> Operation {
    let kind = match step {
        FleetStep::Propose(c) => OpKind::Command(c.clone()),
        FleetStep::Read(q) => OpKind::Read(q.clone()),
    };
    Operation { key, kind }
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

    fn clock(&mut self, now_us: u64) {
        self.now = self.now.max(Duration::from_micros(now_us));
        self.reload_due();
    }

    fn membership_change(&mut self, change: &MemberChange) {
        let now_s = self.now.as_secs();
        let replaced = match change {
            MemberChange::Joining {
                id,
                datacenter,
                replacing,
            } => {
                let (core, keys) =
                    open_service(&self.world, &self.sealed, self.limits, *id, datacenter);
                if !self.services.iter().any(|s| s.id == *id) {
                    // Devices learn of its address at once (a new endpoint).
                    self.services.push(Service {
                        id: *id,
                        core,
                        epoch: 0,
                        reload: None,
                    });
                }
                self.epochs.join(keys);
                if let Some(old) = replacing {
                    self.epochs.leave(*old);
                } else if self.membership_bug == MembershipBug::EpochDropsReplica {
                    // The planted bug: another member left out of the epoch
                    // (raft keeps it).
                    if let Some(other) = self.epochs.member_ids().into_iter().find(|m| m != id) {
                        self.epochs.leave(other);
                    }
                }
                *replacing
            }
            MemberChange::Removed { id } => {
                if !self.epochs.is_member(*id) {
                    return;
                }
                self.epochs.leave(*id);
                None
            }
        };
        let epoch = self.epochs.publish(now_s);
        // A replaced host may have been taken, keys and all: half the time
        // the operator also retires every epoch that lists it.
        if replaced.is_some() && self.rng.gen_bool(0.5) {
            self.epochs.retire(epoch - 1, now_s);
        }
        // A new member's service starts with the new epoch; every other
        // member reloads within two seconds (evidence, witness log, SIGHUP,
        // one node after another). Removed ones still running (the operator
        // skipped step 6, and devices keep their address) keep what they had.
        for s in &mut self.services {
            if s.epoch == 0 {
                s.core.serve(self.epochs.source(epoch));
                s.epoch = epoch;
            } else if self.epochs.is_member(s.id) {
                let delay = Duration::from_millis(self.rng.gen_range(0..2_000));
                s.reload = Some((self.now + delay, epoch));
            }
        }
    }

    fn next_operation(&mut self, client: usize, rng: &mut ChaCha8Rng) -> Operation {
        // A step a core asked for while resuming (in `observe`).
        if let Some(f) = self.slot(client).inflight.as_ref() {
            return step_op(f.delivery.key, &f.step);
        }
        for _ in 0..8 {
            if let Some(op) = self.drain(client) {
                return op;
            }
            if self.slots[client].device.is_none() {
                if let Some(read) = self.start_device(client, rng) {
                    return read;
                }
            }
        }
        let key = rng.gen_range(0..self.users);
        Operation {
            key,
            kind: OpKind::Read(BackupVault::query_user(user_id(key).as_bytes())),
        }
    }

    fn observe(&mut self, client: usize, op: &Operation, output: Option<&[u8]>) {
        let Some(f) = self.slot(client).inflight.take() else {
            if let Some(o) = output.and_then(decode) {
                self.facts.saw(op.key, &o);
            }
            return;
        };
        if let FleetStep::Propose(c) = &f.step {
            self.on_command(c, output, &f.delivery.origin);
        }
        let answer = output.map(<[u8]>::to_vec).ok_or(NotCommitted);
        let s = f.delivery.service;
        match self.services[s].core.resume(f.call, answer, self.now) {
            Progress::Reply(r) => self.route(client, &f.delivery, r),
            Progress::Wait { call, step } => {
                self.slots[client].inflight = Some(InFlight {
                    delivery: f.delivery,
                    call,
                    step,
                });
            }
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
        if let Some((key, g)) = f.device_registered.intersection(&f.denied).next() {
            return Err(format!(
                "user {key}: the device reported registration {g} done, whose upload the \
                 attacker altered (no code opens it)"
            ));
        }
        check_guess_limit(f, self.max_attempts)
    }

    fn check_converged(&mut self, machine: &BatchedVault, fleet: &Converged) -> Result<(), String> {
        self.check_final_epoch(machine.vault(), fleet)
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
                Some(UserView::Registered {
                    generation,
                    max_attempts,
                    ..
                }) => {
                    if max_attempts != self.max_attempts {
                        return Err(format!(
                            "user {key}: registered with a limit of {max_attempts}, its \
                             devices asked {}",
                            self.max_attempts
                        ));
                    }
                    if self.facts.denied.contains(&(key, generation)) {
                        continue;
                    }
                    // Recover it for real against a copy of the converged
                    // state, with the code of its version (or, if its commit
                    // went unseen, of any version its devices registered).
                    let versions: Vec<u64> = match self.facts.versions.get(&(key, generation)) {
                        Some(v) => vec![*v],
                        None => self
                            .tried
                            .get(&key)
                            .map(|s| s.iter().copied().collect())
                            .unwrap_or_default(),
                    };
                    let mut last = String::from("no version known");
                    let recovered = versions.iter().any(|&v| {
                        let mut copy = machine.clone();
                        match recover_on(&self.server, &mut copy, key, v) {
                            Ok(()) => true,
                            Err(e) => {
                                last = e;
                                false
                            }
                        }
                    });
                    if !recovered {
                        return Err(format!(
                            "user {key}: registered (generation {generation}), yet not \
                             recoverable with its code: {last}"
                        ));
                    }
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

/// The client's `LoginFinish` for `opened`, authenticated to its session as
/// `VaultClient` sends it (the checker holds the login itself: no login id).
fn finish_request(user: &UserId, id: VaultRequestId, opened: &LoginOpened) -> VaultClientRequest {
    let mut f = VaultLoginFinish::new();
    f.credential_finalization = opened.finalization.clone();
    f.purpose = VaultLoginPurpose::VAULT_RECOVER.into();
    let mut r = VaultClientRequest::new();
    r.request = Some(id).into();
    r.op = Some(vault_client_request::Op::LoginFinish(f));
    authenticate_request(GROUP, user, &opened.session_key, &mut r);
    r
}

/// A whole recovery with the code of `key`'s registration `version` against
/// `machine` directly; it must yield that version's secret.
fn recover_on(
    server: &VaultServer<SoftHsm>,
    machine: &mut BackupVault,
    key: u64,
    version: u64,
) -> Result<(), String> {
    let user = user_id(key);
    let mut rng = ChaCha20Rng::seed_from_u64(key);
    let flow = ClientLoginFlow::start_with_insecure_rng(&mut rng, &code(key, version))
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
        .finish_with_insecure_rng(&mut rng, &code(key, version), &response, &KSF)
        .map_err(|e| e.to_string())?
        .ok_or("the right code did not open the answer")?;
    id.sequence = 2;
    let finish = finish_request(&user, id, &opened);
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
    if s.as_slice() != secret(key, version).as_slice() {
        return Err("another secret came back".into());
    }
    Ok(())
}
