#!/usr/bin/env bash
# vaultfleet against openraft on the same machine, in memory, in one run: the shapes of
# issue 18's table, each measured 3 times per side in alternating order (ours first on
# odd runs, openraft first on even runs), medians printed beside each other with the
# ratio vaultfleet/openraft. On demand only (CI never runs it):
#
#   benches/compare/openraft.sh
#
# openraft is benches/compare/openraft-bench (openraft =0.9.25 from crates.io, shaped as
# openraft's benchmarks/minimal: in-memory log and state machine, no network, clients
# calling client_write on the leader, server runtime with 2 workers, client runtime
# with 1). vaultfleet is `vaultfleet-bench --store mem` with its defaults (noop state
# machine, 64-byte puts, one driver thread). Both take -c clients, -n operations,
# -m members and -b writes each client keeps in flight.
#
# Op counts: 50k for 1 client, 2m for the others (about 1-4 s a run; the whole
# script, builds excluded, takes 2-3 minutes). Override with N1=... NMANY=...
# Run nothing else on the machine meanwhile; the load average is printed.
set -euo pipefail
cd "$(dirname "$0")/../.."

n1=${N1:-50k}
nmany=${NMANY:-2m}

cargo build --release -q -p vaultfleet-bench
cargo build --release -q --manifest-path benches/compare/openraft-bench/Cargo.toml
ours=target/release/vaultfleet-bench
theirs=benches/compare/openraft-bench/target/release/openraft-bench

# name | members | clients | in-flight | operations
shapes=(
    "3 members, 1 client|3|1|1|$n1"
    "3 members, 256 clients|3|256|1|$nmany"
    "3 members, 4096 clients, -b 4|3|4096|4|$nmany"
    "5 members, 256 clients|5|256|1|$nmany"
)

# The ops/s figure of a run's last line (`ops/s=N ...`).
ops() { tail -1 | sed -n 's/.*ops\/s=\([0-9.]*\).*/\1/p'; }
# One openraft-bench run. It exits non-zero now and then (seen once in about 40
# runs at 5 members, its stderr not kept); such a run is reported on stderr with
# its last lines and run once more, so one failure does not end the script
# silently. A second failure in a row ends it.
run_theirs() {
    local out rc
    for attempt in 1 2; do
        rc=0
        out=$("$theirs" "$@" 2>&1) || rc=$?
        if [ "$rc" -eq 0 ]; then
            printf '%s\n' "$out"
            return 0
        fi
        echo "openraft-bench $* exited $rc (attempt $attempt):" >&2
        printf '%s\n' "$out" | tail -5 >&2
    done
    return 1
}
median() { printf '%s\n' "$@" | sort -n | sed -n 2p; }
kops() { awk -v x="$1" 'BEGIN { printf "%.1fk", x / 1000 }'; }

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores)"
rows=()
for shape in "${shapes[@]}"; do
    IFS='|' read -r name m c b n <<<"$shape"
    o=() t=()
    for run in 1 2 3; do
        if [ $((run % 2)) -eq 1 ]; then
            o+=("$("$ours" -c "$c" -n "$n" -m "$m" -b "$b" --store mem | ops)")
            t+=("$(run_theirs -c "$c" -n "$n" -m "$m" -b "$b" | ops)")
        else
            t+=("$(run_theirs -c "$c" -n "$n" -m "$m" -b "$b" | ops)")
            o+=("$("$ours" -c "$c" -n "$n" -m "$m" -b "$b" --store mem | ops)")
        fi
    done
    for x in "${o[@]}" "${t[@]}"; do
        [ -n "$x" ] || { echo "a run printed no ops/s line ($name)" >&2; exit 1; }
    done
    mo=$(median "${o[@]}")
    mt=$(median "${t[@]}")
    ratio=$(awk -v a="$mo" -v b="$mt" 'BEGIN { printf "%.2f", a / b }')
    runs_t="$(kops "${t[0]}") $(kops "${t[1]}") $(kops "${t[2]}")"
    runs_o="$(kops "${o[0]}") $(kops "${o[1]}") $(kops "${o[2]}")"
    rows+=("| $name (-n $n) | $(kops "$mt") | $(kops "$mo") | ${ratio}× | $runs_t | $runs_o |")
    echo "done: $name" >&2
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| shape | openraft 0.9.25 (median) | vaultfleet (median) | vaultfleet/openraft | openraft runs | vaultfleet runs |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
