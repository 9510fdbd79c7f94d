#!/usr/bin/env bash
# Runs the Sluice client-compatibility suite once per client venv
# (new and old library versions).  Expects the broker to be built already
# (SLUICE_BIN, default <repo>/target/debug/sluice) and the venvs to exist
# (scripts/install-test-deps.sh).  Extra args are passed to pytest, e.g.
#   tests/compat/run.sh -k kcat -x
# COMPAT_VENVS="new" limits which venvs run.  Exits non-zero if any run fails.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
export SLUICE_BIN="${SLUICE_BIN:-$REPO/target/debug/sluice}"
VENVS="${COMPAT_VENVS:-new old}"
RUN_TIMEOUT="${COMPAT_RUN_TIMEOUT:-900}"   # hard cap per venv, seconds

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
for v in $VENVS; do
    py="$REPO/.venv-compat-$v/bin/python"
    if [ ! -x "$py" ]; then
        echo "compat: venv .venv-compat-$v missing; run scripts/install-test-deps.sh" >&2
        status=1
        summary+="  $v: venv missing"$'\n'
        continue
    fi
    echo "================ compat suite: venv $v ================"
    start=$(date +%s)
    (cd "$HERE" && timeout --kill-after=30 "$RUN_TIMEOUT" "$py" -m pytest -c "$HERE/pytest.ini" "${targets[@]}" "$@")
    rc=$?
    secs=$(( $(date +%s) - start ))
    if [ $rc -ne 0 ]; then
        status=1
        summary+="  $v: FAILED (pytest exit $rc, ${secs}s)"$'\n'
    else
        summary+="  $v: passed (${secs}s)"$'\n'
    fi
done

echo "================ compat summary ================"
printf '%s' "$summary"
exit $status
