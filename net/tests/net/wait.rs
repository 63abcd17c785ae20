//! Bounded waits the TCP fleet (`common`) and the process fleet
//! (`process_fleet`) share: each fixture passes its own bound and poll period.
#![allow(dead_code, clippy::disallowed_methods, clippy::disallowed_types)]

use std::time::{Duration, Instant};

use raft::StateRole;
use vaultfleet::replica::Status;

/// Polls `cond` every `poll` until it holds; fails the test once `bound` has
/// passed, naming `what` (and what `detail` says then).
pub fn wait_until_within(
    bound: Duration,
    poll: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
    detail: impl Fn() -> String,
) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < bound,
            "timed out waiting for {what}{}",
            detail()
        );
        std::thread::sleep(poll);
    }
}

/// The leader all of `statuses` agree on, if exactly one of them leads and
/// every one names it.
pub fn agreed_leader(statuses: &[Status]) -> Option<u64> {
    let leaders: Vec<u64> = statuses
        .iter()
        .filter(|s| s.role == StateRole::Leader)
        .map(|s| s.id)
        .collect();
    (leaders.len() == 1 && statuses.iter().all(|s| s.leader == Some(leaders[0])))
        .then(|| leaders[0])
}
