//! A linearizability checker in the Wing–Gong style (as Porcupine and Knossos):
//! per key, search for an order of the operations that respects real time (an
//! operation that returned before another was invoked comes first) and that the
//! sequential model accepts, memoising (operations done, model state).
//!
//! Operations whose outcome is unknown (the client gave up) may take effect at
//! any point after their invocation, or never.

use std::collections::{BTreeMap, BTreeSet};

use crate::workload::{OpKind, Record, Workload};

/// The verdict on one history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every key's history is linearizable.
    Linearizable,
    /// No valid order exists for this key; the operations, readable.
    Violation {
        /// The key.
        key: u64,
        /// The key's operations in invocation order.
        operations: Vec<String>,
    },
    /// No key failed, but the search budget ran out for these (not a violation,
    /// not a pass either).
    Inconclusive {
        /// The keys.
        keys: Vec<u64>,
    },
}

/// Checks `history` against `workload`'s model, spending at most `budget` search
/// steps per key.
pub fn check<W: Workload>(workload: &W, history: &[Record], budget: u64) -> Verdict {
    let mut by_key: BTreeMap<u64, Vec<&Record>> = BTreeMap::new();
    for r in history {
        // A read that never answered changed nothing and says nothing.
        if r.completed.is_none() && matches!(r.op.kind, OpKind::Read(_)) {
            continue;
        }
        by_key.entry(r.op.key).or_default().push(r);
    }
    let mut inconclusive = Vec::new();
    for (key, mut ops) in by_key {
        ops.sort_by_key(|r| r.invoked);
        match check_key(workload, &ops, budget) {
            Some(true) => {}
            Some(false) => {
                return Verdict::Violation {
                    key,
                    operations: ops
                        .iter()
                        .map(|r| {
                            format!(
                                "client {} [{}..{}] {}",
                                r.client,
                                r.invoked,
                                r.completed.map_or("?".into(), |c| c.to_string()),
                                workload.describe(&r.op, r.output.as_deref())
                            )
                        })
                        .collect(),
                }
            }
            None => inconclusive.push(key),
        }
    }
    if inconclusive.is_empty() {
        Verdict::Linearizable
    } else {
        Verdict::Inconclusive { keys: inconclusive }
    }
}

/// `Some(true)`: linearizable; `Some(false)`: not; `None`: budget spent.
fn check_key<W: Workload>(workload: &W, ops: &[&Record], budget: u64) -> Option<bool> {
    let n = ops.len();
    let words = n.div_ceil(64);
    let ret = |i: usize| ops[i].completed.unwrap_or(u64::MAX);
    let mut seen: BTreeSet<(Vec<u64>, W::Model)> = BTreeSet::new();
    // Depth-first search with an explicit stack of (done set, state).
    let mut stack = vec![(vec![0u64; words], W::Model::default())];
    let mut steps = 0u64;
    while let Some((done, state)) = stack.pop() {
        steps += 1;
        if steps > budget {
            return None;
        }
        let is_done = |i: usize| done[i / 64] & (1 << (i % 64)) != 0;
        // Finished when every remaining operation has an unknown outcome.
        if (0..n).all(|i| is_done(i) || ops[i].completed.is_none()) {
            return Some(true);
        }
        let min_ret = (0..n)
            .filter(|&i| !is_done(i))
            .map(ret)
            .min()
            .unwrap_or(u64::MAX);
        for i in (0..n).rev() {
            if is_done(i) || ops[i].invoked > min_ret {
                continue;
            }
            let Some(next) = workload.step(&state, &ops[i].op, ops[i].output.as_deref()) else {
                continue;
            };
            let mut d = done.clone();
            d[i / 64] |= 1 << (i % 64);
            if seen.insert((d.clone(), next.clone())) {
                stack.push((d, next));
            }
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{GuessCounter, Operation};

    fn attempt(client: usize, inv: u64, ret: Option<u64>, out: Option<Vec<u8>>) -> Record {
        let mut c = vec![b'A'];
        c.extend_from_slice(&0u64.to_be_bytes());
        Record {
            client,
            op: Operation {
                key: 0,
                kind: OpKind::Command(c),
            },
            invoked: inv,
            completed: ret,
            output: out,
            invoked_at_us: inv,
        }
    }

    fn read(client: usize, inv: u64, ret: u64, count: u32) -> Record {
        Record {
            client,
            op: Operation {
                key: 0,
                kind: OpKind::Read(0u64.to_be_bytes().to_vec()),
            },
            invoked: inv,
            completed: Some(ret),
            output: Some(count.to_be_bytes().to_vec()),
            invoked_at_us: inv,
        }
    }

    fn accepted(n: u32) -> Option<Vec<u8>> {
        let mut o = vec![b'+'];
        o.extend_from_slice(&n.to_be_bytes());
        Some(o)
    }

    #[test]
    fn concurrent_attempts_in_either_order_are_linearizable() {
        let w = GuessCounter::new(1, 3);
        // Two overlapping attempts: the one that answered 1 went first.
        let h = vec![
            attempt(0, 1, Some(4), accepted(2)),
            attempt(1, 2, Some(3), accepted(1)),
            read(2, 5, 6, 2),
        ];
        assert_eq!(check(&w, &h, 10_000), Verdict::Linearizable);
    }

    #[test]
    fn a_stale_read_is_a_violation() {
        let w = GuessCounter::new(1, 3);
        // The attempt returned before the read started, yet the read saw 0.
        let h = vec![attempt(0, 1, Some(2), accepted(1)), read(1, 3, 4, 0)];
        assert!(matches!(
            check(&w, &h, 10_000),
            Verdict::Violation { key: 0, .. }
        ));
    }

    #[test]
    fn a_lost_write_is_a_violation_and_an_unknown_one_may_go_either_way() {
        let w = GuessCounter::new(1, 3);
        // Two acknowledged attempts both claiming count 1: one was lost.
        let h = vec![
            attempt(0, 1, Some(2), accepted(1)),
            attempt(1, 3, Some(4), accepted(1)),
        ];
        assert!(matches!(check(&w, &h, 10_000), Verdict::Violation { .. }));
        // An attempt with unknown outcome explains a read of 1 or of 0.
        for seen in [0, 1] {
            let h = vec![attempt(0, 1, None, None), read(1, 2, 3, seen)];
            assert_eq!(check(&w, &h, 10_000), Verdict::Linearizable, "read {seen}");
        }
    }

    #[test]
    fn more_accepted_attempts_than_the_limit_is_a_violation() {
        let w = GuessCounter::new(1, 1);
        let h = vec![
            attempt(0, 1, Some(2), accepted(1)),
            attempt(0, 3, Some(4), accepted(2)),
        ];
        assert!(matches!(check(&w, &h, 10_000), Verdict::Violation { .. }));
    }
}
