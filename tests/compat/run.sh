#!/usr/bin/env bash
# Runs the Sluice client-compatibility suite once per client venv
# (new and old library versions).  Expects the broker to be built already
# (SLUICE_BIN, default <repo>/target/debug/sluice) and the venvs to exist
# (scripts/install-test-deps.sh).  Extra args are passed to pytest, e.g.
#   tests/compat/run.sh -k kcat -x
# COMPAT_VENVS="new" limits which venvs run; they run side by side unless COMPAT_PARALLEL=0.
# Exits non-zero if any run fails.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
export SLUICE_BIN="${SLUICE_BIN:-$REPO/target/debug/sluice}"
VENVS="${COMPAT_VENVS:-new old}"
RUN_TIMEOUT="${COMPAT_RUN_TIMEOUT:-1500}"  # hard cap per venv, seconds

if [ ! -x "$SLUICE_BIN" ]; then
    echo "compat: broker binary not found at $SLUICE_BIN (build it first or set SLUICE_BIN)" >&2
    exit 2
fi
if ! command -v kcat >/dev/null 2>&1; then
    echo "compat: kcat missing; run scripts/install-test-deps.sh" >&2
    exit 2
fi

# Default to the whole suite unless explicit test paths were given.
targets=("$HERE")
for a in "$@"; do
    case "$a" in
        *.py|*.py::*|*/*) targets=() ;;
    esac
done

status=0
summary=""
# The suites run side by side (COMPAT_PARALLEL=0: one after the other): they mostly wait on
# brokers and clients, so they share the machine's two cores without slowing each other much.
# Each venv's suite runs as shards, each every n-th test (conftest.py, COMPAT_SHARD): the new
# venv's (it alone runs the Java client and Kafka's tools) as COMPAT_NEW_SHARDS (2), the old
# venv's as COMPAT_OLD_SHARDS (2).
PARALLEL="${COMPAT_PARALLEL:-1}"
logs="$(mktemp -d)"
runs=()
for v in $VENVS; do
    if [ ! -x "$REPO/.venv-compat-$v/bin/python" ]; then
        echo "compat: venv .venv-compat-$v missing; run scripts/install-test-deps.sh" >&2
        status=1
        summary+="  $v: venv missing"$'\n'
        continue
    fi
    shards=1
    [ "$v" = new ] && [ "$PARALLEL" = 1 ] && shards="${COMPAT_NEW_SHARDS:-2}"
    [ "$v" = old ] && [ "$PARALLEL" = 1 ] && shards="${COMPAT_OLD_SHARDS:-2}"
    for ((i = 0; i < shards; i++)); do
        if [ "$shards" -gt 1 ]; then runs+=("$v:$i/$shards"); else runs+=("$v"); fi
    done
done
export COMPAT_PORT_SLOTS="${#runs[@]}"
run_suite() {  # $1: venv[:shard/shards]  $2: its port slot  $3: its log name
    local v="${1%%:*}" shard="" start rc
    [ "$1" != "$v" ] && shard="${1#*:}"
    start=$(date +%s)
    (cd "$HERE" && COMPAT_PORT_SLOT="$2" COMPAT_SHARD="$shard" timeout --kill-after=30 "$RUN_TIMEOUT" \
        "$REPO/.venv-compat-$v/bin/python" -m pytest -c "$HERE/pytest.ini" "${targets[@]}" "${args[@]}")
    rc=$?
    [ "$rc" -eq 5 ] && [ -n "$shard" ] && rc=0  # pytest's "no tests collected": a shard left empty
    echo "$rc $(( $(date +%s) - start ))" > "$logs/$3.rc"
}
args=("$@")
pids=()
for k in "${!runs[@]}"; do
    r="${runs[$k]}"
    if [ "$PARALLEL" = 1 ]; then
        echo "================ compat suite: venv $r (output follows when it ends) ================"
        run_suite "$r" "$k" "$k" > "$logs/$k.log" 2>&1 &
        pids+=($!)
    else
        echo "================ compat suite: venv $r ================"
        run_suite "$r" "$k" "$k"
    fi
done
for pid in "${pids[@]}"; do
    wait "$pid"
done
for k in "${!runs[@]}"; do
    r="${runs[$k]}"
    if [ "$PARALLEL" = 1 ]; then
        echo "================ compat suite: venv $r ================"
        cat "$logs/$k.log"
    fi
    read -r rc secs < "$logs/$k.rc" || { rc=1; secs=0; }
    if [ "$rc" -ne 0 ]; then
        status=1
        summary+="  $r: FAILED (pytest exit $rc, ${secs}s)"$'\n'
    else
        summary+="  $r: passed (${secs}s)"$'\n'
    fi
done
rm -rf "$logs"

echo "================ compat summary ================"
printf '%s' "$summary"
exit $status
