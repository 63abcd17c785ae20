//! Client frames: what a client process and a node process exchange once a
//! handshake authenticated the client's key as an allowed *client* key.
//!
//! Same records and frame layer as between peers (a `u32` length, then the
//! body); only these kinds are accepted on a client connection (any other kind,
//! a raft frame included, closes it):
//!
//! ```text
//! body = u8 kind ‖ …
//!   kind 2 keepalive: (nothing)
//!   kind 3 request:   u64 correlation ‖ u64 group ‖ u64 replica ‖ u8 op ‖ op fields
//!     op 1 propose:           u64 session ‖ u64 sequence ‖ u64 acked_below ‖ bytes command
//!     op 2 register session:  (nothing)
//!     op 3 read:              bytes query
//!     op 4 change membership: u8 change (1 add learner: u64 id ‖ text datacenter;
//!                             2 promote: u64 id; 3 remove: u64 id)
//!     op 5 transfer leader:   u64 to
//!     op 6 status:            (nothing)
//!     op 7 mark state digest: (nothing; admin keys only)
//!   kind 4 reply:     u64 correlation ‖ u8 has status ‖ [status] ‖ u8 outcome ‖ outcome fields
//!     status:                 u64 id ‖ u8 role ‖ u64 leader (0: none) ‖ u64 term ‖
//!                             u64 commit ‖ u64 applied ‖ u64 first index ‖
//!                             u64 last index ‖ ids voters ‖ ids learners ‖
//!                             u32 count ‖ count × (u64 id ‖ u64 matched ‖ u64 lag ‖
//!                             u8 recently active) — the leader's per-follower
//!                             progress; every list at most MEMBERS_MAX long ‖
//!                             u32 count ‖ count × (u64 index ‖ 32 bytes digest)
//!                             — the state digests, at most STATE_DIGESTS_KEPT ‖
//!                             u8 hsm ‖ u8 disk — the host's health as the
//!                             node last checked it (0 unknown, 1 ok,
//!                             2 failing; any other value is refused)
//!     outcome 1 reply:        u8 reply (1 applied: bytes; 2 read: bytes; 3 session: u64;
//!                             4 membership: conf state; 5 state digest: u64 index ‖
//!                             32 bytes digest)
//!     outcome 2 error:        request error (tag and fields: the engine's
//!                             RequestError; 13 forbidden: the key's role does
//!                             not allow the op; 14 reply too large: u64 bytes ‖
//!                             u64 limit, the request WAS carried out; 17 state
//!                             capture failed: u64 index)
//!     outcome 3 done:         (nothing: a transfer submitted, a status answered)
//!     outcome 4 unknown node: (nothing: no such (group, replica) is served here)
//! bytes = u32 length ‖ that many bytes; ids = u32 count ‖ count × u64;
//! ids and counters are u64, big-endian
//! ```
//!
//! Everything is read by the engine's strict [`Reader`]: unknown tags, counts
//! above their bound, truncation and trailing bytes are all refused with a typed
//! [`DecodeError`]; nothing panics on any input. The engine's
//! [`Request`] travels as its four fields, not as
//! protobuf, so one codec reads the whole frame.

use bytes::Bytes;
use raft::prelude::ConfState;
use raft::StateRole;
use vaultfleet::codec::{DecodeError, EncodeError, Reader, Writer};
use vaultfleet::config::MEMBERS_MAX;
use vaultfleet::replica::{
    ConfChangeRejection, FollowerProgress, HostHealth, MembershipChange, Reply, RequestError,
    StateDigest, Status, STATE_DIGESTS_KEPT, STATE_DIGEST_BYTES,
};
use vaultfleet::wire::Request;
use vaultfleet::ReplicaId;

use super::frame::{FRAME_BYTES_LIMIT, FRAME_LENGTH_BYTES};

/// The keepalive kind (shared with peer connections).
const KIND_KEEPALIVE: u8 = 2;
const KIND_REQUEST: u8 = 3;
const KIND_REPLY: u8 = 4;

const OP_PROPOSE: u8 = 1;
const OP_REGISTER: u8 = 2;
const OP_READ: u8 = 3;
const OP_MEMBERSHIP: u8 = 4;
const OP_TRANSFER: u8 = 5;
const OP_STATUS: u8 = 6;
const OP_MARK_STATE_DIGEST: u8 = 7;

const OUTCOME_REPLY: u8 = 1;
const OUTCOME_ERROR: u8 = 2;
const OUTCOME_DONE: u8 = 3;
const OUTCOME_UNKNOWN_NODE: u8 = 4;

/// Longest datacenter label a membership change carries on the wire (the
/// engine's own, shorter limit is checked by the leader, which answers
/// `DatacenterTooLong`).
pub const DATACENTER_WIRE_BYTES_MAX: usize = 1024;
/// Longest text of a raft-rs refusal carried in a reply (longer text is cut).
pub const REJECTION_TEXT_BYTES_MAX: usize = 1024;
/// Largest command, query or response the codec reads (the frame limit in
/// force is smaller and is checked first).
pub const PAYLOAD_BYTES_MAX: usize = FRAME_BYTES_LIMIT;

/// Bytes of a request body before its payload: kind, correlation, group,
/// replica, op, session, sequence, acked_below, payload length.
pub const REQUEST_OVERHEAD_BYTES: usize = 1 + 8 * 3 + 1 + 8 * 3 + 4;

/// One client request.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientRequest {
    /// Chosen by the client; its reply carries it back.
    pub correlation: u64,
    /// The raft group.
    pub group: u64,
    /// The replica (a node the server process hosts) it is for.
    pub replica: ReplicaId,
    /// What to do.
    pub op: ClientOp,
}

/// What a client asks of one node (the calls of
/// [`NodeApi`](vaultfleet::runtime::NodeApi), plus a status request).
#[derive(Debug, Clone, PartialEq)]
pub enum ClientOp {
    /// Propose a command in a session.
    Propose(Request),
    /// Register a new session.
    RegisterSession,
    /// A linearizable read.
    Read(Vec<u8>),
    /// A membership change.
    ChangeMembership(MembershipChange),
    /// Hand leadership to this replica.
    TransferLeader(ReplicaId),
    /// The node's status (every reply carries it; this asks for nothing else).
    Status,
    /// Propose a state digest marker (admin keys only): every replica digests
    /// its replicated state at the marker's index.
    MarkStateDigest,
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientOutcome {
    /// The node's reply.
    Reply(Reply),
    /// The node's refusal (`NotLeader { leader }` among them: the client knows
    /// every node's address from its directory and follows the hint).
    Error(RequestError),
    /// Accepted, nothing more to say (a transfer submitted, a status answered).
    Done,
    /// The server hosts no such (group, replica) for clients.
    UnknownNode,
}

/// One reply.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientReply {
    /// The request's correlation id.
    pub correlation: u64,
    /// The node's status when it answered (none for an unknown node).
    pub status: Option<Status>,
    /// The outcome.
    pub outcome: ClientOutcome,
}

/// A decoded client-connection frame body.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientFrame {
    /// A keepalive.
    Keepalive,
    /// A request (client to node).
    Request(ClientRequest),
    /// A reply (node to client).
    Reply(ClientReply),
}

impl ClientFrame {
    /// Decodes one frame body (without its length prefix), strictly.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let frame = match r.u8("client frame kind")? {
            KIND_KEEPALIVE => ClientFrame::Keepalive,
            KIND_REQUEST => ClientFrame::Request(read_request(&mut r)?),
            KIND_REPLY => ClientFrame::Reply(read_reply(&mut r)?),
            other => {
                return Err(DecodeError::UnknownValue {
                    what: "client frame kind",
                    found: other.into(),
                })
            }
        };
        r.expect_empty("client frame")?;
        Ok(frame)
    }
}

/// Puts the `u32` frame length in front of a body written by `write`.
fn framed(
    write: impl FnOnce(&mut Writer) -> Result<(), EncodeError>,
) -> Result<Vec<u8>, EncodeError> {
    let mut w = Writer::new();
    w.nested(FRAME_BYTES_LIMIT, "client frame", write)?;
    debug_assert!(w.len() >= FRAME_LENGTH_BYTES);
    Ok(w.into_vec())
}

/// A request frame, length prefix included.
pub fn encode_request(request: &ClientRequest) -> Result<Vec<u8>, EncodeError> {
    framed(|w| {
        w.u8(KIND_REQUEST)
            .u64(request.correlation)
            .u64(request.group)
            .u64(request.replica);
        match &request.op {
            ClientOp::Propose(p) => {
                w.u8(OP_PROPOSE)
                    .u64(p.client_id)
                    .u64(p.sequence)
                    .u64(p.acked_below)
                    .bytes(PAYLOAD_BYTES_MAX, &p.command, "command")?;
            }
            ClientOp::RegisterSession => {
                w.u8(OP_REGISTER);
            }
            ClientOp::Read(query) => {
                w.u8(OP_READ).bytes(PAYLOAD_BYTES_MAX, query, "query")?;
            }
            ClientOp::ChangeMembership(change) => {
                w.u8(OP_MEMBERSHIP);
                match change {
                    MembershipChange::AddLearner { id, datacenter } => {
                        w.u8(1).u64(*id).text(
                            DATACENTER_WIRE_BYTES_MAX,
                            datacenter,
                            "learner datacenter",
                        )?;
                    }
                    MembershipChange::Promote { id } => {
                        w.u8(2).u64(*id);
                    }
                    MembershipChange::Remove { id } => {
                        w.u8(3).u64(*id);
                    }
                }
            }
            ClientOp::TransferLeader(to) => {
                w.u8(OP_TRANSFER).u64(*to);
            }
            ClientOp::Status => {
                w.u8(OP_STATUS);
            }
            ClientOp::MarkStateDigest => {
                w.u8(OP_MARK_STATE_DIGEST);
            }
        }
        Ok(())
    })
}

fn read_request(r: &mut Reader<'_>) -> Result<ClientRequest, DecodeError> {
    let correlation = r.u64("request correlation")?;
    let group = r.u64("request group")?;
    let replica = r.u64("request replica")?;
    let op = match r.u8("request op")? {
        OP_PROPOSE => {
            let mut p = Request::new();
            p.client_id = r.u64("propose session")?;
            p.sequence = r.u64("propose sequence")?;
            p.acked_below = r.u64("propose acked_below")?;
            p.command = Bytes::copy_from_slice(r.bytes(PAYLOAD_BYTES_MAX, "command")?);
            ClientOp::Propose(p)
        }
        OP_REGISTER => ClientOp::RegisterSession,
        OP_READ => ClientOp::Read(r.bytes(PAYLOAD_BYTES_MAX, "query")?.to_vec()),
        OP_MEMBERSHIP => ClientOp::ChangeMembership(match r.u8("membership change")? {
            1 => MembershipChange::AddLearner {
                id: r.u64("learner id")?,
                datacenter: r
                    .text(DATACENTER_WIRE_BYTES_MAX, "learner datacenter")?
                    .to_owned(),
            },
            2 => MembershipChange::Promote {
                id: r.u64("promoted id")?,
            },
            3 => MembershipChange::Remove {
                id: r.u64("removed id")?,
            },
            other => {
                return Err(DecodeError::UnknownValue {
                    what: "membership change",
                    found: other.into(),
                })
            }
        }),
        OP_TRANSFER => ClientOp::TransferLeader(r.u64("transfer target")?),
        OP_STATUS => ClientOp::Status,
        OP_MARK_STATE_DIGEST => ClientOp::MarkStateDigest,
        other => {
            return Err(DecodeError::UnknownValue {
                what: "request op",
                found: other.into(),
            })
        }
    };
    Ok(ClientRequest {
        correlation,
        group,
        replica,
        op,
    })
}

/// A reply frame, length prefix included.
pub fn encode_reply(reply: &ClientReply) -> Result<Vec<u8>, EncodeError> {
    framed(|w| {
        w.u8(KIND_REPLY).u64(reply.correlation);
        match &reply.status {
            Some(status) => {
                w.bool(true);
                write_status(w, status)?;
            }
            None => {
                w.bool(false);
            }
        }
        match &reply.outcome {
            ClientOutcome::Reply(r) => {
                w.u8(OUTCOME_REPLY);
                match r {
                    Reply::Applied(bytes) => {
                        w.u8(1)
                            .bytes(PAYLOAD_BYTES_MAX, bytes, "applied response")?;
                    }
                    Reply::Read(bytes) => {
                        w.u8(2).bytes(PAYLOAD_BYTES_MAX, bytes, "read answer")?;
                    }
                    Reply::SessionRegistered(id) => {
                        w.u8(3).u64(*id);
                    }
                    Reply::MembershipChanged(cs) => {
                        w.u8(4);
                        write_conf_state(w, cs)?;
                    }
                    Reply::StateDigest(d) => {
                        w.u8(5);
                        write_digest(w, d);
                    }
                }
            }
            ClientOutcome::Error(e) => {
                w.u8(OUTCOME_ERROR);
                write_error(w, e)?;
            }
            ClientOutcome::Done => {
                w.u8(OUTCOME_DONE);
            }
            ClientOutcome::UnknownNode => {
                w.u8(OUTCOME_UNKNOWN_NODE);
            }
        }
        Ok(())
    })
}

fn read_reply(r: &mut Reader<'_>) -> Result<ClientReply, DecodeError> {
    let correlation = r.u64("reply correlation")?;
    let status = if r.bool("reply has status")? {
        Some(read_status(r)?)
    } else {
        None
    };
    let outcome = match r.u8("reply outcome")? {
        OUTCOME_REPLY => ClientOutcome::Reply(match r.u8("reply kind")? {
            1 => Reply::Applied(Bytes::copy_from_slice(
                r.bytes(PAYLOAD_BYTES_MAX, "applied response")?,
            )),
            2 => Reply::Read(r.bytes(PAYLOAD_BYTES_MAX, "read answer")?.to_vec()),
            3 => Reply::SessionRegistered(r.u64("session id")?),
            4 => Reply::MembershipChanged(read_conf_state(r)?),
            5 => Reply::StateDigest(read_digest(r)?),
            other => {
                return Err(DecodeError::UnknownValue {
                    what: "reply kind",
                    found: other.into(),
                })
            }
        }),
        OUTCOME_ERROR => ClientOutcome::Error(read_error(r)?),
        OUTCOME_DONE => ClientOutcome::Done,
        OUTCOME_UNKNOWN_NODE => ClientOutcome::UnknownNode,
        other => {
            return Err(DecodeError::UnknownValue {
                what: "reply outcome",
                found: other.into(),
            })
        }
    };
    Ok(ClientReply {
        correlation,
        status,
        outcome,
    })
}

fn write_ids(w: &mut Writer, ids: &[u64], what: &'static str) -> Result<(), EncodeError> {
    w.count(MEMBERS_MAX, ids.len(), what)?;
    for id in ids {
        w.u64(*id);
    }
    Ok(())
}

fn read_ids(r: &mut Reader<'_>, what: &'static str) -> Result<Vec<u64>, DecodeError> {
    let n = r.count(MEMBERS_MAX, what)?;
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(r.u64(what)?);
    }
    Ok(ids)
}

fn role_tag(role: StateRole) -> u8 {
    match role {
        StateRole::Follower => 0,
        StateRole::Candidate => 1,
        StateRole::Leader => 2,
        StateRole::PreCandidate => 3,
    }
}

fn write_status(w: &mut Writer, s: &Status) -> Result<(), EncodeError> {
    w.u64(s.id)
        .u8(role_tag(s.role))
        .u64(s.leader.unwrap_or(0))
        .u64(s.term)
        .u64(s.commit)
        .u64(s.applied)
        .u64(s.first_index)
        .u64(s.last_index);
    write_ids(w, &s.voters, "status voters")?;
    write_ids(w, &s.learners, "status learners")?;
    w.count(MEMBERS_MAX, s.followers.len(), "status followers")?;
    for f in &s.followers {
        w.u64(f.id).u64(f.matched).u64(f.lag).bool(f.recent_active);
    }
    w.count(
        STATE_DIGESTS_KEPT,
        s.state_digests.len(),
        "status state digests",
    )?;
    for d in &s.state_digests {
        write_digest(w, d);
    }
    w.u8(health_tag(s.host.hsm)).u8(health_tag(s.host.disk));
    Ok(())
}

/// A host health check's result on the wire: 0 unknown, 1 ok, 2 failing.
fn health_tag(health: Option<bool>) -> u8 {
    match health {
        None => 0,
        Some(true) => 1,
        Some(false) => 2,
    }
}

fn read_health(r: &mut Reader<'_>, what: &'static str) -> Result<Option<bool>, DecodeError> {
    match r.u8(what)? {
        0 => Ok(None),
        1 => Ok(Some(true)),
        2 => Ok(Some(false)),
        other => Err(DecodeError::UnknownValue {
            what,
            found: other.into(),
        }),
    }
}

fn write_digest(w: &mut Writer, d: &StateDigest) {
    w.u64(d.index).raw(&d.digest);
}

fn read_digest(r: &mut Reader<'_>) -> Result<StateDigest, DecodeError> {
    Ok(StateDigest {
        index: r.u64("state digest index")?,
        digest: r.array::<STATE_DIGEST_BYTES>("state digest")?,
    })
}

fn read_state_digests(r: &mut Reader<'_>) -> Result<Vec<StateDigest>, DecodeError> {
    let n = r.count(STATE_DIGESTS_KEPT, "status state digests")?;
    let mut digests = Vec::with_capacity(n);
    for _ in 0..n {
        digests.push(read_digest(r)?);
    }
    Ok(digests)
}

fn read_followers(r: &mut Reader<'_>) -> Result<Vec<FollowerProgress>, DecodeError> {
    let n = r.count(MEMBERS_MAX, "status followers")?;
    let mut followers = Vec::with_capacity(n);
    for _ in 0..n {
        followers.push(FollowerProgress {
            id: r.u64("follower id")?,
            matched: r.u64("follower matched")?,
            lag: r.u64("follower lag")?,
            recent_active: r.bool("follower recently active")?,
        });
    }
    Ok(followers)
}

fn read_status(r: &mut Reader<'_>) -> Result<Status, DecodeError> {
    let id = r.u64("status id")?;
    let role = match r.u8("status role")? {
        0 => StateRole::Follower,
        1 => StateRole::Candidate,
        2 => StateRole::Leader,
        3 => StateRole::PreCandidate,
        other => {
            return Err(DecodeError::UnknownValue {
                what: "status role",
                found: other.into(),
            })
        }
    };
    let leader = Some(r.u64("status leader")?).filter(|&l| l != 0);
    Ok(Status {
        id,
        role,
        leader,
        term: r.u64("status term")?,
        commit: r.u64("status commit")?,
        applied: r.u64("status applied")?,
        first_index: r.u64("status first index")?,
        last_index: r.u64("status last index")?,
        voters: read_ids(r, "status voters")?,
        learners: read_ids(r, "status learners")?,
        followers: read_followers(r)?,
        state_digests: read_state_digests(r)?,
        host: HostHealth {
            hsm: read_health(r, "status hsm health")?,
            disk: read_health(r, "status disk health")?,
        },
    })
}

fn write_conf_state(w: &mut Writer, cs: &ConfState) -> Result<(), EncodeError> {
    write_ids(w, &cs.voters, "conf state voters")?;
    write_ids(w, &cs.learners, "conf state learners")?;
    write_ids(w, &cs.voters_outgoing, "conf state outgoing voters")?;
    write_ids(w, &cs.learners_next, "conf state next learners")?;
    w.bool(cs.auto_leave);
    Ok(())
}

fn read_conf_state(r: &mut Reader<'_>) -> Result<ConfState, DecodeError> {
    let mut cs = ConfState::default();
    cs.voters = read_ids(r, "conf state voters")?;
    cs.learners = read_ids(r, "conf state learners")?;
    cs.voters_outgoing = read_ids(r, "conf state outgoing voters")?;
    cs.learners_next = read_ids(r, "conf state next learners")?;
    cs.auto_leave = r.bool("conf state auto leave")?;
    Ok(cs)
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn size(v: usize) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

fn read_size(r: &mut Reader<'_>, what: &'static str) -> Result<usize, DecodeError> {
    usize::try_from(r.u64(what)?).map_err(|_| DecodeError::Invalid { what })
}

/// Writes a [`RequestError`]. A variant this build does not know (the enum is
/// non-exhaustive) travels as `Stopped`: retryable, "use another replica".
fn write_error(w: &mut Writer, e: &RequestError) -> Result<(), EncodeError> {
    match e {
        RequestError::NotLeader { leader } => {
            w.u8(1).u64(leader.unwrap_or(0));
        }
        RequestError::Dropped => {
            w.u8(2);
        }
        RequestError::TimedOut => {
            w.u8(3);
        }
        RequestError::LeaderChanged => {
            w.u8(4);
        }
        RequestError::SessionExpired { client_id } => {
            w.u8(5).u64(*client_id);
        }
        RequestError::Stale {
            client_id,
            sequence,
            acked_below,
        } => {
            w.u8(6).u64(*client_id).u64(*sequence).u64(*acked_below);
        }
        RequestError::TooManyOutstanding { client_id, limit } => {
            w.u8(7).u64(*client_id).u64(size(*limit));
        }
        RequestError::CommandTooLarge { bytes, limit } => {
            w.u8(8).u64(size(*bytes)).u64(size(*limit));
        }
        RequestError::ConfChangeRejected(rejection) => {
            w.u8(9);
            match rejection {
                ConfChangeRejection::RemovesLeader => {
                    w.u8(1);
                }
                ConfChangeRejection::DatacenterTooLong { bytes } => {
                    w.u8(2).u64(size(*bytes));
                }
                ConfChangeRejection::TooManyMembers { members } => {
                    w.u8(3).u64(size(*members));
                }
                ConfChangeRejection::NotInAcceptedFleet { epoch, reason } => {
                    w.u8(5).u64(*epoch).text(
                        REJECTION_TEXT_BYTES_MAX,
                        cut(reason, REJECTION_TEXT_BYTES_MAX),
                        "conf change refusal",
                    )?;
                }
                other => {
                    // raft-rs's own refusal (or a later variant): its text.
                    let text = match other {
                        ConfChangeRejection::Raft(e) => e.to_string(),
                        other => other.to_string(),
                    };
                    w.u8(4).text(
                        REJECTION_TEXT_BYTES_MAX,
                        cut(&text, REJECTION_TEXT_BYTES_MAX),
                        "conf change refusal",
                    )?;
                }
            }
        }
        RequestError::NotCaughtUp {
            id,
            matched,
            last_index,
        } => {
            w.u8(10).u64(*id).u64(*matched).u64(*last_index);
        }
        RequestError::Overloaded => {
            w.u8(11);
        }
        RequestError::Forbidden => {
            w.u8(13);
        }
        RequestError::ReplyTooLarge { bytes, limit } => {
            w.u8(14).u64(size(*bytes)).u64(size(*limit));
        }
        RequestError::NotSessionOwner { client_id } => {
            w.u8(15).u64(*client_id);
        }
        RequestError::OwnerTooLong { bytes, limit } => {
            w.u8(16).u64(size(*bytes)).u64(size(*limit));
        }
        RequestError::StateCaptureFailed { index } => {
            w.u8(17).u64(*index);
        }
        _ => {
            w.u8(12);
        }
    }
    Ok(())
}

/// Reads a [`RequestError`]. raft-rs's refusal of a membership change arrives
/// as its text, inside `raft::Error::ConfChangeError`.
fn read_error(r: &mut Reader<'_>) -> Result<RequestError, DecodeError> {
    Ok(match r.u8("request error")? {
        1 => RequestError::NotLeader {
            leader: Some(r.u64("leader hint")?).filter(|&l| l != 0),
        },
        2 => RequestError::Dropped,
        3 => RequestError::TimedOut,
        4 => RequestError::LeaderChanged,
        5 => RequestError::SessionExpired {
            client_id: r.u64("expired session")?,
        },
        6 => RequestError::Stale {
            client_id: r.u64("stale session")?,
            sequence: r.u64("stale sequence")?,
            acked_below: r.u64("stale acked_below")?,
        },
        7 => RequestError::TooManyOutstanding {
            client_id: r.u64("outstanding session")?,
            limit: read_size(r, "outstanding limit")?,
        },
        8 => RequestError::CommandTooLarge {
            bytes: read_size(r, "command size")?,
            limit: read_size(r, "command limit")?,
        },
        9 => RequestError::ConfChangeRejected(match r.u8("conf change refusal")? {
            1 => ConfChangeRejection::RemovesLeader,
            2 => ConfChangeRejection::DatacenterTooLong {
                bytes: read_size(r, "datacenter label size")?,
            },
            3 => ConfChangeRejection::TooManyMembers {
                members: read_size(r, "member count")?,
            },
            4 => {
                let text = r.text(REJECTION_TEXT_BYTES_MAX, "conf change refusal")?;
                ConfChangeRejection::Raft(std::sync::Arc::new(raft::Error::ConfChangeError(
                    text.to_owned(),
                )))
            }
            5 => ConfChangeRejection::NotInAcceptedFleet {
                epoch: r.u64("accepted epoch")?,
                reason: r
                    .text(REJECTION_TEXT_BYTES_MAX, "conf change refusal")?
                    .to_owned(),
            },
            other => {
                return Err(DecodeError::UnknownValue {
                    what: "conf change refusal",
                    found: other.into(),
                })
            }
        }),
        10 => RequestError::NotCaughtUp {
            id: r.u64("learner id")?,
            matched: r.u64("learner matched")?,
            last_index: r.u64("leader last index")?,
        },
        11 => RequestError::Overloaded,
        12 => RequestError::Stopped,
        13 => RequestError::Forbidden,
        14 => RequestError::ReplyTooLarge {
            bytes: read_size(r, "reply size")?,
            limit: read_size(r, "reply limit")?,
        },
        15 => RequestError::NotSessionOwner {
            client_id: r.u64("session id")?,
        },
        16 => RequestError::OwnerTooLong {
            bytes: read_size(r, "owner size")?,
            limit: read_size(r, "owner limit")?,
        },
        17 => RequestError::StateCaptureFailed {
            index: r.u64("marker index")?,
        },
        other => {
            return Err(DecodeError::UnknownValue {
                what: "request error",
                found: other.into(),
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(frame: &[u8]) -> &[u8] {
        &frame[FRAME_LENGTH_BYTES..]
    }

    fn status() -> Status {
        Status {
            id: 2,
            role: StateRole::Follower,
            leader: Some(1),
            term: 7,
            commit: 40,
            applied: 39,
            first_index: 1,
            last_index: 41,
            voters: vec![1, 2, 3],
            learners: vec![4],
            followers: vec![
                FollowerProgress {
                    id: 1,
                    matched: 41,
                    lag: 0,
                    recent_active: true,
                },
                FollowerProgress {
                    id: 4,
                    matched: 30,
                    lag: 11,
                    recent_active: false,
                },
            ],
            state_digests: vec![
                StateDigest {
                    index: 30,
                    digest: [7; STATE_DIGEST_BYTES],
                },
                StateDigest {
                    index: 38,
                    digest: [9; STATE_DIGEST_BYTES],
                },
            ],
            host: HostHealth {
                hsm: Some(true),
                disk: Some(false),
            },
        }
    }

    #[test]
    fn every_request_and_reply_round_trips_with_its_length_prefix() {
        let mut p = Request::new();
        p.client_id = 9;
        p.sequence = 3;
        p.acked_below = 2;
        p.command = Bytes::from_static(b"put k v");
        let ops = [
            ClientOp::Propose(p),
            ClientOp::RegisterSession,
            ClientOp::Read(b"get k".to_vec()),
            ClientOp::ChangeMembership(MembershipChange::AddLearner {
                id: 4,
                datacenter: "dc-d".into(),
            }),
            ClientOp::ChangeMembership(MembershipChange::Promote { id: 4 }),
            ClientOp::ChangeMembership(MembershipChange::Remove { id: 3 }),
            ClientOp::TransferLeader(2),
            ClientOp::Status,
            ClientOp::MarkStateDigest,
        ];
        for (i, op) in ops.into_iter().enumerate() {
            let request = ClientRequest {
                correlation: i as u64,
                group: 1,
                replica: 2,
                op,
            };
            let frame = encode_request(&request).unwrap();
            let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
            assert_eq!(len, frame.len() - FRAME_LENGTH_BYTES);
            assert_eq!(
                ClientFrame::decode(body(&frame)),
                Ok(ClientFrame::Request(request))
            );
        }
        let mut cs = ConfState::default();
        cs.voters = vec![1, 2];
        cs.learners = vec![5];
        let outcomes = [
            ClientOutcome::Reply(Reply::Applied(Bytes::from_static(b"ok"))),
            ClientOutcome::Reply(Reply::Read(vec![])),
            ClientOutcome::Reply(Reply::SessionRegistered(12)),
            ClientOutcome::Reply(Reply::MembershipChanged(cs)),
            ClientOutcome::Reply(Reply::StateDigest(StateDigest {
                index: 77,
                digest: [0xab; STATE_DIGEST_BYTES],
            })),
            ClientOutcome::Error(RequestError::StateCaptureFailed { index: 77 }),
            ClientOutcome::Error(RequestError::NotLeader { leader: Some(1) }),
            ClientOutcome::Error(RequestError::NotLeader { leader: None }),
            ClientOutcome::Error(RequestError::Stale {
                client_id: 1,
                sequence: 2,
                acked_below: 3,
            }),
            ClientOutcome::Error(RequestError::TooManyOutstanding {
                client_id: 1,
                limit: 1024,
            }),
            ClientOutcome::Error(RequestError::ConfChangeRejected(
                ConfChangeRejection::RemovesLeader,
            )),
            ClientOutcome::Error(RequestError::ConfChangeRejected(
                ConfChangeRejection::NotInAcceptedFleet {
                    epoch: 7,
                    reason: "the accepted fleet artifact does not list it".into(),
                },
            )),
            ClientOutcome::Error(RequestError::ConfChangeRejected(ConfChangeRejection::Raft(
                std::sync::Arc::new(raft::Error::ConfChangeError("pending".into())),
            ))),
            ClientOutcome::Error(RequestError::NotCaughtUp {
                id: 4,
                matched: 1,
                last_index: 9,
            }),
            ClientOutcome::Error(RequestError::Overloaded),
            ClientOutcome::Error(RequestError::Stopped),
            ClientOutcome::Error(RequestError::Forbidden),
            ClientOutcome::Error(RequestError::ReplyTooLarge {
                bytes: 5 << 20,
                limit: 4 << 20,
            }),
            ClientOutcome::Done,
            ClientOutcome::UnknownNode,
        ];
        for (i, outcome) in outcomes.into_iter().enumerate() {
            let reply = ClientReply {
                correlation: i as u64,
                status: (i % 2 == 0).then(status),
                outcome,
            };
            let frame = encode_reply(&reply).unwrap();
            assert_eq!(
                ClientFrame::decode(body(&frame)),
                Ok(ClientFrame::Reply(reply))
            );
        }
        assert_eq!(ClientFrame::decode(&[2]), Ok(ClientFrame::Keepalive));
    }

    #[test]
    fn malformed_client_frames_are_typed_errors_at_every_cut() {
        let mut p = Request::new();
        p.command = vec![1; 40].into();
        let request = encode_request(&ClientRequest {
            correlation: 1,
            group: 1,
            replica: 1,
            op: ClientOp::Propose(p),
        })
        .unwrap();
        let reply = encode_reply(&ClientReply {
            correlation: 1,
            status: Some(status()),
            outcome: ClientOutcome::Error(RequestError::NotLeader { leader: Some(3) }),
        })
        .unwrap();
        let digest_request = encode_request(&ClientRequest {
            correlation: 2,
            group: 1,
            replica: 1,
            op: ClientOp::MarkStateDigest,
        })
        .unwrap();
        let digest_reply = encode_reply(&ClientReply {
            correlation: 2,
            status: Some(status()),
            outcome: ClientOutcome::Reply(Reply::StateDigest(StateDigest {
                index: 41,
                digest: [3; STATE_DIGEST_BYTES],
            })),
        })
        .unwrap();
        let capture_failed = encode_reply(&ClientReply {
            correlation: 3,
            status: None,
            outcome: ClientOutcome::Error(RequestError::StateCaptureFailed { index: 41 }),
        })
        .unwrap();
        for frame in [
            &request,
            &reply,
            &digest_request,
            &digest_reply,
            &capture_failed,
        ] {
            let b = body(frame);
            for cut in 0..b.len() {
                assert!(ClientFrame::decode(&b[..cut]).is_err(), "cut at {cut}");
            }
            let mut longer = b.to_vec();
            longer.push(0);
            assert!(matches!(
                ClientFrame::decode(&longer),
                Err(DecodeError::TrailingBytes { .. })
            ));
        }
        // A raft frame (kind 1) is not a client frame.
        assert!(matches!(
            ClientFrame::decode(&[1, 0, 0]),
            Err(DecodeError::UnknownValue { found: 1, .. })
        ));
        // An unknown op, an unknown error tag, too many voters.
        let mut bad = body(&request).to_vec();
        bad[25] = 99;
        assert!(matches!(
            ClientFrame::decode(&bad),
            Err(DecodeError::UnknownValue {
                what: "request op",
                ..
            })
        ));
        let mut bad = body(&reply).to_vec();
        let tag = bad.len() - 9;
        bad[tag] = 200;
        assert!(matches!(
            ClientFrame::decode(&bad),
            Err(DecodeError::UnknownValue {
                what: "request error",
                ..
            })
        ));
        let mut w = Writer::new();
        w.u8(KIND_REPLY).u64(1).bool(true);
        w.u64(1).u8(0).u64(0).u64(0).u64(0).u64(0).u64(0).u64(0);
        w.u32(u32::try_from(MEMBERS_MAX + 1).unwrap());
        assert!(matches!(
            ClientFrame::decode(w.as_slice()),
            Err(DecodeError::TooLong {
                what: "status voters",
                ..
            })
        ));
        // Too many followers' progress: refused on both sides of the wire.
        let mut w = Writer::new();
        w.u8(KIND_REPLY).u64(1).bool(true);
        w.u64(1).u8(2).u64(1).u64(1).u64(0).u64(0).u64(0).u64(0);
        w.u32(0).u32(0);
        w.u32(u32::try_from(MEMBERS_MAX + 1).unwrap());
        for id in 0..=MEMBERS_MAX as u64 {
            w.u64(id + 2).u64(1).u64(0).bool(true);
        }
        w.u8(OUTCOME_DONE);
        assert!(matches!(
            ClientFrame::decode(w.as_slice()),
            Err(DecodeError::TooLong {
                what: "status followers",
                ..
            })
        ));
        // More state digests than a replica keeps: refused on both sides.
        let mut w = Writer::new();
        w.u8(KIND_REPLY).u64(1).bool(true);
        w.u64(1).u8(2).u64(1).u64(1).u64(0).u64(0).u64(0).u64(0);
        w.u32(0).u32(0).u32(0);
        w.u32(u32::try_from(STATE_DIGESTS_KEPT + 1).unwrap());
        for index in 0..=STATE_DIGESTS_KEPT as u64 {
            w.u64(index).raw(&[0; STATE_DIGEST_BYTES]);
        }
        w.u8(OUTCOME_DONE);
        assert!(matches!(
            ClientFrame::decode(w.as_slice()),
            Err(DecodeError::TooLong {
                what: "status state digests",
                ..
            })
        ));
        let mut long = status();
        long.state_digests = vec![long.state_digests[0]; STATE_DIGESTS_KEPT + 1];
        assert!(encode_reply(&ClientReply {
            correlation: 1,
            status: Some(long),
            outcome: ClientOutcome::Done,
        })
        .is_err());
        // An unknown reply kind.
        let mut bad = body(&digest_reply).to_vec();
        let kind = bad.len() - 1 - 8 - STATE_DIGEST_BYTES;
        assert_eq!(bad[kind], 5);
        bad[kind] = 6;
        assert!(matches!(
            ClientFrame::decode(&bad),
            Err(DecodeError::UnknownValue {
                what: "reply kind",
                ..
            })
        ));
        let mut long = status();
        long.followers = vec![long.followers[0]; MEMBERS_MAX + 1];
        assert!(encode_reply(&ClientReply {
            correlation: 1,
            status: Some(long),
            outcome: ClientOutcome::Done,
        })
        .is_err());
        // A follower's "recently active" flag is a bool: 0 or 1.
        let frame = encode_reply(&ClientReply {
            correlation: 1,
            status: Some(status()),
            outcome: ClientOutcome::Done,
        })
        .unwrap();
        let mut bad = body(&frame).to_vec();
        // The last follower's flag sits before the state digests (a count and
        // two digests), the two host health bytes and the outcome byte.
        let flag = bad.len() - 2 - 2 - 4 - 2 * (8 + STATE_DIGEST_BYTES);
        assert_eq!(bad[flag], 0);
        bad[flag] = 2;
        assert!(ClientFrame::decode(&bad).is_err());
    }

    #[test]
    fn host_health_takes_every_value_and_refuses_others() {
        let values = [None, Some(true), Some(false)];
        for hsm in values {
            for disk in values {
                let mut s = status();
                s.host = HostHealth { hsm, disk };
                let reply = ClientReply {
                    correlation: 5,
                    status: Some(s),
                    outcome: ClientOutcome::Done,
                };
                let frame = encode_reply(&reply).unwrap();
                assert_eq!(
                    ClientFrame::decode(body(&frame)),
                    Ok(ClientFrame::Reply(reply))
                );
            }
        }
        let frame = encode_reply(&ClientReply {
            correlation: 5,
            status: Some(status()),
            outcome: ClientOutcome::Done,
        })
        .unwrap();
        let b = body(&frame);
        // hsm, disk, then the outcome byte: the fixture's ok and failing.
        let (hsm, disk) = (b.len() - 3, b.len() - 2);
        assert_eq!((b[hsm], b[disk]), (1, 2));
        for (at, what) in [(hsm, "status hsm health"), (disk, "status disk health")] {
            for value in [3u8, 0x80, 0xff] {
                let mut bad = b.to_vec();
                bad[at] = value;
                assert_eq!(
                    ClientFrame::decode(&bad),
                    Err(DecodeError::UnknownValue {
                        what,
                        found: value.into(),
                    })
                );
            }
        }
    }
}
