#!/usr/bin/env bash
# Baseline benchmark: a release broker on a fresh temp data dir, `sluice perf` against it on
# loopback, and the broker's CPU time for each run (from /proc). Prints figures; asserts none.
#   scripts/bench.sh [records]
set -euo pipefail
cd "$(dirname "$0")/.."
records="${1:-1000000}"
cargo build --release -q -p sluice-runtime-real
bin=target/release/sluice
dir=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
"$bin" serve --override "listeners=PLAINTEXT://127.0.0.1:$port" --override "log.dirs=$dir/data" 2>"$dir/broker.log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
cpu() { awk '{printf "%.2f", ($14+$15)/100}' /proc/$pid/stat; }
run() {
    local before after
    before=$(cpu)
    echo "\$ sluice perf $*"
    timeout 300 "$bin" perf "$@" --bootstrap 127.0.0.1:$port
    after=$(cpu)
    echo "broker CPU: $(echo "$after - $before" | bc) s"
    echo
}
echo "machine: $(nproc) cores; data dir on $(df -T "$dir" | awk 'NR==2{print $2}'); acks=-1 means fsync before every acknowledgement"
echo
run produce --topic b1000 --records "$records" --record-size 100 --batch-records 1000
run produce --topic b100 --records "$records" --record-size 100 --batch-records 100
run produce --topic b10 --records "$((records / 5))" --record-size 100 --batch-records 10
run consume --topic b1000 --records "$records"
run consume --topic b100 --records "$records"
run produce --topic big --records 20000 --record-size 16384 --batch-records 4
run consume --topic big --records 20000
