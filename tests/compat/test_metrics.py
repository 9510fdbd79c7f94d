"""The Prometheus endpoint (metrics.listener): the values match what the test produced,
consumed and committed, under the names the JMX exporter's Kafka rules give Kafka's MBeans,
and a real Prometheus (Debian's package) scrapes it. Failed fetches are counted per topic and
partition; the connection gauge is the number of client sockets open; on a three-node cluster
a SIGKILLed broker shows in the survivors' under-replicated and under-min-ISR gauges and the
controller's offline partitions, and they all go back to 0 once it has caught up."""
import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
from confluent_kafka import TopicPartition

import wire
from clients import ck_consume, ck_consumer, ck_create_topic, ck_produce, ck_producer
from conftest import _set_pdeathsig, free_port, unique_topic
from test_cluster import SESSION_MS, Cluster, started, wait_until
from test_replication import ALL, controller_of, create_topic, wait_fully_replicated

SAMPLE = re.compile(r'^([a-z_]+)(?:\{(.*)\})? (\S+)$')


def scrape(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("application/openmetrics-text"), r.headers["Content-Type"]
        text = r.read().decode()
    samples = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        m = SAMPLE.match(line)
        assert m, "not an exposition line: %r" % line
        labels = tuple(sorted(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or "")))
        samples[(m.group(1), labels)] = float(m.group(3))
    return text, samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


def total(samples, name, **labels):
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def test_metrics_match_what_clients_did(broker_factory):
    port = free_port()
    broker = broker_factory(**{"metrics.listener": "127.0.0.1:%d" % port})
    t = unique_topic("metrics")
    ck_create_topic(broker.bootstrap, t, 2)
    items = [{"value": b"v%03d" % i, "partition": i % 2} for i in range(100)]
    reports = ck_produce(ck_producer(broker.bootstrap), t, items)
    assert all(r.err is None for r in reports)
    got = ck_consume(broker.bootstrap, t, {0: 0, 1: 0}, expected_counts={0: 50, 1: 50})
    assert sum(len(v) for v in got.values()) == 100
    group = "metrics-group-" + t
    c = ck_consumer(broker.bootstrap, **{"group.id": group})
    try:
        c.commit(offsets=[TopicPartition(t, 0, 40), TopicPartition(t, 1, 45)], asynchronous=False)
    finally:
        c.close()

    text, s = scrape(port)
    assert value(s, "kafka_server_brokertopicmetrics_messagesin_total", topic=t) == 100, text
    assert value(s, "kafka_server_brokertopicmetrics_bytesin_total", topic=t) > 100 * 4
    assert value(s, "kafka_server_brokertopicmetrics_bytesout_total", topic=t) > 100 * 4
    assert value(s, "kafka_server_brokertopicmetrics_failedproducerequests_total", topic=t) == 0
    assert value(s, "kafka_server_brokertopicmetrics_messagesin_total") >= 100  # all topics
    for p in (0, 1):
        assert value(s, "kafka_log_log_logendoffset", topic=t, partition=str(p)) == 50
        assert value(s, "kafka_log_log_logstartoffset", topic=t, partition=str(p)) == 0
        assert value(s, "kafka_log_log_size", topic=t, partition=str(p)) > 50 * 4
    assert value(s, "kafka_consumergroup_lag", consumergroup=group, topic=t, partition="0") == 10, text
    assert value(s, "kafka_consumergroup_lag", consumergroup=group, topic=t, partition="1") == 5
    assert total(s, "kafka_network_requestmetrics_requests_total", request="Produce") >= 1
    assert total(s, "kafka_network_requestmetrics_requests_total", request="Fetch") >= 1
    assert value(s, "kafka_network_requestmetrics_totaltimems", request="Produce", quantile="0.99") > 0
    assert value(s, "kafka_network_requestmetrics_totaltimems_count", request="Produce") >= 1
    assert value(s, "kafka_log_logflushstats_logflushrateandtimems_count") >= 1
    assert value(s, "kafka_server_replicamanager_leadercount") >= 2
    assert value(s, "kafka_server_replicamanager_underreplicatedpartitions") == 0
    assert value(s, "kafka_controller_kafkacontroller_activecontrollercount") == 1
    assert value(s, "kafka_controller_kafkacontroller_offlinepartitionscount") == 0
    # Exposed; its value is checked against sockets the test holds in test_connection_count_*.
    assert value(s, "kafka_server_socket_server_metrics_connection_count") is not None

    # A refused produce counts as failed: max.message.bytes of the topic is exceeded.
    p = ck_producer(broker.bootstrap, **{"message.max.bytes": 3_000_000, "retries": 0})
    (d,) = ck_produce(p, t, [{"value": b"x" * 2_000_000, "partition": 0}])
    assert d.err is not None
    _, s = scrape(port)
    assert value(s, "kafka_server_brokertopicmetrics_failedproducerequests_total", topic=t) >= 1

    # Anything else is not found.
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen("http://127.0.0.1:%d/" % port, timeout=10)
    assert ei.value.code == 404


def wait_value(port, name, want, what, timeout=10, **labels):
    """Scrapes until the sample equals `want`; returns that scrape's samples. Fails naming the
    last value seen when it does not within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, s = scrape(port)
            last = value(s, name, **labels)
        except OSError as e:  # a node still starting
            s, last = None, e
        if s is not None and last == want:
            return s
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %ss waiting until %s: %s%r is %r, not %r"
                                 % (timeout, what, name, labels, last, want))
        time.sleep(0.2)


@pytest.mark.timeout(60)
def test_failed_fetches_are_counted_per_topic(broker_factory):
    """Each partition of a Fetch answered with an error counts once in its topic's
    failedfetchrequests (and in the all-topics sample), each partition fetched once in
    totalfetchrequests; a partition answered without error is not a failure, and one topic's
    errors are not charged to another named in the same request."""
    port = free_port()
    broker = broker_factory(**{"metrics.listener": "127.0.0.1:%d" % port})
    t, u = unique_topic("ffetch"), unique_topic("ffetch-ok")
    ck_create_topic(broker.bootstrap, t, 2)
    ck_create_topic(broker.bootstrap, u, 1)
    reports = ck_produce(ck_producer(broker.bootstrap), t, [{"value": b"f%02d" % i, "partition": 0} for i in range(10)])
    assert all(r.err is None for r in reports)

    failed, fetched = "kafka_server_brokertopicmetrics_failedfetchrequests_total", \
        "kafka_server_brokertopicmetrics_totalfetchrequests_total"
    _, before = scrape(port)
    with wire.Conn.to(broker.bootstrap) as c:
        ok = c.fetch(t, 0, 0, max_wait_ms=0)
        assert ok["error"] == wire.NONE and len(wire.decode_batches(ok["records"])) >= 1, ok
        assert c.fetch(t, 0, 1000, max_wait_ms=0)["error"] == wire.OFFSET_OUT_OF_RANGE
        assert c.fetch(t, 9, 0, max_wait_ms=0)["error"] == wire.UNKNOWN_TOPIC_OR_PARTITION
        # One request, two topics: t's partition 1 (empty) past its end fails, u's is fine.
        body = wire.fetch_v4_multi([(t, [(1, 500, 1 << 20)]), (u, [(0, 0, 1 << 20)])], max_wait_ms=0)
        got = wire.parse_fetch_v4(c.request(wire.FETCH, 4, body))
        assert got[(t, 1)]["error"] == wire.OFFSET_OUT_OF_RANGE and got[(u, 0)]["error"] == wire.NONE, got
    _, after = scrape(port)

    def delta(name, **labels):
        return (value(after, name, **labels) or 0) - (value(before, name, **labels) or 0)

    assert delta(failed, topic=t) == 3, (value(before, failed, topic=t), value(after, failed, topic=t))
    assert delta(fetched, topic=t) == 4
    assert delta(failed, topic=u) == 0 and delta(fetched, topic=u) == 1
    assert delta(failed) == 3, "the all-topics sample: %s -> %s" % (value(before, failed), value(after, failed))


@pytest.mark.timeout(60)
def test_requests_for_unknown_topics_make_no_series(broker_factory):
    """A Fetch or a Produce naming topics the broker does not have is answered
    UNKNOWN_TOPIC_OR_PARTITION and leaves no per-topic series behind (as Kafka): made-up
    names must not grow the metrics endpoint, and the broker's memory, without bound."""
    port = free_port()
    broker = broker_factory(**{"metrics.listener": "127.0.0.1:%d" % port, "auto.create.topics.enable": "false"})
    names = ["no-such-topic-%d" % i for i in range(3)]
    with wire.Conn.to(broker.bootstrap) as c:
        for n in names[:2]:
            assert c.fetch(n, 0, 0, max_wait_ms=0)["error"] == wire.UNKNOWN_TOPIC_OR_PARTITION
        assert c.produce(names[2], 0, wire.encode_batch([wire.Record(value=b"v")]))["error"] == wire.UNKNOWN_TOPIC_OR_PARTITION
    text, _ = scrape(port)
    leaked = [n for n in names if 'topic="%s"' % n in text]
    assert not leaked, "series for topics that do not exist: %s" % leaked


@pytest.mark.timeout(60)
def test_connection_count_is_the_client_connections_open(broker_factory):
    """The connection gauge equals the client sockets the test holds open: 0 on a fresh broker
    (scrapes of the metrics endpoint are not client connections), N with N raw sockets open,
    back down as the test closes them or the broker closes one for a bad frame."""
    port = free_port()
    broker = broker_factory(**{"metrics.listener": "127.0.0.1:%d" % port})
    name = "kafka_server_socket_server_metrics_connection_count"
    # Broker.start's readiness probe connected and closed: its close may still be on the way.
    wait_value(port, name, 0, "the start-up probe's connection is gone")
    n = 5
    conns = [wire.Conn.to(broker.bootstrap) for _ in range(n)]
    try:
        for c in conns:  # answered: the broker has registered this socket
            err, _ = c.api_versions()
            assert err == 0
        _, s = scrape(port)
        assert value(s, name) == n, "%d sockets open, gauge %s" % (n, value(s, name))

        for c in conns[:2]:
            c.close()
        s = wait_value(port, name, n - 2, "two sockets closed by the client")

        # A frame with a negative length: the broker closes that connection itself.
        conns[2].send_raw(b"\xff\xff\xff\xf0")
        assert conns[2].wait_closed(5), "the broker kept a connection that sent a negative frame length"
        s = wait_value(port, name, n - 3, "one socket closed by the broker")
    finally:
        for c in conns:
            c.close()
    wait_value(port, name, 0, "every socket closed")


@pytest.fixture
def metrics_cluster(request):
    """test_cluster's three-node Cluster, each node with its own metrics.listener (node.metrics_port).
    Stops every node by PID at the end; keeps the temp dir when the test failed."""
    c = Cluster()
    for b in c.nodes:
        b.metrics_port = free_port()
        b.overrides["metrics.listener"] = "127.0.0.1:%d" % b.metrics_port
    # SIGKILL at the end: a SIGTERM'd node losing its quorum waits 10 s to hand leadership over.
    with started(request, c, kill9_at_end=True) as c:
        yield c


@pytest.mark.timeout(90)
def test_a_killed_broker_shows_in_under_replicated_and_offline_gauges(metrics_cluster):
    """Three nodes; node V (not the controller) is killed with SIGKILL. Partitions of a topic
    with replication factor 3 led by the two survivors (one each) count in each leader's
    underreplicatedpartitions and, with min.insync.replicas=3, underminisrpartitioncount once
    the ISR shrinks; a topic with its only replica on V counts in the active controller's
    offlinepartitionscount. After V restarts and catches up on the records it missed, all
    go back to 0."""
    cluster = metrics_cluster
    controller = controller_of(cluster)
    victim = next(i for i in ALL if i != controller)
    other = next(i for i in ALL if i not in (controller, victim))
    m = {i: cluster.node(i).metrics_port for i in ALL}
    rf3, rf1 = unique_topic("urp"), unique_topic("offline")
    # p0 led by the controller, p1 by the other survivor (first replica leads when all are up).
    create_topic(cluster.bootstrap, rf3, 2, config={"min.insync.replicas": "3"},
                 assignment=[[controller, other, victim], [other, controller, victim]])
    create_topic(cluster.bootstrap, rf1, 1, assignment=[[victim]])
    state = wait_fully_replicated(cluster.nodes, rf3, 2)
    assert state[0].leader == controller and state[1].leader == other, state

    urp, umi = "kafka_server_replicamanager_underreplicatedpartitions", \
        "kafka_server_replicamanager_underminisrpartitioncount"
    off, active = "kafka_controller_kafkacontroller_offlinepartitionscount", \
        "kafka_controller_kafkacontroller_activecontrollercount"
    up = {i: scrape(m[i])[1] for i in ALL}
    assert [value(up[i], active) for i in ALL] == [float(i == controller) for i in ALL], \
        "exactly the controller (%d) is active: %s" % (controller, [value(up[i], active) for i in ALL])
    for i in ALL:
        assert value(up[i], urp) == 0 and value(up[i], umi) == 0 and value(up[i], off) == 0, (i, up[i])

    cluster.node(victim).kill9()
    t0 = time.monotonic()
    # The controller fences V after broker.session.timeout.ms and takes it out of both ISRs.
    down_c = wait_value(m[controller], urp, 1, "the controller's partition lacks node %d" % victim,
                        timeout=SESSION_MS / 1000 + 20)
    down_o = wait_value(m[other], urp, 1, "node %d's partition lacks node %d" % (other, victim),
                        timeout=10)
    print("\nunder-replicated %.1f s after the kill" % (time.monotonic() - t0))
    assert value(down_c, umi) == 1 and value(down_o, umi) == 1, (value(down_c, umi), value(down_o, umi))
    down_c = wait_value(m[controller], off, 1, "%s (only on node %d) is offline" % (rf1, victim), timeout=10)
    assert value(scrape(m[other])[1], off) == 0, "only the active controller counts offline partitions"

    # Records V misses: it must fetch them before it is back in the ISR (acks=1: the ISR is short).
    items = [{"value": b"u%03d" % i, "partition": i % 2} for i in range(40)]
    producer = ck_producer(",".join(cluster.node(i).bootstrap for i in (controller, other)), **{"acks": 1})
    reports = ck_produce(producer, rf3, items)
    assert all(r.err is None for r in reports), [r.err for r in reports if r.err][:3]
    del producer  # it would go on trying to reach node V

    cluster.node(victim).start()
    t1 = time.monotonic()
    back_c = wait_value(m[controller], urp, 0, "node %d is back in the ISR of p0" % victim, timeout=30)
    back_o = wait_value(m[other], urp, 0, "node %d is back in the ISR of p1" % victim, timeout=30)
    back_c = wait_value(m[controller], off, 0, "%s has its leader back" % rf1, timeout=30)
    print("fully replicated %.1f s after the restart" % (time.monotonic() - t1))
    assert value(back_c, umi) == 0 and value(back_o, umi) == 0, (value(back_c, umi), value(back_o, umi))
    _, v = scrape(m[victim])
    for p, leader in ((0, back_c), (1, back_o)):
        end = value(leader, "kafka_log_log_logendoffset", topic=rf3, partition=str(p))
        assert end == 20, (p, end)
        assert value(v, "kafka_log_log_logendoffset", topic=rf3, partition=str(p)) == end, \
            "node %d is in the ISR of p%d without the records it missed" % (victim, p)


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed (scripts/install-test-deps.sh)")
@pytest.mark.timeout(90)
def test_a_real_prometheus_scrapes_the_broker(broker_factory, tmp_path):
    port = free_port()
    broker = broker_factory(**{"metrics.listener": "127.0.0.1:%d" % port})
    t = unique_topic("prom")
    ck_create_topic(broker.bootstrap, t, 1)
    reports = ck_produce(ck_producer(broker.bootstrap), t, [{"value": b"m%d" % i} for i in range(7)])
    assert all(r.err is None for r in reports)

    web = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text("global:\n  scrape_interval: 1s\nscrape_configs:\n"
                   "  - job_name: sluice\n    static_configs:\n      - targets: ['127.0.0.1:%d']\n" % port)
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen(["prometheus", "--config.file=%s" % cfg, "--storage.tsdb.path=%s" % (tmp_path / "tsdb"),
                             "--web.listen-address=127.0.0.1:%d" % web],
                            stdout=log, stderr=subprocess.STDOUT, preexec_fn=_set_pdeathsig)

    def query(q):
        url = "http://127.0.0.1:%d/api/v1/query?%s" % (web, urllib.parse.urlencode({"query": q}))
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read())["data"]["result"]

    try:
        deadline = time.monotonic() + 60
        last = None
        while time.monotonic() < deadline:
            try:
                last = query('kafka_server_brokertopicmetrics_messagesin_total{topic="%s"}' % t)
                if last and float(last[0]["value"][1]) == 7:
                    break
            except (OSError, ValueError, KeyError) as e:
                last = e
            time.sleep(0.5)
        else:
            log.flush()
            raise AssertionError("Prometheus never stored the broker's messagesin for %s (last %r)\n%s"
                                 % (t, last, (tmp_path / "prometheus.log").read_text()[-3000:]))
        (up,) = query('up{job="sluice"}')
        assert up["value"][1] == "1", up
        with urllib.request.urlopen("http://127.0.0.1:%d/api/v1/targets" % web, timeout=5) as r:
            (target,) = json.loads(r.read())["data"]["activeTargets"]
        assert target["health"] == "up" and not target["lastError"], target
        assert query("kafka_network_requestmetrics_totaltimems{request=\"Produce\",quantile=\"0.99\"}"), \
            "the latency quantiles are not stored"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
