//! Fleet configuration: which replicas exist, where (datacenter labels), in which
//! role, and where the operator prefers the leader to be. Validation rejects what
//! cannot work and warns about what works until one datacenter is lost.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Upper bound on fleet members; raft's per-entry fan-out grows with it.
pub const MEMBERS_MAX: usize = 64;
/// Upper bound on a datacenter label's length, in bytes.
pub const DATACENTER_BYTES_MAX: usize = 64;

/// A member's role in the consensus group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Votes and counts towards the commit quorum.
    Voter,
    /// Receives the log but neither votes nor counts towards a quorum (for
    /// far-away readers, or a new member catching up before promotion).
    Learner,
}

/// One member of the fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSpec {
    /// Raft replica id; non-zero and unique in the fleet.
    pub id: u64,
    /// The datacenter this replica runs in.
    pub datacenter: String,
    /// Voter or learner.
    pub role: Role,
}

impl MemberSpec {
    /// A voter in `datacenter`.
    pub fn voter(id: u64, datacenter: impl Into<String>) -> Self {
        Self {
            id,
            datacenter: datacenter.into(),
            role: Role::Voter,
        }
    }

    /// A learner in `datacenter`.
    pub fn learner(id: u64, datacenter: impl Into<String>) -> Self {
        Self {
            id,
            datacenter: datacenter.into(),
            role: Role::Learner,
        }
    }
}

/// The largest `sessions_max` a fleet may replicate: the session table is held
/// in memory and in every snapshot.
pub const REPLICATED_SESSIONS_MAX: u64 = 1 << 20;
/// The largest `session_responses_max` a fleet may replicate.
pub const REPLICATED_SESSION_RESPONSES_MAX: u64 = 1 << 16;
/// The largest product of the two: cached responses the whole table may hold
/// (the defaults, 4096 × 1024, are a quarter of it). Each limit at its maximum
/// alone is fine; both together would let the table grow without a bound
/// that fits in memory.
pub const REPLICATED_CACHED_RESPONSES_MAX: u64 = 1 << 24;

/// Settings every replica of a group must share, because they change what
/// applying a committed entry does (which session is evicted, which cached
/// response is dropped). They are fixed at bootstrap and carried by every
/// snapshot, so no replica's own config can make it differ: a replica that
/// disagreed would answer a retried request differently from the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicatedSettings {
    /// Client sessions kept; registering one more evicts the least recently
    /// active.
    pub sessions_max: u64,
    /// Cached responses kept per session.
    pub session_responses_max: u64,
}

impl Default for ReplicatedSettings {
    fn default() -> Self {
        Self {
            sessions_max: 4096,
            session_responses_max: 1024,
        }
    }
}

impl ReplicatedSettings {
    /// Whether both limits are in `1..=` their maximum.
    pub fn check(&self) -> Result<(), ConfigError> {
        if !(1..=REPLICATED_SESSIONS_MAX).contains(&self.sessions_max)
            || !(1..=REPLICATED_SESSION_RESPONSES_MAX).contains(&self.session_responses_max)
            || self.sessions_max.saturating_mul(self.session_responses_max)
                > REPLICATED_CACHED_RESPONSES_MAX
        {
            return Err(ConfigError::Settings {
                sessions_max: self.sessions_max,
                session_responses_max: self.session_responses_max,
            });
        }
        Ok(())
    }
}

/// The shape of a fleet at bootstrap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetConfig {
    /// Every member, voters and learners.
    pub members: Vec<MemberSpec>,
    /// Datacenters the leader should be in when a caught-up voter there exists
    /// (empty: no preference).
    pub preferred_leader_datacenters: Vec<String>,
    /// The settings every replica shares, written into the bootstrap snapshot.
    pub settings: ReplicatedSettings,
}

/// A fleet configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Replicated settings out of range.
    #[error(
        "sessions_max {sessions_max} must be 1..={REPLICATED_SESSIONS_MAX}, \
         session_responses_max {session_responses_max} 1..={REPLICATED_SESSION_RESPONSES_MAX}, \
         and their product at most {REPLICATED_CACHED_RESPONSES_MAX}"
    )]
    Settings {
        /// The sessions limit given.
        sessions_max: u64,
        /// The responses limit given.
        session_responses_max: u64,
    },
    /// No voters at all.
    #[error("the fleet has no voters; name at least one member with Role::Voter (three or five across three datacenters is typical)")]
    NoVoters,
    /// Replica id 0 is reserved by raft.
    #[error("replica id 0 is reserved by raft; number replicas from 1")]
    ZeroId,
    /// The same id twice.
    #[error("replica id {0} appears more than once; every replica needs its own id")]
    DuplicateId(u64),
    /// A member without a datacenter label.
    #[error("replica {0} has an empty datacenter label; name the datacenter it runs in")]
    EmptyDatacenter(u64),
    /// A label longer than [`DATACENTER_BYTES_MAX`].
    #[error(
        "replica {id}'s datacenter label is {bytes} bytes; the limit is {DATACENTER_BYTES_MAX}"
    )]
    DatacenterTooLong {
        /// The replica.
        id: u64,
        /// Its label's length.
        bytes: usize,
    },
    /// More members than [`MEMBERS_MAX`].
    #[error("{0} members exceed the limit of {MEMBERS_MAX}")]
    TooManyMembers(usize),
    /// A preferred leader datacenter that holds no voter.
    #[error("preferred leader datacenter {0:?} holds no voter; name a datacenter that has voters, or none")]
    PreferredDatacenterHasNoVoter(String),
}

/// A fleet configuration that works, but with a risk the operator should know.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigWarning {
    /// One datacenter holds a majority of the voters: if it is lost, the fleet stops;
    /// if it is partitioned away, the rest cannot make progress without it.
    DatacenterHoldsMajority {
        /// The datacenter.
        datacenter: String,
        /// Voters in it.
        voters: usize,
        /// Voters in all.
        total: usize,
    },
    /// Losing this datacenter leaves fewer voters than a majority (for example two
    /// datacenters with two voters each).
    DatacenterLossStopsFleet {
        /// The datacenter.
        datacenter: String,
        /// Voters left without it.
        remaining: usize,
        /// Voters a majority needs.
        majority: usize,
    },
    /// An even number of voters tolerates no more failures than one fewer.
    EvenVoters(usize),
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DatacenterHoldsMajority { datacenter, voters, total } => write!(
                f,
                "datacenter {datacenter:?} holds {voters} of {total} voters, a majority: losing it stops the fleet, \
                 and no other datacenter can commit without it; spread voters so none holds more than {}",
                (total - 1) / 2
            ),
            Self::DatacenterLossStopsFleet { datacenter, remaining, majority } => write!(
                f,
                "losing datacenter {datacenter:?} leaves {remaining} voters, fewer than the {majority} a majority needs: \
                 the fleet would stop; add a datacenter or rebalance voters"
            ),
            Self::EvenVoters(n) => write!(
                f,
                "{n} voters tolerate no more failures than {}; an odd number is cheaper for the same safety",
                n - 1
            ),
        }
    }
}

impl FleetConfig {
    /// A fleet from its members, with no leader preference.
    pub fn new(members: Vec<MemberSpec>) -> Self {
        Self {
            members,
            preferred_leader_datacenters: Vec::new(),
            settings: ReplicatedSettings::default(),
        }
    }

    /// Sets the replicated settings.
    pub fn with_settings(mut self, settings: ReplicatedSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Sets the datacenters the leader should prefer.
    pub fn with_preferred_leader_datacenters<I, S>(mut self, datacenters: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.preferred_leader_datacenters = datacenters.into_iter().map(Into::into).collect();
        self
    }

    /// Ids of the voters, ascending.
    pub fn voters(&self) -> Vec<u64> {
        self.ids_with(Role::Voter)
    }

    /// Ids of the learners, ascending.
    pub fn learners(&self) -> Vec<u64> {
        self.ids_with(Role::Learner)
    }

    fn ids_with(&self, role: Role) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .members
            .iter()
            .filter(|m| m.role == role)
            .map(|m| m.id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The datacenter of replica `id`.
    pub fn datacenter_of(&self, id: u64) -> Option<&str> {
        self.members
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.datacenter.as_str())
    }

    /// Member ids grouped by datacenter.
    pub fn datacenters(&self) -> BTreeMap<&str, Vec<u64>> {
        let mut out: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for m in &self.members {
            out.entry(m.datacenter.as_str()).or_default().push(m.id);
        }
        out
    }

    /// Checks the configuration: an error for what cannot work, warnings for what
    /// works until a datacenter is lost.
    pub fn validate(&self) -> Result<Vec<ConfigWarning>, ConfigError> {
        self.settings.check()?;
        if self.members.len() > MEMBERS_MAX {
            return Err(ConfigError::TooManyMembers(self.members.len()));
        }
        let mut seen = BTreeSet::new();
        for m in &self.members {
            if m.id == 0 {
                return Err(ConfigError::ZeroId);
            }
            if !seen.insert(m.id) {
                return Err(ConfigError::DuplicateId(m.id));
            }
            if m.datacenter.is_empty() {
                return Err(ConfigError::EmptyDatacenter(m.id));
            }
            if m.datacenter.len() > DATACENTER_BYTES_MAX {
                return Err(ConfigError::DatacenterTooLong {
                    id: m.id,
                    bytes: m.datacenter.len(),
                });
            }
        }
        let mut voters_by_dc: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.iter().filter(|m| m.role == Role::Voter) {
            *voters_by_dc.entry(m.datacenter.as_str()).or_default() += 1;
        }
        let total: usize = voters_by_dc.values().sum();
        if total == 0 {
            return Err(ConfigError::NoVoters);
        }
        for dc in &self.preferred_leader_datacenters {
            if !voters_by_dc.contains_key(dc.as_str()) {
                return Err(ConfigError::PreferredDatacenterHasNoVoter(dc.clone()));
            }
        }
        let majority = total / 2 + 1;
        let mut warnings = Vec::new();
        for (dc, &voters) in &voters_by_dc {
            if voters >= majority && total > 1 {
                warnings.push(ConfigWarning::DatacenterHoldsMajority {
                    datacenter: dc.to_string(),
                    voters,
                    total,
                });
            } else if total - voters < majority {
                warnings.push(ConfigWarning::DatacenterLossStopsFleet {
                    datacenter: dc.to_string(),
                    remaining: total - voters,
                    majority,
                });
            }
        }
        if total % 2 == 0 {
            warnings.push(ConfigWarning::EvenVoters(total));
        }
        Ok(warnings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(spec: &[(u64, &str)]) -> FleetConfig {
        FleetConfig::new(
            spec.iter()
                .map(|&(id, dc)| MemberSpec::voter(id, dc))
                .collect(),
        )
    }

    #[test]
    fn five_voters_over_three_datacenters_is_clean() {
        let f = fleet(&[(1, "a"), (2, "a"), (3, "b"), (4, "b"), (5, "c")]);
        assert_eq!(f.validate(), Ok(vec![]));
    }

    #[test]
    fn rejects_duplicates_zero_and_missing_voters() {
        assert_eq!(
            fleet(&[(1, "a"), (1, "b")]).validate(),
            Err(ConfigError::DuplicateId(1))
        );
        assert_eq!(fleet(&[(0, "a")]).validate(), Err(ConfigError::ZeroId));
        assert_eq!(
            FleetConfig::new(vec![MemberSpec::learner(1, "a")]).validate(),
            Err(ConfigError::NoVoters)
        );
        assert_eq!(
            fleet(&[(1, "a")])
                .with_preferred_leader_datacenters(["z"])
                .validate(),
            Err(ConfigError::PreferredDatacenterHasNoVoter("z".into()))
        );
    }

    #[test]
    fn warns_when_a_datacenter_holds_a_majority_or_its_loss_stops_the_fleet() {
        let w = fleet(&[(1, "a"), (2, "a"), (3, "a"), (4, "b"), (5, "c")])
            .validate()
            .unwrap();
        assert!(
            matches!(&w[0], ConfigWarning::DatacenterHoldsMajority { datacenter, voters: 3, total: 5 } if datacenter == "a")
        );
        assert!(w[0].to_string().contains("losing it stops the fleet"));
        let w = fleet(&[(1, "a"), (2, "a"), (3, "b"), (4, "b")])
            .validate()
            .unwrap();
        assert!(w.iter().any(|w| matches!(
            w,
            ConfigWarning::DatacenterLossStopsFleet {
                remaining: 2,
                majority: 3,
                ..
            }
        )));
        assert!(w.contains(&ConfigWarning::EvenVoters(4)));
    }
}
