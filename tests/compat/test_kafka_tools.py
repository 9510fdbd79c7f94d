"""Apache Kafka's own command-line tools (org.apache.kafka:kafka-tools, installed by
scripts/install-kafka-tools.sh) against Sluice, run as kafka-topics.sh and friends run them:
java -cp 'lib/*' <class> --bootstrap-server ... with the tools' defaults. They do not depend
on the Python client libraries, so they run once per suite run (in the new venv)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, _set_pdeathsig, unique_topic

VERSION = os.environ.get("KAFKA_TOOLS_VERSION", "4.4.0")  # as in scripts/install-kafka-tools.sh
LIB = os.path.join(REPO, ".kafka-tools", VERSION, "lib")

pytestmark = [
    pytest.mark.skipif(sys.prefix.rstrip("/").endswith("-old"),
                       reason="Kafka's tools run once per suite run (in the .venv-compat-new run)"),
    pytest.mark.skipif(not os.path.isfile(os.path.join(LIB, "kafka-tools-%s.jar" % VERSION)),
                       reason="kafka-tools not installed (scripts/install-kafka-tools.sh)"),
]

TOPICS = "org.apache.kafka.tools.TopicCommand"
CONFIGS = "org.apache.kafka.tools.ConfigCommand"
GROUPS = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand"


def tool(cls, *args, stdin=None, timeout=60, check=True):
    """Runs one tool; returns its stdout (stderr carries the JVM's and SLF4J's noise)."""
    argv = ["java", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xmx256m", "-cp", LIB + "/*", cls, *args]
    r = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout,
                       preexec_fn=_set_pdeathsig)
    if check:
        assert r.returncode == 0, "%s %s exited %d\n%s\n%s" % (cls, " ".join(args), r.returncode, r.stdout,
                                                               r.stderr[-3000:])
    return r


def test_topics_configs_and_log_dirs(broker):
    b = ["--bootstrap-server", broker.bootstrap]
    t = unique_topic("kt")
    assert "Created topic %s." % t in tool(TOPICS, *b, "--create", "--topic", t, "--partitions", "3",
                                          "--replication-factor", "1", "--config", "retention.ms=3600000").stdout
    assert t in tool(TOPICS, *b, "--list").stdout.split()
    out = tool(TOPICS, *b, "--describe", "--topic", t).stdout
    assert re.search(r"PartitionCount: 3\s+ReplicationFactor: 1\s+Configs: retention.ms=3600000", out), out
    assert len(re.findall(r"Partition: \d+\s+Leader: 1\s+Replicas: 1\s+Isr: 1", out)) == 3, out
    tool(TOPICS, *b, "--alter", "--topic", t, "--partitions", "4")
    assert "PartitionCount: 4" in tool(TOPICS, *b, "--describe", "--topic", t).stdout

    # kafka-configs: topic overrides changed and removed at runtime; broker configs described
    # with their sources; a static broker config refused naming it.
    topic = ["--entity-type", "topics", "--entity-name", t]
    tool(CONFIGS, *b, *topic, "--alter", "--add-config", "segment.ms=600000,max.message.bytes=20000")
    tool(CONFIGS, *b, *topic, "--alter", "--delete-config", "retention.ms")
    out = tool(CONFIGS, *b, *topic, "--describe").stdout
    assert "segment.ms=600000" in out and "max.message.bytes=20000" in out, out
    assert "retention.ms" not in out, out
    out = tool(CONFIGS, *b, "--entity-type", "brokers", "--entity-name", "1", "--describe", "--all").stdout
    assert re.search(r"log\.retention\.hours=168 .*DEFAULT_CONFIG:log\.retention\.hours=168", out), out
    assert re.search(r"log\.dirs=\S+ .*STATIC_BROKER_CONFIG:log\.dirs=", out), out
    r = tool(CONFIGS, *b, "--entity-type", "brokers", "--entity-name", "1", "--alter",
             "--add-config", "log.retention.ms=1000", check=False)
    assert r.returncode != 0 and "log.retention.ms" in r.stdout + r.stderr, r

    # kafka-console-producer, then kafka-log-dirs sees the bytes.
    lines = "".join("k%d:v%d\n" % (i % 3, i) for i in range(30))
    tool("org.apache.kafka.tools.ConsoleProducer", *b, "--topic", t, "--reader-property", "parse.key=true",
         "--reader-property", "key.separator=:", stdin=lines)
    out = tool("org.apache.kafka.tools.LogDirsCommand", *b, "--describe", "--topic-list", t).stdout
    report = json.loads(out.strip().splitlines()[-1])
    (dir_,) = report["brokers"][0]["logDirs"]
    assert dir_["error"] is None and dir_["logDir"] == os.path.abspath(broker.data_dir), dir_
    sizes = {p["partition"]: p["size"] for p in dir_["partitions"]}
    assert set(sizes) == {"%s-%d" % (t, p) for p in range(4)}, sizes
    assert sum(sizes.values()) > 30 * 4, sizes

    tool(TOPICS, *b, "--delete", "--topic", t)
    assert t not in tool(TOPICS, *b, "--list").stdout.split()


def test_console_consumer_and_consumer_groups(broker):
    b = ["--bootstrap-server", broker.bootstrap]
    t, g = unique_topic("kt-cg"), unique_topic("kt-group")
    tool(TOPICS, *b, "--create", "--topic", t, "--partitions", "2")
    lines = ["line-%02d" % i for i in range(20)]
    tool("org.apache.kafka.tools.ConsoleProducer", *b, "--topic", t, stdin="\n".join(lines) + "\n")
    out = tool("org.apache.kafka.tools.consumer.ConsoleConsumer", *b, "--topic", t, "--group", g,
               "--from-beginning", "--max-messages", "20", timeout=90).stdout
    assert sorted(out.split()) == lines, out

    assert g in tool(GROUPS, *b, "--list").stdout.split()
    out = tool(GROUPS, *b, "--describe", "--group", g).stdout
    rows = [l.split() for l in out.splitlines() if l.startswith(g + " ")]
    assert len(rows) == 2 and sum(int(r[3]) for r in rows) == 20 and all(r[5] == "0" for r in rows), out

    tool(GROUPS, *b, "--reset-offsets", "--group", g, "--topic", t, "--to-earliest", "--execute")
    out = tool(GROUPS, *b, "--describe", "--group", g, "--offsets").stdout
    rows = [l.split() for l in out.splitlines() if l.startswith(g + " ")]
    assert sum(int(r[5]) for r in rows) == 20, "after the reset the lag is everything: %s" % out

    assert "was successful" in tool(GROUPS, *b, "--delete", "--group", g).stdout
    assert g not in tool(GROUPS, *b, "--list").stdout.split()


def test_producer_perf_test_and_metadata_quorum(broker):
    t = unique_topic("kt-perf")
    out = tool("org.apache.kafka.tools.ProducerPerformance", "--topic", t, "--num-records", "20000",
               "--record-size", "100", "--throughput", "-1",
               "--command-property", "bootstrap.servers=%s" % broker.bootstrap, timeout=120).stdout
    assert re.search(r"^20000 records sent, ", out, re.M), out
    out = tool("org.apache.kafka.tools.MetadataQuorumCommand", "--bootstrap-server", broker.bootstrap,
               "describe", "--status").stdout
    assert re.search(r"LeaderId:\s+1\b", out) and re.search(r"CurrentVoters:\s+\[\{\"id\": 1", out), out
