"""The `sluice` command line as an operator meets it: --help, --version, a Kafka
server.properties given as kafka-server-start.sh takes it, a misspelt property warned about, a
malformed value refused, and the broker's configs described with their sources and types."""
import json
import os
import re
import subprocess
import time

import pytest
from confluent_kafka.admin import ConfigResource, NewTopic, ResourceType

from clients import ck_admin
from conftest import REPO, SLUICE_BIN, Broker, BrokerStartError, free_port, unique_topic


def run(*args, timeout=20):
    return subprocess.run([SLUICE_BIN, *args], capture_output=True, text=True, timeout=timeout)


def readme_properties():
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    table = text[text.index("<!-- properties:begin -->"):text.index("<!-- properties:end -->")]
    return re.findall(r"^\| `([a-z0-9.]+)` \|", table, re.M)


def test_version_and_help():
    v = run("--version")
    assert v.returncode == 0, v.stderr
    assert re.fullmatch(r"sluice \d+\.\d+\.\d+\n", v.stdout), v.stdout
    h = run("--help")
    assert h.returncode == 0, h.stderr
    assert "serve" in h.stdout and "perf" in h.stdout, h.stdout
    serve = run("serve", "--help")
    assert serve.returncode == 0, serve.stderr
    names = readme_properties()
    assert len(names) >= 60, names
    missing = [n for n in names if "\n  %s (" % n not in serve.stdout]
    assert not missing, "serve --help lacks %s" % missing
    assert "log.retention.hours (int, default 168)" in serve.stdout, serve.stdout
    perf = run("perf", "produce", "--help")
    assert perf.returncode == 0 and "--batch-records" in perf.stdout, perf.stdout + perf.stderr


def test_unknown_argument_is_refused():
    r = run("serve", "--confg", "x.properties")
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "--confg" in r.stderr, r.stderr


def _kafka_server_properties(port, controller_port, data_dir):
    """Kafka 4's config/server.properties (combined KRaft node, standalone quorum), with this
    test's ports and directory, plus one misspelt property."""
    return "\n".join([
        "# Kafka's own file, unchanged but for ports and paths",
        "process.roles=broker,controller",
        "node.id=1",
        "controller.quorum.bootstrap.servers=127.0.0.1:%d" % controller_port,
        "listeners=PLAINTEXT://127.0.0.1:%d,CONTROLLER://127.0.0.1:%d" % (port, controller_port),
        "inter.broker.listener.name=PLAINTEXT",
        "advertised.listeners=PLAINTEXT://127.0.0.1:%d,CONTROLLER://127.0.0.1:%d" % (port, controller_port),
        "controller.listener.names=CONTROLLER",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SSL:SSL",
        "num.network.threads=3",
        "num.io.threads=8",
        "socket.send.buffer.bytes=102400",
        "socket.receive.buffer.bytes=102400",
        "socket.request.max.bytes=104857600",
        "log.dirs=%s" % data_dir,
        "num.partitions=3",
        "num.recovery.threads.per.data.dir=1",
        "offsets.topic.replication.factor=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "log.retention.hours=168",
        "log.segment.bytes=1073741824",
        "log.retention.check.interval.ms=300000",
        "log.retention.byte=1000",  # misspelt
        "",
    ])


class FileBroker(Broker):
    """A broker started as `sluice serve FILE`, the way kafka-server-start.sh is."""

    def __init__(self, path, port, data_dir):
        super().__init__(data_dir, port=port)
        self.path = path

    def argv(self):
        return [SLUICE_BIN, "serve", self.path]


def test_kafkas_server_properties_start_a_broker(tmp_path):
    port, controller_port = free_port(), free_port()
    path = str(tmp_path / "server.properties")
    with open(path, "w") as f:
        f.write(_kafka_server_properties(port, controller_port, str(tmp_path / "data")))
    b = FileBroker(path, port, str(tmp_path / "data"))
    b.start()
    try:
        with open(b.stderr_path) as f:
            err = f.read()
        warnings = [line for line in err.splitlines() if "WARN" in line]
        assert len(warnings) == 1, warnings
        assert '"log.retention.byte"' in warnings[0] and '"log.retention.bytes"' in warnings[0], warnings

        admin = ck_admin(b.bootstrap)
        t = unique_topic("cfgfile")
        # Created without a count: num.partitions from the file.
        fs = admin.create_topics([NewTopic(t, num_partitions=-1, replication_factor=-1)], request_timeout=15)
        fs[t].result(timeout=15)
        deadline = time.monotonic() + 15
        while len(admin.list_topics(t, timeout=10).topics[t].partitions) != 3:
            assert time.monotonic() < deadline, admin.list_topics(t, timeout=10).topics[t].partitions
            time.sleep(0.2)
        res = ConfigResource(ResourceType.BROKER, "1")
        cfg = list(admin.describe_configs([res], request_timeout=15).values())[0].result(timeout=15)

        def src(name):
            s = cfg[name].source
            return int(getattr(s, "value", s))

        # Set in the file: STATIC_BROKER_CONFIG, the file's value.
        assert cfg["num.partitions"].value == "3" and src("num.partitions") == 4, cfg["num.partitions"]
        assert src("log.retention.hours") == 4, cfg["log.retention.hours"]
        # Not set: DEFAULT_CONFIG, Kafka's default.
        assert cfg["log.index.interval.bytes"].value == "4096", cfg["log.index.interval.bytes"]
        assert src("log.index.interval.bytes") == 5, cfg["log.index.interval.bytes"]
        assert cfg["log.retention.ms"].value == "604800000", cfg["log.retention.ms"]
        # Read-only unless dynamic (changeable at runtime, as in Kafka).
        assert cfg["num.partitions"].is_read_only and not cfg["log.index.interval.bytes"].is_read_only
        # The misspelt property set nothing.
        assert cfg["log.retention.bytes"].value == "-1" and src("log.retention.bytes") == 5

        # A topic inherits the broker's file value, and says so.
        tcfg = list(admin.describe_configs([ConfigResource(ResourceType.TOPIC, t)],
                                           request_timeout=15).values())[0].result(timeout=15)
        seg = tcfg["segment.bytes"]
        assert seg.value == "1073741824" and int(getattr(seg.source, "value", seg.source)) == 4, seg
        assert int(getattr(tcfg["retention.bytes"].source, "value", tcfg["retention.bytes"].source)) == 5
    finally:
        b.stop()


@pytest.mark.parametrize("prop,value", [
    ("num.partitions", "many"),
    ("auto.create.topics.enable", "yes"),
    ("message.max.bytes", "3000000000"),
    ("num.io.threads", "eight"),
])
def test_a_malformed_value_stops_start_up_naming_the_property(tmp_path, prop, value):
    b = Broker(str(tmp_path / "data"), overrides={prop: value})
    with pytest.raises(BrokerStartError) as ei:
        b.start()
    assert b.proc.returncode == 2, b.proc.returncode
    assert "sluice: %s:" % prop in str(ei.value), str(ei.value)


def test_json_logs(tmp_path):
    """SLUICE_LOG_FORMAT=json: one JSON object per line, for log shippers."""
    port = free_port()
    env = dict(os.environ, SLUICE_LOG_FORMAT="json")
    proc = subprocess.Popen([SLUICE_BIN, "serve", "--override", "listeners=PLAINTEXT://127.0.0.1:%d" % port,
                             "--override", "log.dirs=%s" % (tmp_path / "data")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        first = json.loads(proc.stderr.readline())
        assert first["level"] == "INFO" and first["fields"]["message"] == "sluice broker listening", first
        assert first["fields"]["listen"] == "127.0.0.1:%d" % port, first
    finally:
        proc.terminate()
        proc.wait(20)
    bad = subprocess.run([SLUICE_BIN, "serve"], capture_output=True, text=True, timeout=20,
                         env=dict(os.environ, SLUICE_LOG_FORMAT="xml"))
    assert bad.returncode == 2 and "SLUICE_LOG_FORMAT" in bad.stderr, bad
