#!/usr/bin/env bash
# Installs the Apache Kafka Java client (org.apache.kafka:kafka-clients) for
# tests/compat/test_java.py: for each version, its jar and runtime
# dependencies (lz4-java, snappy-java, zstd-jni, slf4j-api) plus the matching
# slf4j-simple binding go to <repo>/.java-clients/<version>/lib/, and
# tests/compat/java/SluiceJavaClient.java is compiled against them into
# <repo>/.java-clients/<version>/classes/.
#
# Needs java + javac (17) and mvn; jars come from Maven Central through mvn
# (a throwaway pom + maven-dependency-plugin copy-dependencies).
# Idempotent: a version's jars are fetched again only when lib/.stamp is
# missing or stale, and the program is recompiled only when its source
# changed.  JAVA_CLIENT_VERSIONS="4.4.0 3.1.2" picks versions (keep the
# default in sync with JAVA_CLIENT_VERSIONS in tests/compat/test_java.py);
# JAVA_CLIENTS_REINSTALL=1 forces a fresh download.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$REPO/.java-clients"
SRC="$REPO/tests/compat/java/SluiceJavaClient.java"
VERSIONS="${JAVA_CLIENT_VERSIONS:-4.4.0 3.1.2}"
DEP_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.6.1"
STAMP_VERSION=1

log() { echo "[install-java-clients] $*" >&2; }

for tool in java javac mvn sha256sum; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        log "missing $tool (need a JDK >= 11 and Maven; on Debian: apt-get install openjdk-17-jdk-headless maven)"
        exit 2
    fi
done

src_sha="$(sha256sum "$SRC" | cut -d' ' -f1)"

write_pom() {  # write_pom <file> <groupId:artifactId:version>...
    local file="$1"; shift
    {
        echo '<?xml version="1.0" encoding="UTF-8"?>'
        echo '<project xmlns="http://maven.apache.org/POM/4.0.0">'
        echo '  <modelVersion>4.0.0</modelVersion>'
        echo '  <groupId>sluice.compat</groupId><artifactId>java-clients</artifactId><version>0</version>'
        echo '  <packaging>pom</packaging>'
        echo '  <dependencies>'
        local gav g a v
        for gav in "$@"; do
            IFS=: read -r g a v <<<"$gav"
            echo "    <dependency><groupId>$g</groupId><artifactId>$a</artifactId><version>$v</version></dependency>"
        done
        echo '  </dependencies>'
        echo '</project>'
    } >"$file"
}

quiet() {  # mvn -q still prints bare colour resets; keep real messages
    sed -e 's/\x1b\[[0-9;]*m//g' | grep -v '^[[:space:]]*$' | tail -n 40 || true
}

copy_deps() {  # copy_deps <workdir> <outdir> <gav>...
    local work="$1" out="$2"; shift 2
    write_pom "$work/pom.xml" "$@"
    mvn -B -q -Dstyle.color=never -f "$work/pom.xml" "$DEP_PLUGIN:copy-dependencies" \
        -DincludeScope=runtime -DoutputDirectory="$out" </dev/null
}

fetch_jars() {  # fetch_jars <version> <libdir>
    local v="$1" lib="$2"
    local work="$WORK/$v"
    rm -rf "$work"
    mkdir -p "$work/lib" "$work/p1"
    copy_deps "$work/p1" "$work/lib" "org.apache.kafka:kafka-clients:$v" 2>&1 | quiet >&2 || true
    if [ ! -f "$work/lib/kafka-clients-$v.jar" ]; then
        log "kafka-clients $v could not be fetched (is the version served by the Maven repository?)"
        return 1
    fi
    # slf4j-simple at exactly the slf4j-api version kafka-clients pulls in
    # (1.7.x and 2.x bindings are not interchangeable); logs go to stderr at
    # the level the caller picks with -Dorg.slf4j.simpleLogger.defaultLogLevel.
    local api_jar slf4j
    api_jar="$(cd "$work/lib" && ls slf4j-api-*.jar 2>/dev/null | head -n1)"
    if [ -z "$api_jar" ]; then
        log "kafka-clients $v brought no slf4j-api jar: $(ls "$work/lib")"
        return 1
    fi
    slf4j="${api_jar#slf4j-api-}"; slf4j="${slf4j%.jar}"
    mkdir -p "$work/p2"
    copy_deps "$work/p2" "$work/lib" "org.slf4j:slf4j-simple:$slf4j" 2>&1 | quiet >&2 || true
    if [ ! -f "$work/lib/slf4j-simple-$slf4j.jar" ]; then
        log "slf4j-simple $slf4j could not be fetched"
        return 1
    fi
    rm -rf "$lib"
    mkdir -p "$(dirname "$lib")"
    mv "$work/lib" "$lib"
    printf '%s\n%s\n' "v$STAMP_VERSION kafka-clients $v" "$(cd "$lib" && ls *.jar | tr '\n' ' ')" >"$lib/.stamp"
}

compile() {  # compile <libdir> <classesdir>
    local lib="$1" classes="$2"
    local tmp
    tmp="$(mktemp -d "$(dirname "$classes")/classes.tmp.XXXXXX")"
    if ! javac -nowarn -Xlint:none -XDsuppressNotes -encoding UTF-8 -d "$tmp" -cp "$lib/*" "$SRC"; then
        rm -rf "$tmp"
        log "javac failed for $SRC against $lib"
        return 1
    fi
    echo "$src_sha" >"$tmp/.source-sha256"
    rm -rf "$classes"
    mv "$tmp" "$classes"
}

mkdir -p "$DEST"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
for v in $VERSIONS; do
    dir="$DEST/$v"
    lib="$dir/lib"
    classes="$dir/classes"
    want="v$STAMP_VERSION kafka-clients $v"
    if [ "${JAVA_CLIENTS_REINSTALL:-0}" = 1 ] || [ ! -f "$lib/.stamp" ] \
        || [ "$(head -n1 "$lib/.stamp")" != "$want" ] || [ ! -f "$lib/kafka-clients-$v.jar" ]; then
        log "fetching kafka-clients $v and its runtime dependencies"
        start=$(date +%s)
        fetch_jars "$v" "$lib"
        log "kafka-clients $v: $(sed -n 2p "$lib/.stamp") ($(( $(date +%s) - start ))s)"
    else
        log "kafka-clients $v jars up to date"
    fi
    if [ ! -f "$classes/SluiceJavaClient.class" ] || [ "$(cat "$classes/.source-sha256" 2>/dev/null)" != "$src_sha" ]; then
        log "compiling SluiceJavaClient.java against kafka-clients $v"
        compile "$lib" "$classes"
        # Smoke check: the program runs and reports the expected client version.
        got="$(java -cp "$classes:$lib/*" SluiceJavaClient version 2>/dev/null | sed -n 's/.*"client_version":"\([^"]*\)".*/\1/p')"
        if [ "$got" != "$v" ]; then
            log "kafka-clients $v: SluiceJavaClient reports client version '$got', want $v"
            exit 1
        fi
    fi
    log "kafka-clients $v ready in $dir"
done
