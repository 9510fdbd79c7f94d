"""Kafka Connect (org.apache.kafka:connect-runtime, installed by scripts/install-kafka-tools.sh)
runs a distributed worker against Sluice as connect-distributed.sh does, with the settings of
Kafka's shipped config/connect-distributed.properties: it creates its compacted internal
topics (configs, offsets, status), joins its group (protocol type "connect"), and runs a
FileStream source (a file into a topic) and sink (the topic into a file). Restarted, it picks
up from the offsets it stored in the compacted offsets topic and its sink group's commits:
every line arrives once, in order."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from clients import ck_admin
from conftest import REPO, _set_pdeathsig, free_port, unique_topic

VERSION = os.environ.get("KAFKA_CONNECT_VERSION", "4.3.1")  # as in scripts/install-kafka-tools.sh
LIB = os.path.join(REPO, ".kafka-connect", VERSION, "lib")

pytestmark = [
    pytest.mark.skipif(sys.prefix.rstrip("/").endswith("-old"),
                       reason="Kafka Connect runs once per suite run (in the .venv-compat-new run)"),
    pytest.mark.skipif(not os.path.isfile(os.path.join(LIB, "connect-runtime-%s.jar" % VERSION)),
                       reason="Kafka Connect not installed (scripts/install-kafka-tools.sh)"),
    pytest.mark.timeout(300),
]


class Worker:
    def __init__(self, bootstrap, workdir):
        self.port = free_port()
        self.workdir = workdir
        self.props = os.path.join(workdir, "connect-distributed.properties")
        with open(self.props, "w") as f:
            f.write("\n".join([
                "bootstrap.servers=%s" % bootstrap,
                "group.id=connect-cluster",
                "key.converter=org.apache.kafka.connect.json.JsonConverter",
                "value.converter=org.apache.kafka.connect.json.JsonConverter",
                "key.converter.schemas.enable=true",
                "value.converter.schemas.enable=true",
                "offset.storage.topic=connect-offsets",
                "offset.storage.replication.factor=1",
                "config.storage.topic=connect-configs",
                "config.storage.replication.factor=1",
                "status.storage.topic=connect-status",
                "status.storage.replication.factor=1",
                "offset.flush.interval.ms=10000",
                "listeners=HTTP://127.0.0.1:%d" % self.port,
                "",
            ]))
        self.proc = None
        self.runs = 0

    def start(self):
        self.runs += 1
        log = open(os.path.join(self.workdir, "worker.%d.log" % self.runs), "w")
        argv = ["java", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xmx512m", "-cp", LIB + "/*",
                "org.apache.kafka.connect.cli.ConnectDistributed", self.props]
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_set_pdeathsig)
        deadline = time.monotonic() + 120
        while True:
            assert self.proc.poll() is None, "the worker exited %s; see %s" % (self.proc.returncode, log.name)
            try:
                if self.rest("GET", "/connectors") is not None:
                    return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            assert time.monotonic() < deadline, "the worker's REST API never answered; see %s" % log.name
            time.sleep(0.5)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # connect-distributed.sh's stop: a clean shutdown
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def rest(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (self.port, path), data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
            return json.loads(raw) if raw else {}


def wait_for(what, check, timeout=90):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, "timed out waiting for %s" % what
        time.sleep(0.5)


def lines_of(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return f.read().splitlines()


def running(worker, name):
    try:
        s = worker.rest("GET", "/connectors/%s/status" % name)
    except urllib.error.HTTPError:
        return False
    return s["connector"]["state"] == "RUNNING" and s["tasks"] and all(t["state"] == "RUNNING" for t in s["tasks"])


def test_connect_file_source_and_sink_across_a_worker_restart(broker, tmp_path):
    topic = unique_topic("connect")
    source, sink = str(tmp_path / "in.txt"), str(tmp_path / "out.txt")
    first = ["line %d" % i for i in range(200)]
    with open(source, "w") as f:
        f.write("\n".join(first) + "\n")
    worker = Worker(broker.bootstrap, str(tmp_path))
    try:
        worker.start()
        worker.rest("PUT", "/connectors/file-source/config", {
            "connector.class": "org.apache.kafka.connect.file.FileStreamSourceConnector",
            "tasks.max": "1", "file": source, "topic": topic})
        worker.rest("PUT", "/connectors/file-sink/config", {
            "connector.class": "org.apache.kafka.connect.file.FileStreamSinkConnector",
            "tasks.max": "1", "file": sink, "topics": topic})
        wait_for("both connectors running", lambda: running(worker, "file-source") and running(worker, "file-sink"))
        wait_for("every line through the topic into the sink's file", lambda: lines_of(sink) == first)

        # Connect made its internal topics compacted, as it requires (it checks their policy).
        admin = ck_admin(broker.bootstrap)
        from confluent_kafka.admin import ConfigResource, ResourceType
        for t in ("connect-offsets", "connect-configs", "connect-status"):
            cfg = list(admin.describe_configs([ConfigResource(ResourceType.TOPIC, t)]).values())[0].result(10)
            assert cfg["cleanup.policy"].value == "compact", (t, cfg["cleanup.policy"])

        # A clean restart: the source resumes at the position it stored in connect-offsets, the
        # sink at its group's committed offsets; the connectors' configs come back from
        # connect-configs.
        worker.stop()
        more = ["more %d" % i for i in range(100)]
        with open(source, "a") as f:
            f.write("\n".join(more) + "\n")
        worker.start()
        wait_for("both connectors running again",
                 lambda: running(worker, "file-source") and running(worker, "file-sink"))
        wait_for("the new lines, each once", lambda: len(lines_of(sink)) >= len(first) + len(more))
        time.sleep(2)  # a duplicate would arrive now
        assert lines_of(sink) == first + more
    finally:
        worker.stop()
