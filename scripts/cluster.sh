#!/usr/bin/env bash
# Runs a three-node Sluice cluster on this machine until Ctrl-C: each node is a KRaft-style
# combined node (process.roles=broker,controller) started with Kafka's own properties.
#   clients:     127.0.0.1:${BASE_PORT} .. +2      (default 9092, 9093, 9094)
#   controllers: 127.0.0.1:${BASE_PORT}+100 .. +102
#   data:        ${DATA_DIR}/node1 .. node3        (default ./cluster-data)
# Extra arguments are passed to every node, e.g. --override num.partitions=6.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE_PORT="${BASE_PORT:-9092}"
DATA_DIR="${DATA_DIR:-./cluster-data}"
cargo build --release -q -p sluice-runtime-real --bin sluice
BIN=./target/release/sluice
voters=""
for i in 1 2 3; do
    voters+="${voters:+,}$i@127.0.0.1:$((BASE_PORT + 99 + i))"
done
pids=()
stop() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait
}
trap stop INT TERM EXIT
for i in 1 2 3; do
    client=$((BASE_PORT + i - 1))
    controller=$((BASE_PORT + 99 + i))
    "$BIN" serve \
        --override node.id=$i \
        --override process.roles=broker,controller \
        --override listeners=PLAINTEXT://127.0.0.1:$client,CONTROLLER://127.0.0.1:$controller \
        --override controller.listener.names=CONTROLLER \
        --override controller.quorum.voters="$voters" \
        --override log.dirs="$DATA_DIR/node$i" \
        "$@" 2> >(sed -u "s/^/[node $i] /" >&2) &
    pids+=($!)
done
echo "cluster up: bootstrap 127.0.0.1:$BASE_PORT,127.0.0.1:$((BASE_PORT + 1)),127.0.0.1:$((BASE_PORT + 2)) (Ctrl-C stops it)" >&2
wait
