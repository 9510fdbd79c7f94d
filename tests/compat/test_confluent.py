"""confluent-kafka (librdkafka) Producer / Consumer against Sluice."""

import time

import pytest
from confluent_kafka import KafkaError, TopicPartition, OFFSET_BEGINNING, OFFSET_END

from clients import (
    CK_VERSION, assert_ck_messages_match, ck_consume, ck_consumer, ck_create_topic, ck_produce,
    ck_producer, expected_by_partition, make_items,
)
from conftest import unique_topic

NOW_MS = lambda: int(time.time() * 1000)  # noqa: E731


def _check_deliveries(reports, items, acks):
    errs = [(r.idx, r.err) for r in reports if r.err is not None]
    assert not errs, "delivery errors: %s" % errs[:10]
    for r, it in zip(reports, items):
        assert r.partition == it["partition"], (r.idx, r.partition, it["partition"])
        assert r.value == it["value"]
    if acks == 0:
        return
    # Offsets: per partition, exactly 0..n-1 in production order.
    per_part = {}
    for r in reports:
        per_part.setdefault(r.partition, []).append(r.offset)
    for p, offs in per_part.items():
        assert offs == list(range(len(offs))), "partition %d: delivery offsets not 0..n-1: %s..." % (p, offs[:20])


@pytest.mark.parametrize("acks", ["all", "1", "0"])
def test_produce_consume_acks(broker, acks):
    topic = unique_topic("ck-acks%s" % acks)
    parts = [0, 1, 2, 3]
    ck_create_topic(broker.bootstrap, topic, len(parts))
    n = 12000 if acks == "all" else 4000
    base_ts = NOW_MS() - 3_600_000
    items = make_items(n, parts, prefix="acks%s" % acks, base_ts=base_ts)
    # One tombstone (null value), one null key and one empty value.
    items[7]["value"] = None
    items[11]["key"] = None
    items[15]["value"] = b""
    p = ck_producer(broker.bootstrap, acks=acks, **{"batch.num.messages": 500})
    reports = ck_produce(p, topic, items)
    _check_deliveries(reports, items, int(acks) if acks != "all" else -1)
    if acks != "0":
        for r, it in zip(reports, items):
            assert r.timestamp[1] == it["timestamp"], (r.idx, r.timestamp, it["timestamp"])

    want = expected_by_partition(items)
    got = ck_consume(broker.bootstrap, topic, {p: 0 for p in parts},
                     expected_counts={p: len(v) for p, v in want.items()})
    for p in parts:
        assert_ck_messages_match(got[p], want[p])


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_compression(broker, codec):
    topic = unique_topic("ck-" + codec)
    ck_create_topic(broker.bootstrap, topic, 2)
    n = 3000
    items = make_items(n, [0, 1], prefix="c-" + codec, base_ts=NOW_MS() - 1000, value_size=200)
    p = ck_producer(broker.bootstrap, **{"compression.type": codec, "linger.ms": 20})
    reports = ck_produce(p, topic, items)
    _check_deliveries(reports, items, -1)
    want = expected_by_partition(items)
    got = ck_consume(broker.bootstrap, topic, {0: 0, 1: 0}, expected_counts={0: n // 2, 1: n // 2})
    for part in (0, 1):
        assert_ck_messages_match(got[part], want[part])
    # Reading from inside a compressed batch must start at the requested offset.
    mid = ck_consume(broker.bootstrap, topic, {1: 777}, expected_counts={1: n // 2 - 777})
    assert_ck_messages_match(mid[1], want[1][777:], start_offset=777)


def test_consume_from_middle_and_special_offsets(broker):
    topic = unique_topic("ck-mid")
    ck_create_topic(broker.bootstrap, topic, 1)
    n = 5000
    items = make_items(n, [0], base_ts=NOW_MS() - 10_000)
    ck_produce(ck_producer(broker.bootstrap), topic, items)

    got = ck_consume(broker.bootstrap, topic, {0: 2500}, expected_counts={0: 2500})
    assert_ck_messages_match(got[0], items[2500:], start_offset=2500)
    got = ck_consume(broker.bootstrap, topic, {0: n - 1}, expected_counts={0: 1})
    assert_ck_messages_match(got[0], items[-1:], start_offset=n - 1)
    got = ck_consume(broker.bootstrap, topic, {0: OFFSET_BEGINNING}, expected_counts={0: n})
    assert_ck_messages_match(got[0], items)
    got = ck_consume(broker.bootstrap, topic, {0: OFFSET_END})
    assert got[0] == []

    # seek() on an assigned partition.
    c = ck_consumer(broker.bootstrap)
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        first = None
        deadline = time.monotonic() + 20
        while first is None and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                first = m
        assert first is not None and first.offset() == 0
        c.seek(TopicPartition(topic, 0, 4000))
        m = None
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error() and m.offset() >= 4000:
                break
            if m is not None and not m.error() and 0 < m.offset() < 4000:
                continue  # pre-seek prefetched messages
        assert m is not None and m.offset() == 4000 and m.value() == items[4000]["value"]
    finally:
        c.close()


def test_offset_out_of_range_is_reported(broker):
    topic = unique_topic("ck-oor")
    ck_create_topic(broker.bootstrap, topic, 1)
    ck_produce(ck_producer(broker.bootstrap), topic, make_items(10, [0]))
    c = ck_consumer(broker.bootstrap)  # auto.offset.reset=error
    try:
        c.assign([TopicPartition(topic, 0, 1000)])
        deadline = time.monotonic() + 20
        err = None
        while time.monotonic() < deadline and err is None:
            m = c.poll(0.5)
            if m is None:
                continue
            assert not (m.error() is None), "got a message at offset %d from an out-of-range fetch" % m.offset()
            if m.error().code() != KafkaError._PARTITION_EOF:
                err = m.error()
        assert err is not None, "no error for an out-of-range offset"
        assert err.code() in (KafkaError.OFFSET_OUT_OF_RANGE, KafkaError._AUTO_OFFSET_RESET), err
    finally:
        c.close()


def test_watermarks_and_offsets_for_times(broker):
    topic = unique_topic("ck-lo")
    ck_create_topic(broker.bootstrap, topic, 2)
    base = NOW_MS() - 600_000
    n = 100
    # Partition 0: timestamps base, base+1000, ... ; partition 1 empty.
    items = [{"value": b"v%d" % i, "partition": 0, "timestamp": base + 1000 * i} for i in range(n)]
    ck_produce(ck_producer(broker.bootstrap, **{"linger.ms": 0}), topic, items)

    c = ck_consumer(broker.bootstrap)
    try:
        assert c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10) == (0, n)
        assert c.get_watermark_offsets(TopicPartition(topic, 1), timeout=10) == (0, 0)
        queries = [
            (base - 5, 0),           # before everything -> first
            (base, 0),
            (base + 1000 * 37, 37),  # exact
            (base + 1000 * 37 + 1, 38),  # between -> next
            (base + 1000 * (n - 1), n - 1),
            (base + 1000 * n, -1),   # after everything -> -1 (OFFSET_END)
        ]
        for ts, want in queries:
            res = c.offsets_for_times([TopicPartition(topic, 0, ts)], timeout=10)
            assert res[0].error is None, res[0].error
            assert res[0].offset == want, "offsets_for_times(%d) -> %d, want %d" % (ts, res[0].offset, want)
        res = c.offsets_for_times([TopicPartition(topic, 1, base)], timeout=10)
        assert res[0].error is None and res[0].offset == -1, res[0]
    finally:
        c.close()


@pytest.mark.skipif(CK_VERSION < (2, 3, 0), reason="AdminClient.list_offsets needs confluent-kafka >= 2.3")
def test_admin_list_offsets(broker):
    from confluent_kafka.admin import OffsetSpec
    topic = unique_topic("ck-alo")
    admin = ck_create_topic(broker.bootstrap, topic, 1)
    base = NOW_MS() - 600_000
    items = [{"value": b"v%d" % i, "partition": 0, "timestamp": base + 10 * i} for i in range(50)]
    ck_produce(ck_producer(broker.bootstrap), topic, items)
    tp = TopicPartition(topic, 0)
    for spec, want_off in [(OffsetSpec.earliest(), 0), (OffsetSpec.latest(), 50),
                           (OffsetSpec.for_timestamp(base + 10 * 20), 20),
                           (OffsetSpec.for_timestamp(base + 10 * 20 - 3), 20)]:
        res = admin.list_offsets({tp: spec}, request_timeout=10)[tp].result(timeout=15)
        assert res.offset == want_off, (spec, res.offset, want_off)
        if want_off == 20:
            assert res.timestamp == base + 200, res.timestamp


def test_producer_to_auto_created_topic(broker):
    topic = unique_topic("ck-auto")
    items = make_items(50, [0], base_ts=NOW_MS())
    reports = ck_produce(ck_producer(broker.bootstrap), topic, items)
    _check_deliveries(reports, items, -1)
    got = ck_consume(broker.bootstrap, topic, {0: 0}, expected_counts={0: 50})
    assert_ck_messages_match(got[0], items)


def test_large_messages(broker):
    topic = unique_topic("ck-large")
    ck_create_topic(broker.bootstrap, topic, 1)
    import os
    vals = [os.urandom(900_000), os.urandom(300_000), b"small", os.urandom(1)]
    items = [{"value": v, "partition": 0, "key": b"k%d" % i} for i, v in enumerate(vals)]
    reports = ck_produce(ck_producer(broker.bootstrap, **{"message.max.bytes": 1_000_000}), topic, items)
    _check_deliveries(reports, items, -1)
    got = ck_consume(broker.bootstrap, topic, {0: 0}, expected_counts={0: len(vals)})
    assert [m.value() for m in got[0]] == vals
    assert [m.offset() for m in got[0]] == [0, 1, 2, 3]


def test_message_too_large_rejected(broker_factory):
    broker = broker_factory(**{"message.max.bytes": 10000})
    topic = unique_topic("ck-toolarge")
    ck_create_topic(broker.bootstrap, topic, 1)
    import os
    p = ck_producer(broker.bootstrap, **{"linger.ms": 0, "message.timeout.ms": 10000})
    reports = ck_produce(p, topic, [{"value": os.urandom(20000), "partition": 0}])
    assert reports[0].err is not None, "20000-byte message accepted with message.max.bytes=10000"
    assert reports[0].err.code() == 10, reports[0].err  # MSG_SIZE_TOO_LARGE
    # The topic default follows the broker's message.max.bytes.
    from confluent_kafka.admin import ConfigResource, ResourceType
    from clients import ck_admin
    admin = ck_admin(broker.bootstrap)  # keep a reference until the future resolves
    cfg = list(admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)],
                                      request_timeout=15).values())[0].result(timeout=15)
    assert cfg["max.message.bytes"].value == "10000", cfg["max.message.bytes"]
    # The broker still works afterwards.
    reports = ck_produce(p, topic, [{"value": b"ok", "partition": 0}])
    assert reports[0].err is None and reports[0].offset == 0
