"""Protocol semantics on raw sockets with well-formed requests: fetch sizing
and long polling, multi-partition requests, metadata auto-creation."""

import threading
import time

import wire
from wire import Conn, Record, encode_batch
from clients import ck_create_topic, ck_produce, ck_producer
from conftest import unique_topic


def _produce_n_batches(bootstrap, topic, n, size=1000, partition=0):
    with Conn.to(bootstrap) as c:
        for i in range(n):
            p = c.produce(topic, partition, encode_batch([Record(value=bytes([65 + i % 26]) * size)]))
            assert p["error"] == 0 and p["base_offset"] == i, p


def test_fetch_returns_whole_first_batch_even_if_over_limit(broker):
    """KIP-74: a fetch must make progress even when the first batch is bigger
    than max_bytes / partition_max_bytes."""
    topic = unique_topic("fsize")
    ck_create_topic(broker.bootstrap, topic, 1)
    _produce_n_batches(broker.bootstrap, topic, 5, size=5000)
    with Conn.to(broker.bootstrap) as c:
        f = c.fetch(topic, 0, 0, max_bytes=100, partition_max_bytes=100)
        assert f["error"] == 0 and f["high_watermark"] == 5
        batches = wire.decode_batches(f["records"] or b"")
        assert len(batches) >= 1, "no complete batch returned for a 100-byte limit (consumer would be stuck)"
        assert batches[0].base_offset == 0 and batches[0].records[0].value == b"A" * 5000
        # A limit between one and two batches returns at most ~that much
        f = c.fetch(topic, 0, 0, max_bytes=7000, partition_max_bytes=7000)
        assert len(f["records"]) <= 2 * 5100, "fetch returned %d bytes for max_bytes=7000" % len(f["records"])
        assert [b.base_offset for b in wire.decode_batches(f["records"])][:1] == [0]
        # From the middle, starting at the batch containing the offset.
        f = c.fetch(topic, 0, 3)
        bs = wire.decode_batches(f["records"])
        assert [b.base_offset for b in bs] == [3, 4], [b.base_offset for b in bs]


def test_fetch_from_offset_inside_a_batch(broker):
    topic = unique_topic("finside")
    ck_create_topic(broker.bootstrap, topic, 1)
    with Conn.to(broker.bootstrap) as c:
        assert c.produce(topic, 0, encode_batch([Record(value=b"r%d" % i) for i in range(10)]))["error"] == 0
        f = c.fetch(topic, 0, 6)
        assert f["error"] == 0 and f["high_watermark"] == 10
        bs = wire.decode_batches(f["records"])
        # Kafka returns the whole batch containing offset 6; clients skip the earlier records.
        assert bs and bs[0].base_offset <= 6 <= bs[0].last_offset
        recs, hw = c.fetch_all(topic, 0, start=6)
        assert [r.offset for r in recs] == [6, 7, 8, 9] and [r.value for r in recs] == [b"r6", b"r7", b"r8", b"r9"]


def test_fetch_long_poll_waits_and_wakes_up(broker):
    topic = unique_topic("lpoll")
    ck_create_topic(broker.bootstrap, topic, 1)
    with Conn.to(broker.bootstrap) as c:
        # Nothing to read: the broker holds the request for ~max_wait_ms.
        t0 = time.monotonic()
        f = c.fetch(topic, 0, 0, max_wait_ms=1500, min_bytes=1)
        waited = time.monotonic() - t0
        assert f["error"] == 0 and not f["records"]
        assert 1.0 <= waited <= 4.0, "empty fetch with max_wait_ms=1500 returned after %.2fs" % waited

        # A produce from another connection completes a waiting fetch promptly.
        result = {}

        def waiter():
            t = time.monotonic()
            with Conn.to(broker.bootstrap) as c2:
                result["f"] = c2.fetch(topic, 0, 0, max_wait_ms=8000, min_bytes=1)
            result["t"] = time.monotonic() - t

        th = threading.Thread(target=waiter)
        th.start()
        time.sleep(0.5)
        assert c.produce(topic, 0, encode_batch([Record(value=b"wake")]))["error"] == 0
        th.join(15)
        assert not th.is_alive()
        assert result["f"]["error"] == 0
        assert [r.value for b in wire.decode_batches(result["f"]["records"]) for r in b.records] == [b"wake"]
        assert result["t"] < 3.0, "waiting fetch returned %.2fs after start (should wake on produce)" % result["t"]


def test_multi_partition_produce_with_one_bad_partition(broker):
    topic = unique_topic("multi")
    ck_create_topic(broker.bootstrap, topic, 2)
    missing = unique_topic("missing")
    with Conn.to(broker.bootstrap) as c:
        body = wire.produce_v3_multi([
            (topic, [(0, encode_batch([Record(value=b"p0")])),
                     (1, encode_batch([Record(value=b"p1-a"), Record(value=b"p1-b")])),
                     (5, encode_batch([Record(value=b"nope")]))]),
            (missing, [(0, encode_batch([Record(value=b"nope")]))]),
        ])
        res = wire.parse_produce_v3(c.request(wire.PRODUCE, 3, body))
        assert res[(topic, 0)]["error"] == 0 and res[(topic, 0)]["base_offset"] == 0, res
        assert res[(topic, 1)]["error"] == 0 and res[(topic, 1)]["base_offset"] == 0, res
        assert res[(topic, 5)]["error"] == wire.UNKNOWN_TOPIC_OR_PARTITION, res
        assert res[(missing, 0)]["error"] == wire.UNKNOWN_TOPIC_OR_PARTITION, res
        assert [r.value for r in c.fetch_all(topic, 1)[0]] == [b"p1-a", b"p1-b"]

        # Multi-partition fetch
        body = wire.fetch_v4_multi([(topic, [(0, 0, 1 << 20), (1, 1, 1 << 20), (9, 0, 1 << 20)])])
        res = wire.parse_fetch_v4(c.request(wire.FETCH, 4, body))
        assert res[(topic, 0)]["error"] == 0 and res[(topic, 0)]["high_watermark"] == 1
        assert res[(topic, 1)]["error"] == 0 and res[(topic, 1)]["high_watermark"] == 2
        assert res[(topic, 9)]["error"] == wire.UNKNOWN_TOPIC_OR_PARTITION
        vals = [r.value for b in wire.decode_batches(res[(topic, 1)]["records"]) for r in b.records if r.offset >= 1]
        assert vals == [b"p1-b"]


def test_metadata_auto_creates_topics(broker_factory):
    broker = broker_factory(**{"num.partitions": 3})
    t = unique_topic("mdauto")
    with Conn.to(broker.bootstrap) as c:
        # v4 with allow_auto_topic_creation=false: not created.
        md = wire.parse_metadata_v4(c.request(wire.METADATA, 4, wire.metadata_v4([t], False)))
        assert md["cluster_id"], md
        (tm,) = md["topics"]
        assert tm["error"] == wire.UNKNOWN_TOPIC_OR_PARTITION, tm
        md = c.metadata(None)
        assert t not in [x["name"] for x in md["topics"]]
        # v1 (always allowed) creates it with num.partitions.
        deadline = time.monotonic() + 10
        while True:
            md = c.metadata([t])
            (tm,) = md["topics"]
            if tm["error"] == 0 and len(tm["partitions"]) == 3:
                break
            assert tm["error"] in (0, 5), tm  # LEADER_NOT_AVAILABLE while being created
            assert time.monotonic() < deadline, tm
            time.sleep(0.1)
        assert sorted(p["partition"] for p in tm["partitions"]) == [0, 1, 2]
        assert all(p["leader"] == 1 for p in tm["partitions"]), tm


def test_auto_create_disabled(broker_factory):
    broker = broker_factory(**{"auto.create.topics.enable": "false"})
    t = unique_topic("noauto")
    with Conn.to(broker.bootstrap) as c:
        md = c.metadata([t])
        (tm,) = md["topics"]
        assert tm["error"] == wire.UNKNOWN_TOPIC_OR_PARTITION, tm
        assert t not in [x["name"] for x in c.metadata(None)["topics"]]
    p = ck_producer(broker.bootstrap, **{"message.timeout.ms": 3000})
    reports = ck_produce(p, t, [{"value": b"x", "partition": 0}], flush_timeout=15)
    assert reports[0].err is not None, "produce to a missing topic succeeded with auto-create disabled"
    with Conn.to(broker.bootstrap) as c:
        assert t not in [x["name"] for x in c.metadata(None)["topics"]]


def test_concurrent_producers_same_partition(broker):
    topic = unique_topic("conc")
    ck_create_topic(broker.bootstrap, topic, 2)
    results = {}

    def run(k):
        items = [{"value": b"w%d-%05d" % (k, i), "partition": i % 2} for i in range(2500)]
        results[k] = ck_produce(ck_producer(broker.bootstrap, **{"linger.ms": k}), topic, items)

    ths = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in ths:
        t.start()
    for t in ths:
        t.join(60)
    assert len(results) == 4
    acked = {}
    for k, reps in results.items():
        for r in reps:
            assert r.err is None, r.err
            assert (r.partition, r.offset) not in acked, "offset %s acknowledged twice" % ((r.partition, r.offset),)
            acked[(r.partition, r.offset)] = r.value
    for part in (0, 1):
        offs = sorted(o for p, o in acked if p == part)
        assert offs == list(range(5000)), "partition %d offsets not dense" % part
    with Conn.to(broker.bootstrap) as c:
        for part in (0, 1):
            recs, hw = c.fetch_all(topic, part)
            assert hw == 5000
            for r in recs:
                assert acked[(part, r.offset)] == r.value
            # Each writer's records stay in its own order.
            for k in range(4):
                mine = [int(r.value.split(b"-")[1]) for r in recs if r.value.startswith(b"w%d-" % k)]
                assert mine == sorted(mine)


def test_tailing_consumer_sees_live_appends(broker):
    from clients import ck_consumer
    from confluent_kafka import TopicPartition
    topic = unique_topic("tail")
    ck_create_topic(broker.bootstrap, topic, 1)
    c = ck_consumer(broker.bootstrap, **{"fetch.wait.max.ms": 500})
    c.assign([TopicPartition(topic, 0, 0)])
    p = ck_producer(broker.bootstrap, **{"linger.ms": 0})
    got = []
    try:
        deadline = time.monotonic() + 30
        for i in range(20):
            p.produce(topic, value=b"live-%d" % i, partition=0)
            p.flush(10)
            t0 = time.monotonic()
            while len(got) < i + 1 and time.monotonic() < deadline:
                m = c.poll(0.2)
                if m is not None and not m.error():
                    got.append((m.offset(), m.value()))
            assert len(got) == i + 1, "record %d not delivered to a tailing consumer" % i
            assert time.monotonic() - t0 < 3.0, "tailing latency %.2fs" % (time.monotonic() - t0)
    finally:
        c.close()
    assert got == [(i, b"live-%d" % i) for i in range(20)]
