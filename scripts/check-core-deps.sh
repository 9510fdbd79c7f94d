#!/usr/bin/env bash
# The sans-IO rule (DESIGN.md §1): sluice-core's normal dependency tree holds no async runtime
# and no OS bindings, and its source uses no clock, threads, files, sockets or OS randomness.
set -euo pipefail
cd "$(dirname "$0")/.."
bad=$(cargo tree -p sluice-core -e normal --prefix none | grep -oE '^(tokio|mio|libc|socket2|async-std|smol)[^ ]*' | sort -u || true)
if [ -n "$bad" ]; then
    echo "check-core-deps: sluice-core depends on: $bad" >&2
    exit 1
fi
hits=$(grep -rnE 'tokio|std::fs|std::net|Instant::now|SystemTime::now|thread_rng|rand::random|std::thread' core/src | grep -vE '^\S+:\s*//' || true)
if [ -n "$hits" ]; then
    echo "check-core-deps: sans-IO violations in core/src:" >&2
    echo "$hits" >&2
    exit 1
fi
echo "check-core-deps: sluice-core is sans-IO (no tokio, mio, libc, socket2; no clock, fs, net, threads)"
