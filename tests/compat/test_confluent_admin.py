"""confluent-kafka AdminClient against Sluice."""

import time

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import ConfigResource, NewPartitions, NewTopic, ResourceType

from clients import ck_admin, ck_consume, ck_create_topic, ck_produce, ck_producer, make_items, wait_topic_visible
from conftest import unique_topic


def _err_code(exc_info):
    e = exc_info.value
    assert isinstance(e, KafkaException), repr(e)
    return e.args[0].code()


def _all_topics(admin):
    # No topic argument: never triggers auto-creation.
    return admin.list_topics(timeout=10).topics


def test_create_list_delete_topics(broker):
    admin = ck_admin(broker.bootstrap)
    names = {unique_topic("cka-1"): 1, unique_topic("cka-3"): 3, unique_topic("cka-8"): 8}
    futs = admin.create_topics([NewTopic(t, num_partitions=n, replication_factor=1) for t, n in names.items()],
                               operation_timeout=10, request_timeout=15)
    assert set(futs) == set(names)
    for t, f in futs.items():
        assert f.result(timeout=15) is None

    for t, n in names.items():
        wait_topic_visible(admin, t, n)
    md = admin.list_topics(timeout=10)
    assert list(md.brokers) == [1], md.brokers
    b = md.brokers[1]
    assert (b.host, b.port) == ("127.0.0.1", broker.port), (b.host, b.port)
    assert md.controller_id == 1
    for t, n in names.items():
        tm = md.topics[t]
        assert tm.error is None
        assert sorted(tm.partitions) == list(range(n))
        for pid, pm in tm.partitions.items():
            assert pm.leader == 1 and pm.replicas == [1] and pm.isrs == [1] and pm.error is None

    # Creating an existing topic fails with TOPIC_ALREADY_EXISTS.
    t0 = list(names)[0]
    f = admin.create_topics([NewTopic(t0, num_partitions=1, replication_factor=1)], request_timeout=15)[t0]
    with pytest.raises(KafkaException) as ei:
        f.result(timeout=15)
    assert _err_code(ei) == KafkaError.TOPIC_ALREADY_EXISTS

    # Delete two of them; they disappear from metadata, the third stays.
    doomed = list(names)[:2]
    for t, f in admin.delete_topics(doomed, operation_timeout=10, request_timeout=15).items():
        assert f.result(timeout=15) is None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        topics = _all_topics(admin)
        if not any(t in topics for t in doomed):
            break
        time.sleep(0.2)
    topics = _all_topics(admin)
    for t in doomed:
        assert t not in topics, "deleted topic %s still in metadata" % t
    assert list(names)[2] in topics

    # Deleting an unknown topic fails with UNKNOWN_TOPIC_OR_PART.
    f = admin.delete_topics([doomed[0]], request_timeout=15)[doomed[0]]
    with pytest.raises(KafkaException) as ei:
        f.result(timeout=15)
    assert _err_code(ei) == KafkaError.UNKNOWN_TOPIC_OR_PART


def test_deleted_topic_data_is_gone(broker):
    """Delete + recreate with the same name starts from offset 0 with no old data."""
    admin = ck_admin(broker.bootstrap)
    t = unique_topic("cka-recreate")
    ck_create_topic(admin, t, 1)
    ck_produce(ck_producer(broker.bootstrap), t, make_items(20, [0]))
    admin.delete_topics([t], request_timeout=15)[t].result(timeout=15)
    deadline = time.monotonic() + 10
    while t in _all_topics(admin) and time.monotonic() < deadline:
        time.sleep(0.2)
    ck_create_topic(admin, t, 1)
    reports = ck_produce(ck_producer(broker.bootstrap), t, [{"value": b"fresh", "partition": 0}])
    assert reports[0].err is None and reports[0].offset == 0, (reports[0].err, reports[0].offset)
    got = ck_consume(broker.bootstrap, t, {0: 0}, expected_counts={0: 1})
    assert [m.value() for m in got[0]] == [b"fresh"]


@pytest.mark.parametrize("bad", ["bad/name", "a" * 250, "", "..", "has space"])
def test_create_invalid_topic_name(broker, bad):
    admin = ck_admin(broker.bootstrap)
    try:
        futs = admin.create_topics([NewTopic(bad, num_partitions=1, replication_factor=1)], request_timeout=15)
    except (ValueError, KafkaException):
        return  # rejected client-side; nothing reached the broker
    with pytest.raises(KafkaException) as ei:
        futs[bad].result(timeout=15)
    assert _err_code(ei) == KafkaError.TOPIC_EXCEPTION  # INVALID_TOPIC_EXCEPTION (17)
    assert bad not in _all_topics(admin)


def test_create_partitions(broker):
    admin = ck_admin(broker.bootstrap)
    t = unique_topic("cka-cp")
    ck_create_topic(admin, t, 2)
    items = make_items(10, [0, 1])
    ck_produce(ck_producer(broker.bootstrap), t, items)

    f = admin.create_partitions([NewPartitions(t, 5)], operation_timeout=10, request_timeout=15)[t]
    assert f.result(timeout=15) is None
    wait_topic_visible(admin, t, 5)

    # New partitions are usable; old data untouched.
    new_items = [{"value": b"p%d" % p, "partition": p} for p in range(5)]
    reports = ck_produce(ck_producer(broker.bootstrap), t, new_items)
    assert [(r.err, r.partition, r.offset) for r in reports] == [(None, 0, 5), (None, 1, 5), (None, 2, 0),
                                                                 (None, 3, 0), (None, 4, 0)]
    got = ck_consume(broker.bootstrap, t, {p: 0 for p in range(5)},
                     expected_counts={0: 6, 1: 6, 2: 1, 3: 1, 4: 1})
    assert [m.value() for m in got[0]] == [it["value"] for it in items if it["partition"] == 0] + [b"p0"]
    assert [m.value() for m in got[4]] == [b"p4"]

    # Shrinking is rejected with INVALID_PARTITIONS.
    f = admin.create_partitions([NewPartitions(t, 3)], request_timeout=15)[t]
    with pytest.raises(KafkaException) as ei:
        f.result(timeout=15)
    assert _err_code(ei) == KafkaError.INVALID_PARTITIONS
    wait_topic_visible(admin, t, 5)

    # Unknown topic.
    f = admin.create_partitions([NewPartitions(unique_topic("nope"), 3)], request_timeout=15)
    with pytest.raises(KafkaException) as ei:
        list(f.values())[0].result(timeout=15)
    assert _err_code(ei) == KafkaError.UNKNOWN_TOPIC_OR_PART


def _src(entry):
    s = entry.source
    return int(getattr(s, "value", s))


def _describe(admin, restype, name):
    res = ConfigResource(restype, name)
    futs = admin.describe_configs([res], request_timeout=15)
    return list(futs.values())[0].result(timeout=15)


def test_describe_configs(broker_factory):
    broker = broker_factory(**{"log.segment.bytes": 2097152})
    admin = ck_admin(broker.bootstrap)
    t = unique_topic("cka-cfg")
    ck_create_topic(admin, t, 1)
    cfg = _describe(admin, ResourceType.TOPIC, t)
    assert len(cfg) >= 10, "only %d topic configs: %s" % (len(cfg), sorted(cfg))
    want = {
        "retention.ms": "604800000",
        "cleanup.policy": "delete",
        "max.message.bytes": "1048588",
        "segment.bytes": "2097152",  # inherits the broker's log.segment.bytes
    }
    for k, v in want.items():
        assert k in cfg, "%s missing from topic configs %s" % (k, sorted(cfg))
        assert cfg[k].value == v, "%s = %r, want %r" % (k, cfg[k].value, v)
        assert cfg[k].name == k
    # DEFAULT_CONFIG (5) or STATIC_BROKER_CONFIG (4); never a per-topic override.
    assert _src(cfg["retention.ms"]) in (4, 5), _src(cfg["retention.ms"])
    assert _src(cfg["segment.bytes"]) in (4, 5), _src(cfg["segment.bytes"])

    bcfg = _describe(admin, ResourceType.BROKER, "1")
    assert len(bcfg) >= 5, sorted(bcfg)
    assert bcfg.get("log.segment.bytes") is not None and bcfg["log.segment.bytes"].value == "2097152", \
        bcfg.get("log.segment.bytes")

    # Unknown topic -> UNKNOWN_TOPIC_OR_PART.
    with pytest.raises(KafkaException) as ei:
        _describe(admin, ResourceType.TOPIC, unique_topic("missing"))
    assert _err_code(ei) == KafkaError.UNKNOWN_TOPIC_OR_PART


def test_create_topic_with_config(broker):
    admin = ck_admin(broker.bootstrap)
    t = unique_topic("cka-tcfg")
    ck_create_topic(admin, t, 1, config={"retention.ms": "3600000", "cleanup.policy": "delete"})
    cfg = _describe(admin, ResourceType.TOPIC, t)
    assert cfg["retention.ms"].value == "3600000", cfg["retention.ms"]
    assert not cfg["retention.ms"].is_default
    assert _src(cfg["retention.ms"]) == 1, _src(cfg["retention.ms"])  # DYNAMIC_TOPIC_CONFIG
    assert cfg["segment.bytes"].is_default or cfg["segment.bytes"].value == "1073741824"


@pytest.mark.skipif(not hasattr(__import__("confluent_kafka.admin").admin.AdminClient, "describe_cluster"),
                    reason="describe_cluster not in this confluent-kafka")
def test_describe_cluster(broker):
    admin = ck_admin(broker.bootstrap)
    d = admin.describe_cluster(request_timeout=15).result(timeout=15)
    assert [n.id for n in d.nodes] == [1]
    assert d.nodes[0].host == "127.0.0.1" and d.nodes[0].port == broker.port
    assert d.controller is not None and d.controller.id == 1
    assert d.cluster_id, "empty cluster id"


@pytest.mark.skipif(not hasattr(__import__("confluent_kafka.admin").admin.AdminClient, "describe_topics"),
                    reason="describe_topics not in this confluent-kafka")
def test_describe_topics(broker):
    from confluent_kafka import TopicCollection
    admin = ck_admin(broker.bootstrap)
    t = unique_topic("cka-dt")
    ck_create_topic(admin, t, 3)
    futs = admin.describe_topics(TopicCollection([t]), request_timeout=15)
    d = futs[t].result(timeout=15)
    assert d.name == t
    assert [p.id for p in d.partitions] == [0, 1, 2]
    for p in d.partitions:
        assert p.leader.id == 1 and [r.id for r in p.replicas] == [1] and [r.id for r in p.isr] == [1]
    assert not d.is_internal


def test_create_topics_validation(broker):
    admin = ck_admin(broker.bootstrap)
    # validate_only: success reported, nothing created.
    t = unique_topic("cka-validate")
    f = admin.create_topics([NewTopic(t, num_partitions=2, replication_factor=1)], validate_only=True,
                            request_timeout=15)[t]
    assert f.result(timeout=15) is None
    time.sleep(0.3)
    assert t not in _all_topics(admin), "validate_only=True created the topic"

    # Replication factor 2 on a single node.
    t = unique_topic("cka-rf2")
    f = admin.create_topics([NewTopic(t, num_partitions=1, replication_factor=2)], request_timeout=15)[t]
    with pytest.raises(KafkaException) as ei:
        f.result(timeout=15)
    assert _err_code(ei) == KafkaError.INVALID_REPLICATION_FACTOR
    assert t not in _all_topics(admin)

    # Longest legal name and the legal punctuation.
    for name in ["x" * 249, "a.b_c-D.9"]:
        ck_create_topic(admin, name, 1)
        reports = ck_produce(ck_producer(broker.bootstrap), name, [{"value": b"ok", "partition": 0}])
        assert reports[0].err is None and reports[0].offset == 0
        got = ck_consume(broker.bootstrap, name, {0: 0}, expected_counts={0: 1})
        assert [m.value() for m in got[0]] == [b"ok"]


def test_topic_level_max_message_bytes(broker):
    import os
    admin = ck_admin(broker.bootstrap)
    t = unique_topic("cka-mmb")
    ck_create_topic(admin, t, 1, config={"max.message.bytes": "5000"})
    cfg = _describe(admin, ResourceType.TOPIC, t)
    assert cfg["max.message.bytes"].value == "5000"
    p = ck_producer(broker.bootstrap, **{"linger.ms": 0})
    reports = ck_produce(p, t, [{"value": os.urandom(8000), "partition": 0}])
    assert reports[0].err is not None and reports[0].err.code() == KafkaError.MSG_SIZE_TOO_LARGE, reports[0].err
    reports = ck_produce(p, t, [{"value": os.urandom(3000), "partition": 0}])
    assert reports[0].err is None and reports[0].offset == 0
