#!/usr/bin/env bash
# Installs Apache Kafka's own command-line tools (org.apache.kafka:kafka-tools: TopicCommand,
# ConfigCommand, ConsumerGroupCommand, ConsoleProducer/ConsoleConsumer, ProducerPerformance,
# LogDirsCommand, MetadataQuorumCommand, ...) with their runtime dependencies into
# <repo>/.kafka-tools/<version>/lib/, for tests/compat/test_kafka_tools.py, which runs them as
# kafka-topics.sh and friends do (java -cp 'lib/*' <class>); and Kafka Connect
# (org.apache.kafka:connect-runtime with the FileStream connectors of connect-file) into
# <repo>/.kafka-connect/<version>/lib/, for tests/compat/test_connect.py, which runs a
# distributed worker as connect-distributed.sh does; and Apicurio Registry (a schema registry
# with a Confluent-compatible API, io.apicurio:apicurio-registry-app, its `all` tar.gz) into
# <repo>/.apicurio-registry/<version>/, for tests/compat/test_schema_registry.py.
#
# Needs java (17) and mvn; jars come from Maven Central through mvn (a throwaway pom and
# maven-dependency-plugin copy-dependencies). Idempotent: fetched again only when lib/.stamp
# is missing or stale. KAFKA_TOOLS_VERSION and KAFKA_CONNECT_VERSION pick the versions (keep
# the defaults in sync with the tests; connect-file 4.4.0 is not on Maven Central, so Connect
# is the release before it).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_VERSION="${KAFKA_TOOLS_VERSION:-4.4.0}"
CONNECT_VERSION="${KAFKA_CONNECT_VERSION:-4.3.1}"
DEP_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.6.1"

log() { echo "[install-kafka-tools] $*" >&2; }

for tool in java mvn; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        log "missing $tool (on Debian: apt-get install openjdk-17-jdk-headless maven)"
        exit 2
    fi
done

# fetch <lib dir> <version> <artifact>...: the artifacts (org.apache.kafka, that version) and
# their runtime dependencies into the directory, unless its stamp says they are there.
fetch() {
    local lib="$1" version="$2"
    shift 2
    local want="v1 $* $version" first="$1"
    if [ -f "$lib/.stamp" ] && [ "$(head -n1 "$lib/.stamp")" = "$want" ] && [ -f "$lib/$first-$version.jar" ]; then
        log "$* $version up to date"
        return 0
    fi
    local work deps=""
    work="$(mktemp -d)"
    for a in "$@"; do
        deps="$deps<dependency><groupId>org.apache.kafka</groupId><artifactId>$a</artifactId><version>$version</version></dependency>"
    done
    cat >"$work/pom.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>sluice.compat</groupId><artifactId>$first</artifactId><version>0</version>
  <packaging>pom</packaging>
  <dependencies>$deps</dependencies>
</project>
EOF
    log "fetching $* $version and their runtime dependencies"
    local start
    start=$(date +%s)
    mvn -B -q -Dstyle.color=never -f "$work/pom.xml" "$DEP_PLUGIN:copy-dependencies" \
        -DincludeScope=runtime -DoutputDirectory="$work/lib" </dev/null 2>&1 \
        | sed -e 's/\x1b\[[0-9;]*m//g' | grep -v '^[[:space:]]*$' | tail -n 40 >&2 || true
    if [ ! -f "$work/lib/$first-$version.jar" ]; then
        log "$first $version could not be fetched (is it served by the Maven repository?)"
        rm -rf "$work"
        exit 1
    fi
    rm -rf "$lib"
    mkdir -p "$(dirname "$lib")"
    mv "$work/lib" "$lib"
    rm -rf "$work"
    printf '%s\n%s\n' "$want" "$(cd "$lib" && ls | wc -l) jars" >"$lib/.stamp"
    log "$* $version ready in $lib ($(( $(date +%s) - start ))s)"
}

fetch "$REPO/.kafka-tools/$TOOLS_VERSION/lib" "$TOOLS_VERSION" kafka-tools
fetch "$REPO/.kafka-connect/$CONNECT_VERSION/lib" "$CONNECT_VERSION" connect-runtime connect-file

# The schema registry: one ready-to-run archive (a Quarkus fast-jar) rather than jars.
APICURIO_VERSION="${APICURIO_REGISTRY_VERSION:-3.3.3}"
apicurio="$REPO/.apicurio-registry/$APICURIO_VERSION"
if [ -f "$apicurio/quarkus-run.jar" ]; then
    log "apicurio-registry-app $APICURIO_VERSION up to date"
else
    work="$(mktemp -d)"
    log "fetching apicurio-registry-app $APICURIO_VERSION"
    mvn -B -q -Dstyle.color=never "$DEP_PLUGIN:copy" \
        -Dartifact="io.apicurio:apicurio-registry-app:$APICURIO_VERSION:tar.gz:all" \
        -DoutputDirectory="$work" </dev/null 2>&1 | tail -n 20 >&2 || true
    archive="$work/apicurio-registry-app-$APICURIO_VERSION-all.tar.gz"
    if [ ! -f "$archive" ]; then
        log "apicurio-registry-app $APICURIO_VERSION could not be fetched"
        rm -rf "$work"
        exit 1
    fi
    rm -rf "$apicurio.tmp"
    mkdir -p "$apicurio.tmp"
    tar xzf "$archive" -C "$apicurio.tmp"
    mv "$apicurio.tmp" "$apicurio"
    rm -rf "$work"
    log "apicurio-registry-app $APICURIO_VERSION ready in $apicurio"
fi
