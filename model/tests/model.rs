//! The login protocol's model, checked exhaustively for small bounds; planted
//! bugs the checker must catch; and model paths replayed through the real
//! service. Larger bounds: `cargo run --release -p vaultfleet-model -- --help`
//! (see docs/protocol.md, "The model of the login protocol").

use std::time::Instant;

use vaultfleet_model::model::{
    PROP_LOCKED_STAYS, PROP_RIGHT_CODE_WORKS, PROP_SOME_LOCKOUT, PROP_SOME_REINSTATE,
    PROP_SOME_SUCCESS, PROP_WRONG_LIMIT,
};
use vaultfleet_model::replay::{random_walks, replay, ReplayError, Replayer};
use vaultfleet_model::{check, describe, find_violation, Action, Bounds, Bug, Report};

fn assert_holds(report: &Report) {
    println!("{report}");
    assert!(
        report.violated().is_empty(),
        "{report}\n{}",
        report
            .violated()
            .iter()
            .filter_map(|n| report
                .counterexample(n)
                .map(|p| format!("{n}:\n{}", describe(p))))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The bounds reach the interesting states: the checks above are not vacuous.
    for name in [PROP_SOME_SUCCESS, PROP_SOME_LOCKOUT, PROP_SOME_REINSTATE] {
        assert!(report.witnessed(name), "never reached: {name}");
    }
}

/// One service, max_attempts 2, three logins (each right or wrong), one crash,
/// one leader change, one lost message, one replayed request.
#[test]
fn the_protocol_holds_exhaustively_with_one_service() {
    assert_holds(&check(Bounds::default(), 2));
}

/// Two services (a start replayed to the other one, crashes of either), with
/// max_attempts 2 and two logins.
#[test]
fn the_protocol_holds_exhaustively_with_two_services() {
    let bounds = Bounds {
        services: 2,
        logins: 2,
        ..Bounds::default()
    };
    assert_holds(&check(bounds, 2));
}

/// max_attempts 3, one service, three logins, without message loss.
#[test]
fn the_protocol_holds_exhaustively_with_three_attempts() {
    let bounds = Bounds {
        max_attempts: 3,
        drops: 0,
        ..Bounds::default()
    };
    assert_holds(&check(bounds, 2));
}

/// The planted bug "the response leaves before the consume commits": a lost
/// proposal, or a start whose consume is refused because concurrent ones
/// spent the last attempt, answers a guess that never spent an attempt. The
/// checker finds the counterexample; the same steps through the real service,
/// which commits first, keep the limit.
#[test]
fn a_response_before_the_consume_is_caught() {
    let bounds = Bounds {
        bug: Some(Bug::AnswerBeforeConsume),
        ..Bounds::default()
    };
    let report = find_violation(bounds, 2);
    println!("{report}");
    let path = report
        .counterexample(PROP_WRONG_LIMIT)
        .unwrap_or_else(|| panic!("no counterexample found: {report}"));
    println!(
        "counterexample to \"{PROP_WRONG_LIMIT}\":\n{}",
        describe(path)
    );
    let last = path.last_state();
    assert!(last.unforgiven_wrong() > usize::from(bounds.max_attempts));
    let actions = path.clone().into_actions();
    // The same steps through the real service, which commits first, then every
    // proposal they left committed: the real client tests at most max_attempts
    // wrong guesses, fewer than the buggy model let through.
    let mut real = Replayer::new(bounds, 11).expect("real service");
    for a in &actions {
        real.step(*a).expect("the real service follows the path");
    }
    while let Some(p) = real.state().proposals.first().copied() {
        real.step(Action::Commit(p)).expect("commit");
    }
    let summary = real.summary();
    println!("real service on the counterexample, then every commit: {summary:?}");
    assert!(summary.locked, "{summary:?}");
    assert_eq!(summary.wrong_answered, usize::from(bounds.max_attempts));
    assert!(summary.wrong_answered < last.unforgiven_wrong());
}

/// The planted bug "a re-delivered erasing consume hands the record back":
/// after a crash lost the last attempt's login, a replayed start reopens the
/// locked user. The checker finds it; the real vault answers "locked".
#[test]
fn a_locked_user_reopened_by_a_replay_is_caught() {
    let bounds = Bounds {
        max_attempts: 1,
        logins: 2,
        bug: Some(Bug::ReplayReturnsErasedRecord),
        ..Bounds::default()
    };
    let report = find_violation(bounds, 2);
    println!("{report}");
    let path = report
        .counterexample(PROP_LOCKED_STAYS)
        .unwrap_or_else(|| panic!("no counterexample found: {report}"));
    println!(
        "counterexample to \"{PROP_LOCKED_STAYS}\":\n{}",
        describe(path)
    );
    let actions = path.clone().into_actions();
    assert!(actions.iter().any(|a| matches!(a, Action::Replay(_))));
    // Replayed through the real vault, the replayed start is refused, and the
    // replay stops where the model (now without the bug) has no login to
    // finish: the finish the buggy path delivers does not exist.
    match replay(bounds, 12, &actions) {
        Ok(s) => panic!("the buggy path should not be possible for the real service: {s:?}"),
        Err(ReplayError::NotEnabled { action, .. }) => {
            println!("real service: stops at {action} (no such message without the bug)");
        }
        Err(e) => panic!("{e}"),
    }
}

/// The planted bug "no reinstatement on the last attempt": the right code
/// fails once a single attempt is left, and property (2) says so in the first
/// state where that happens.
#[test]
fn a_right_code_failing_on_the_last_attempt_is_caught() {
    let bounds = Bounds {
        bug: Some(Bug::NoReinstate),
        ..Bounds::default()
    };
    let report = find_violation(bounds, 2);
    println!("{report}");
    let path = report
        .counterexample(PROP_RIGHT_CODE_WORKS)
        .unwrap_or_else(|| panic!("no counterexample found: {report}"));
    println!(
        "counterexample to \"{PROP_RIGHT_CODE_WORKS}\":\n{}",
        describe(path)
    );
    assert_eq!(path.last_state().attempts_left(bounds.max_attempts), 1);
    // The real vault puts the record back: the same steps, then a right-code
    // login on the last attempt, succeed.
    let mut real = Replayer::new(bounds, 13).expect("real service");
    for a in path.clone().into_actions() {
        real.step(a).expect("the real service follows the path");
    }
    assert!(real.check_right_code_works().expect("the right code works"));
    assert!(real.summary().successes > 0);
}

/// Property (2) runs, in every state with attempts and a login start left,
/// the honest path: a fresh right-code login, delivered and committed. From
/// the registered state it is six steps and ends in a success; from a state
/// locked out for good it cannot succeed.
#[test]
fn the_right_code_check_runs_the_honest_path() {
    use stateright::Model;
    use vaultfleet_model::model::{Cmd, Msg, Proposal, Waiter};
    use vaultfleet_model::{Code, LoginModel};
    let model = LoginModel::new(Bounds {
        max_attempts: 1,
        ..Bounds::default()
    });
    let s = model.initial();
    let path = model
        .honest_completion(&s)
        .expect("the right code succeeds from the start");
    assert_eq!(path.len(), 6, "{path:?}");
    // A wrong guess spends the only attempt: locked for good, and the honest
    // path fails.
    let wrong = Action::NewStart {
        code: Code::Wrong,
        svc: 0,
    };
    let s = model.next_state(&s, wrong).expect("start");
    let start = Msg::Start {
        svc: 0,
        req: 0,
        code: Code::Wrong,
    };
    let s = model
        .next_state(&s, Action::Deliver(start))
        .expect("deliver");
    let consume = Proposal {
        cmd: Cmd::Consume { req: 0 },
        waiter: Some(Waiter::Consume {
            svc: 0,
            epoch: 0,
            req: 0,
            code: Code::Wrong,
        }),
    };
    let s = model
        .next_state(&s, Action::Commit(consume))
        .expect("commit");
    assert!(s.ghost.locked_for_good);
    assert_eq!(s.unforgiven_wrong(), 1);
    assert!(model.honest_completion(&s).is_none());
}

/// Seeded random walks of the model replayed step by step through the real
/// service (ServiceCore, VaultServer over SoftHsm, BackupVault as the log),
/// compared with the model after every step; each walk ends with a right-code
/// login through the real service where attempts remain.
#[test]
#[allow(clippy::disallowed_methods)] // the replays' wall time, printed only
fn random_walks_replay_through_the_real_service() {
    const WALKS: usize = 200;
    let seed = std::env::var("MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_202);
    let started = Instant::now();
    for bounds in [
        Bounds::default(),
        Bounds {
            services: 2,
            max_attempts: 3,
            logins: 4,
            crashes: 2,
            leader_changes: 2,
            drops: 2,
            replays: 3,
            bug: None,
        },
    ] {
        let summary = random_walks(bounds, seed, WALKS, 40).unwrap_or_else(|(walk_seed, e)| {
            panic!("walk seed {walk_seed} (MODEL_SEED={seed}): {e}")
        });
        println!("seed {seed}, {bounds:?}: {summary:?}");
        assert_eq!(summary.walks, WALKS);
        assert!(summary.right_code_checked > 0, "{summary:?}");
        assert!(
            summary.successes > 0 && summary.wrong_answered > 0,
            "{summary:?}"
        );
        for kind in [
            "Commit",
            "Deliver(Start)",
            "Deliver(Finish)",
            "Replay",
            "Crash",
        ] {
            assert!(summary.actions.contains_key(kind), "no {kind}: {summary:?}");
        }
    }
    println!("replays took {:.1?}", started.elapsed());
}

/// Larger bounds (3.1 million states, about 30 s in release): `cargo test
/// --release -p vaultfleet-model --test model -- --ignored`.
#[test]
#[ignore = "larger bounds: run in release"]
fn the_protocol_holds_for_larger_bounds() {
    let bounds = Bounds {
        max_attempts: 3,
        ..Bounds::default()
    };
    assert_holds(&check(bounds, 2));
}
