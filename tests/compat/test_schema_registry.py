"""A schema registry keeping its schemas in a Kafka topic on Sluice (issue 12).

Confluent's Schema Registry is not on Maven Central, and Karapace is not on PyPI, so the
registry here is Apicurio Registry (io.apicurio:apicurio-registry-app, its Quarkus fast-jar
from Maven Central, the `all` tar.gz; unpacked into <repo>/.apicurio-registry/<version>/)
with its KafkaSQL storage: every write is a record in a journal topic, read back from the
start by a consumer on every start (its SQL store is an in-memory H2 database, so after a
restart all it knows comes from the topic). The journal topic is named `_schemas` here, and
the schemas go in and out through the registry's Confluent-compatible REST API
(/apis/ccompat/v7), as a Confluent serializer would send them.

What the registry does with Sluice: an Admin client (kafka-clients 3.9) lists topics,
describes the cluster, creates `_schemas`, `kafkasql-snapshots` and `registry-events` with
cleanup.policy=delete, retention.ms=-1 and retention.bytes=-1, and checks them with
DescribeConfigs (includeSynonyms) before it starts; an idempotent producer (acks=all) writes
the journal; consumers in fresh groups (JoinGroup/SyncGroup, no committed offsets) read it
from the beginning.

Not covered: Confluent's and Karapace's `_schemas` is compacted (cleanup.policy=compact, keyed
records). Apicurio refuses to start on a compacted journal ("Topic must not have
'cleanup.policy=compact'"), so compaction is tested by test_compaction.py and Kafka Connect's
topics (test_connect.py), not here.

Needs a Java of version 21 or later (the jar's classes are Java 21: class file 65), found as
APICURIO_JAVA, $JAVA_HOME/bin/java, `java` on PATH or /usr/lib/jvm/*/bin/java; the test is
skipped without it or without the unpacked registry."""
from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from clients import ck_admin
from conftest import REPO, _set_pdeathsig, free_port

VERSION = os.environ.get("APICURIO_REGISTRY_VERSION", "3.3.3")
HOME = os.environ.get("APICURIO_REGISTRY_HOME") or os.path.join(REPO, ".apicurio-registry", VERSION)
RUN_JAR = os.path.join(HOME, "quarkus-run.jar")
TOPIC = "_schemas"
CCOMPAT = "/apis/ccompat/v7"
SR_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


def _java_major(java):
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major


def find_java(min_major=21):
    candidates = [os.environ.get("APICURIO_JAVA")]
    if os.environ.get("JAVA_HOME"):
        candidates.append(os.path.join(os.environ["JAVA_HOME"], "bin", "java"))
    candidates.append("java")
    candidates += sorted(glob.glob("/usr/lib/jvm/*/bin/java"), reverse=True)
    for c in candidates:
        if c and (_java_major(c) or 0) >= min_major:
            return c
    return None


JAVA = find_java()

pytestmark = [
    pytest.mark.skipif(sys.prefix.rstrip("/").endswith("-old"),
                       reason="the schema registry runs once per suite run (in the .venv-compat-new run)"),
    pytest.mark.skipif(not os.path.isfile(RUN_JAR),
                       reason="Apicurio Registry %s not installed (%s missing)" % (VERSION, RUN_JAR)),
    pytest.mark.skipif(JAVA is None, reason="Apicurio Registry %s needs Java 21 or later" % VERSION),
    pytest.mark.timeout(420),
]


class Registry:
    """One Apicurio Registry process at a time on fixed ports, restartable."""

    def __init__(self, bootstrap, workdir):
        self.bootstrap = bootstrap
        self.workdir = workdir
        self.port = free_port()
        self.management_port = free_port()
        self.proc = None
        self.runs = 0
        self.log = None

    def argv(self):
        props = {
            "quarkus.http.host": "127.0.0.1",
            "quarkus.http.port": self.port,
            "quarkus.management.host": "127.0.0.1",  # health endpoints (default 0.0.0.0:9000)
            "quarkus.management.port": self.management_port,
            "apicurio.storage.kind": "kafkasql",
            "apicurio.kafkasql.bootstrap.servers": self.bootstrap,
            "apicurio.kafkasql.topic": TOPIC,
            "apicurio.storage.snapshot.location": self.workdir,
        }
        return ([JAVA, "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xmx512m"]
                + ["-D%s=%s" % kv for kv in props.items()] + ["-jar", RUN_JAR])

    def start(self, timeout=180):
        self.runs += 1
        self.log = os.path.join(self.workdir, "registry.%d.log" % self.runs)
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                         stdin=subprocess.DEVNULL, preexec_fn=_set_pdeathsig)
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, "the registry exited %s:\n%s" % (self.proc.returncode, self.tail())
            if self.ready():
                return
            assert time.monotonic() < deadline, "the registry was not ready in %ds:\n%s" % (timeout, self.tail())
            time.sleep(0.5)

    def ready(self):
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/health/ready" % self.management_port, timeout=5) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def tail(self, n=60):
        try:
            with open(self.log, errors="replace") as f:
                lines = [l for l in f.read().splitlines() if "apicurio.audit" not in l and "apicurio-registry.access" not in l]
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def rest(self, method, path, body=None):
        """(status, decoded JSON body) of a request to the registry's Confluent-compatible API."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request("http://127.0.0.1:%d%s%s" % (self.port, CCOMPAT, path), data=data,
                                     method=method, headers={"Content-Type": SR_CONTENT_TYPE,
                                                             "Accept": SR_CONTENT_TYPE})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                raw = r.read()
                return r.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, raw.decode("utf-8", "replace")


def avro_user(*extra_fields):
    fields = [{"name": "id", "type": "long"}] + list(extra_fields)
    return json.dumps({"type": "record", "name": "User", "namespace": "sluice.compat", "fields": fields},
                      separators=(",", ":"))


V1 = avro_user()
V2 = avro_user({"name": "name", "type": "string", "default": ""})
V3 = avro_user({"name": "name", "type": "string", "default": ""}, {"name": "age", "type": ["null", "int"], "default": None})


def wait_for(what, check, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, "timed out waiting for %s (last: %r)" % (what, got)
        time.sleep(0.5)


def topic_state(bootstrap, topic):
    """(partition count, {config: value}, high watermark of partition 0)."""
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import ConfigResource, ResourceType
    admin = ck_admin(bootstrap)
    md = admin.list_topics(topic, timeout=10).topics[topic]
    assert md.error is None, md.error
    cfg = list(admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values())[0].result(10)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "compat-sr-watermarks"})
    try:
        _, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    finally:
        c.close()
    return len(md.partitions), {k: v.value for k, v in cfg.items()}, high


def assert_subject(reg, subject, schemas, ids):
    """The subject has exactly these versions (1..n) with these schemas and global ids."""
    assert reg.rest("GET", "/subjects/%s/versions" % subject) == (200, list(range(1, len(schemas) + 1)))
    for n, (schema, sid) in enumerate(zip(schemas, ids), start=1):
        status, v = reg.rest("GET", "/subjects/%s/versions/%d" % (subject, n))
        assert status == 200, v
        assert (v["subject"], v["version"], v["id"]) == (subject, n, sid), v
        assert json.loads(v["schema"]) == json.loads(schema), v
        status, by_id = reg.rest("GET", "/schemas/ids/%d" % sid)
        assert status == 200 and json.loads(by_id["schema"]) == json.loads(schema), by_id
    status, latest = reg.rest("GET", "/subjects/%s/versions/latest" % subject)
    assert status == 200 and latest["version"] == len(schemas), latest


def test_schemas_topic_on_sluice_across_registry_and_broker_restarts(broker, tmp_path):
    subject = "users-value"
    reg = Registry(broker.bootstrap, str(tmp_path))
    try:
        reg.start()
        assert reg.rest("GET", "/subjects") == (200, [])

        # Two versions of one subject, as a Confluent Avro serializer registers them.
        ids = []
        for schema in (V1, V2):
            status, body = reg.rest("POST", "/subjects/%s/versions" % subject, {"schema": schema})
            assert status == 200, body
            ids.append(body["id"])
        assert len(set(ids)) == 2, ids
        # Registering an existing schema again returns its id and adds no version.
        assert reg.rest("POST", "/subjects/%s/versions" % subject, {"schema": V1}) == (200, {"id": ids[0]})
        # Lookup of a schema under the subject (what a serializer with auto.register.schemas=false does).
        status, found = reg.rest("POST", "/subjects/%s" % subject, {"schema": V2})
        assert status == 200 and (found["version"], found["id"]) == (2, ids[1]), found
        assert_subject(reg, subject, [V1, V2], ids)

        # The registry created its journal topic on Sluice and checked its configuration with
        # DescribeConfigs; its writes are records in it.
        partitions, cfg, high = topic_state(broker.bootstrap, TOPIC)
        assert partitions == 1
        assert (cfg["cleanup.policy"], cfg["retention.ms"], cfg["retention.bytes"]) == ("delete", "-1", "-1"), cfg
        assert high >= 2, high

        # A clean restart of the registry: its in-memory store is rebuilt from `_schemas` alone.
        reg.stop()
        reg.start()
        wait_for("the subject read back from %s" % TOPIC,
                 lambda: reg.rest("GET", "/subjects/%s/versions" % subject) == (200, [1, 2]))
        assert reg.rest("GET", "/subjects") == (200, [subject])
        assert_subject(reg, subject, [V1, V2], ids)

        # It carries on from what it read: a third version gets the next version number and a new id.
        status, body = reg.rest("POST", "/subjects/%s/versions" % subject, {"schema": V3})
        assert status == 200, body
        ids.append(body["id"])
        assert len(set(ids)) == 3, ids
        assert_subject(reg, subject, [V1, V2, V3], ids)

        # The broker restarts under the stopped registry: `_schemas` survives on disk, and the
        # registry, started again, reads all three versions back from it.
        reg.stop()
        _, _, high_before = topic_state(broker.bootstrap, TOPIC)
        broker.restart()
        partitions, cfg, high_after = topic_state(broker.bootstrap, TOPIC)
        assert (partitions, high_after) == (1, high_before)
        assert (cfg["cleanup.policy"], cfg["retention.ms"], cfg["retention.bytes"]) == ("delete", "-1", "-1"), cfg
        reg.start()
        wait_for("the subject read back after the broker's restart",
                 lambda: reg.rest("GET", "/subjects/%s/versions" % subject) == (200, [1, 2, 3]))
        assert_subject(reg, subject, [V1, V2, V3], ids)
    except AssertionError:
        sys.stderr.write("---- registry log (run %d) ----\n%s\n" % (reg.runs, reg.tail(200)))
        raise
    finally:
        reg.stop()
