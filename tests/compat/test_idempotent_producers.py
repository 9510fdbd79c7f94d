"""Idempotent producers of the Python client libraries against Sluice.

* confluent-kafka (librdkafka) with `enable.idempotence=True` and nothing else
  about acks / retries / in-flight requests set: librdkafka picks those itself.
* kafka-python with its default producer (kafka-python 3: idempotent by
  default) and acks='all'.  kafka-python 2.0.2 has no idempotent producer: its
  round trip runs with the plain default producer, its crash test is skipped.

Each library gets the same two scenarios: 20,000 keyed records over 3
partitions read back exactly once, in order per partition, at the offsets the
acknowledgements gave; and the same while the broker is killed with kill -9
twice and restarted on the same port and data dir, after which every
acknowledged record is present exactly once at its offset and the log holds
no duplicate at all.  Whenever idempotence is on, the partitions' `.log`
segments are read to prove it: every batch carries a producer id, and per
producer (id, epoch) the base sequences run from 0 without a gap or overlap.
"""

from __future__ import annotations

import os
import re
import threading
import time

import pytest
import kafka
from confluent_kafka import Producer
from kafka import KafkaProducer, TopicPartition

import wire
from clients import CK_VERSION, ck_consume, ck_create_topic, kp_consumer
from conftest import unique_topic

KP_VERSION = tuple(int(x) for x in kafka.__version__.split(".")[:3] if x.isdigit())
KP_HAS_IDEMPOTENCE = "enable_idempotence" in KafkaProducer.DEFAULT_CONFIG

N = 20000
PARTS = 3
RATE = 1500  # records/s in the crash tests: ~13 s of sending, so both kills land mid-stream
KILL_AT = (0.25, 0.6)  # fractions of N acknowledged before each kill -9
OUTAGE_S = 1.0

SEGMENT_RE = re.compile(r"^(\d{20})\.log$")


def value_of(tag, i):
    return b"%s-%06d" % (tag.encode(), i)


def key_of(i):
    return b"key-%d" % (i % 331)  # many keys: the default partitioner spreads them over 3 partitions


def index_of(tag, value):
    m = re.match(rb"^%s-(\d{6})$" % re.escape(tag.encode()), value or b"")
    return int(m.group(1)) if m else None


class Acks:
    """Acknowledgements per record index, from delivery reports / futures
    (which arrive on the clients' own threads)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ok = {}  # i -> (partition, offset)
        self.failed = {}  # i -> error text
        self.twice = []  # (i, first ack, second ack)

    def success(self, i, partition, offset):
        with self.lock:
            if i in self.ok:  # (callbacks run on client threads: recorded, asserted by the test)
                self.twice.append((i, self.ok[i], (partition, offset)))
            self.ok[i] = (partition, offset)

    def failure(self, i, err):
        with self.lock:
            self.failed[i] = str(err)

    def count(self):
        with self.lock:
            return len(self.ok)

    def done(self):
        with self.lock:
            return len(self.ok) + len(self.failed)

    def describe_failures(self, n=5):
        with self.lock:
            items = sorted(self.failed.items())
        return "%d failed deliveries, first: %s" % (len(items), items[:n])


# ------------------------------------------------------------------ log checks


def segment_paths(pdir):
    assert os.path.isdir(pdir), "partition directory %s missing" % pdir
    segs = sorted((int(m.group(1)), os.path.join(pdir, n))
                  for n in os.listdir(pdir) for m in [SEGMENT_RE.match(n)] if m)
    assert segs, "no .log segments in %s: %s" % (pdir, sorted(os.listdir(pdir)))
    return [p for _, p in segs]


def log_batch_headers(pdir):
    """Header fields (producer id / epoch / base sequence ...) of every batch
    in a partition's .log segments, in log order.  Every byte of every
    segment must belong to a complete, CRC-valid batch."""
    out = []
    for path in segment_paths(pdir):
        with open(path, "rb") as f:
            data = f.read()
        try:
            full = wire.decode_batches(data, strict=True)
        except ValueError as e:
            raise AssertionError("%s (%d bytes): %s" % (path, len(data), e))
        heads = wire.decode_batch_headers(data)
        assert len(heads) == len(full), "%s: %d batch headers for %d batches" % (path, len(heads), len(full))
        out.extend(heads)
    return out


def assert_log_written_idempotently(broker, topic, parts, log_ends, single_producer):
    """Proves the producer really was idempotent: every batch on disk carries a
    producer id and epoch >= 0, and per (producer id, epoch) the base sequences
    run from 0 without gap or overlap (a producer-epoch bump restarts them at
    0).  log_ends: {partition: records in the log}.  Returns the (id, epoch)
    pairs seen."""
    seen = set()
    for q in parts:
        heads = log_batch_headers(broker.partition_dir(topic, q))
        anon = [(h.base_offset, h.record_count, h.producer_id, h.producer_epoch, h.base_sequence)
                for h in heads if h.producer_id < 0 or h.producer_epoch < 0]
        assert not anon, ("partition %d: %d of %d batches were written without a producer id, so the "
                          "producer was not idempotent; first (base offset, count, pid, epoch, seq): %s"
                          % (q, len(anon), len(heads), anon[:5]))
        nxt = {}
        for h in heads:
            assert not h.is_transactional and not h.is_control, \
                "partition %d: unexpected transactional/control batch at offset %d" % (q, h.base_offset)
            pe = (h.producer_id, h.producer_epoch)
            want = nxt.get(pe, 0)
            assert h.base_sequence == want, (
                "partition %d: batch at offset %d (%d records) from producer id %d epoch %d has base "
                "sequence %d, want %d (%s)" % (q, h.base_offset, h.record_count, pe[0], pe[1],
                                              h.base_sequence, want,
                                              "a gap" if h.base_sequence > want else "a duplicate/overlap"))
            nxt[pe] = want + h.record_count
            seen.add(pe)
        total = sum(h.record_count for h in heads)
        assert total == log_ends[q], "partition %d: %d records in the .log segments, %d in the log" % (
            q, total, log_ends[q])
        if heads:
            assert heads[-1].last_offset + 1 == log_ends[q], "partition %d: last batch ends at %d, log at %d" % (
                q, heads[-1].last_offset + 1, log_ends[q])
    if single_producer:
        assert len(seen) == 1, "one producer wrote with several (producer id, epoch) pairs: %s" % sorted(seen)
    return seen


def assert_log_not_idempotent(broker, topic, parts):
    """kafka-python 2.0.2's producer has no idempotence: its batches carry no
    producer id (the check above would rightly reject them)."""
    for q in parts:
        heads = log_batch_headers(broker.partition_dir(topic, q))
        assert heads and all(h.producer_id == -1 for h in heads), \
            "partition %d: expected only batches without a producer id, got pids %s" % (
                q, sorted({h.producer_id for h in heads}))


# ------------------------------------------------------------------ stream checks


def check_stream(tag, n, acks, logs, require_all, where):
    """logs: {partition: [(offset, key, value)]} as read by a consumer from
    offset 0 to the end.  Checks: offsets dense; only this test's records,
    with their keys; no record twice anywhere; send order kept per
    partition; every acknowledged record at its acknowledged offset.  With
    require_all, every record was acknowledged and nothing else is there."""
    first_seen = {}
    dups = []
    for q, recs in sorted(logs.items()):
        offs = [o for o, _, _ in recs]
        assert offs == list(range(len(offs))), "%s: partition %d offsets are not 0..%d: %s..." % (
            where, q, len(offs) - 1, offs[:20])
        for o, k, v in recs:
            i = index_of(tag, v)
            assert i is not None and 0 <= i < n, "%s: partition %d offset %d holds a foreign value %r" % (
                where, q, o, v)
            assert k == key_of(i), "%s: partition %d offset %d (record %d): key %r, want %r" % (
                where, q, o, i, k, key_of(i))
            if i in first_seen:
                dups.append((i, first_seen[i], (q, o)))
            else:
                first_seen[i] = (q, o)
    assert not dups, "%s: %d records are in the log more than once (record, first (partition, offset), " \
                     "again at): %s" % (where, len(dups), dups[:10])
    for q, recs in sorted(logs.items()):
        prev = None
        for o, _, v in recs:
            i = index_of(tag, v)
            assert prev is None or i > prev[0], \
                "%s: partition %d out of send order: record %d at offset %d follows record %d at offset %d" % (
                    where, q, i, o, prev[0], prev[1])
            prev = (i, o)

    with acks.lock:
        ok = dict(acks.ok)
        twice = list(acks.twice)
    assert not twice, "%s: %d records acknowledged twice (record, first, second): %s" % (
        where, len(twice), twice[:10])
    wrong = [(i, ok[i], first_seen.get(i)) for i in sorted(ok) if first_seen.get(i) != ok[i]]
    assert not wrong, ("%s: %d acknowledged records are not at their acknowledged (partition, offset); "
                       "(record, acknowledged at, found at): %s" % (where, len(wrong), wrong[:10]))
    if require_all:
        assert len(ok) == n, "%s: %d of %d records acknowledged; %s" % (where, len(ok), n, acks.describe_failures())
        assert len(first_seen) == n, "%s: %d records in the log, want %d" % (where, len(first_seen), n)
    used = {q for q, _ in ok.values()}
    assert len(used) == PARTS, "%s: the keys went to partitions %s only" % (where, sorted(used))


def wait_acks(acks, target, what, alive, timeout=90):
    deadline = time.monotonic() + timeout
    while acks.count() < target:
        if time.monotonic() > deadline:
            pytest.fail("%s: only %d records acknowledged in %ds (waiting for %d); %s"
                        % (what, acks.count(), timeout, target, acks.describe_failures()), pytrace=False)
        if not alive():
            pytest.fail("%s: the producer stopped after %d acknowledgements; %s"
                        % (what, acks.count(), acks.describe_failures()), pytrace=False)
        time.sleep(0.02)


def kill_twice_while(broker, acks, n, alive):
    """kill -9 the broker when KILL_AT of n are acknowledged, restart it each
    time on the same port and data dir.  Returns the ack counts at the kills."""
    kills = []
    for frac in KILL_AT:
        wait_acks(acks, int(n * frac), "before kill -9 #%d" % (len(kills) + 1), alive)
        at = acks.count()
        assert acks.done() < n, "the producer was done before kill -9 #%d: not mid-stream" % (len(kills) + 1)
        broker.kill9()
        time.sleep(OUTAGE_S)  # the producer sees refused connections and retries
        broker.start()
        kills.append(at)
    return kills


# ------------------------------------------------------------------ confluent-kafka


def ck_idempotent_producer(bootstrap, **extra):
    conf = {"bootstrap.servers": bootstrap, "enable.idempotence": True}
    conf.update(extra)
    return Producer(conf)


def ck_on_delivery(tag, acks):
    def cb(err, msg):
        i = index_of(tag, msg.value())
        if err is None:
            acks.success(i, msg.partition(), msg.offset())
        else:
            acks.failure(i, err)
    return cb


def ck_read_all(bootstrap, topic, acks):
    want = {}
    with acks.lock:
        for q, _ in acks.ok.values():
            want[q] = want.get(q, 0) + 1
    got = ck_consume(bootstrap, topic, {q: 0 for q in range(PARTS)},
                     expected_counts=want, timeout=120)
    return {q: [(m.offset(), m.key(), m.value()) for m in msgs] for q, msgs in got.items()}


@pytest.mark.timeout(240)
def test_confluent_idempotent_round_trip(broker):
    """confluent-kafka with enable.idempotence=True: 20,000 keyed records,
    read back once each, in order, at the offsets the delivery reports gave."""
    tag = "ckr"
    topic = unique_topic("ck-idem")
    ck_create_topic(broker.bootstrap, topic, PARTS)
    acks = Acks()
    p = ck_idempotent_producer(broker.bootstrap)
    cb = ck_on_delivery(tag, acks)
    for i in range(N):
        while True:
            try:
                p.produce(topic, key=key_of(i), value=value_of(tag, i), on_delivery=cb)
                break
            except BufferError:
                p.poll(0.05)
        if i % 500 == 0:
            p.poll(0)
    left = p.flush(120)
    assert left == 0, "%d records still undelivered after 120 s; %s" % (left, acks.describe_failures())
    assert not acks.failed, acks.describe_failures()
    logs = ck_read_all(broker.bootstrap, topic, acks)
    check_stream(tag, N, acks, logs, require_all=True, where="confluent-kafka %s round trip" % (CK_VERSION,))
    assert_log_written_idempotently(broker, topic, range(PARTS), {q: len(v) for q, v in logs.items()},
                                    single_producer=True)


@pytest.mark.timeout(360)
def test_confluent_idempotent_survives_two_kill9(broker):
    """kill -9 twice while the idempotent confluent producer streams 20,000
    keyed records; the producer keeps going after each restart.  Every record
    is delivered, present exactly once at its reported offset, in order, and
    the producer's own retries left no duplicate in the log."""
    tag = "ckc"
    topic = unique_topic("ck-idem-kill")
    ck_create_topic(broker.bootstrap, topic, PARTS)
    acks = Acks()
    # Generous delivery timeout (librdkafka's default is 300 s; fail sooner
    # than that); nothing idempotence-related is set besides enabling it.
    p = ck_idempotent_producer(broker.bootstrap, **{"message.timeout.ms": 120000})
    cb = ck_on_delivery(tag, acks)
    errors = []

    def pump():
        try:
            t0 = time.monotonic()
            for i in range(N):
                while True:
                    try:
                        p.produce(topic, key=key_of(i), value=value_of(tag, i), on_delivery=cb)
                        break
                    except BufferError:
                        p.poll(0.05)
                ahead = t0 + (i + 1) / RATE - time.monotonic()
                p.poll(ahead if ahead > 0 else 0)
        except Exception as e:  # reported by the main thread
            errors.append(repr(e))

    th = threading.Thread(target=pump, daemon=True)
    th.start()
    try:
        kills = kill_twice_while(broker, acks, N, alive=lambda: th.is_alive() or acks.done() < N)
    finally:
        th.join(60)
    assert not th.is_alive() and not errors, "producing thread: %s" % errors
    left = p.flush(150)
    where = "confluent-kafka %s, kill -9 after %s acknowledgements" % (CK_VERSION, " and ".join(map(str, kills)))
    assert left == 0, "%s: %d records still undelivered after 150 s; %s" % (where, left, acks.describe_failures())
    assert not acks.failed, "%s: %s" % (where, acks.describe_failures())
    logs = ck_read_all(broker.bootstrap, topic, acks)
    check_stream(tag, N, acks, logs, require_all=True, where=where)
    assert_log_written_idempotently(broker, topic, range(PARTS), {q: len(v) for q, v in logs.items()},
                                    single_producer=False)


# ------------------------------------------------------------------ kafka-python


def kp_default_producer(bootstrap):
    """The library's default producer, acks='all' (kafka-python 3's default
    anyway; kafka-python 2.0.2 defaults to acks=1)."""
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all", client_id="compat-kp-idem")
    if KP_HAS_IDEMPOTENCE:
        assert p.config["enable_idempotence"] is True, \
            "kafka-python %s: the default producer is not idempotent (config %r)" % (
                kafka.__version__, p.config["enable_idempotence"])
    return p


def kp_send(p, topic, tag, i, acks):
    fut = p.send(topic, key=key_of(i), value=value_of(tag, i))
    fut.add_callback(lambda md: acks.success(i, md.partition, md.offset))
    fut.add_errback(lambda e: acks.failure(i, "%s: %s" % (type(e).__name__, e)))
    return fut


def kp_read_all(bootstrap, topic, timeout=120):
    """Every record of every partition from offset 0 to the end offsets."""
    c = kp_consumer(bootstrap)
    try:
        tps = [TopicPartition(topic, q) for q in range(PARTS)]
        c.assign(tps)
        for tp in tps:
            c.seek(tp, 0)
        ends = c.end_offsets(tps)
        got = {q: [] for q in range(PARTS)}
        deadline = time.monotonic() + timeout
        while any(c.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise AssertionError("kafka-python consumer timed out: positions %s, end offsets %s" % (
                    {tp.partition: c.position(tp) for tp in tps}, {tp.partition: e for tp, e in ends.items()}))
            for tp, recs in c.poll(timeout_ms=500).items():
                got[tp.partition].extend((r.offset, r.key, r.value) for r in recs)
        return got
    finally:
        c.close()


@pytest.mark.timeout(300)
def test_kafka_python_default_producer_round_trip(broker):
    """kafka-python's default producer with acks='all' (idempotent on
    kafka-python 3, plain on 2.0.2): 20,000 keyed records read back once
    each, in order per partition, at the offsets the futures gave."""
    tag = "kpr"
    topic = unique_topic("kp-idem")
    ck_create_topic(broker.bootstrap, topic, PARTS)
    acks = Acks()
    p = kp_default_producer(broker.bootstrap)
    try:
        for i in range(N):
            kp_send(p, topic, tag, i, acks)
        p.flush(timeout=120)
    finally:
        p.close(timeout=10)
    where = "kafka-python %s round trip" % kafka.__version__
    assert acks.done() == N, "%s: %d of %d sends completed" % (where, acks.done(), N)
    assert not acks.failed, "%s: %s" % (where, acks.describe_failures())
    logs = kp_read_all(broker.bootstrap, topic)
    check_stream(tag, N, acks, logs, require_all=True, where=where)
    if KP_HAS_IDEMPOTENCE:
        assert_log_written_idempotently(broker, topic, range(PARTS), {q: len(v) for q, v in logs.items()},
                                        single_producer=True)
    else:
        assert_log_not_idempotent(broker, topic, range(PARTS))


@pytest.mark.timeout(360)
@pytest.mark.skipif(not KP_HAS_IDEMPOTENCE,
                    reason="kafka-python %s has no idempotent producer (no enable_idempotence); "
                           "a duplicate-free log across kill -9 needs one" % kafka.__version__)
def test_kafka_python_default_producer_survives_two_kill9(broker):
    """kill -9 twice while kafka-python's default (idempotent) producer
    streams 20,000 keyed records.  Every acknowledged record is present
    exactly once at its offset, in order; nothing is in the log twice; the
    producer keeps going after the restarts (default delivery_timeout_ms,
    120 s, is far longer than the outages)."""
    tag = "kpc"
    topic = unique_topic("kp-idem-kill")
    ck_create_topic(broker.bootstrap, topic, PARTS)
    acks = Acks()
    p = kp_default_producer(broker.bootstrap)
    errors = []

    def pump():
        try:
            t0 = time.monotonic()
            for i in range(N):
                kp_send(p, topic, tag, i, acks)
                ahead = t0 + (i + 1) / RATE - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        except Exception as e:  # reported by the main thread
            errors.append("%s: %s" % (type(e).__name__, e))

    th = threading.Thread(target=pump, daemon=True)
    th.start()
    try:
        try:
            kills = kill_twice_while(broker, acks, N, alive=lambda: th.is_alive() or acks.done() < N)
        finally:
            th.join(60)
        assert not th.is_alive() and not errors, "sending thread: %s" % errors
        p.flush(timeout=150)
    finally:
        p.close(timeout=10)
    where = "kafka-python %s, kill -9 after %s acknowledgements" % (kafka.__version__, " and ".join(map(str, kills)))
    assert acks.done() == N, "%s: %d of %d sends completed" % (where, acks.done(), N)
    assert not acks.failed, "%s: %s" % (where, acks.describe_failures())
    logs = kp_read_all(broker.bootstrap, topic)
    check_stream(tag, N, acks, logs, require_all=True, where=where)
    assert_log_written_idempotently(broker, topic, range(PARTS), {q: len(v) for q, v in logs.items()},
                                    single_producer=False)
