#!/usr/bin/env bash
# Runs the whole test suite, installing what it needs first (kcat, Python client venvs):
# the sans-IO dependency check, every Rust test (unit, property, simulator determinism, seed
# corpus, planted bugs caught), a bounded simulator sweep under faults, and the real-client
# compatibility suite (kcat, confluent-kafka, kafka-python; an
# old and a current build of each library).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/install-test-deps.sh
bash scripts/check-core-deps.sh
cargo build --workspace --bins
cargo test --workspace --exclude sluice-sim
# The simulator's tests (determinism, the seed corpus, every planted bug caught within a
# bounded sweep) run millions of steps: in release they take half the time, build included.
cargo test --release -p sluice-sim
# Bounded fault-injection sweeps of the deterministic simulator (release build); the longer
# sweeps are benchmarks (BENCHMARKS.md).
cargo run --release -q -p sluice-sim -- sweep --seeds 1..1500 --jobs 2
# The metadata quorum on its own: 3 and 5 voters under crashes, pauses and partitions.
cargo run --release -q -p sluice-sim -- sweep --scenario quorum --seeds 1..4000 --jobs 2
# Three or five full nodes forming a cluster: metadata agreement, replication, reassignments and
# convergence under crashes, isolations and stalls.
cargo run --release -q -p sluice-sim -- sweep --scenario cluster --seeds 1..1200 --jobs 2
# The same with failed syncs and corrupted reads on every node.
cargo run --release -q -p sluice-sim -- sweep --scenario cluster --seeds 2001..2600 --jobs 2 --disk-faults
bash tests/compat/run.sh
