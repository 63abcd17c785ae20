//! A model of the vault's login protocol, checked with [stateright]: one user,
//! a client that starts logins with the right code or a wrong one, one or two
//! services with their login tables, the replicated state as one linearizable
//! log (proposals lost, committed late, committed with the answer lost, or
//! committed twice across leader changes), lost and replayed messages in any
//! order, and service crashes. The checker explores every state within
//! [`Bounds`] and checks in each:
//!
//! 1. no more wrong codes are answered between successes than `max_attempts`;
//! 2. while attempts remain, a right-code login can still succeed;
//! 3. a user locked out for good never succeeds again.
//!
//! [`replay`] drives the real [`ServiceCore`](vaultfleet_vault::ServiceCore)
//! through the same steps as a path of the model and compares them step by
//! step. `docs/protocol.md` ("The model of the login protocol") says what the
//! model covers and what it leaves out.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod model;
pub mod replay;

use std::time::{Duration, Instant};

use stateright::{Checker, HasDiscoveries, Model, Path};

pub use model::{Action, Bounds, Bug, Code, LoginModel, State};

/// The result of an exhaustive check.
#[derive(Debug)]
pub struct Report {
    /// The bounds checked.
    pub bounds: Bounds,
    /// States generated (with repeats).
    pub states: usize,
    /// Distinct states.
    pub unique_states: usize,
    /// The deepest path explored.
    pub max_depth: usize,
    /// Wall time of the check.
    pub elapsed: Duration,
    /// Each property's discovery: a counterexample of an `always`, or the
    /// example of a `sometimes`.
    pub discoveries: Vec<(&'static str, Path<State, Action>)>,
    /// The `always` properties of the model, by name.
    pub always: Vec<&'static str>,
}

impl Report {
    /// The counterexample to `name`, if the check found one.
    pub fn counterexample(&self, name: &str) -> Option<&Path<State, Action>> {
        self.always
            .contains(&name)
            .then(|| self.discoveries.iter().find(|(n, _)| *n == name))
            .flatten()
            .map(|(_, p)| p)
    }

    /// Every `always` property violated.
    pub fn violated(&self) -> Vec<&'static str> {
        self.discoveries
            .iter()
            .map(|(n, _)| *n)
            .filter(|n| self.always.contains(n))
            .collect()
    }

    /// Whether the `sometimes` property `name` was witnessed.
    pub fn witnessed(&self, name: &str) -> bool {
        !self.always.contains(&name) && self.discoveries.iter().any(|(n, _)| *n == name)
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?}: {} states ({} unique), depth {}, {:.1?}",
            self.bounds, self.states, self.unique_states, self.max_depth, self.elapsed
        )?;
        for name in self.violated() {
            write!(f, "\n  VIOLATED: {name}")?;
        }
        Ok(())
    }
}

/// Checks the model under `bounds` exhaustively (breadth first, on `threads`
/// threads), to the end: every property is evaluated in every reachable state.
pub fn check(bounds: Bounds, threads: usize) -> Report {
    run(bounds, threads, HasDiscoveries::All)
}

/// As [`check`], but stops at the first violated `always` property (the
/// shortest counterexample, breadth first): for planted bugs.
pub fn find_violation(bounds: Bounds, threads: usize) -> Report {
    run(bounds, threads, HasDiscoveries::AnyFailures)
}

// The check's wall time is a figure for the report only; nothing depends on it.
#[allow(clippy::disallowed_methods)]
fn run(bounds: Bounds, threads: usize, finish_when: HasDiscoveries) -> Report {
    let started = Instant::now();
    let model = LoginModel::new(bounds);
    let always = model
        .properties()
        .into_iter()
        .filter(|p| p.expectation == stateright::Expectation::Always)
        .map(|p| p.name)
        .collect();
    let checker = model
        .checker()
        .threads(threads.max(1))
        .finish_when(finish_when)
        .spawn_bfs()
        .join();
    let mut discoveries: Vec<_> = checker.discoveries().into_iter().collect();
    discoveries.sort_by_key(|(name, _)| *name);
    Report {
        bounds,
        states: checker.state_count(),
        unique_states: checker.unique_state_count(),
        max_depth: checker.max_depth(),
        elapsed: started.elapsed(),
        discoveries,
        always,
    }
}

/// The actions of `path`, one per line, for a report.
pub fn describe(path: &Path<State, Action>) -> String {
    path.clone()
        .into_actions()
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{:>3}. {a}", i + 1))
        .collect::<Vec<_>>()
        .join("\n")
}
