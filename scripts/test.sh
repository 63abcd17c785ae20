#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine with only a Rust toolchain.
#
# It installs what the suite needs and is missing (SoftHSM2 for the PKCS#11
# tests, rustfmt and clippy), then runs: formatting, lints, every crate's tests
# (the PKCS#11 ones included: they create a throw-away SoftHSM2 token in a
# temporary directory and never touch the machine's own tokens), the public
# docs, and the loom models of the runtime's shared structures.
#
# The README's test command and .ci/run both call this script, unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

# A one-shot build gains nothing from incremental state, which would double
# the target directory's size on disk.
export CARGO_INCREMENTAL=0

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "scripts/test.sh: '$*' needs root, and sudo is missing." >&2
        echo "Install SoftHSM2 first (Debian: apt-get install softhsm2), then run this again." >&2
        exit 1
    fi
}

softhsm2_module_present() {
    for m in /usr/lib/softhsm/libsofthsm2.so /usr/lib/*/softhsm/libsofthsm2.so \
        /usr/local/lib/softhsm/libsofthsm2.so; do
        [ -e "$m" ] && return 0
    done
    return 1
}

# SoftHSM2: the PKCS#11 tests run against it; skipping them is not passing them.
if ! command -v softhsm2-util >/dev/null 2>&1 || ! softhsm2_module_present; then
    echo "scripts/test.sh: installing SoftHSM2 (Debian package softhsm2) for the PKCS#11 tests" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq softhsm2
fi

# rustfmt and clippy come with rustup's default profile; a minimal one lacks them.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add rustfmt clippy
fi

# The layers are crates: the engine must not compile the vault's PAKE, its KSF,
# or any crate above it (docs/architecture.md, section 1).
engine_deps=$(cargo tree -p vaultfleet -e normal --prefix none)
for forbidden in opaque-ke argon2 voprf vaultfleet-audit vaultfleet-vault vaultfleet-net vaultfleet-tlog; do
    if grep -q "^$forbidden v" <<<"$engine_deps"; then
        echo "scripts/test.sh: the engine (vaultfleet) depends on $forbidden; see docs/architecture.md" >&2
        exit 1
    fi
done

cargo fmt --all --check
cargo clippy --workspace --all-targets --all-features -- -D warnings
# Every crate's lib, bins and tests (--tests), built once, then run in two cargo
# processes at once. The examples are not built here: clippy has type-checked
# them above, and they are commands (the README's first one runs the vault's),
# not tests.
cargo test --workspace --all-features --tests --no-run

# The simulator's suite computes on one thread for about two minutes; the other
# suites mostly wait on sockets, processes, timers and fsync. So one runs beside
# the other on the two cores: the simulator's suite, then every crate's unit
# tests, in the background; every other integration test in the foreground;
# then the netem chaos scenarios, alone (each starts three processes and a
# proxy). Each command passes --workspace --all-features, as above, so that
# cargo resolves the same features; the foreground leaves the simulator's
# package out, so its --no-run below does any building that narrower selection
# might need before anything runs beside it. The simulator's integration tests
# must therefore be the one suite the background runs.
sim_suites=$(ls sim/tests)
if [ "$sim_suites" != "sim" ] || grep -qE '^\[\[test\]\]|^autotests' sim/Cargo.toml; then
    echo "scripts/test.sh: the simulator has test targets besides tests/sim/ ($sim_suites);" >&2
    echo "add them to the background job below" >&2
    exit 1
fi
foreground=(cargo test --workspace --exclude vaultfleet-sim --all-features --no-fail-fast --test '*')
"${foreground[@]}" --no-run

background_log=$(mktemp)
# Its own process group (set -m), so that an interrupted run stops all of it:
# the cargo it runs and the test processes under that.
set -m
(
    status=0
    cargo test --workspace --all-features --no-fail-fast --test sim || status=$?
    if [ "$status" -lt 128 ]; then # not stopped by a signal
        cargo test --workspace --all-features --no-fail-fast --lib --bins || status=$?
    fi
    exit "$status"
) >"$background_log" 2>&1 </dev/null &
background=$!
set +m
trap 'kill -TERM -- "-$background" 2>/dev/null || true; cat "$background_log" >&2; rm -f "$background_log"' EXIT

foreground_status=0
"${foreground[@]}" -- --skip netem_chaos:: || foreground_status=$?
background_status=0
wait "$background" || background_status=$?
trap 'rm -f "$background_log"' EXIT
echo "--- the simulator's suite and the unit tests (run in the background) ---"
cat "$background_log"
if [ "$foreground_status" -ne 0 ] || [ "$background_status" -ne 0 ]; then
    echo "scripts/test.sh: tests failed (integration suites: exit $foreground_status;" \
        "simulator and unit tests: exit $background_status)" >&2
    exit 1
fi
cargo test --workspace --all-features --no-fail-fast --test chaos
cargo test --workspace --all-features --doc
# The engine's replication and sealed-storage suites once more, each fleet on one
# 2-worker pool (runtime::Pool) instead of a thread per replica (tests/harness).
# --workspace, as above, so that cargo resolves the same features and rebuilds nothing.
VAULTFLEET_TEST_RUNTIME=pool cargo test --workspace --all-features --test engine -- replication:: sealed_storage::
# Public docs: broken intra-doc links and missing docs fail the build.
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace --all-features
# loom needs its own cfg for the whole build; a separate target dir keeps the
# normal build cached. The models build only vaultfleet-sync and loom (seconds),
# not the engine and its dependencies.
CARGO_TARGET_DIR=target/loom CARGO_PROFILE_RELEASE_DEBUG=0 RUSTFLAGS="--cfg loom" cargo test --release -p vaultfleet-sync --test loom
