#!/usr/bin/env bash
# Mutation testing of the security-critical code (issue 13): cargo-mutants over
# the sealed store's open and write paths, the vault state machine, the vault
# server's command builders and login checks, the client's reply verification,
# FleetVerifier and the witness's rules. Every mutant must be caught by a test;
# the few that cannot change behaviour are argued in docs/threat-model.md
# ("Mutation testing") and listed in `equivalent` below: a missed mutant fails
# the run unless it is listed there (by file:line:column, so a listed one that
# moves must be re-argued).
#
# NOT part of CI or scripts/test.sh: it is a command to run by hand after
# changing that code. On the 2-core development machine the whole set takes
# about 40 minutes (see docs/threat-model.md for the per-area counts and times).
#
# Usage, from anywhere:  scripts/mutants.sh [AREA...]
#   AREAS: machine server client audit sealed (default: all)
# Needs cargo-mutants (`cargo install --locked cargo-mutants`; run with 27.1.0).
#
# It mutates the working tree IN PLACE (--in-place, no copy: the incremental
# build of the tree is reused): do not edit the tree while it runs. Each file
# is restored after every mutant, and on Ctrl-C. It refuses to start when the
# mutated files have uncommitted changes. Reports: target/mutants/AREA/mutants.out
# (missed.txt, caught.txt, ...). Exit status 0 only if no area missed a mutant.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo mutants --version >/dev/null 2>&1; then
    echo "scripts/mutants.sh: needs cargo-mutants: cargo install --locked cargo-mutants" >&2
    exit 1
fi
if ! git diff --quiet HEAD -- src/storage vault/src audit/src; then
    echo "scripts/mutants.sh: commit or stash the changes under src/storage, vault/src and audit/src first" >&2
    exit 1
fi

# No debug info: relinking each mutant's test binaries is much faster, and
# tests behave the same.
export CARGO_PROFILE_DEV_DEBUG=0
out=target/mutants
mkdir -p "$out"
failed=()

# The surviving mutants argued equivalent in docs/threat-model.md.
equivalent() {
    cat <<'LIST'
vault/src/machine.rs:614:13: replace || with && in BackupVault::reinstate
vault/src/server.rs:564:21: delete field context from struct ServerLoginParameters expression in VaultServer<H>::login_finish
src/storage/sealed.rs:446:13: replace || with && in Opening<'_, H>::verify_snapshot
src/storage/sealed.rs:447:13: replace || with && in Opening<'_, H>::verify_snapshot
src/storage/sealed.rs:448:13: replace || with && in Opening<'_, H>::verify_snapshot
src/storage/sealed.rs:1049:20: replace match guard l.index == h.last && l.term == h.last_term with true in decode_batch
src/storage/sealed.rs:1049:38: replace && with || in decode_batch
LIST
}

mutants() {
    local area=$1
    shift
    echo "== $area" >&2
    local start=$SECONDS rc=0
    # A generous test timeout: only a mutant that hangs meets it.
    cargo mutants --workspace --in-place --no-shuffle --timeout 120 -o "$out/$area" "$@" || rc=$?
    echo "== $area took $((SECONDS - start)) s" >&2
    # 0: all caught; 2: some missed (checked against the list); else timeouts,
    # a failing baseline or a usage error.
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 2 ]; then
        failed+=("$area")
        return
    fi
    local open
    open=$(grep -vxF -f <(equivalent) "$out/$area/mutants.out/missed.txt" || true)
    if [ -n "$open" ]; then
        echo "== $area: missed, and not argued equivalent:" >&2
        echo "$open" >&2
        failed+=("$area")
    fi
}

# Areas (each: the file, the functions, and the narrowest tests that cover them;
# --cargo-arg limits both the build and the test run to those targets).
area_machine() {
    mutants machine \
        -f vault/src/machine.rs -f vault/src/machine/user.rs \
        --cargo-arg=--lib
}

area_server() {
    mutants server -f vault/src/server.rs \
        -F 'VaultServer<H>::(consume_command|reset_command|delete_command|replace_command|register_command|login_finish|registration_start|reregistration_start|start_registration|sealed_registration)\b|VerifiedLogin::(require|reinstate)\b|: replace (command|check_registration|request_id) ' \
        --cargo-arg=--lib --cargo-arg=--test=vault --cargo-arg=--test=tampering
}

area_client() {
    mutants client -f vault/src/client.rs \
        -F 'VaultClient::(verify_reply|reply_key|accept)\b|: replace (check_signed_reply|verify_pinned_reply|confirm_registration|expect_ok|response_key|consistency_proof) |in (check_signed_reply|verify_pinned_reply|confirm_registration|expect_ok|response_key|consistency_proof)\b' \
        --cargo-arg=--lib --cargo-arg=--test=vault --cargo-arg=--test=tampering
}

area_audit() {
    mutants audit -f audit/src/bundle.rs -f audit/src/witness.rs \
        -F 'FleetVerifier::|Witness<H>::(check_rules|key_at|sign|sign_retirement|load|open)\b|: replace (valid_name|verify_countersignature) |in (valid_name|verify_countersignature)\b' \
        --cargo-arg=--test=fleet_keys
}

area_sealed() {
    mutants sealed -f src/storage/sealed.rs \
        -F "Opening<'_, H>::|Sealed<L, H>::(open|open_new|flush_entries|write_head|seal_snapshot)\b|for Sealed<L, H>>::(append|set_hard_state|sync)\b|decode_batch" \
        --cargo-arg=--test=sealed_storage
}

areas=("$@")
if [ ${#areas[@]} -eq 0 ]; then
    areas=(machine server client audit sealed)
fi
for a in "${areas[@]}"; do
    case "$a" in
    machine | server | client | audit | sealed) "area_$a" ;;
    *)
        echo "scripts/mutants.sh: unknown area '$a' (machine server client audit sealed)" >&2
        exit 2
        ;;
    esac
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "scripts/mutants.sh: mutants survived (or timed out) in: ${failed[*]}; see $out/AREA/mutants.out" >&2
    exit 1
fi
echo "scripts/mutants.sh: every mutant was caught (or is unviable) in: ${areas[*]}" >&2
