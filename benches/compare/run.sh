#!/usr/bin/env bash
# Durable puts over the network on the same machine: a 3-member etcd cluster on
# loopback against a 3-member vaultfleet fleet whose replicas are processes of
# their own on loopback (`vaultfleet-bench --transport tcp`: TCP + Noise, remote
# client sessions), on plain sled and on sled sealed by a soft HSM kept in a
# file, with the same client counts, medians of ROUNDS runs (default 3; the
# three sides take turns within each round, and etcd runs alone), printed side
# by side. On demand only (CI never runs it):
#
#   benches/compare/run.sh [CLIENT_COUNTS...]     # default: 1 16 256
#   ROUNDS=1 benches/compare/run.sh 256            # one quick round
#
# It installs Debian's etcd-server, etcd-client (for etcdctl) and
# protobuf-compiler (the etcd-client crate's build needs protoc) when they are
# missing, builds the benchmarks and the replica binary in release mode, starts
# a fresh etcd cluster in a temporary directory for each round and stops it.
set -euo pipefail
cd "$(dirname "$0")/../.."
counts=("${@:-1 16 256}")
read -r -a counts <<<"${counts[*]}"
rounds=${ROUNDS:-3}

need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
if [ "${#need[@]}" -gt 0 ]; then
    sudo_=""
    [ "$(id -u)" -eq 0 ] || sudo_="sudo"
    $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

cargo build --release -q --all-features -p vaultfleet-bench -p vaultfleet-net --bin vaultfleet-bench --bin vaultfleet-net-replica
cargo build --release -q --manifest-path benches/compare/etcd-bench/Cargo.toml
etcd_bench=benches/compare/etcd-bench/target/release/etcd-bench
vaultfleet_bench=target/release/vaultfleet-bench

n_for() { if [ "$1" -lt 16 ]; then echo 5000; else echo 100000; fi; }
field() { sed -n "s/.*$1=\([0-9]*\).*/\1/p" <<<"$2"; }
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

dir=$(mktemp -d)
pids=()
stop_etcd() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pids=()
}
cleanup() {
    stop_etcd
    rm -rf "$dir"
}
trap cleanup EXIT

cluster="e1=http://127.0.0.1:12380,e2=http://127.0.0.1:22380,e3=http://127.0.0.1:32380"
endpoints="127.0.0.1:12379,127.0.0.1:22379,127.0.0.1:32379"
start_etcd() {
    local data=$dir/etcd-$1
    for i in 1 2 3; do
        etcd --name "e$i" --data-dir "$data/e$i" \
            --listen-client-urls "http://127.0.0.1:${i}2379" --advertise-client-urls "http://127.0.0.1:${i}2379" \
            --listen-peer-urls "http://127.0.0.1:${i}2380" --initial-advertise-peer-urls "http://127.0.0.1:${i}2380" \
            --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token "vaultfleet-compare-$1" \
            --log-level error >"$dir/e$i-$1.log" 2>&1 &
        pids+=($!)
    done
    for _ in $(seq 1 100); do
        if ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint health >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint health
}

# Every run's last line, by side, client count and round.
declare -A out
for r in $(seq 1 "$rounds"); do
    for c in "${counts[@]}"; do
        for store in sled sealed-sled; do
            out[$store,$c,$r]=$("$vaultfleet_bench" --transport tcp --store "$store" --machine kv \
                -c "$c" -n "$(n_for "$c")" -m 3 | tail -1)
        done
    done
    start_etcd "$r"
    for c in "${counts[@]}"; do
        out[etcd,$c,$r]=$("$etcd_bench" -c "$c" -n "$(n_for "$c")" --endpoints "$endpoints" | tail -1)
    done
    stop_etcd
    echo "round $r of $rounds done" >&2
done

# The median of one figure over the rounds.
med() {
    local vals=()
    for r in $(seq 1 "$rounds"); do vals+=("$(field "$1" "${out[$2,$3,$r]}")"); done
    median "${vals[@]}"
}
runs() {
    local vals=()
    for r in $(seq 1 "$rounds"); do vals+=("$(field 'ops\/s' "${out[$1,$2,$r]}")"); done
    echo "${vals[*]}"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1fx", a / b }'; }

echo
echo "durable puts, 3 members on loopback, each its own process ($(nproc) cores), 64-byte values, medians of $rounds"
echo "etcd $(etcd --version | head -1 | awk '{print $3}'); vaultfleet --transport tcp (TCP + Noise) on sled and on sled sealed by a soft HSM in a file"
echo "| clients | etcd ops/s | etcd p50 / p99 µs | vaultfleet sled ops/s | p50 / p99 µs | vs etcd | vaultfleet sealed ops/s | p50 / p99 µs | vs etcd | runs: etcd; sled; sealed |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for c in "${counts[@]}"; do
    eo=$(med 'ops\/s' etcd "$c"); so=$(med 'ops\/s' sled "$c"); xo=$(med 'ops\/s' sealed-sled "$c")
    printf '| %s | %s | %s / %s | %s | %s / %s | %s | %s | %s / %s | %s | %s; %s; %s |\n' "$c" \
        "$eo" "$(med p50_us etcd "$c")" "$(med p99_us etcd "$c")" \
        "$so" "$(med p50_us sled "$c")" "$(med p99_us sled "$c")" "$(ratio "$so" "$eo")" \
        "$xo" "$(med p50_us sealed-sled "$c")" "$(med p99_us sealed-sled "$c")" "$(ratio "$xo" "$eo")" \
        "$(runs etcd "$c")" "$(runs sled "$c")" "$(runs sealed-sled "$c")"
done
