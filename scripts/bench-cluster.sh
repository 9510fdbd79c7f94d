#!/usr/bin/env bash
# Replicated produce on a three-node cluster of one binary, for A/B runs (BENCHMARKS.md):
#   scripts/bench-cluster.sh BINARY [sluice perf produce arguments...]
# Starts three combined nodes from BINARY on loopback (fresh data directories under a temp
# dir), waits for them, runs `BINARY perf produce --replication-factor 3` through node 1 with
# the arguments given, prints perf's figures and each node's CPU seconds, and stops the
# nodes by PID.
set -euo pipefail
BIN="$(realpath "${1:?usage: bench-cluster.sh BINARY [perf arguments...]}")"
shift
BASE_PORT="${BASE_PORT:-29092}"
DIR="$(mktemp -d)"
voters=""
for i in 1 2 3; do
    voters+="${voters:+,}$i@127.0.0.1:$((BASE_PORT + 99 + i))"
done
sync # the previous run's dirty pages are not this run's cost
pids=()
stop() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$DIR"
}
trap stop EXIT
for i in 1 2 3; do
    "$BIN" serve \
        --override node.id=$i \
        --override process.roles=broker,controller \
        --override listeners=PLAINTEXT://127.0.0.1:$((BASE_PORT + i - 1)),CONTROLLER://127.0.0.1:$((BASE_PORT + 99 + i)) \
        --override controller.listener.names=CONTROLLER \
        --override controller.quorum.voters="$voters" \
        --override log.dirs="$DIR/node$i" 2>"$DIR/node$i.log" &
    pids+=($!)
done
sleep 4
cpu() { awk '{printf "%.2f", ($14 + $15) / 100}' "/proc/$1/stat"; }
before=(); for pid in "${pids[@]}"; do before+=("$(cpu "$pid")"); done
"$BIN" perf produce --bootstrap "127.0.0.1:$BASE_PORT" --topic bench --replication-factor 3 "$@"
for i in 0 1 2; do
    echo "node $((i + 1)) CPU: $(echo "$(cpu "${pids[$i]}") - ${before[$i]}" | bc) s"
done
