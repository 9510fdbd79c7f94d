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
# One optimized build for every test below, the broker the compatibility suite runs included:
# the "ci" profile (Cargo.toml) keeps debug assertions and overflow checks, without the release
# build's link-time optimization (building twice, debug and release, took minutes of CI).
cargo build --profile ci --workspace --bins --tests
# Every Rust test: unit, property, and the simulator's (determinism, the seed corpus, every
# planted bug caught within a bounded sweep).
cargo test --profile ci --workspace
# Bounded fault-injection sweeps of the deterministic simulator; the longer sweeps are
# benchmarks (BENCHMARKS.md).
SIM=./target/ci/sluice-sim
$SIM sweep --seeds 1..1500 --jobs 2
# The metadata quorum on its own: 3 and 5 voters under crashes, pauses and partitions.
$SIM sweep --scenario quorum --seeds 1..4000 --jobs 2
# Three or five full nodes forming a cluster: metadata agreement, replication, reassignments,
# readers and convergence under crashes, power cuts, isolations, partitions, pauses, stalls and
# lost or repeated peer messages.
$SIM sweep --scenario cluster --seeds 1..1200 --jobs 2
# The same with failed syncs and corrupted reads on every node.
$SIM sweep --scenario cluster --seeds 2001..2600 --jobs 2 --disk-faults
SLUICE_BIN="$PWD/target/ci/sluice" bash tests/compat/run.sh
