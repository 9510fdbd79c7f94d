#!/usr/bin/env bash
# Installs what tests/compat needs: kcat and prometheus (Debian's packages) and two Python
# virtualenvs with Kafka client libraries:
#   .venv-compat-new : latest confluent-kafka + latest kafka-python
#   .venv-compat-old : confluent-kafka 2.0.2 + kafka-python 2.0.2
# and the Java client (kafka-clients 4.4.0 and 3.1.2, scripts/install-java-clients.sh) and
# kafkajs (2.2.4 and 1.16.0, scripts/install-js-clients.sh), and Kafka's own command-line tools
# (kafka-tools 4.4.0, scripts/install-kafka-tools.sh).
# Idempotent: a venv is rebuilt only when its stamp file is missing or stale,
# or when its packages no longer import.  Set COMPAT_REINSTALL=1 to force.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1

log() { echo "[install-test-deps] $*" >&2; }

# ---------------------------------------------------------------- kcat
if ! command -v kcat >/dev/null 2>&1; then
    log "installing kcat"
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo -n"; fi
    $SUDO apt-get update -y </dev/null
    $SUDO apt-get install -y --no-install-recommends kcat </dev/null
fi

# ---------------------------------------------------------------- prometheus
# A real Prometheus scrapes the broker's metrics endpoint in test_metrics.py.
if ! command -v prometheus >/dev/null 2>&1; then
    log "installing prometheus"
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo -n"; fi
    $SUDO apt-get update -y </dev/null
    $SUDO apt-get install -y --no-install-recommends prometheus </dev/null
fi

# ---------------------------------------------------------------- venvs
# Common test tooling + compression codecs for kafka-python (gzip is stdlib;
# snappy/lz4/zstd need these; python-snappy >= 0.7 is built on cramjam and
# ships wheels, so no C toolchain is needed).
COMMON="pytest pytest-timeout python-snappy lz4 zstandard"

NEW_PKGS="$COMMON confluent-kafka kafka-python"
OLD_PKGS="$COMMON confluent-kafka==2.0.2 kafka-python==2.0.2"

# Stamp content changes whenever the package spec (or this format) changes.
STAMP_VERSION=2

make_venv() {
    local name="$1"; shift
    local pkgs="$*"
    local dir="$REPO/$name"
    local stamp="$dir/.compat-stamp"
    local want="v$STAMP_VERSION $pkgs"

    if [ "${COMPAT_REINSTALL:-0}" != 1 ] && [ -f "$stamp" ] \
        && [ "$(head -n1 "$stamp")" = "$want" ] \
        && "$dir/bin/python" -c 'import confluent_kafka, kafka, pytest, pytest_timeout, snappy, lz4, zstandard' >/dev/null 2>&1; then
        log "$name up to date ($(sed -n 2p "$stamp"))"
        return 0
    fi

    log "creating $name with: $pkgs"
    rm -rf "$dir"
    "$PYTHON" -m venv "$dir"
    "$dir/bin/python" -m pip install --quiet --upgrade pip </dev/null
    # shellcheck disable=SC2086
    "$dir/bin/python" -m pip install --quiet $pkgs </dev/null
    "$dir/bin/python" -c 'import confluent_kafka, kafka, pytest, pytest_timeout, snappy, lz4, zstandard'
    local versions
    versions="$("$dir/bin/python" -c 'import confluent_kafka, kafka; print("confluent-kafka", confluent_kafka.__version__, "librdkafka", confluent_kafka.libversion()[0], "kafka-python", kafka.__version__)')"
    printf '%s\n%s\n' "$want" "$versions" > "$stamp"
    log "$name ready: $versions"
}

make_venv .venv-compat-new $NEW_PKGS
make_venv .venv-compat-old $OLD_PKGS

# ---------------------------------------------------------------- Java and JavaScript clients
bash "$REPO/scripts/install-java-clients.sh"
bash "$REPO/scripts/install-kafka-tools.sh"
bash "$REPO/scripts/install-js-clients.sh"
