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
# The venvs run side by side (COMPAT_PARALLEL=0: one after the other): the suites mostly wait
# on brokers and clients, so two share the machine's two cores without slowing each other much.
PARALLEL="${COMPAT_PARALLEL:-1}"
logs="$(mktemp -d)"
run_venv() {
    local v="$1" py="$REPO/.venv-compat-$1/bin/python" start rc slot=0
    [ "$v" = old ] && slot=1  # each venv's suite picks its ports from its own slice
    start=$(date +%s)
    (cd "$HERE" && COMPAT_PORT_SLOT="$slot" timeout --kill-after=30 "$RUN_TIMEOUT" "$py" -m pytest -c "$HERE/pytest.ini" "${targets[@]}" "${args[@]}")
    rc=$?
    echo "$rc $(( $(date +%s) - start ))" > "$logs/$v.rc"
}
args=("$@")
pids=()
ran=()
for v in $VENVS; do
    if [ ! -x "$REPO/.venv-compat-$v/bin/python" ]; then
        echo "compat: venv .venv-compat-$v missing; run scripts/install-test-deps.sh" >&2
        status=1
        summary+="  $v: venv missing"$'\n'
        continue
    fi
    ran+=("$v")
    if [ "$PARALLEL" = 1 ]; then
        echo "================ compat suite: venv $v (output follows when it ends) ================"
        run_venv "$v" > "$logs/$v.log" 2>&1 &
        pids+=($!)
    else
        echo "================ compat suite: venv $v ================"
        run_venv "$v"
    fi
done
for pid in "${pids[@]}"; do
    wait "$pid"
done
for v in "${ran[@]}"; do
    if [ "$PARALLEL" = 1 ]; then
        echo "================ compat suite: venv $v ================"
        cat "$logs/$v.log"
    fi
    read -r rc secs < "$logs/$v.rc" || { rc=1; secs=0; }
    if [ "$rc" -ne 0 ]; then
        status=1
        summary+="  $v: FAILED (pytest exit $rc, ${secs}s)"$'\n'
    else
        summary+="  $v: passed (${secs}s)"$'\n'
    fi
done
rm -rf "$logs"

echo "================ compat summary ================"
printf '%s' "$summary"
exit $status
