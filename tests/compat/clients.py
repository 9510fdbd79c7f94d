"""Client-library helpers shared by the compat tests (confluent-kafka and
kafka-python), written to work with both the old and new pinned versions."""

from __future__ import annotations

import time
import uuid

import confluent_kafka
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

def _ck_version():
    v = getattr(confluent_kafka, "__version__", None)
    if not isinstance(v, str):
        v = confluent_kafka.version()
        v = v[0] if isinstance(v, tuple) else v
    return tuple(int(x) for x in v.split(".")[:3] if x.isdigit())


CK_VERSION = _ck_version()


# ------------------------------------------------------------------ confluent-kafka


def ck_producer(bootstrap, **conf) -> Producer:
    """A librdkafka producer with the library's own defaults for everything
    idempotence-related (enable.idempotence is false in librdkafka); pass
    **{"enable.idempotence": True} to turn it on."""
    c = {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "linger.ms": 5,
        "message.timeout.ms": 30000,
        "socket.timeout.ms": 10000,
        "request.timeout.ms": 10000,
    }
    c.update(conf)
    return Producer(c)


def ck_consumer(bootstrap, **conf) -> Consumer:
    c = {
        "bootstrap.servers": bootstrap,
        "group.id": "compat-" + uuid.uuid4().hex[:8],  # required by the library; never joined
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "error",
        "socket.timeout.ms": 10000,
    }
    c.update(conf)
    return Consumer(c)


def ck_admin(bootstrap, **conf) -> AdminClient:
    c = {"bootstrap.servers": bootstrap, "socket.timeout.ms": 10000}
    c.update(conf)
    return AdminClient(c)


def ck_create_topic(bootstrap_or_admin, topic, partitions=1, config=None, timeout=15):
    admin = ck_admin(bootstrap_or_admin) if isinstance(bootstrap_or_admin, str) else bootstrap_or_admin
    nt = NewTopic(topic, num_partitions=partitions, replication_factor=1, config=config or {})
    futs = admin.create_topics([nt], operation_timeout=10, request_timeout=timeout)
    futs[topic].result(timeout=timeout)
    wait_topic_visible(admin, topic, partitions)
    return admin


def wait_topic_visible(admin, topic, partitions, timeout=10):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        md = admin.list_topics(topic=topic, timeout=5)
        t = md.topics.get(topic)
        if t is not None and t.error is None and len(t.partitions) == partitions and all(
                p.leader == 1 for p in t.partitions.values()):
            return md
        last = t
        time.sleep(0.1)
    raise AssertionError("topic %s not visible with %d partitions led by node 1 (last: %r)"
                         % (topic, partitions, last and (last.error, {p: v.leader for p, v in last.partitions.items()})))


class Delivery:
    __slots__ = ("idx", "err", "partition", "offset", "timestamp", "value")

    def __init__(self, idx):
        self.idx = idx
        self.err = None
        self.partition = None
        self.offset = None
        self.timestamp = None
        self.value = None


def ck_produce(producer, topic, items, flush_timeout=60):
    """items: list of dicts with value/key/partition/headers/timestamp.
    Returns a list of Delivery (one per item, in item order)."""
    reports = [Delivery(i) for i in range(len(items))]
    done = [0]

    def make_cb(d):
        def cb(err, msg):
            d.err = err
            d.partition = msg.partition()
            d.offset = msg.offset()
            d.timestamp = msg.timestamp()
            d.value = msg.value()
            done[0] += 1
        return cb

    for i, it in enumerate(items):
        kwargs = {k: v for k, v in it.items() if v is not None}
        while True:
            try:
                producer.produce(topic, on_delivery=make_cb(reports[i]), **kwargs)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 500 == 0:
            producer.poll(0)
    left = producer.flush(flush_timeout)
    assert left == 0, "%d messages still undelivered after %ss" % (left, flush_timeout)
    assert done[0] == len(items), "got %d delivery reports for %d messages" % (done[0], len(items))
    return reports


def ck_consume(bootstrap, topic, start_offsets, expected_counts=None, timeout=60, **conf):
    """Consume from explicit offsets until every partition reaches EOF.

    start_offsets: {partition: offset}.  expected_counts: {partition: n}
    (keep polling until at least n messages per partition or timeout).
    Returns {partition: [Message]}.
    """
    c = ck_consumer(bootstrap, **conf)
    try:
        c.assign([TopicPartition(topic, p, o) for p, o in start_offsets.items()])
        got = {p: [] for p in start_offsets}
        eof = set()
        deadline = time.monotonic() + timeout
        want = expected_counts or {}
        while time.monotonic() < deadline:
            if all(p in eof and len(got[p]) >= want.get(p, 0) for p in start_offsets):
                break
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    eof.add(m.partition())
                    continue
                raise AssertionError("consumer error on %s [%s]: %s" % (m.topic(), m.partition(), m.error()))
            eof.discard(m.partition())
            got[m.partition()].append(m)
        else:
            raise AssertionError("timed out consuming %s: have %s, want %s, eof %s" % (
                topic, {p: len(v) for p, v in got.items()}, want, sorted(eof)))
        return got
    finally:
        c.close()


def make_items(n, partitions, prefix="v", base_ts=None, with_headers=True, value_size=0):
    """Deterministic records with keys, headers and timestamps, round-robin
    over the given partitions."""
    items = []
    for i in range(n):
        v = ("%s-%06d" % (prefix, i)).encode()
        if value_size:
            v = v + b"x" * max(0, value_size - len(v))
        it = {
            "value": v,
            "key": ("k%d" % (i % 97)).encode(),
            "partition": partitions[i % len(partitions)],
        }
        if with_headers:
            it["headers"] = [("idx", str(i).encode()), ("dup", b"a"), ("dup", b"b")]
        if base_ts is not None:
            it["timestamp"] = base_ts + i
        items.append(it)
    return items


def expected_by_partition(items):
    out = {}
    for it in items:
        out.setdefault(it["partition"], []).append(it)
    return out


def assert_ck_messages_match(got_msgs, want_items, start_offset=0, check_ts=True):
    """got_msgs: [confluent Message] of one partition; want_items: the items
    written to that partition (in order) beginning at start_offset."""
    assert len(got_msgs) == len(want_items), "got %d messages, want %d" % (len(got_msgs), len(want_items))
    for i, (m, it) in enumerate(zip(got_msgs, want_items)):
        assert m.offset() == start_offset + i, "message %d: offset %d, want %d" % (i, m.offset(), start_offset + i)
        assert m.value() == it["value"], "offset %d: value %r want %r" % (m.offset(), m.value(), it["value"])
        assert m.key() == it.get("key"), "offset %d: key %r want %r" % (m.offset(), m.key(), it.get("key"))
        want_h = it.get("headers") or None
        got_h = m.headers()
        if want_h:
            assert got_h == list(want_h), "offset %d: headers %r want %r" % (m.offset(), got_h, want_h)
        else:
            assert not got_h, "offset %d: unexpected headers %r" % (m.offset(), got_h)
        if check_ts and it.get("timestamp") is not None:
            ts_type, ts = m.timestamp()
            assert ts_type == confluent_kafka.TIMESTAMP_CREATE_TIME, "offset %d: ts type %d" % (m.offset(), ts_type)
            assert ts == it["timestamp"], "offset %d: timestamp %d want %d" % (m.offset(), ts, it["timestamp"])


# ------------------------------------------------------------------ kafka-python


def kp_producer_kwargs(bootstrap, **kw):
    """kafka-python producer settings.  enable_idempotence is left at the
    library's default (True in kafka-python 3, which then also defaults
    acks to 'all'; kafka-python 2.0.2 has no idempotent producer)."""
    d = dict(bootstrap_servers=bootstrap, linger_ms=5, request_timeout_ms=15000, max_block_ms=15000,
             retries=3, client_id="compat-kp")
    d.update(kw)
    return d


def kp_producer(bootstrap, **kw):
    from kafka import KafkaProducer
    return KafkaProducer(**kp_producer_kwargs(bootstrap, **kw))


def kp_consumer(bootstrap, **kw):
    from kafka import KafkaConsumer
    d = dict(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
             auto_offset_reset="earliest", request_timeout_ms=20000,
             client_id="compat-kp-consumer")
    d.update(kw)
    return KafkaConsumer(**d)


def kp_admin(bootstrap, **kw):
    from kafka.admin import KafkaAdminClient
    d = dict(bootstrap_servers=bootstrap, request_timeout_ms=15000, client_id="compat-kp-admin")
    d.update(kw)
    return KafkaAdminClient(**d)


def kp_consume(consumer, tps_counts, timeout=60):
    """Poll until at least tps_counts[tp] records were received for each tp.
    Returns {tp: [ConsumerRecord]}; extra records are kept so callers can
    assert exact counts."""
    got = {tp: [] for tp in tps_counts}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(len(got[tp]) >= n for tp, n in tps_counts.items()):
            break
        res = consumer.poll(timeout_ms=500)
        for tp, recs in res.items():
            got.setdefault(tp, []).extend(recs)
    else:
        raise AssertionError("kafka-python consumer timed out: have %s want %s"
                             % ({str(k): len(v) for k, v in got.items()}, {str(k): v for k, v in tps_counts.items()}))
    # Drain briefly to catch duplicated / extra records.
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        res = consumer.poll(timeout_ms=200)
        for tp, recs in res.items():
            got.setdefault(tp, []).extend(recs)
    return got


def ck_watermarks(bootstrap, topic, partition=0):
    """(low, high) watermarks of one partition, from a confluent-kafka consumer."""
    c = ck_consumer(bootstrap)
    try:
        return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
    finally:
        c.close()
