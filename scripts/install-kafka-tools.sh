#!/usr/bin/env bash
# Installs Apache Kafka's own command-line tools (org.apache.kafka:kafka-tools: TopicCommand,
# ConfigCommand, ConsumerGroupCommand, ConsoleProducer/ConsoleConsumer, ProducerPerformance,
# LogDirsCommand, MetadataQuorumCommand, ...) with their runtime dependencies into
# <repo>/.kafka-tools/<version>/lib/, for tests/compat/test_kafka_tools.py, which runs them as
# kafka-topics.sh and friends do (java -cp 'lib/*' <class>).
#
# Needs java (17) and mvn; jars come from Maven Central through mvn (a throwaway pom and
# maven-dependency-plugin copy-dependencies). Idempotent: fetched again only when lib/.stamp
# is missing or stale. KAFKA_TOOLS_VERSION picks the version (keep the default in sync with
# tests/compat/test_kafka_tools.py).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="${KAFKA_TOOLS_VERSION:-4.4.0}"
LIB="$REPO/.kafka-tools/$VERSION/lib"
DEP_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.6.1"
WANT="v1 kafka-tools $VERSION"

log() { echo "[install-kafka-tools] $*" >&2; }

if [ -f "$LIB/.stamp" ] && [ "$(head -n1 "$LIB/.stamp")" = "$WANT" ] && [ -f "$LIB/kafka-tools-$VERSION.jar" ]; then
    log "kafka-tools $VERSION up to date"
    exit 0
fi
for tool in java mvn; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        log "missing $tool (on Debian: apt-get install openjdk-17-jdk-headless maven)"
        exit 2
    fi
done
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cat >"$WORK/pom.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>sluice.compat</groupId><artifactId>kafka-tools</artifactId><version>0</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$VERSION</version></dependency>
  </dependencies>
</project>
EOF
log "fetching kafka-tools $VERSION and its runtime dependencies"
start=$(date +%s)
mvn -B -q -Dstyle.color=never -f "$WORK/pom.xml" "$DEP_PLUGIN:copy-dependencies" \
    -DincludeScope=runtime -DoutputDirectory="$WORK/lib" </dev/null 2>&1 \
    | sed -e 's/\x1b\[[0-9;]*m//g' | grep -v '^[[:space:]]*$' | tail -n 40 >&2 || true
if [ ! -f "$WORK/lib/kafka-tools-$VERSION.jar" ]; then
    log "kafka-tools $VERSION could not be fetched (is it served by the Maven repository?)"
    exit 1
fi
rm -rf "$LIB"
mkdir -p "$(dirname "$LIB")"
mv "$WORK/lib" "$LIB"
printf '%s\n%s\n' "$WANT" "$(cd "$LIB" && ls | wc -l) jars" >"$LIB/.stamp"
log "kafka-tools $VERSION ready in $LIB ($(( $(date +%s) - start ))s)"
