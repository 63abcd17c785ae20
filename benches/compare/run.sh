#!/usr/bin/env bash
# Durable puts on the same machine: a 3-member etcd cluster on loopback against a
# 3-member vaultfleet fleet on sled (fsync per Ready cycle), with the same client
# counts, printed side by side. On demand only (CI never runs it):
#
#   benches/compare/run.sh [CLIENT_COUNTS...]     # default: 1 16 256
#
# It installs Debian's etcd-server, etcd-client (for etcdctl) and
# protobuf-compiler (the etcd-client crate's build needs protoc) when they are
# missing, builds both benchmarks in release mode, starts etcd in a temporary
# directory and stops it at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
counts=("${@:-1 16 256}")
read -r -a counts <<<"${counts[*]}"

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

cargo build --release -q -p vaultfleet-bench
cargo build --release -q --manifest-path benches/compare/etcd-bench/Cargo.toml
etcd_bench=benches/compare/etcd-bench/target/release/etcd-bench
vaultfleet_bench=target/release/vaultfleet-bench

n_for() { if [ "$1" -lt 16 ]; then echo 5000; else echo 100000; fi; }

# vaultfleet first, with no etcd running beside it.
declare -A vf
for c in "${counts[@]}"; do
    vf[$c]=$("$vaultfleet_bench" -c "$c" -n "$(n_for "$c")" -m 3 --store sled --machine kv | tail -1)
done

dir=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

cluster="e1=http://127.0.0.1:12380,e2=http://127.0.0.1:22380,e3=http://127.0.0.1:32380"
for i in 1 2 3; do
    etcd --name "e$i" --data-dir "$dir/e$i" \
        --listen-client-urls "http://127.0.0.1:${i}2379" --advertise-client-urls "http://127.0.0.1:${i}2379" \
        --listen-peer-urls "http://127.0.0.1:${i}2380" --initial-advertise-peer-urls "http://127.0.0.1:${i}2380" \
        --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token vaultfleet-compare \
        --log-level error >"$dir/e$i.log" 2>&1 &
    pids+=($!)
done
endpoints="127.0.0.1:12379,127.0.0.1:22379,127.0.0.1:32379"
for _ in $(seq 1 100); do
    if ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint health >/dev/null 2>&1; then break; fi
    sleep 0.2
done
ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint health

echo
echo "durable puts, 3 members on this machine ($(nproc) cores), 64-byte values"
echo "| clients | etcd $(etcd --version | head -1 | awk '{print $3}') ops/s | etcd p50 µs | etcd p99 µs | vaultfleet sled ops/s | vaultfleet p50 µs | vaultfleet p99 µs | ratio |"
echo "|---|---|---|---|---|---|---|---|"
for c in "${counts[@]}"; do
    e=$("$etcd_bench" -c "$c" -n "$(n_for "$c")" --endpoints "$endpoints" | tail -1)
    v=${vf[$c]}
    field() { sed -n "s/.*$1=\([0-9]*\).*/\1/p" <<<"$2"; }
    eo=$(field 'ops\/s' "$e"); vo=$(field 'ops\/s' "$v")
    printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$c" "$eo" "$(field p50_us "$e")" "$(field p99_us "$e")" \
        "$vo" "$(field p50_us "$v")" "$(field p99_us "$v")" "$(awk -v a="$vo" -v b="$eo" 'BEGIN { printf "%.1fx", a / b }')"
done
