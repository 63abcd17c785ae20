//! Intake checks for peer messages: every field of a raft message that could
//! drive raft-rs 0.7 (or this replica's own apply path) into a `fatal!`, a panic,
//! an index overflow or a stop is checked here against this replica's own log,
//! term, commit index and membership before the message reaches
//! [`raft::RawNode::step`]. A message that fails is refused with a typed
//! [`StepRefusal`] and the replica carries on.
//!
//! The list of raft-rs sites these checks close, with the trigger of each, is
//! the "hostile peer" table of `docs/threat-model.md`. The checks accept every
//! message an honest replica of this fleet sends: the invariants they test are
//! ones raft itself keeps (entries are consecutive, log terms never decrease, a
//! leader's heartbeat never commits past what the follower acknowledged, one
//! leader per term), plus facts of this fleet (it never forwards proposals or
//! reads, never requests a snapshot, never enters a joint configuration).

use std::collections::BTreeSet;

use protobuf2::Message as _;
use raft::prelude::{ConfChangeType, ConfState, Entry, EntryType, Message, MessageType, Snapshot};
use raft::{Raft, StateRole, Storage, INVALID_ID, INVALID_INDEX};

use super::error::{ConfStateDefect, CorruptEntry, SnapshotError, StepRefusal};
use super::SNAPSHOT_FORMAT_VERSION;
use crate::config::MEMBERS_MAX;
use crate::wire::{self, ConfChangeContext, SnapshotPayload};

/// The largest term or log index a peer message may carry. raft-rs adds one to
/// indexes it receives (`Progress::maybe_update`, `Unstable::restore`,
/// `Progress::maybe_decr_to`) and adds entry counts to them
/// (`RaftLog::maybe_append`); with every value at most 2^62 none of that can
/// overflow. An honest fleet appending a million entries a second needs more
/// than 100,000 years to reach it.
pub const INDEX_MAX: u64 = 1 << 62;

/// How far beyond this replica's last index a snapshot may lie. Snapshots are
/// the one way a message moves a log's index by more than the entries it
/// carries; without a bound, one snapshot could move a replica to
/// [`INDEX_MAX`], past which it refuses every honest append. An honest leader's
/// snapshot lies at most its whole log beyond a new member's empty one: 2^48
/// entries is 89 years at 100,000 entries a second.
pub const INDEX_JUMP_MAX: u64 = 1 << 48;

/// Checks `m`, a message from a peer addressed to this replica, before it is
/// stepped into `raft`.
pub(super) fn check<T: Storage>(raft: &Raft<T>, m: &Message) -> Result<(), StepRefusal> {
    let kind = m.get_msg_type();
    if m.from == INVALID_ID || m.from == raft.id {
        return Err(StepRefusal::BadSender { from: m.from });
    }
    if matches!(
        kind,
        MessageType::MsgPropose | MessageType::MsgReadIndex | MessageType::MsgReadIndexResp
    ) {
        return Err(StepRefusal::NeverSent(kind));
    }
    if m.term == 0 {
        return Err(StepRefusal::NoTerm(kind));
    }
    check_ranges(m)?;
    // No bound on how far a term may be ahead of this replica's own: a relative
    // bound partitions replicas whose terms drifted apart (a member added at term
    // 0 to an old fleet, or two replicas a hostile peer pushed apart), and they
    // could never talk again. A higher term is adopted, as raft requires; only
    // the absolute INDEX_MAX above keeps raft-rs's arithmetic from overflowing.
    if m.request_snapshot != INVALID_INDEX {
        return Err(StepRefusal::SnapshotRequested {
            index: m.request_snapshot,
        });
    }
    match kind {
        MessageType::MsgAppend => {
            check_single_leader(raft, m)?;
            check_append(m)
        }
        MessageType::MsgHeartbeat => {
            check_single_leader(raft, m)?;
            let last_index = raft.raft_log.last_index();
            if m.commit > last_index {
                return Err(StepRefusal::CommitBeyondLog {
                    commit: m.commit,
                    last_index,
                });
            }
            Ok(())
        }
        MessageType::MsgSnapshot => {
            check_single_leader(raft, m)?;
            check_snapshot(raft, m.term, m.get_snapshot())
        }
        // Only the leader of this replica's current term may tell it to campaign
        // at once: raft-rs skips pre-vote and every lease check for it, so from
        // anyone else it would depose the leader at will.
        MessageType::MsgTimeoutNow
            if m.term != raft.term || raft.leader_id == INVALID_ID || m.from != raft.leader_id =>
        {
            Err(StepRefusal::TimeoutNowNotFromLeader {
                from: m.from,
                leader: raft.leader_id,
            })
        }
        // A peer's ask for leadership (review 5 of the announced transfers;
        // a follower would also re-forward it, and raft-rs's send is fatal on
        // a forwarded message that already carries a term). A leader's
        // announcement and a transferee's decline are never stepped into raft.
        MessageType::MsgTransferLeader
            if !m.context.starts_with(super::TRANSFER_ANNOUNCED)
                && m.context.as_ref() != super::TRANSFER_DECLINED =>
        {
            Err(StepRefusal::TransferAskRefused { from: m.from })
        }
        MessageType::MsgAppendResponse
            if !m.reject && raft.state == StateRole::Leader && m.term == raft.term =>
        {
            let last_index = raft.raft_log.last_index();
            if m.index > last_index {
                return Err(StepRefusal::AckBeyondLog {
                    index: m.index,
                    last_index,
                });
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Every term and index field is at most [`INDEX_MAX`].
fn check_ranges(m: &Message) -> Result<(), StepRefusal> {
    let meta = m.get_snapshot().get_metadata();
    let fields = [
        ("term", m.term),
        ("log_term", m.log_term),
        ("index", m.index),
        ("commit", m.commit),
        ("commit_term", m.commit_term),
        ("reject_hint", m.reject_hint),
        ("request_snapshot", m.request_snapshot),
        ("snapshot index", meta.index),
        ("snapshot term", meta.term),
    ];
    for (field, value) in fields {
        if value > INDEX_MAX {
            return Err(StepRefusal::OutOfRange { field, value });
        }
    }
    for e in m.get_entries() {
        for (field, value) in [("entry index", e.index), ("entry term", e.term)] {
            if value > INDEX_MAX {
                return Err(StepRefusal::OutOfRange { field, value });
            }
        }
    }
    Ok(())
}

/// One leader per term: at the current term, only the leader this replica
/// knows of (if any) may append, send heartbeats or snapshots.
fn check_single_leader<T: Storage>(raft: &Raft<T>, m: &Message) -> Result<(), StepRefusal> {
    if m.term == raft.term && raft.leader_id != INVALID_ID && raft.leader_id != m.from {
        return Err(StepRefusal::SecondLeader {
            term: m.term,
            leader: raft.leader_id,
        });
    }
    Ok(())
}

fn check_append(m: &Message) -> Result<(), StepRefusal> {
    if (m.log_term == 0 && m.index != 0) || m.log_term > m.term {
        return Err(StepRefusal::AnchorTerm {
            index: m.index,
            log_term: m.log_term,
            term: m.term,
        });
    }
    let mut term_min = m.log_term.max(1);
    // `m.index` is at most INDEX_MAX (checked first), so the range cannot overflow.
    let indexes = m.index + 1..;
    for (position, (e, expected)) in m.get_entries().iter().zip(indexes).enumerate() {
        if e.index != expected {
            return Err(StepRefusal::EntriesNotConsecutive {
                position,
                expected,
                found: e.index,
            });
        }
        if e.term < term_min || e.term > m.term {
            return Err(StepRefusal::EntryTerm {
                index: e.index,
                term: e.term,
                min: term_min,
                max: m.term,
            });
        }
        check_entry(e)?;
        term_min = e.term;
    }
    Ok(())
}

/// A membership change entry decodes as the apply path will decode it, and
/// labels every learner it adds (a committed one that does not stops the
/// replica: [`CorruptEntry`]).
fn check_entry(e: &Entry) -> Result<(), StepRefusal> {
    let undecodable = |what: &'static str| {
        move |source: protobuf2::ProtobufError| wire::DecodeError {
            what,
            source: source.into(),
        }
    };
    let bad = |source: CorruptEntry| StepRefusal::EntryMalformed {
        index: e.index,
        source,
    };
    let cc = match e.get_entry_type() {
        EntryType::EntryNormal => return Ok(()),
        EntryType::EntryConfChange => raft::prelude::ConfChange::parse_from_bytes(&e.data)
            .map(raft_proto::ConfChangeI::into_v2)
            .map_err(undecodable("conf change"))
            .map_err(|d| bad(CorruptEntry::ConfChange(d)))?,
        EntryType::EntryConfChangeV2 => raft::prelude::ConfChangeV2::parse_from_bytes(&e.data)
            .map_err(undecodable("conf change"))
            .map_err(|d| bad(CorruptEntry::ConfChange(d)))?,
    };
    let context: ConfChangeContext = wire::decode(&e.context, "conf change context")
        .map_err(|d| bad(CorruptEntry::ConfChangeContext(d)))?;
    // `Replica::change_membership` labels every learner it adds; the apply path
    // stops on an unlabelled one it does not know.
    for change in cc.get_changes() {
        let member = change.node_id;
        if change.get_change_type() == ConfChangeType::AddLearnerNode
            && !context.members.iter().any(|m| m.id == member)
        {
            return Err(bad(CorruptEntry::MissingLabel { member }));
        }
    }
    Ok(())
}

fn check_snapshot<T: Storage>(
    raft: &Raft<T>,
    message_term: u64,
    snap: &Snapshot,
) -> Result<(), StepRefusal> {
    let meta = snap.get_metadata();
    let (index, term) = (meta.index, meta.term);
    if index == 0 || term == 0 || term > message_term {
        return Err(StepRefusal::SnapshotMetadata {
            index,
            term,
            message_term,
        });
    }
    let last_index = raft.raft_log.last_index();
    if index > last_index.saturating_add(INDEX_JUMP_MAX) {
        return Err(StepRefusal::SnapshotIndexJump { index, last_index });
    }
    check_conf_state(meta.get_conf_state())
        .map_err(|defect| StepRefusal::SnapshotConfState { defect })?;
    let committed = raft.raft_log.committed;
    if index == committed {
        // The committed entry's term is always known (it is at or after the
        // log's dummy entry), and a snapshot there must agree with it.
        if let Ok(committed_term) = raft.raft_log.term(committed) {
            if committed_term != term {
                return Err(StepRefusal::SnapshotConflictsWithCommit {
                    index,
                    term,
                    committed_term,
                });
            }
        }
    }
    let payload: SnapshotPayload = wire::decode(&snap.data, "snapshot payload")
        .map_err(|e| StepRefusal::SnapshotPayload { source: e.into() })?;
    // Format 2 (streamed) is checked against the replica's files by the
    // replica itself (`Replica::check_streamed_snapshot`).
    if payload.format_version != SNAPSHOT_FORMAT_VERSION
        && payload.format_version != super::streamed::SNAPSHOT_FORMAT_STREAMED
    {
        return Err(StepRefusal::SnapshotPayload {
            source: SnapshotError::Version {
                found: payload.format_version,
                supported: super::streamed::SNAPSHOT_FORMAT_STREAMED,
            },
        });
    }
    super::replicated_limits(&payload).map_err(|source| StepRefusal::SnapshotPayload { source })?;
    Ok(())
}

/// A membership raft-rs can restore and that round-trips (`confchange::restore`
/// and `conf_state_eq` in `Raft::restore` are `fatal!` otherwise).
fn check_conf_state(cs: &ConfState) -> Result<(), ConfStateDefect> {
    if !cs.voters_outgoing.is_empty() || !cs.learners_next.is_empty() || cs.auto_leave {
        return Err(ConfStateDefect::Joint);
    }
    let count = cs.voters.len() + cs.learners.len();
    if count > MEMBERS_MAX {
        return Err(ConfStateDefect::TooMany { count });
    }
    if cs.voters.is_empty() {
        return Err(ConfStateDefect::NoVoters);
    }
    let mut seen = BTreeSet::new();
    for &id in cs.voters.iter().chain(cs.learners.iter()) {
        if id == INVALID_ID {
            return Err(ConfStateDefect::ZeroId);
        }
        if !seen.insert(id) {
            return Err(ConfStateDefect::Duplicate { id });
        }
    }
    Ok(())
}
