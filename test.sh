#!/usr/bin/env bash
# Runs the whole test suite, installing what it needs first (kcat, Python client venvs):
# the sans-IO dependency check, every Rust test (unit, property, integration with the real
# binary), and the real-client compatibility suite (kcat, confluent-kafka, kafka-python; an
# old and a current build of each library).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/install-test-deps.sh
bash scripts/check-core-deps.sh
cargo build --workspace --bins
cargo test --workspace
bash tests/compat/run.sh
