//! What the vault workload's run established, and the oracles over it: the
//! guess limit (counting every attempt the fleet answered, the attacker's
//! too), locked-means-locked, and tickets in log order.

use std::collections::{BTreeMap, BTreeSet};

use vaultfleet_vault::wire::VaultOutcome;

/// One user's answered tickets, by the log index they were applied at.
pub(super) type TicketsByIndex = BTreeMap<u64, BTreeSet<u64>>;
/// Answered attempts of one registration: (ticket, SHA-256 of the credential
/// request).
pub(super) type Attempts = BTreeSet<(u64, [u8; 32])>;

/// What the run established, per user and registration generation.
#[derive(Default, Debug)]
pub(super) struct Facts {
    /// Attempts the fleet answered (consume committed with OK): (ticket, SHA-256
    /// of the credential request), so a ticket given to two guesses counts twice.
    pub(super) answered: BTreeMap<(u64, u64), Attempts>,
    /// Per user, the tickets answered at each log index (`applied_at`).
    pub(super) tickets_at: BTreeMap<u64, TicketsByIndex>,
    /// The credential request each answered ticket was spent for.
    pub(super) ticket_requests: BTreeMap<(u64, u64), [u8; 32]>,
    /// Tickets of recoveries whose reset is known to have committed.
    pub(super) forgiving: BTreeMap<(u64, u64), BTreeSet<u64>>,
    /// Tickets of recoveries whose reset's outcome is unknown: forgiveness only
    /// once some outcome shows the record forgiven through exactly that ticket.
    pub(super) uncertain: BTreeMap<(u64, u64), BTreeSet<u64>>,
    /// Every `forgiven_through` an outcome showed, per user and generation. Only
    /// the command of ticket `t`'s own login sets it to exactly `t`, so seeing `t`
    /// proves that command committed.
    pub(super) forgiven_seen: BTreeMap<(u64, u64), BTreeSet<u64>>,
    /// Recoveries whose success was observed: (applied at, ticket).
    pub(super) succeeded: BTreeMap<(u64, u64), BTreeSet<(u64, u64)>>,
    /// The attempt that erased each registration: (ticket, applied at).
    pub(super) erased: BTreeMap<(u64, u64), (u64, u64)>,
    /// Users whose registration was acknowledged.
    pub(super) registered: BTreeSet<u64>,
    /// Users a delete may have reached.
    pub(super) deletes: BTreeSet<u64>,
    /// Per user and `LoginStart` request id (client, sequence): the ticket
    /// its consume was answered with, its generation, and how many of the
    /// user's records had been changed (reset, deleted, replaced, registered)
    /// when it was: a re-delivery or replay must get the same ticket back
    /// while nothing changed the record since.
    pub(super) consumes: BTreeMap<(u64, u64, u64), (u64, u64, u64)>,
    /// Per user, the state changes committed so far.
    pub(super) changes: BTreeMap<u64, u64>,
    /// Registrations committed from a first registration's altered upload:
    /// the documented denial of service (a record no code opens).
    pub(super) denied: BTreeSet<(u64, u64)>,
    /// Registrations (user, generation) a device reported done.
    pub(super) device_registered: BTreeSet<(u64, u64)>,
    /// The version (code and secret) of each committed registration.
    pub(super) versions: BTreeMap<(u64, u64), u64>,
    /// Consumes answered for an attacker's copy, altered or replayed request.
    pub(super) attacker_attempts: u64,
    /// Re-delivered or replayed consumes that got their first ticket back.
    pub(super) redelivered_same_ticket: u64,
    /// Broken expectations seen while the run went on.
    pub(super) errors: Vec<String>,
}

impl Facts {
    /// A recovery's reset at `ticket`: forgiveness if it is known to have
    /// committed, else uncertain until an outcome proves it did.
    pub(super) fn note_reset(&mut self, g: (u64, u64), ticket: u64, committed: bool) {
        let set = if committed {
            &mut self.forgiving
        } else {
            &mut self.uncertain
        };
        set.entry(g).or_default().insert(ticket);
    }

    /// Notes what an outcome shows about `key`'s record.
    pub(super) fn saw(&mut self, key: u64, o: &VaultOutcome) {
        if let Some(r) = o.record.as_ref() {
            self.forgiven_seen
                .entry((key, r.generation))
                .or_default()
                .insert(r.forgiven_through);
        }
    }

    /// The forgiveness points: known resets, and uncertain ones proven committed.
    fn forgiveness(&self) -> BTreeMap<(u64, u64), BTreeSet<u64>> {
        let mut all = self.forgiving.clone();
        for (g, tickets) in &self.uncertain {
            let seen = self.forgiven_seen.get(g);
            for t in tickets {
                if seen.is_some_and(|s| s.contains(t)) {
                    all.entry(*g).or_default().insert(*t);
                }
            }
        }
        all
    }
}

/// The guess-limit and locked-means-locked oracles over what the run observed.
pub(super) fn check_guess_limit(f: &Facts, max_attempts: u32) -> Result<(), String> {
    let forgiveness = f.forgiveness();
    for (g, answered) in &f.answered {
        let empty = BTreeSet::new();
        let forgiving = forgiveness.get(g).unwrap_or(&empty);
        // Attempts between consecutive forgiveness points were all spent at
        // once when the last of them was answered.
        let mut from: u64 = 0;
        for &to in forgiving.iter().chain(std::iter::once(&u64::MAX)) {
            let n = answered
                .range((from.saturating_add(1), [0; 32])..=(to, [0xff; 32]))
                .count();
            if n > max_attempts as usize {
                return Err(format!(
                    "user {} (registration {}): {n} attempts answered between successes \
                         at tickets {from} and {to}; the limit is {}",
                    g.0, g.1, max_attempts
                ));
            }
            from = to;
        }
    }
    for (g, &(erasing, erased_at)) in &f.erased {
        // Only the erasing attempt's own login may bring the record back; until
        // it does, no recovery applied after the erase may succeed.
        let reinstated = forgiveness.get(g).is_some_and(|s| s.contains(&erasing));
        if reinstated {
            continue;
        }
        let empty = BTreeSet::new();
        let succeeded = f.succeeded.get(g).unwrap_or(&empty);
        if let Some((at, t)) = succeeded.iter().find(|(at, _)| *at > erased_at) {
            return Err(format!(
                "user {} (registration {}): the record was erased at index {erased_at}, \
                     yet the recovery of ticket {t}, applied at {at}, yielded its secret",
                g.0, g.1
            ));
        }
    }
    check_ticket_order(f)
}

/// Tickets follow the log: every ticket answered at an index is greater than
/// every ticket answered at a lower index (for the same user; tickets are
/// unique across users too, but the run only sees each user's).
fn check_ticket_order(f: &Facts) -> Result<(), String> {
    for (key, by_index) in &f.tickets_at {
        let mut before: Option<(u64, u64)> = None;
        for (&at, tickets) in by_index {
            let (Some(&low), Some(&high)) = (tickets.first(), tickets.last()) else {
                continue;
            };
            if let Some((prev_at, prev_high)) = before {
                if low <= prev_high {
                    return Err(format!(
                        "user {key}: ticket {low} answered at index {at} is not after                          ticket {prev_high} answered at index {prev_at}"
                    ));
                }
            }
            before = Some((at, high));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vaultfleet_vault::wire::VaultRecord;

    /// One answered attempt per ticket, each with its own credential request.
    fn attempts(tickets: &[u64]) -> Attempts {
        tickets.iter().map(|&t| (t, [t as u8; 32])).collect()
    }

    #[test]
    fn finding_tickets_sim_oracle_counts_two_guesses_on_one_ticket_twice() {
        // A limit of 2; a ticket shared by two guesses (as when tickets were log
        // indexes and one entry held both) plus one more: three attempts.
        let g = (1, 1);
        let mut f = Facts::default();
        let mut answered = attempts(&[10, 11]);
        answered.insert((10, [0xee; 32]));
        f.answered.insert(g, answered);
        let e = check_guess_limit(&f, 2).expect_err("three guesses, a limit of 2");
        assert!(e.contains("3 attempts answered"), "{e}");
        // Distinct tickets, one per guess, pass.
        f.answered.insert(g, attempts(&[10, 11]));
        assert_eq!(check_guess_limit(&f, 2), Ok(()));
    }

    #[test]
    fn finding_tickets_sim_oracle_wants_tickets_in_log_order() {
        let mut f = Facts::default();
        let at = f.tickets_at.entry(7).or_default();
        at.insert(10, [10, 11].into_iter().collect());
        at.insert(11, [12].into_iter().collect());
        assert_eq!(check_guess_limit(&f, 10), Ok(()));
        // A later index with a ticket not after the earlier index's: refused.
        f.tickets_at
            .entry(7)
            .or_default()
            .insert(12, [11].into_iter().collect());
        let e = check_guess_limit(&f, 10).expect_err("out of log order");
        assert!(e.contains("is not after"), "{e}");
    }

    #[test]
    fn finding_low_sim_oracle_counts_only_resets_known_to_have_committed() {
        // A limit of 2; attempts at tickets 10..=13; the recovery of ticket 11
        // sent its reset, whose outcome the client never learnt.
        let g = (1, 1);
        let mut f = Facts::default();
        f.answered.insert(g, attempts(&[10, 11, 12, 13]));
        f.note_reset(g, 11, false);
        assert!(
            check_guess_limit(&f, 2).is_err(),
            "four attempts and no reset known to have committed: over the limit of 2"
        );
        // An outcome showing the record forgiven through exactly 11 proves that
        // reset committed: two attempts on each side of it.
        let mut r = VaultRecord::new();
        r.generation = 1;
        r.forgiven_through = 11;
        let mut o = VaultOutcome::new();
        o.record = Some(r).into();
        f.saw(1, &o);
        assert_eq!(check_guess_limit(&f, 2), Ok(()));
        // Forgiven through another ticket proves nothing about 11's reset.
        let mut f2 = Facts::default();
        f2.answered.insert(g, attempts(&[10, 11, 12, 13]));
        f2.note_reset(g, 11, false);
        let mut r = VaultRecord::new();
        r.generation = 1;
        r.forgiven_through = 9;
        let mut o = VaultOutcome::new();
        o.record = Some(r).into();
        f2.saw(1, &o);
        assert!(check_guess_limit(&f2, 2).is_err());
    }
}
