"""The Prometheus endpoint (metrics.listener): the values match what the test produced,
consumed and committed, under the names the JMX exporter's Kafka rules give Kafka's MBeans,
and a real Prometheus (Debian's package) scrapes it."""
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

from clients import ck_consume, ck_consumer, ck_create_topic, ck_produce, ck_producer
from conftest import _set_pdeathsig, free_port, unique_topic

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
    assert value(s, "kafka_server_socket_server_metrics_connection_count") >= 0

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
