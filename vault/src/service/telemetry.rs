//! The vault service's counters, through the [`metrics`] facade (a no-op
//! unless the process installs a recorder, as the node daemon does).
//!
//! Their labels are fixed words (a purpose, a kind): never a user id, a login
//! id, or any other field of a request.

/// Counter: logins started: an attempt spent (committed) and the OPAQUE
/// response sent, the login kept for its finish.
pub const LOGINS_STARTED: &str = "vaultfleet_vault_logins_started_total";
/// Counter, label `purpose` (`recover`, `delete`, `reregister`): login
/// finishes that proved the code.
pub const LOGINS_SUCCEEDED: &str = "vaultfleet_vault_logins_succeeded_total";
/// Counter: logins that ended without proving the code. An OPAQUE client
/// with a wrong code cannot finish its login, so the service sees a wrong
/// code as a login that expires unproven (`login_ttl` after it started,
/// counted at the service's next request); an abandoned login counts too.
pub const WRONG_CODES: &str = "vaultfleet_vault_wrong_codes_total";
/// Counter: lock-outs: a login that spent the user's last attempt expired
/// unproven, so the record stays erased for good.
pub const LOCKOUTS: &str = "vaultfleet_vault_lockouts_total";
/// Counter: login finishes that did not verify (an altered or forged
/// finish, or a broken client: an honest client with a wrong code sends none).
pub const FINISHES_REFUSED: &str = "vaultfleet_vault_finishes_refused_total";
/// Counter, label `kind` (`first`, `replace`): registrations the fleet
/// committed (a first registration, or a re-registration's replacement).
pub const REGISTRATIONS: &str = "vaultfleet_vault_registrations_total";

/// Describes the vault's metrics to the installed recorder (help text).
/// Harmless without one.
pub fn describe() {
    use metrics::describe_counter;
    describe_counter!(
        LOGINS_STARTED,
        "Logins started: an attempt spent and the OPAQUE response sent"
    );
    describe_counter!(
        LOGINS_SUCCEEDED,
        "Login finishes that proved the code, by purpose"
    );
    describe_counter!(
        WRONG_CODES,
        "Logins that expired without proving the code (wrong or abandoned)"
    );
    describe_counter!(
        LOCKOUTS,
        "Logins on a user's last attempt that expired unproven: the record stays erased"
    );
    describe_counter!(
        FINISHES_REFUSED,
        "Login finishes that did not verify (altered, forged, or a broken client)"
    );
    describe_counter!(
        REGISTRATIONS,
        "Registrations committed, by kind (first, replace)"
    );
}
