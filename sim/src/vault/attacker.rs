//! The network attacker between the simulated devices and the vault's service
//! cores: seeded, it decides each request's fate (delivered, delivered twice,
//! altered before or instead of it, an earlier request replayed first,
//! re-targeted, held back for later, or lost) and may replace a reply on its
//! way back by an earlier validly signed one. Alterations rewrite one field,
//! chosen by protobuf reflection over the request's fields, so a field added
//! to the protocol later is attacked too.

use std::collections::VecDeque;

use protobuf::reflect::{ReflectValueBox, ReflectValueRef, RuntimeFieldType, RuntimeType};
use protobuf::MessageDyn;
use rand::Rng;
use rand_chacha::ChaCha20Rng;
use vaultfleet_vault::wire::{vault_client_request, VaultClientRequest};
use vaultfleet_vault::{authenticate_request, UserId};

/// Earlier requests and replies the attacker keeps to replay.
const POOL_MAX: usize = 128;
/// Requests held back at most at once.
const HELD_MAX: usize = 32;

/// The attacker's rates, in percent of requests (or of replies).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttackRates {
    /// Delivered twice (a copy first, then the request).
    pub duplicate: u32,
    /// An altered copy delivered before the request.
    pub altered_before: u32,
    /// An altered copy delivered instead of the request (which is lost).
    pub altered_instead: u32,
    /// An earlier request (of any device) replayed to a random service first.
    pub replay: u32,
    /// Delivered to another service than the one the device chose.
    pub retarget: u32,
    /// Held back, to be delivered at a later point of the run (or never).
    pub hold: u32,
    /// Lost.
    pub drop: u32,
    /// Percent of replies replaced by an earlier validly signed reply.
    pub swap_reply: u32,
    /// Percent of deliveries before which a held request is released.
    pub release_held: u32,
}

impl AttackRates {
    /// The rates of the vault workload's attacker.
    pub const DEFAULT: AttackRates = AttackRates {
        duplicate: 8,
        altered_before: 8,
        altered_instead: 4,
        replay: 7,
        retarget: 5,
        hold: 5,
        drop: 3,
        swap_reply: 6,
        release_held: 5,
    };

    /// No attacker: every request delivered as sent, every reply as signed.
    pub const NONE: AttackRates = AttackRates {
        duplicate: 0,
        altered_before: 0,
        altered_instead: 0,
        replay: 0,
        retarget: 0,
        hold: 0,
        drop: 0,
        swap_reply: 0,
        release_held: 0,
    };
}

/// Who put a request on the wire to a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Origin {
    /// The device's own request (perhaps re-targeted by the attacker).
    Genuine,
    /// A copy of the device's request, delivered first.
    Copy,
    /// The device's request with field `field` of `message` rewritten.
    Altered {
        /// The message whose field was rewritten.
        message: &'static str,
        /// The field.
        field: String,
    },
    /// An earlier request, replayed.
    Replay,
    /// A request held back, delivered now.
    Held,
}

/// One request arriving at a service core.
#[derive(Clone, Debug)]
pub(super) struct Delivery {
    /// The user whose client slot carries its fleet steps.
    pub(super) key: u64,
    /// The service core it reaches.
    pub(super) service: usize,
    /// Its bytes.
    pub(super) bytes: Vec<u8>,
    /// Who sent it.
    pub(super) origin: Origin,
}

/// What reaches the services for one device request.
pub(super) struct Fate {
    /// The deliveries, in order (the genuine one, if delivered, among them).
    pub(super) deliveries: Vec<Delivery>,
    /// The device's request never arrives now: the device hears nothing.
    pub(super) lost: bool,
}

/// The attacker: its pools and its rates.
pub(super) struct Attacker {
    pub(super) rates: AttackRates,
    requests: VecDeque<(u64, Vec<u8>)>,
    replies: VecDeque<Vec<u8>>,
    held: Vec<(u64, Vec<u8>)>,
    /// Test knob: the attacker can re-authenticate what it alters (as if the
    /// services skipped the intent-tag check).
    pub(super) bug_tag_unchecked: bool,
}

fn op_name(r: &VaultClientRequest) -> &'static str {
    match &r.op {
        Some(vault_client_request::Op::RegisterStart(_)) => "VaultRegisterStart",
        Some(vault_client_request::Op::RegisterFinish(_)) => "VaultRegisterFinish",
        Some(vault_client_request::Op::LoginStart(_)) => "VaultLoginStart",
        Some(vault_client_request::Op::LoginFinish(_)) => "VaultLoginFinish",
        _ => "VaultClientRequest",
    }
}

fn op_mut(r: &mut VaultClientRequest) -> Option<&mut dyn MessageDyn> {
    match r.op.as_mut()? {
        vault_client_request::Op::RegisterStart(x) => Some(x),
        vault_client_request::Op::RegisterFinish(x) => Some(x),
        vault_client_request::Op::LoginStart(x) => Some(x),
        vault_client_request::Op::LoginFinish(x) => Some(x),
        _ => None,
    }
}

/// The scalar fields of `m`, by reflection (message-typed ones are walked
/// separately).
fn scalar_fields(m: &dyn MessageDyn) -> Vec<String> {
    m.descriptor_dyn()
        .fields()
        .filter(|f| {
            !matches!(
                f.runtime_field_type(),
                RuntimeFieldType::Singular(RuntimeType::Message(_))
            )
        })
        .map(|f| f.name().to_string())
        .collect()
}

/// Rewrites field `field` of `m` to a value unlike its current one.
fn tamper(m: &mut dyn MessageDyn, field: &str) -> bool {
    let d = m.descriptor_dyn();
    let Some(f) = d.field_by_name(field) else {
        return false;
    };
    let new = match f.get_singular_field_or_default(&*m) {
        ReflectValueRef::Bytes(&[]) => ReflectValueBox::Bytes(vec![0x41; 32]),
        ReflectValueRef::Bytes(b) => {
            let mut b = b.to_vec();
            if let Some(last) = b.last_mut() {
                *last ^= 1;
            }
            ReflectValueBox::Bytes(b)
        }
        ReflectValueRef::U32(v) => ReflectValueBox::U32(if v == 255 { 1 } else { 255 }),
        ReflectValueRef::U64(v) => ReflectValueBox::U64(v ^ 1),
        ReflectValueRef::Enum(e, v) => ReflectValueBox::Enum(e, (v + 1) % 3),
        _ => return false,
    };
    f.set_singular_field(m, new);
    true
}

impl Attacker {
    pub(super) fn new(rates: AttackRates) -> Self {
        Self {
            rates,
            requests: VecDeque::new(),
            replies: VecDeque::new(),
            held: Vec::new(),
            bug_tag_unchecked: false,
        }
    }

    /// An altered copy of `bytes` (one field of the request, its id or its
    /// envelope rewritten), or `None` if it does not decode. `session` is the
    /// device's login session, used only under the planted-bug knob.
    fn alter(
        &self,
        rng: &mut ChaCha20Rng,
        bytes: &[u8],
        session: Option<(&UserId, u64, &[u8])>,
    ) -> Option<(Vec<u8>, Origin)> {
        let mut r: VaultClientRequest = vaultfleet_vault::wire::decode(bytes, "request").ok()?;
        let message = op_name(&r);
        let mut choices: Vec<(&'static str, String)> = Vec::new();
        if let Some(m) = op_mut(&mut r) {
            for f in scalar_fields(m) {
                choices.push((message, f));
            }
        }
        for f in ["client", "sequence"] {
            choices.push(("VaultRequestId", f.to_string()));
        }
        for f in scalar_fields(&r) {
            choices.push(("VaultClientRequest", f));
        }
        let (message, field) = choices.swap_remove(rng.gen_range(0..choices.len()));
        let done = match message {
            "VaultRequestId" => tamper(r.request.mut_or_insert_default(), &field),
            "VaultClientRequest" => tamper(&mut r, &field),
            _ => op_mut(&mut r).is_some_and(|m| tamper(m, &field)),
        };
        if !done {
            return None;
        }
        if self.bug_tag_unchecked && field != "intent_tag" {
            if let Some((user, group, key)) = session {
                authenticate_request(group, user, key, &mut r);
            }
        }
        Some((
            vaultfleet_vault::wire::encode_bounded(&r),
            Origin::Altered { message, field },
        ))
    }

    /// The fate of the device's request `bytes` for user `key`, sent to
    /// `service` of `services`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fate(
        &mut self,
        rng: &mut ChaCha20Rng,
        key: u64,
        service: usize,
        services: usize,
        bytes: &[u8],
        session: Option<(&UserId, u64, &[u8])>,
    ) -> Fate {
        let mut deliveries = Vec::new();
        if self.rates.release_held > 0
            && rng.gen_range(0..100) < self.rates.release_held
            && !self.held.is_empty()
        {
            let (k, b) = self.held.swap_remove(rng.gen_range(0..self.held.len()));
            deliveries.push(Delivery {
                key: k,
                service: rng.gen_range(0..services),
                bytes: b,
                origin: Origin::Held,
            });
        }
        let genuine = |service| Delivery {
            key,
            service,
            bytes: bytes.to_vec(),
            origin: Origin::Genuine,
        };
        let r = &self.rates;
        let cuts = [
            r.duplicate,
            r.altered_before,
            r.altered_instead,
            r.replay,
            r.retarget,
            r.hold,
            r.drop,
        ];
        let mut roll = rng.gen_range(0..100u32);
        let mut pick = cuts.len();
        for (i, c) in cuts.iter().enumerate() {
            if roll < *c {
                pick = i;
                break;
            }
            roll -= c;
        }
        let mut lost = false;
        match pick {
            0 => {
                let mut copy = genuine(service);
                copy.origin = Origin::Copy;
                deliveries.push(copy);
                deliveries.push(genuine(service));
            }
            1 | 2 => {
                if let Some((b, origin)) = self.alter(rng, bytes, session) {
                    deliveries.push(Delivery {
                        key,
                        service,
                        bytes: b,
                        origin,
                    });
                }
                if pick == 1 {
                    deliveries.push(genuine(service));
                } else {
                    lost = true;
                }
            }
            3 => {
                if !self.requests.is_empty() {
                    let (k, b) = self.requests[rng.gen_range(0..self.requests.len())].clone();
                    deliveries.push(Delivery {
                        key: k,
                        service: rng.gen_range(0..services),
                        bytes: b,
                        origin: Origin::Replay,
                    });
                }
                deliveries.push(genuine(service));
            }
            4 => {
                let other = (service + rng.gen_range(1..services.max(2))) % services.max(1);
                deliveries.push(genuine(other));
            }
            5 => {
                if self.held.len() < HELD_MAX {
                    self.held.push((key, bytes.to_vec()));
                }
                lost = true;
            }
            6 => lost = true,
            _ => deliveries.push(genuine(service)),
        }
        if self.requests.len() == POOL_MAX {
            self.requests.pop_front();
        }
        self.requests.push_back((key, bytes.to_vec()));
        Fate { deliveries, lost }
    }

    /// Keeps a signed reply (for later swaps).
    pub(super) fn keep_reply(&mut self, reply: &[u8]) {
        if reply.is_empty() {
            return;
        }
        if self.replies.len() == POOL_MAX {
            self.replies.pop_front();
        }
        self.replies.push_back(reply.to_vec());
    }

    /// The reply the device gets for `reply`: itself, or now and then an
    /// earlier validly signed reply (to another request, user or replica).
    pub(super) fn reply_path(&mut self, rng: &mut ChaCha20Rng, reply: Vec<u8>) -> (Vec<u8>, bool) {
        let swap = self.rates.swap_reply > 0
            && rng.gen_range(0..100) < self.rates.swap_reply
            && !self.replies.is_empty();
        let out = if swap {
            let other = self.replies[rng.gen_range(0..self.replies.len())].clone();
            (other.clone(), other != reply)
        } else {
            (reply.clone(), false)
        };
        self.keep_reply(&reply);
        out
    }
}
