"""kafka-python (pure Python client) against Sluice."""

import time

import pytest
import kafka
import kafka.codec
from kafka import TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewPartitions, NewTopic

from clients import (
    assert_ck_messages_match, ck_consume, ck_create_topic, ck_produce, ck_producer, expected_by_partition,
    kp_admin, kp_consume, kp_consumer, kp_producer, make_items,
)
from conftest import unique_topic

KP_VERSION = tuple(int(x) for x in kafka.__version__.split(".")[:3] if x.isdigit())
NOW_MS = lambda: int(time.time() * 1000)  # noqa: E731

CODEC_AVAILABLE = {
    None: True,
    "gzip": kafka.codec.has_gzip(),
    "snappy": kafka.codec.has_snappy(),
    "lz4": kafka.codec.has_lz4(),
    "zstd": kafka.codec.has_zstd(),
}


def kp_send_all(producer, topic, items, timeout=60):
    futs = []
    for it in items:
        futs.append(producer.send(topic, value=it.get("value"), key=it.get("key"),
                                  headers=it.get("headers") or [], partition=it["partition"],
                                  timestamp_ms=it.get("timestamp")))
    producer.flush(timeout=timeout)
    return [f.get(timeout=timeout) for f in futs]


def assert_kp_records_match(recs, want_items, start_offset=0, check_ts=True):
    assert len(recs) == len(want_items), "got %d records, want %d" % (len(recs), len(want_items))
    for i, (r, it) in enumerate(zip(recs, want_items)):
        assert r.offset == start_offset + i, "record %d: offset %d want %d" % (i, r.offset, start_offset + i)
        assert r.value == it.get("value"), (r.offset, r.value, it.get("value"))
        assert r.key == it.get("key"), (r.offset, r.key, it.get("key"))
        assert list(r.headers or []) == list(it.get("headers") or []), (r.offset, r.headers, it.get("headers"))
        if check_ts and it.get("timestamp") is not None:
            assert r.timestamp == it["timestamp"], (r.offset, r.timestamp, it["timestamp"])
            assert r.timestamp_type == 0, (r.offset, r.timestamp_type)  # CreateTime


def kp_read(bootstrap, topic, start_offsets, counts, **kw):
    c = kp_consumer(bootstrap, **kw)
    try:
        tps = [TopicPartition(topic, p) for p in start_offsets]
        c.assign(tps)
        for tp in tps:
            c.seek(tp, start_offsets[tp.partition])
        got = kp_consume(c, {TopicPartition(topic, p): n for p, n in counts.items()})
        return {tp.partition: recs for tp, recs in got.items()}
    finally:
        c.close()


@pytest.mark.parametrize("acks", [0, 1, "all"])
def test_produce_consume_acks(broker, acks):
    topic = unique_topic("kp-acks%s" % acks)
    parts = [0, 1, 2]
    ck_create_topic(broker.bootstrap, topic, len(parts))
    n = 10500 if acks == "all" else 3000
    items = make_items(n, parts, prefix="kp%s" % acks, base_ts=NOW_MS() - 7_200_000)
    items[5]["value"] = None
    items[9]["key"] = None
    p = kp_producer(broker.bootstrap, acks=acks)
    try:
        md = kp_send_all(p, topic, items)
    finally:
        p.close(timeout=10)
    for m, it in zip(md, items):
        assert m.topic == topic and m.partition == it["partition"]
    if acks != 0:
        per = {}
        for m in md:
            per.setdefault(m.partition, []).append(m.offset)
        for part, offs in per.items():
            assert offs == list(range(len(offs))), "partition %d offsets %s..." % (part, offs[:20])
        for m, it in zip(md, items):
            assert m.timestamp == it["timestamp"], (m, it["timestamp"])
    want = expected_by_partition(items)
    got = kp_read(broker.bootstrap, topic, {q: 0 for q in parts}, {q: len(v) for q, v in want.items()})
    for q in parts:
        assert_kp_records_match(got[q], want[q])


@pytest.mark.parametrize("codec", [None, "gzip", "snappy", "lz4", "zstd"])
def test_compression(broker, codec):
    if not CODEC_AVAILABLE[codec]:
        pytest.skip("python library for %s not installed" % codec)
    topic = unique_topic("kp-%s" % codec)
    ck_create_topic(broker.bootstrap, topic, 2)
    items = make_items(2000, [0, 1], prefix="kpc", base_ts=NOW_MS() - 5000, value_size=150)
    p = kp_producer(broker.bootstrap, acks="all", compression_type=codec, linger_ms=20, batch_size=65536)
    try:
        md = kp_send_all(p, topic, items)
    finally:
        p.close(timeout=10)
    assert all(m.offset >= 0 for m in md)
    want = expected_by_partition(items)
    got = kp_read(broker.bootstrap, topic, {0: 0, 1: 0}, {0: 1000, 1: 1000})
    for q in (0, 1):
        assert_kp_records_match(got[q], want[q])
    # From the middle of a (compressed) batch.
    got = kp_read(broker.bootstrap, topic, {1: 555}, {1: 1000 - 555})
    assert_kp_records_match(got[1], want[1][555:], start_offset=555)
    # The same data read by librdkafka.
    got = ck_consume(broker.bootstrap, topic, {0: 0}, expected_counts={0: 1000})
    assert_ck_messages_match(got[0], want[0])


def test_librdkafka_produced_zstd_read_by_kafka_python(broker):
    if not CODEC_AVAILABLE["zstd"] or not CODEC_AVAILABLE["lz4"]:
        pytest.skip("zstd/lz4 python libs missing")
    topic = unique_topic("kp-cross")
    ck_create_topic(broker.bootstrap, topic, 2)
    items = make_items(1000, [0, 1], base_ts=NOW_MS() - 1000)
    for it in items:
        it["headers"] = [(k, v) for k, v in it["headers"]]
    ck_produce(ck_producer(broker.bootstrap, **{"compression.type": "zstd"}),
               topic, [i for i in items if i["partition"] == 0])
    ck_produce(ck_producer(broker.bootstrap, **{"compression.type": "lz4"}),
               topic, [i for i in items if i["partition"] == 1])
    want = expected_by_partition(items)
    got = kp_read(broker.bootstrap, topic, {0: 0, 1: 0}, {0: 500, 1: 500})
    for q in (0, 1):
        assert_kp_records_match(got[q], want[q])


def test_offsets_api(broker):
    topic = unique_topic("kp-offs")
    ck_create_topic(broker.bootstrap, topic, 2)
    base = NOW_MS() - 3_600_000
    items = [{"value": b"v%d" % i, "key": None, "partition": 0, "timestamp": base + 100 * i} for i in range(60)]
    p = kp_producer(broker.bootstrap, acks="all")
    try:
        kp_send_all(p, topic, items)
    finally:
        p.close(timeout=10)
    c = kp_consumer(broker.bootstrap)
    try:
        tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
        assert c.beginning_offsets([tp0, tp1]) == {tp0: 0, tp1: 0}
        assert c.end_offsets([tp0, tp1]) == {tp0: 60, tp1: 0}
        res = c.offsets_for_times({tp0: base + 100 * 42, tp1: base})
        assert res[tp0] is not None and res[tp0].offset == 42 and res[tp0].timestamp == base + 4200, res
        assert res[tp1] is None, res
        res = c.offsets_for_times({tp0: base + 100 * 42 + 1})
        assert res[tp0].offset == 43, res
        res = c.offsets_for_times({tp0: base - 1})
        assert res[tp0].offset == 0, res
        res = c.offsets_for_times({tp0: base + 100 * 60})
        assert res[tp0] is None, res

        c.assign([tp0])
        c.seek_to_end(tp0)
        assert c.position(tp0) == 60
        c.seek_to_beginning(tp0)
        assert c.position(tp0) == 0
        c.seek(tp0, 30)
        got = kp_consume(c, {tp0: 30})
        assert [r.offset for r in got[tp0]] == list(range(30, 60))
        assert [r.value for r in got[tp0]] == [b"v%d" % i for i in range(30, 60)]
    finally:
        c.close()


# ------------------------------------------------------------------ admin


def _norm_topic(d):
    name = d.get("name", d.get("topic"))
    parts = []
    for p in d["partitions"]:
        parts.append(dict(
            partition=p.get("partition_index", p.get("partition")),
            leader=p.get("leader_id", p.get("leader")),
            replicas=list(p.get("replica_nodes", p.get("replicas", []))),
            isr=list(p.get("isr_nodes", p.get("isr", []))),
            error=p.get("error_code", 0),
        ))
    return name, d.get("error_code", 0), sorted(parts, key=lambda x: x["partition"])


def _describe_topic_configs(admin, topic, keys=None):
    """{name: value} for all (or the named) configs of a topic, across kafka-python versions."""
    res = ConfigResource(ConfigResourceType.TOPIC, topic, configs={k: None for k in keys} if keys else None)
    if KP_VERSION >= (3, 0, 0):
        out = admin.describe_configs([res], config_filter="all")
        cfg = out["topic"][topic]
        return {k: v["value"] for k, v in cfg.items()}
    responses = admin.describe_configs([res])
    cfg = {}
    for resp in responses:
        for resource in resp.resources:
            err = resource[0]
            assert err == 0, "describe_configs error %s: %s" % (err, resource[1])
            assert resource[3] == topic
            for entry in resource[4]:
                cfg[entry[0]] = entry[1]
    return cfg


def test_admin(broker):
    admin = kp_admin(broker.bootstrap)
    try:
        t = unique_topic("kp-admin")
        t2 = unique_topic("kp-admin2")
        admin.create_topics([NewTopic(name=t, num_partitions=4, replication_factor=1),
                             NewTopic(name=t2, num_partitions=1, replication_factor=1)], timeout_ms=10000)
        deadline = time.monotonic() + 10
        while not {t, t2} <= set(admin.list_topics()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert {t, t2} <= set(admin.list_topics())

        (d,) = admin.describe_topics([t])
        name, err, parts = _norm_topic(d)
        assert name == t and err == 0
        assert [p["partition"] for p in parts] == [0, 1, 2, 3]
        for p in parts:
            assert p["leader"] == 1 and p["replicas"] == [1] and p["isr"] == [1] and p["error"] == 0, p

        cfg = _describe_topic_configs(admin, t)
        assert len(cfg) >= 10, cfg
        only = _describe_topic_configs(admin, t, keys=["retention.ms", "cleanup.policy"])
        assert only == {"retention.ms": "604800000", "cleanup.policy": "delete"}, only
        assert cfg.get("retention.ms") == "604800000", cfg.get("retention.ms")
        assert cfg.get("cleanup.policy") == "delete", cfg.get("cleanup.policy")

        # create_partitions 4 -> 6
        admin.create_partitions({t: NewPartitions(total_count=6)}, timeout_ms=10000)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            (d,) = admin.describe_topics([t])
            if len(d["partitions"]) == 6:
                break
            time.sleep(0.1)
        assert [p["partition"] for p in _norm_topic(d)[2]] == list(range(6))

        cl = admin.describe_cluster()
        brokers = cl["brokers"]
        assert len(brokers) == 1, cl
        b = brokers[0]
        assert b.get("node_id", b.get("broker_id")) == 1, b
        assert b["host"] == "127.0.0.1" and b["port"] == broker.port, b
        assert cl["controller_id"] == 1, cl
        assert cl.get("cluster_id"), cl

        admin.delete_topics([t2], timeout_ms=10000)
        deadline = time.monotonic() + 10
        while t2 in admin.list_topics() and time.monotonic() < deadline:
            time.sleep(0.1)
        topics = admin.list_topics()
        assert t2 not in topics and t in topics
    finally:
        admin.close()


def test_describe_log_dirs_sizes_and_space(broker):
    """DescribeLogDirs: the data directory with each partition's size, and (version 4 on, which
    kafka-python 3 sends) the file system's size and free bytes as statvfs gives them."""
    import os
    t = unique_topic("kp-logdirs")
    items = make_items(20, partitions=[0])
    ck_create_topic(broker.bootstrap, t, partitions=1)
    ck_produce(ck_producer(broker.bootstrap), t, items)
    admin = kp_admin(broker.bootstrap)
    try:
        if not hasattr(admin, "describe_log_dirs"):
            pytest.skip("kafka-python %s has no describe_log_dirs" % kafka.__version__)
        (resp,) = admin.describe_log_dirs()
        resp = resp if isinstance(resp, dict) else resp.to_object()
        (d,) = resp.get("log_dirs", resp.get("results", []))
        assert d["error_code"] == 0 and d["log_dir"] == os.path.abspath(broker.data_dir), d
        sizes = {(tt["name"], p["partition_index"]): p["partition_size"] for tt in d["topics"] for p in tt["partitions"]}
        assert sizes.get((t, 0), 0) > 20 * 10, sizes
        if "total_bytes" not in d:
            return  # an older request version: no sizes of the file system
        st = os.statvfs(broker.data_dir)
        assert d["total_bytes"] == st.f_blocks * st.f_frsize, (d["total_bytes"], st)
        # Free space moves as other tests write; it is this file system's, give or take.
        free = st.f_bavail * st.f_frsize
        assert 0 < d["usable_bytes"] <= d["total_bytes"], d
        assert abs(d["usable_bytes"] - free) < max(free // 20, 1 << 30), (d["usable_bytes"], free)
    finally:
        admin.close()


def test_admin_errors(broker):
    from kafka.errors import (TopicAlreadyExistsError, UnknownTopicOrPartitionError, InvalidPartitionsError,
                              InvalidTopicError)
    admin = kp_admin(broker.bootstrap)
    try:
        t = unique_topic("kp-err")
        admin.create_topics([NewTopic(name=t, num_partitions=2, replication_factor=1)], timeout_ms=10000)
        with pytest.raises(TopicAlreadyExistsError):
            admin.create_topics([NewTopic(name=t, num_partitions=2, replication_factor=1)], timeout_ms=10000)
        with pytest.raises(InvalidPartitionsError):
            admin.create_partitions({t: NewPartitions(total_count=1)}, timeout_ms=10000)
        with pytest.raises(UnknownTopicOrPartitionError):
            admin.delete_topics([unique_topic("missing")], timeout_ms=10000)
        with pytest.raises(InvalidTopicError):
            admin.create_topics([NewTopic(name="bad/name", num_partitions=1, replication_factor=1)],
                                timeout_ms=10000)
    finally:
        admin.close()
