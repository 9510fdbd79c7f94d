"""Apache Kafka's own command-line tools (org.apache.kafka:kafka-tools, installed by
scripts/install-kafka-tools.sh) against Sluice, run as kafka-topics.sh and friends run them:
java -cp 'lib/*' <class> --bootstrap-server ... with the tools' defaults. They do not depend
on the Python client libraries, so they run once per suite run (in the new venv)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from conftest import REPO, _set_pdeathsig, unique_topic
from test_replication import cluster, cluster_factory  # noqa: F401 (fixtures)

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
             "--add-config", "log.dirs=/elsewhere", check=False)
    assert r.returncode != 0 and "log.dirs" in r.stdout + r.stderr, r

    # Dynamic broker configs: cluster-wide (--entity-default), then this broker's own on top.
    default, me = ["--entity-type", "brokers", "--entity-default"], ["--entity-type", "brokers", "--entity-name", "1"]
    tool(CONFIGS, *b, *default, "--alter", "--add-config", "log.retention.ms=7200000,log.cleaner.backoff.ms=5000")
    tool(CONFIGS, *b, *me, "--alter", "--add-config", "log.retention.ms=3600000")
    out = tool(CONFIGS, *b, *default, "--describe").stdout
    assert "log.retention.ms=7200000" in out and "log.cleaner.backoff.ms=5000" in out, out
    out = tool(CONFIGS, *b, *me, "--describe").stdout
    assert re.search(r"log\.retention\.ms=3600000 .*synonyms=\{DYNAMIC_BROKER_CONFIG:log\.retention\.ms=3600000, "
                     r"DYNAMIC_DEFAULT_BROKER_CONFIG:log\.retention\.ms=7200000, DEFAULT_CONFIG:", out), out
    # The topic without its own retention.ms inherits this broker's.
    out = tool(CONFIGS, *b, *topic, "--describe", "--all").stdout
    assert re.search(r"retention\.ms=3600000 .*DYNAMIC_BROKER_CONFIG:log\.retention\.ms=3600000", out), out
    tool(CONFIGS, *b, *me, "--alter", "--delete-config", "log.retention.ms")
    tool(CONFIGS, *b, *default, "--alter", "--delete-config", "log.retention.ms,log.cleaner.backoff.ms")
    assert "log.retention.ms" not in tool(CONFIGS, *b, *me, "--describe").stdout

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


REASSIGN = "org.apache.kafka.tools.reassign.ReassignPartitionsCommand"


@pytest.mark.timeout(240)
def test_reassign_partitions_while_producing(cluster_factory):
    """kafka-reassign-partitions moves a partition's two replicas, its leader's among them,
    to another pair (the third broker joins) while an idempotent acks=all producer keeps
    sending: --execute starts it, --list and --verify follow it to the end. Afterwards the
    registration is the new pair, both in sync; the leaving broker's copy is gone; the
    broker that joined holds every acknowledged record; a consumer reads them all, in order,
    at their acknowledged offsets."""
    import threading

    from test_replication import (ALL, Acks, assert_log_is, controller_of, create_topic, idempotent_producer,
                                  node_id, records_in, segment0, topic_state, wait_fully_replicated)
    from test_cluster import wait_until

    # The joining broker is paused while --execute and --list run (two JVM starts): with the
    # fixture's 4 s session it would be fenced meanwhile, and a fenced broker is not listed,
    # so the tool would refuse the plan (Unknown broker id), as it would against Kafka.
    cluster = cluster_factory(**{"broker.session.timeout.ms": 30000})
    # The joiner is not the controller (the tool sends the reassignment to the controller
    # the metadata names, and a paused one would answer nothing): the partition is placed
    # on the controller and one other broker, and the third joins.
    controller = controller_of(cluster)
    others = [i for i in ALL if i != controller]
    t = unique_topic("kt-move")
    create_topic(cluster.bootstrap, t, 1, config={"min.insync.replicas": "2"},
                 assignment=[[controller, others[0]]])
    st = wait_until("%s has a leader and an ISR of 2" % t,
                    lambda: (lambda s: s if s and s[0].leader in ALL and len(s[0].isr) == 2 else None)(
                        topic_state(cluster.node(1), t)))
    leader, follower = st[0].leader, next(r for r in st[0].replicas if r != st[0].leader)
    joiner = others[1]
    # The tools bootstrap from the brokers that are not paused, and give up on a request
    # after 5 s (not the admin client's 30 s) should they pick the paused one for it: they
    # then ask another broker.
    admin_conf = os.path.join(cluster.base, "admin.properties")
    with open(admin_conf, "w") as f:
        f.write("request.timeout.ms=5000\n")
    b = ["--bootstrap-server", ",".join(cluster.node(i).bootstrap for i in ALL if i != joiner),
         "--command-config", admin_conf]

    acks, stop = Acks(), threading.Event()
    producer = idempotent_producer(cluster.bootstrap, **{"linger.ms": 5})

    def produce():
        i = 0
        while not stop.is_set():
            producer.produce(t, value=b"m-%07d" % i, partition=0, on_delivery=acks.cb)
            i += 1
            producer.poll(0.002 if i % 50 == 0 else 0)
    sender = threading.Thread(target=produce, daemon=True)
    sender.start()
    try:
        wait_until("the producer has 2,000 acks", lambda: len(acks.ok) >= 2000, timeout=30)
        plan = os.path.join(cluster.base, "reassign.json")
        with open(plan, "w") as f:
            json.dump({"version": 1, "partitions": [{"topic": t, "partition": 0, "replicas": [joiner, follower]}]}, f)
        # The joining broker is paused, so the reassignment cannot finish while --list looks.
        os.kill(cluster.node(joiner).pid, signal.SIGSTOP)
        try:
            out = tool(REASSIGN, *b, "--reassignment-json-file", plan, "--execute", timeout=90).stdout
            assert "Successfully started partition reassignment" in out, out
            listed = tool(REASSIGN, *b, "--list", timeout=90).stdout
        finally:
            os.kill(cluster.node(joiner).pid, signal.SIGCONT)
        print("\n--list while it runs:\n" + listed.strip())
        assert re.search(r"%s-0: replicas: %d,%d,%d\. adding: %d\. removing: %d\." % (
            re.escape(t), joiner, follower, leader, joiner, leader), listed), listed

        def verified():
            r = tool(REASSIGN, *b, "--reassignment-json-file", plan, "--verify", check=False)
            return r.stdout if "Reassignment of partition %s-0 is completed" % t in r.stdout else None
        out = wait_until("--verify says the reassignment is complete", verified, timeout=90)
        n = len(acks.ok)
        wait_until("the producer carries on after the move", lambda: len(acks.ok) >= n + 1000, timeout=30)
    finally:
        stop.set()
        sender.join(10)
    assert producer.flush(40) == 0
    assert not acks.failed, "%d sends failed, first %r" % (len(acks.failed), acks.failed[:3])

    want = sorted([joiner, follower])
    st = wait_until("every node shows replicas %s, both in sync" % want,
                    lambda: all((lambda s: s and s[0].replicas == want and s[0].isr == want)(topic_state(n, t))
                                for n in cluster.nodes), timeout=30)
    assert "No partition reassignments found" in tool(REASSIGN, *b, "--list").stdout
    wait_until("broker %d's copy is removed" % leader,
               lambda: not os.path.exists(cluster.node(leader).partition_dir(t, 0)), timeout=20)
    acked = acks.of(0)
    have = records_in(segment0(cluster.node(joiner), t, 0))
    missing = [(o, v) for o, v in acked if have.get(o) != v]
    assert not missing, "broker %d lacks %d acknowledged records, first %r" % (joiner, len(missing), missing[0])
    assert_log_is(cluster.bootstrap, t, 0, acked)
    print("moved %s-0 from %s to %s while producing: %d records acknowledged, none failed"
          % (t, sorted([leader, follower]), want, len(acked)))


def test_delete_records_tool(broker):
    """kafka-delete-records: the partition's records below the offset go; the tool prints
    the new low watermark, and kafka-get-offsets shows it as the earliest offset."""
    b = ["--bootstrap-server", broker.bootstrap]
    t = unique_topic("kt-del")
    tool(TOPICS, *b, "--create", "--topic", t, "--partitions", "1")
    tool("org.apache.kafka.tools.ConsoleProducer", *b, "--topic", t,
         stdin="".join("line-%03d\n" % i for i in range(100)))
    plan = os.path.join(broker.data_dir, "..", "delete-%s.json" % t)
    with open(plan, "w") as f:
        json.dump({"version": 1, "partitions": [{"topic": t, "partition": 0, "offset": 40}]}, f)
    out = tool("org.apache.kafka.tools.DeleteRecordsCommand", *b, "--offset-json-file", plan).stdout
    assert re.search(r"partition: %s-0\s+low_watermark: 40" % re.escape(t), out), out
    out = tool("org.apache.kafka.tools.GetOffsetShell", *b, "--topic", t, "--time", "-2").stdout
    assert out.split() == ["%s:0:40" % t], out


TRANSACTIONS = "org.apache.kafka.tools.TransactionsCommand"


def rows(out):
    """A tool's table: its lines split on whitespace, the header first."""
    return [line.split() for line in out.strip().splitlines() if line.strip()]


def test_transactions_tool_lists_describes_and_aborts_a_hanging_transaction(broker):
    """kafka-transactions (KIP-664) as an operator runs it on a transaction whose producer hangs:
    list and describe show it open, describe-producers shows where it started on the partition,
    and abort (WriteTxnMarkers sent to the partition's leader) ends it there, so read_committed
    consumers get past it; its records stay unread."""
    from confluent_kafka import Producer
    from clients import ck_consume, ck_create_topic
    b = ["--bootstrap-server", broker.bootstrap]
    t = unique_topic("kt-txn")
    txn_id = "kt-txn-" + t
    ck_create_topic(broker.bootstrap, t, partitions=1)
    # A producer that begins a transaction, writes, and then neither commits nor aborts.
    hung = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": txn_id,
                     "transaction.timeout.ms": 120000})
    hung.init_transactions(30)
    hung.begin_transaction()
    for i in range(3):
        hung.produce(t, value=b"in-txn-%d" % i, partition=0)
    assert hung.flush(30) == 0
    plain = Producer({"bootstrap.servers": broker.bootstrap})
    plain.produce(t, value=b"after", partition=0)
    assert plain.flush(30) == 0
    committed = {"isolation.level": "read_committed"}
    assert ck_consume(broker.bootstrap, t, {0: 0}, **committed)[0] == [], "the open transaction holds readers back"

    listed = [r for r in rows(tool(TRANSACTIONS, *b, "list").stdout) if txn_id in r]
    assert len(listed) == 1 and listed[0][-1] == "Ongoing", listed
    pid = listed[0][2]
    described = rows(tool(TRANSACTIONS, *b, "describe", "--transactional-id", txn_id).stdout)
    assert described[1][1:5] == [txn_id, pid, "0", "Ongoing"] and described[1][-1] == "%s-0" % t, described
    producers = rows(tool(TRANSACTIONS, *b, "describe-producers", "--topic", t, "--partition", "0").stdout)
    # ProducerId ProducerEpoch LatestCoordinatorEpoch LastSequence LastTimestamp CurrentTransactionStartOffset
    mine = [r for r in producers[1:] if r[0] == pid]
    assert len(mine) == 1 and mine[0][-1] == "0", producers

    tool(TRANSACTIONS, *b, "abort", "--topic", t, "--partition", "0", "--start-offset", "0")
    got = ck_consume(broker.bootstrap, t, {0: 0}, {0: 1}, **committed)[0]
    assert [(m.offset(), m.value()) for m in got] == [(3, b"after")], [(m.offset(), m.value()) for m in got]
    producers = rows(tool(TRANSACTIONS, *b, "describe-producers", "--topic", t, "--partition", "0").stdout)
    mine = [r for r in producers[1:] if r[0] == pid]
    assert len(mine) == 1 and mine[0][-1] == "None", producers
    everything = ck_consume(broker.bootstrap, t, {0: 0}, {0: 4}, **{"isolation.level": "read_uncommitted"})[0]
    assert [m.value() for m in everything] == [b"in-txn-0", b"in-txn-1", b"in-txn-2", b"after"], everything
