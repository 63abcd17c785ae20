#!/usr/bin/env bash
# Coverage-guided fuzzing of every decoder of outside bytes (docs/simulation.md,
# "Fuzzing").
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET (default 60)] [TARGET...]
#
# Installs cargo-fuzz if missing, copies the committed seeds
# (fuzz/seeds/<target>/) and regressions (fuzz/regressions/<target>/) into
# libFuzzer's working corpus (fuzz/corpus/<target>/, not committed), runs each
# target (all of them by default) for SECONDS_PER_TARGET with
# -max_total_time, then prints per target the executions and the coverage
# libFuzzer reached (its final `stat::number_of_executed_units`, `cov:` and
# `ft:`). A crash is minimized and copied into fuzz/regressions/<target>/,
# which the stable test replays
# (`cargo test -p vaultfleet-proptests --all-features --test props -- fuzz_corpus::`).
# Logs: fuzz/logs/<target>.log. Exits 1 if any target crashed.
set -uo pipefail

cd "$(dirname "$0")/.."
SECONDS_PER_TARGET="${1:-60}"
shift || true

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: installing it (cargo install cargo-fuzz --locked)"
    cargo install cargo-fuzz --locked || exit 2
fi

if [ "$#" -gt 0 ]; then
    TARGETS=("$@")
else
    mapfile -t TARGETS < <(cargo +nightly fuzz list --fuzz-dir fuzz)
fi

mkdir -p fuzz/logs
echo "building ${#TARGETS[@]} targets (nightly, address sanitizer, optimised with debug assertions and overflow checks)"
# `cargo fuzz build` builds one target or all of them.
if [ "${#TARGETS[@]}" -eq 1 ]; then
    build=(cargo +nightly fuzz build --fuzz-dir fuzz -O -a "${TARGETS[0]}")
else
    build=(cargo +nightly fuzz build --fuzz-dir fuzz -O -a)
fi
if ! "${build[@]}" 2>fuzz/logs/build.log; then
    tail -30 fuzz/logs/build.log
    exit 2
fi

BIN="fuzz/target/$(rustc +nightly -vV | sed -n 's/^host: //p')/release"
crashed=0
printf '%-20s %14s %8s %8s %8s  %s\n' target executions "exec/s" cov ft result
for t in "${TARGETS[@]}"; do
    corpus="fuzz/corpus/$t"
    artifacts="fuzz/artifacts/$t"
    mkdir -p "$corpus" "$artifacts"
    for d in "fuzz/seeds/$t" "fuzz/regressions/$t"; do
        [ -d "$d" ] && cp -n "$d"/* "$corpus"/ 2>/dev/null
    done
    log="fuzz/logs/$t.log"
    before=$(ls "$artifacts" | wc -l)
    # The binary built above, run directly: `cargo fuzz run` would rebuild
    # whatever changed in the tree since, target by target.
    "$BIN/$t" "$corpus" -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 \
        -artifact_prefix="$artifacts/" -rss_limit_mb=2048 -timeout=10 >"$log" 2>&1
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
    result=ok
    if [ "$(ls "$artifacts" | wc -l)" -gt "$before" ]; then
        result=CRASH
        crashed=1
        mkdir -p "fuzz/regressions/$t"
        for a in $(ls -t "$artifacts" | head -n $(( $(ls "$artifacts" | wc -l) - before ))); do
            min="$artifacts/min-$a"
            "$BIN/$t" "$artifacts/$a" -minimize_crash=1 -runs=20000 \
                -exact_artifact_path="$min" >"fuzz/logs/$t.tmin.log" 2>&1 || true
            [ -s "$min" ] || cp "$artifacts/$a" "$min"
            cp "$min" "fuzz/regressions/$t/$a"
            echo "  $t: crash $a minimized into fuzz/regressions/$t/$a:" \
                "add it to git, fix the decoder, and check that the fuzz_corpus test passes"
        done
    fi
    printf '%-20s %14s %8s %8s %8s  %s\n' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "$result"
done
exit "$crashed"
