//! `vaultfleet admin …`: the operator's calls to running nodes over Noise IK
//! with an admin key (`admin.toml`: fleet id, group, key file, `[[peer]]`s).
//!
//! ```text
//! vaultfleet admin status --config admin.toml [--replica N] [--json]
//! vaultfleet admin members --config admin.toml [--json]
//! vaultfleet admin add-learner --config admin.toml --id N --datacenter DC [--json]
//! vaultfleet admin promote --config admin.toml --id N [--json]
//! vaultfleet admin remove --config admin.toml --id N [--json]
//! vaultfleet admin transfer-leader --config admin.toml --to N [--json]
//! vaultfleet admin compare-state --config admin.toml [--json]
//! ```
//!
//! Exit codes: 0 done, 1 refused by the fleet (its typed answer, e.g. this
//! key is not an admin key, a learner not caught up), 2 an error (printed with
//! its chain of causes: a bad config, no leader or no answer in time, or, for
//! `status`, no replica answering at all), 3 (`remove` only) the removal is
//! committed but not every voter of the new configuration was seen to apply
//! it within 10 s (16 s at most, with the status rounds in flight): keep the
//! removed replica running until `status` shows each voter holding it.
//!
//! `compare-state` has its own: 0 every digest reported is equal (replicas
//! that are behind, passed the marker without a digest or do not answer are
//! listed, and do not count as diverged), 1 two replicas reported different
//! digests at the same index, 2 an error (a refusal included, e.g. this key
//! is not an admin key).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use raft::prelude::ConfState;
use raft::StateRole;
use serde_json::json;
use vaultfleet::replica::Status;
use vaultfleet_node::admin::{
    hex_digest, Admin, AdminConfig, AdminError, DigestReport, Held, Members, ReplicaReport,
    StateComparison,
};
use vaultfleet_node::logging::{self, LogFormat};

/// The operator's calls to running nodes.
#[derive(Debug, Subcommand)]
pub(crate) enum AdminCommand {
    /// Every replica's status (role, term, commit, applied, HSM and disk
    /// health, per-follower lag on the leader), or one replica's.
    Status(StatusArgs),
    /// The fleet's voters and learners, as its leader reports them.
    Members(MembersArgs),
    /// Add a replica as a learner (it must be running and pinned by the
    /// fleet's nodes).
    AddLearner(AddLearnerArgs),
    /// Promote a learner to voter once it has caught up.
    Promote(IdArgs),
    /// Remove a replica (voter or learner) from the fleet, then wait (up to
    /// 10 s, plus the status rounds in flight then: 16 s at most) until every
    /// voter of the new configuration has applied the removal; exit 3 if one
    /// has not by then: keep the removed replica running until it has.
    Remove(IdArgs),
    /// Hand leadership to a voter and wait until it leads.
    TransferLeader(TransferArgs),
    /// Every replica's digest of its replicated state at one applied index
    /// (a marker entry proposed through the leader); a divergence names the
    /// replicas that differ (exit 1). Needs every replica on a build that
    /// knows state digest markers.
    CompareState(MembersArgs),
}

/// What every admin call takes.
#[derive(Debug, Args)]
pub(crate) struct AdminArgs {
    /// The admin config (fleet_id, group, key_file, [[peer]] tables).
    #[arg(long)]
    config: PathBuf,
    /// Print JSON lines instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    common: AdminArgs,
    /// Only this replica.
    #[arg(long)]
    replica: Option<u64>,
}

#[derive(Debug, Args)]
pub(crate) struct MembersArgs {
    #[command(flatten)]
    common: AdminArgs,
}

#[derive(Debug, Args)]
pub(crate) struct AddLearnerArgs {
    #[command(flatten)]
    common: AdminArgs,
    /// The new replica's id.
    #[arg(long)]
    id: u64,
    /// Its datacenter.
    #[arg(long)]
    datacenter: String,
}

#[derive(Debug, Args)]
pub(crate) struct IdArgs {
    #[command(flatten)]
    common: AdminArgs,
    /// The replica.
    #[arg(long)]
    id: u64,
}

#[derive(Debug, Args)]
pub(crate) struct TransferArgs {
    #[command(flatten)]
    common: AdminArgs,
    /// The voter to lead.
    #[arg(long)]
    to: u64,
}

impl AdminCommand {
    fn common(&self) -> &AdminArgs {
        match self {
            AdminCommand::Status(a) => &a.common,
            AdminCommand::Members(a) | AdminCommand::CompareState(a) => &a.common,
            AdminCommand::AddLearner(a) => &a.common,
            AdminCommand::Promote(a) | AdminCommand::Remove(a) => &a.common,
            AdminCommand::TransferLeader(a) => &a.common,
        }
    }
}

/// How a command ended, beyond success.
enum Failed {
    /// Exit 1: the fleet refused.
    Refused(AdminError),
    /// Exit 2: an error.
    Error(Box<dyn std::error::Error>),
    /// Exit 2, already reported (no replica answered a status request).
    NoAnswer,
    /// Exit 1, already reported: replicas' state digests differ.
    Diverged,
    /// Exit 3, already reported: a removal is done, but not every voter of
    /// the new configuration was seen to hold it.
    NotHeld,
}

impl From<AdminError> for Failed {
    fn from(e: AdminError) -> Self {
        if e.is_refusal() {
            Failed::Refused(e)
        } else {
            Failed::Error(Box::new(e))
        }
    }
}

/// Runs one admin command; its exit code (0 done, 1 refused, 2 error, 3 a
/// removal done but not yet held by every voter).
pub(crate) fn main(command: &AdminCommand) -> ExitCode {
    // Logs on stderr (`RUST_LOG`), JSON lines with `--json`.
    logging::init(if command.common().json {
        LogFormat::Json
    } else {
        LogFormat::Text
    });
    match run(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failed::Refused(e)) => {
            crate::print_error(&e);
            ExitCode::from(1)
        }
        Err(Failed::Error(e)) => {
            crate::print_error(e.as_ref());
            ExitCode::from(2)
        }
        Err(Failed::NoAnswer) => ExitCode::from(2),
        Err(Failed::Diverged) => ExitCode::from(1),
        Err(Failed::NotHeld) => ExitCode::from(3),
    }
}

fn run(command: &AdminCommand) -> Result<(), Failed> {
    let common = command.common();
    let config = AdminConfig::load(&common.config).map_err(|e| Failed::Error(Box::new(e)))?;
    let admin = Admin::connect(&config)?;
    let json = common.json;
    match command {
        AdminCommand::Status(a) => {
            let reports = admin.status(a.replica)?;
            print_status(&reports, json);
            if reports.iter().all(|r| r.status.is_none()) {
                eprintln!(
                    "error: no replica answered (down, unreachable, or this admin key is not pinned by the fleet)"
                );
                return Err(Failed::NoAnswer);
            }
        }
        AdminCommand::Members(_) => {
            let members = admin.members()?;
            print_members(&admin, &members, json);
        }
        AdminCommand::AddLearner(a) => {
            let cs = admin.add_learner(a.id, &a.datacenter)?;
            print_change("add-learner", a.id, &cs, json);
        }
        AdminCommand::Promote(a) => {
            let cs = admin.promote(a.id)?;
            print_change("promote", a.id, &cs, json);
        }
        AdminCommand::Remove(a) => {
            let (cs, held) = admin.remove_held(a.id)?;
            print_removal(a.id, &cs, &held, json);
            if !held.complete() {
                return Err(Failed::NotHeld);
            }
        }
        AdminCommand::TransferLeader(a) => {
            admin.transfer_leader(a.to)?;
            if json {
                println!("{}", json!({ "op": "transfer-leader", "leader": a.to }));
            } else {
                println!("replica {} leads", a.to);
            }
        }
        AdminCommand::CompareState(_) => {
            // Exit 1 is a divergence only: a refusal is an error here.
            let comparison = admin
                .compare_state()
                .map_err(|e| Failed::Error(Box::new(e)))?;
            print_comparison(&comparison, json);
            if comparison.diverged() {
                return Err(Failed::Diverged);
            }
        }
    }
    Ok(())
}

fn digest_json(report: &DigestReport) -> serde_json::Value {
    match report {
        DigestReport::Digest(d) => json!({ "state": "digest", "digest": hex_digest(d) }),
        DigestReport::Behind { applied } => json!({ "state": "behind", "applied": applied }),
        DigestReport::Missed { applied } => json!({ "state": "missed", "applied": applied }),
        DigestReport::Unreachable => json!({ "state": "unreachable" }),
        _ => json!({ "state": "unknown" }),
    }
}

fn print_comparison(c: &StateComparison, json: bool) {
    if json {
        println!(
            "{}",
            json!({
                "op": "compare-state",
                "index": c.index,
                "leader": c.leader,
                "diverged": c.diverged(),
                "complete": c.complete(),
                "replicas": c.replicas.iter().map(|r| {
                    let mut line = digest_json(&r.report);
                    line["id"] = json!(r.id);
                    line["datacenter"] = json!(r.datacenter);
                    line
                }).collect::<Vec<_>>(),
                "groups": c.groups.iter().map(|g| json!({
                    "digest": g.hex(),
                    "replicas": g.replicas,
                })).collect::<Vec<_>>(),
            })
        );
        return;
    }
    println!("state digests at index {} (leader {})", c.index, c.leader);
    for r in &c.replicas {
        let what = match &r.report {
            DigestReport::Digest(d) => hex_digest(d),
            DigestReport::Behind { applied } => {
                format!("behind: applied {applied}, the marker not yet")
            }
            DigestReport::Missed { applied } => format!(
                "no digest: applied {applied}, past the marker without one (a snapshot, or an older build)"
            ),
            DigestReport::Unreachable => "unreachable".to_owned(),
            _ => "unknown".to_owned(),
        };
        println!("{:>6}  {:<16} {what}", r.id, r.datacenter);
    }
    if c.diverged() {
        println!("DIVERGED: {} different digests", c.groups.len());
        for g in &c.groups {
            println!("  {}  replicas {:?}", g.hex(), g.replicas);
        }
    } else if c.complete() {
        println!("all {} replicas agree", c.replicas.len());
    } else {
        let agree = c.groups.first().map_or(0, |g| g.replicas.len());
        println!(
            "no divergence: {agree} of {} replicas reported a digest, all equal",
            c.replicas.len()
        );
    }
}

fn role_name(role: StateRole) -> &'static str {
    match role {
        StateRole::Leader => "leader",
        StateRole::Follower => "follower",
        StateRole::Candidate => "candidate",
        StateRole::PreCandidate => "pre-candidate",
    }
}

/// A host health check's result as shown: `ok`, `FAILING`, or `?` when the
/// replica does not know (no health check runs where it answers).
fn health_text(health: Option<bool>) -> &'static str {
    match health {
        Some(true) => "ok",
        Some(false) => "FAILING",
        None => "?",
    }
}

/// The same in `--json`: `"ok"`, `"failing"` or `"unknown"`.
fn health_json(health: Option<bool>) -> &'static str {
    match health {
        Some(true) => "ok",
        Some(false) => "failing",
        None => "unknown",
    }
}

fn status_json(report: &ReplicaReport) -> serde_json::Value {
    match &report.status {
        None => json!({ "id": report.id, "datacenter": report.datacenter, "reachable": false }),
        Some(s) => json!({
            "id": report.id,
            "datacenter": report.datacenter,
            "reachable": true,
            "role": role_name(s.role),
            "term": s.term,
            "leader": s.leader,
            "commit": s.commit,
            "applied": s.applied,
            "first_index": s.first_index,
            "last_index": s.last_index,
            "voters": s.voters,
            "learners": s.learners,
            "hsm": health_json(s.host.hsm),
            "disk": health_json(s.host.disk),
            "followers": s.followers.iter().map(|f| json!({
                "id": f.id,
                "matched": f.matched,
                "lag": f.lag,
                "recent_active": f.recent_active,
            })).collect::<Vec<_>>(),
        }),
    }
}

fn print_status(reports: &[ReplicaReport], json: bool) {
    if json {
        for r in reports {
            println!("{}", status_json(r));
        }
        return;
    }
    println!(
        "{:>6}  {:<16} {:<13} {:>6} {:>6} {:>10} {:>10} {:>10}  {:<7} {:<7} voters held",
        "id", "datacenter", "role", "term", "leader", "commit", "applied", "last", "hsm", "disk"
    );
    for r in reports {
        let Some(s) = &r.status else {
            println!("{:>6}  {:<16} unreachable", r.id, r.datacenter);
            continue;
        };
        println!(
            "{:>6}  {:<16} {:<13} {:>6} {:>6} {:>10} {:>10} {:>10}  {:<7} {:<7} {:?}",
            r.id,
            r.datacenter,
            role_name(s.role),
            s.term,
            s.leader.map_or_else(|| "-".to_owned(), |l| l.to_string()),
            s.commit,
            s.applied,
            s.last_index,
            health_text(s.host.hsm),
            health_text(s.host.disk),
            s.voters
        );
        print_followers(s);
    }
}

/// The leader's per-follower progress, under its row.
fn print_followers(s: &Status) {
    for f in &s.followers {
        println!(
            "{:>6}  └ follower {:<6} matched {:>10}  lag {:>8}  {}",
            "",
            f.id,
            f.matched,
            f.lag,
            if f.recent_active {
                "recently active"
            } else {
                "not heard from recently"
            }
        );
    }
}

fn print_members(admin: &Admin, m: &Members, json: bool) {
    let directory_dc = |id: u64| {
        admin
            .datacenter(id)
            .unwrap_or_else(|| "(not in the admin config)".to_owned())
    };
    let rows = m
        .voters
        .iter()
        .map(|&id| (id, "voter"))
        .chain(m.learners.iter().map(|&id| (id, "learner")));
    if json {
        for (id, kind) in rows {
            let progress = m.status.followers.iter().find(|f| f.id == id);
            println!(
                "{}",
                json!({
                    "id": id,
                    "datacenter": directory_dc(id),
                    "member": kind,
                    "leader": id == m.leader,
                    "term": m.term,
                    "lag": progress.map(|p| p.lag),
                })
            );
        }
        return;
    }
    println!("leader {} in term {}", m.leader, m.term);
    println!(
        "{:>6}  {:<16} {:<8} {:>8}",
        "id", "datacenter", "member", "lag"
    );
    for (id, kind) in rows {
        let lag = if id == m.leader {
            "leader".to_owned()
        } else {
            m.status
                .followers
                .iter()
                .find(|f| f.id == id)
                .map_or_else(|| "-".to_owned(), |f| f.lag.to_string())
        };
        println!("{:>6}  {:<16} {:<8} {:>8}", id, directory_dc(id), kind, lag);
    }
}

fn print_change(op: &str, id: u64, cs: &ConfState, json: bool) {
    let mut voters = cs.voters.clone();
    voters.sort_unstable();
    let mut learners = cs.learners.clone();
    learners.sort_unstable();
    if json {
        println!(
            "{}",
            json!({ "op": op, "id": id, "voters": voters, "learners": learners })
        );
    } else {
        println!("{op} {id}: done; voters {voters:?}, learners {learners:?}");
    }
}

/// A removal's outcome, and which voters hold the configuration it made; a
/// warning on stderr if some do not (yet).
fn print_removal(id: u64, cs: &ConfState, held: &Held, json: bool) {
    let (out, warning) = removal_text(id, cs, held, json);
    println!("{out}");
    if let Some(warning) = warning {
        eprintln!("{warning}");
    }
}

/// [`print_removal`]'s stdout line and its stderr warning.
fn removal_text(id: u64, cs: &ConfState, held: &Held, json: bool) -> (String, Option<String>) {
    let mut voters = cs.voters.clone();
    voters.sort_unstable();
    let mut learners = cs.learners.clone();
    learners.sort_unstable();
    let out = if json {
        json!({
            "op": "remove",
            "id": id,
            "voters": voters,
            "learners": learners,
            "held_by_every_voter": held.complete(),
            "applied_min": held.applied_min,
            "holding": held.holding,
            "other": held
                .other
                .iter()
                .map(|o| json!({
                    "id": o.id,
                    "voters": o.voters,
                    "learners": o.learners,
                    "applied": o.applied,
                }))
                .collect::<Vec<_>>(),
            "silent": held.silent,
            "unlisted": held.unlisted,
        })
        .to_string()
    } else {
        let holding = if held.complete() {
            "held by every voter".to_owned()
        } else {
            format!("held by {:?} so far", held.holding)
        };
        format!("remove {id}: done; voters {voters:?}, learners {learners:?}; {holding}")
    };
    if held.complete() {
        return (out, None);
    }
    let mut behind: Vec<String> = Vec::new();
    if held.applied_min.is_none() {
        behind.push(
            "the leader that answered did not report its applied index afterwards, so no voter \
             could be shown to have applied the change"
                .to_owned(),
        );
    }
    behind.extend(held.other.iter().map(|o| {
        format!(
            "replica {} reports voters {:?}, learners {:?} at applied index {}",
            o.id, o.voters, o.learners, o.applied
        )
    }));
    behind.extend(
        held.silent
            .iter()
            .map(|id| format!("replica {id} did not answer")),
    );
    behind.extend(
        held.unlisted
            .iter()
            .map(|id| format!("replica {id} is not listed in the admin config")),
    );
    let warning = format!(
        "warning: the removal is committed, but not every voter has been seen to apply it \
         (needed: voters {voters:?}, learners {learners:?}, applied index at least {}): {}. \
         Until each has, the fleet may still need a majority of the configuration before: \
         keep replica {id} running; check with `vaultfleet admin status` (each replica's \
         voters and applied index) and see docs/operations.md",
        held.applied_min
            .map_or_else(|| "unknown".to_owned(), |m| m.to_string()),
        behind.join("; ")
    );
    (out, Some(warning))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vaultfleet::replica::HostHealth;

    fn report(host: HostHealth) -> ReplicaReport {
        ReplicaReport {
            id: 1,
            datacenter: "dc-a".into(),
            status: Some(Status {
                id: 1,
                role: StateRole::Leader,
                leader: Some(1),
                term: 2,
                commit: 3,
                applied: 3,
                first_index: 1,
                last_index: 3,
                voters: vec![1],
                learners: Vec::new(),
                followers: Vec::new(),
                state_digests: Vec::new(),
                host,
            }),
        }
    }

    #[test]
    fn status_shows_each_host_health_state() {
        assert_eq!(
            [Some(true), Some(false), None].map(health_text),
            ["ok", "FAILING", "?"]
        );
        let line = status_json(&report(HostHealth {
            hsm: Some(true),
            disk: Some(false),
        }));
        assert_eq!(
            (&line["hsm"], &line["disk"]),
            (&json!("ok"), &json!("failing"))
        );
        let line = status_json(&report(HostHealth::UNKNOWN));
        assert_eq!(
            (&line["hsm"], &line["disk"]),
            (&json!("unknown"), &json!("unknown"))
        );
    }

    fn cs(voters: &[u64]) -> ConfState {
        ConfState {
            voters: voters.to_vec(),
            ..ConfState::default()
        }
    }

    fn answered(id: u64, voters: &[u64], learners: &[u64], applied: u64) -> ReplicaReport {
        let mut r = report(HostHealth::UNKNOWN);
        r.id = id;
        let s = r.status.as_mut().expect("status");
        s.id = id;
        s.voters = voters.to_vec();
        s.learners = learners.to_vec();
        s.applied = applied;
        r
    }

    #[test]
    fn a_removal_held_by_every_voter_is_reported_without_a_warning() {
        let listed = [2, 3, 4].into_iter().collect();
        let reports = [
            answered(2, &[2, 3, 4], &[], 10),
            answered(3, &[2, 3, 4], &[], 12),
            answered(4, &[2, 3, 4], &[], 10),
        ];
        let held = Held::from_reports(&cs(&[4, 3, 2]), Some(10), &listed, &reports);
        assert!(held.complete(), "{held:?}");
        let (out, warning) = removal_text(1, &cs(&[4, 3, 2]), &held, false);
        assert_eq!(
            out,
            "remove 1: done; voters [2, 3, 4], learners []; held by every voter"
        );
        assert_eq!(warning, None);
        let (out, _) = removal_text(1, &cs(&[2, 3, 4]), &held, true);
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!(v["held_by_every_voter"], true);
    }

    /// Review: a voter reporting the same configuration below the answering
    /// leader's applied index has not applied the change (a change and its
    /// reversal give back an equal configuration); nor has one whose learners
    /// differ. Neither counts; a silent and an unlisted voter are named.
    #[test]
    fn a_removal_not_yet_held_names_each_voter_and_warns() {
        let listed = [2, 3, 4].into_iter().collect();
        let reports = [
            answered(2, &[2, 3, 4, 5], &[], 12),
            answered(3, &[2, 3, 4, 5], &[], 9),
            answered(4, &[2, 3, 4, 5], &[6], 12),
        ];
        let held = Held::from_reports(&cs(&[2, 3, 4, 5]), Some(10), &listed, &reports);
        assert!(!held.complete());
        assert_eq!(held.holding, [2]);
        let other: Vec<u64> = held.other.iter().map(|o| o.id).collect();
        assert_eq!(other, [3, 4], "below the applied index; other learners");
        assert_eq!(held.unlisted, [5]);
        let held_at_10 = Held::from_reports(&cs(&[2, 3, 4, 5]), Some(10), &listed, &reports[..1]);
        assert_eq!(held_at_10.holding, [2]);
        let none = Held::from_reports(&cs(&[2, 3, 4, 5]), None, &listed, &reports[..1]);
        assert!(
            none.holding.is_empty() && !none.complete(),
            "no applied index from the leader: no voter shown holding"
        );
        let (out, warning) = removal_text(1, &cs(&[2, 3, 4, 5]), &held, false);
        assert_eq!(
            out,
            "remove 1: done; voters [2, 3, 4, 5], learners []; held by [2] so far"
        );
        let warning = warning.expect("a warning");
        assert!(
            warning
                .contains("replica 3 reports voters [2, 3, 4, 5], learners [] at applied index 9")
                && warning.contains("replica 4 reports voters [2, 3, 4, 5], learners [6]")
                && warning.contains("replica 5 is not listed in the admin config")
                && warning.contains("keep replica 1 running"),
            "{warning}"
        );
        let silent = Held::from_reports(&cs(&[2, 3]), Some(10), &listed, &reports[..1]);
        assert_eq!(silent.silent, [3]);
        let (_, warning) = removal_text(1, &cs(&[2, 3]), &silent, false);
        assert!(warning
            .expect("a warning")
            .contains("replica 3 did not answer"));
        let (out, _) = removal_text(1, &cs(&[2, 3, 4, 5]), &held, true);
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!(v["held_by_every_voter"], false);
        assert_eq!(v["other"][0]["applied"], 9);
        assert_eq!(v["unlisted"], json!([5]));
    }
}
