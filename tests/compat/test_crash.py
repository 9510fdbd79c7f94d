"""Crash safety: kill -9 mid-stream, torn segment tails."""

import os
import random
import re
import threading
import time

import pytest

import wire
from wire import Record, decode_batches, encode_batch
from clients import ck_consume, ck_create_topic, ck_produce, ck_producer
from conftest import unique_topic

SEGMENT_RE = re.compile(r"^(\d{20})\.log$")


def segment_files(pdir):
    """Sorted [(base_offset, path)] of the .log segments in a partition dir."""
    assert os.path.isdir(pdir), "partition directory %s missing; data dir has %s" % (
        pdir, sorted(os.listdir(os.path.dirname(pdir))) if os.path.isdir(os.path.dirname(pdir)) else "nothing")
    segs = []
    for name in os.listdir(pdir):
        m = SEGMENT_RE.match(name)
        if m:
            segs.append((int(m.group(1)), os.path.join(pdir, name)))
        elif name.endswith(".log"):
            raise AssertionError("segment file %s is not named <20-digit base offset>.log" % name)
    assert segs, "no .log segments in %s: %s" % (pdir, sorted(os.listdir(pdir)))
    return sorted(segs)


def assert_kafka_layout(pdir):
    segs = segment_files(pdir)
    names = set(os.listdir(pdir))
    for base, path in segs:
        stem = "%020d" % base
        assert stem + ".index" in names, "%s.index missing in %s: %s" % (stem, pdir, sorted(names))
        assert stem + ".timeindex" in names, "%s.timeindex missing in %s: %s" % (stem, pdir, sorted(names))
    return segs


def read_segments_strict(pdir):
    """Parse every .log segment; every byte must belong to a valid batch."""
    out = []
    for base, path in segment_files(pdir):
        with open(path, "rb") as f:
            data = f.read()
        try:
            batches = decode_batches(data, strict=True)
        except ValueError as e:
            raise AssertionError("%s (%d bytes): %s" % (path, len(data), e))
        if batches:
            assert batches[0].base_offset == base, "%s starts at offset %d" % (path, batches[0].base_offset)
        for b in batches:
            out.extend(b.records)
    return out


def consume_all(bootstrap, topic, partitions, timeout=60):
    got = ck_consume(bootstrap, topic, {p: 0 for p in partitions}, timeout=timeout)
    return {p: [(m.offset(), m.value()) for m in msgs] for p, msgs in got.items()}


@pytest.mark.parametrize("run", [0, 1, 2])
def test_kill9_mid_stream_keeps_acked_records(broker, run):
    rng = random.Random(4242 + run)
    parts = [0, 1, 2]
    topic = unique_topic("crash%d" % run)
    ck_create_topic(broker.bootstrap, topic, len(parts))

    acked = []  # (value, partition, offset)
    failed = [0]
    lock = threading.Lock()

    def on_delivery(err, msg):
        if err is None:
            with lock:
                acked.append((msg.value(), msg.partition(), msg.offset()))
        else:
            failed[0] += 1

    p = ck_producer(broker.bootstrap, acks="all", **{
        "linger.ms": rng.choice([0, 1, 5]),
        "batch.num.messages": rng.choice([1, 10, 100]),
        "message.timeout.ms": 8000,
        "retries": 0,
        "reconnect.backoff.max.ms": 200,
    })
    stop = threading.Event()
    produced = [0]

    def pump():
        i = 0
        while not stop.is_set():
            try:
                p.produce(topic, value=b"crash-%d-%07d" % (run, i), key=b"%d" % i,
                          partition=parts[i % len(parts)], on_delivery=on_delivery)
                i += 1
            except BufferError:
                p.poll(0.01)
                continue
            p.poll(0)
            if i % 50 == 0:
                time.sleep(0.001)
        produced[0] = i

    th = threading.Thread(target=pump, daemon=True)
    th.start()
    try:
        # Wait for the stream to be flowing, then a random extra delay.
        deadline = time.monotonic() + 20
        while not acked and time.monotonic() < deadline:
            time.sleep(0.01)
        assert acked, "no acknowledgements within 20s"
        time.sleep(rng.uniform(0.2, 1.5))
        with lock:
            n_before_kill = len(acked)
        broker.kill9()
        time.sleep(0.3)
    finally:
        stop.set()
        th.join(10)
    assert not th.is_alive()
    p.purge(in_queue=True, in_flight=True)
    p.flush(10)  # serve the remaining delivery reports (successes already received are kept)
    with lock:
        acked_final = list(acked)
    assert len(acked_final) >= n_before_kill

    broker.start()
    # Every partition directory has Kafka's layout.
    for q in parts:
        assert_kafka_layout(broker.partition_dir(topic, q))
    logs = consume_all(broker.bootstrap, topic, parts)
    for q in parts:
        offs = [o for o, _ in logs[q]]
        assert offs == list(range(len(offs))), "partition %d: offsets not dense after recovery: %s" % (q, offs[:50])
    for q in parts:
        # Only records this producer sent, in the order it sent them (retries=0: no duplicates).
        idx = []
        for o, v in logs[q]:
            m = re.match(rb"^crash-%d-(\d{7})$" % run, v or b"")
            assert m, "partition %d offset %d holds a foreign/garbled value %r" % (q, o, v)
            idx.append(int(m.group(1)))
        assert idx == sorted(set(idx)), "partition %d: records reordered or duplicated" % q
        assert all(i % len(parts) == q for i in idx), "partition %d holds records of another partition" % q
    by_pos = {(q, o): v for q in parts for o, v in logs[q]}
    missing = [(v, q, o) for v, q, o in acked_final if by_pos.get((q, o)) != v]
    assert not missing, "%d of %d acknowledged records lost or moved after kill -9, e.g. %s (found there: %s)" % (
        len(missing), len(acked_final), missing[:5], [by_pos.get((q, o)) for _, q, o in missing[:5]])

    # The broker keeps appending at the recovered end.
    ends = {q: len(logs[q]) for q in parts}
    reports = ck_produce(ck_producer(broker.bootstrap), topic,
                         [{"value": b"after-%d" % q, "partition": q} for q in parts])
    for r, q in zip(reports, parts):
        assert r.err is None and r.offset == ends[q], (q, r.err, r.offset, ends[q])
    print("run %d: produced %d, acked %d (before kill %d), failed %d, log sizes %s"
          % (run, produced[0], len(acked_final), n_before_kill, failed[0], ends))


def _produce_batches(broker, topic, n_batches, per_batch):
    """Write n_batches separate batches via raw Produce v3; returns values in order."""
    values = []
    with wire.Conn.to(broker.bootstrap) as c:
        for b in range(n_batches):
            vals = [b"torn-%03d-%02d" % (b, i) for i in range(per_batch)]
            resp = c.produce(topic, 0, encode_batch([Record(value=v, key=b"k") for v in vals]))
            assert resp["error"] == 0 and resp["base_offset"] == len(values), resp
            values.extend(vals)
    return values


@pytest.mark.parametrize("damage", ["random_bytes", "partial_batch", "zero_fill", "partial_header",
                                    "corrupt_last_batch"])
def test_torn_tail_is_truncated(broker, damage):
    topic = unique_topic("torn")
    ck_create_topic(broker.bootstrap, topic, 1)
    values = _produce_batches(broker, topic, n_batches=10, per_batch=5)
    broker.kill9()

    pdir = broker.partition_dir(topic, 0)
    segs = assert_kafka_layout(pdir)
    assert segs[0][0] == 0
    recs = read_segments_strict(pdir)
    assert [r.value for r in recs] == values and [r.offset for r in recs] == list(range(len(values)))

    last = segs[-1][1]
    size_before = os.path.getsize(last)
    surviving = values
    with open(last, "r+b") as f:
        if damage == "random_bytes":
            f.seek(0, 2)
            f.write(random.Random(7).randbytes(137))
        elif damage == "partial_batch":  # the beginning of a real next batch (a torn write)
            nxt = encode_batch([Record(value=b"never-acked-%d" % i) for i in range(5)], base_offset=len(values))
            f.seek(0, 2)
            f.write(nxt[:len(nxt) - 9])
        elif damage == "partial_header":
            nxt = encode_batch([Record(value=b"x")], base_offset=len(values))
            f.seek(0, 2)
            f.write(nxt[:7])
        elif damage == "zero_fill":  # file extended but never written
            f.seek(0, 2)
            f.write(b"\0" * 8192)
        elif damage == "corrupt_last_batch":  # bit rot inside the last batch: its CRC no longer matches
            data = f.read()
            batches = decode_batches(data, strict=True)
            lastb = batches[-1]
            start = size_before - lastb.size
            f.seek(start + lastb.size - 3)
            byte = f.read(1)
            f.seek(start + lastb.size - 3)
            f.write(bytes([byte[0] ^ 0xFF]))
            surviving = values[:lastb.base_offset]
    broker.start()

    logs = consume_all(broker.bootstrap, topic, [0])
    assert [v for _, v in logs[0]] == surviving, "records after recovery differ (got %d, want %d)" % (
        len(logs[0]), len(surviving))
    assert [o for o, _ in logs[0]] == list(range(len(surviving)))
    with wire.Conn.to(broker.bootstrap) as c:
        assert c.list_offsets(topic, 0, -1)["offset"] == len(surviving)

    reports = ck_produce(ck_producer(broker.bootstrap), topic, [{"value": b"after-recovery", "partition": 0}])
    assert reports[0].err is None and reports[0].offset == len(surviving), (reports[0].err, reports[0].offset)
    logs = consume_all(broker.bootstrap, topic, [0])
    assert [v for _, v in logs[0]] == surviving + [b"after-recovery"]

    rc, clean = broker.stop()
    assert clean, "broker did not exit within timeout after SIGTERM"
    recs = read_segments_strict(pdir)  # no garbage left anywhere in the segment files
    assert [r.value for r in recs] == surviving + [b"after-recovery"]
    assert [r.offset for r in recs] == list(range(len(surviving) + 1))


@pytest.mark.parametrize("op", ["create", "create_partitions", "delete"])
def test_kill9_right_after_admin_ack(broker, op):
    """Topic metadata changes are durable once acknowledged."""
    from confluent_kafka.admin import NewPartitions, NewTopic
    from clients import ck_admin
    admin = ck_admin(broker.bootstrap)
    keep = unique_topic("adm-keep")
    ck_create_topic(admin, keep, 2)
    t = unique_topic("adm-" + op)
    if op == "create":
        admin.create_topics([NewTopic(t, num_partitions=3, replication_factor=1)],
                            request_timeout=15)[t].result(timeout=15)
        want = 3
    elif op == "create_partitions":
        ck_create_topic(admin, t, 1)
        admin.create_partitions([NewPartitions(t, 4)], request_timeout=15)[t].result(timeout=15)
        want = 4
    else:
        ck_create_topic(admin, t, 2)
        ck_produce(ck_producer(broker.bootstrap), t, [{"value": b"x", "partition": 1}])
        admin.delete_topics([t], request_timeout=15)[t].result(timeout=15)
        want = None
    broker.kill9()  # immediately after the acknowledgement
    broker.start()
    admin = ck_admin(broker.bootstrap)
    topics = admin.list_topics(timeout=10).topics
    assert keep in topics and len(topics[keep].partitions) == 2
    if want is None:
        assert t not in topics, "topic deleted (acknowledged) before kill -9 is back after restart"
    else:
        assert t in topics, "topic %s (acknowledged) lost after kill -9" % t
        assert len(topics[t].partitions) == want, (len(topics[t].partitions), want)
        for q in range(want):
            assert os.path.isdir(broker.partition_dir(t, q))
        reports = ck_produce(ck_producer(broker.bootstrap), t, [{"value": b"v", "partition": want - 1}])
        assert reports[0].err is None and reports[0].offset == 0


@pytest.mark.parametrize("damage", ["delete", "garbage", "truncate_zero"])
def test_damaged_index_files_are_rebuilt(broker_factory, damage):
    broker = broker_factory(**{"log.segment.bytes": 8192})
    topic = unique_topic("idx")
    ck_create_topic(broker.bootstrap, topic, 1)
    base_ts = int(time.time() * 1000) - 100_000
    values = []
    with wire.Conn.to(broker.bootstrap) as c:
        for i in range(300):  # one record per batch; timestamps base_ts + 10*i
            v = b"idx-%04d-" % i + b"z" * 60
            resp = c.produce(topic, 0, encode_batch([Record(value=v, timestamp=base_ts + 10 * i)],
                                                    base_timestamp=base_ts + 10 * i))
            assert resp["error"] == 0 and resp["base_offset"] == i
            values.append(v)
    broker.kill9()
    pdir = broker.partition_dir(topic, 0)
    segs = assert_kafka_layout(pdir)
    assert len(segs) >= 3, "expected several segments with log.segment.bytes=8192"
    rng = random.Random(99)
    for name in os.listdir(pdir):
        if not (name.endswith(".index") or name.endswith(".timeindex")):
            continue
        path = os.path.join(pdir, name)
        if damage == "delete":
            os.remove(path)
        elif damage == "garbage":
            with open(path, "r+b") as f:
                f.seek(0)
                f.write(rng.randbytes(max(64, min(4096, os.path.getsize(path) or 64))))
        else:
            open(path, "wb").close()
    broker.start()
    with wire.Conn.to(broker.bootstrap) as c:
        for start in (0, 1, 57, 150, 299):
            recs, hw = c.fetch_all(topic, 0, start=start)
            assert hw == 300
            assert [r.offset for r in recs] == list(range(start, 300)), "fetch from %d after index damage" % start
            assert [r.value for r in recs] == values[start:]
        for i in (0, 33, 150, 299):
            lo = c.list_offsets(topic, 0, base_ts + 10 * i)
            assert lo["error"] == 0 and lo["offset"] == i, (i, lo)
            lo = c.list_offsets(topic, 0, base_ts + 10 * i - 5)
            assert lo["error"] == 0 and lo["offset"] == i, (i, lo)
        assert c.list_offsets(topic, 0, base_ts + 10 * 300)["offset"] == -1
        resp = c.produce(topic, 0, encode_batch([Record(value=b"after")]))
        assert resp["error"] == 0 and resp["base_offset"] == 300
