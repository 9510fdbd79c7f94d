"""Log compaction (cleanup.policy=compact and compact,delete), as a Kafka user sees it.

The cleaner never touches the active segment, so every topic here rolls segments fast
(segment.ms=100) and the tests keep appending a "filler" key while they wait: that retires the
segment holding the records of interest and gives the cleaner new dirty data for later passes.
What is checked, by reading the partition from the beginning with confluent-kafka (and
kafka-python where said):
- each key ends with exactly one record, the latest acknowledged one, at the offset its delivery
  report gave; every record read is one that was acknowledged at that very offset; order kept;
- a tombstone (null value) stays while delete.retention.ms lasts (here 86400000) and goes with
  every older record of its key when delete.retention.ms=0;
- an idempotent producer (kafka-python 3's default) whose batches were all compacted away keeps
  producing after a restart, and a new one produces too;
- time retention does not delete from a compact-only topic; it does from a compact,delete one;
- kill -9 while the cleaner works on a bigger partition loses no key's latest value;
- kafka-python's tombstones stay for delete.retention.ms, then go with their keys;
- min.compaction.lag.ms keeps young records from the cleaner, min.cleanable.dirty.ratio keeps
  it off a log that is mostly clean, and changes at runtime (the ratio lowered, cleanup.policy
  from delete to compact) take effect.
Each waits at most COMPACTION_WAIT_S seconds for the cleaner.
"""
from __future__ import annotations

import os
import time

import pytest
from confluent_kafka import TopicPartition

import wire
from clients import ck_admin, ck_consume, ck_consumer, ck_create_topic, ck_produce, ck_producer, ck_watermarks
from conftest import unique_topic

COMPACTION_WAIT_S = 25
# The cleaner looks for work every 200 ms; retention is checked every 200 ms.
BROKER = {"log.cleaner.backoff.ms": "200", "log.retention.check.interval.ms": "200"}
FILLER = b"filler"


def compacted_topic(**overrides):
    """Topic configs: compacted, segments rolling 100 ms after they start, cleaned as soon as
    anything is dirty."""
    c = {"cleanup.policy": "compact", "segment.ms": "100", "min.cleanable.dirty.ratio": "0.01"}
    c.update({k.replace("_", "."): str(v) for k, v in overrides.items()})
    return c


class Acked:
    """What the broker acknowledged on one partition: offset -> (key, value), and each key's
    latest offset."""

    def __init__(self):
        self.at = {}
        self.latest = {}

    def add(self, offset, key, value):
        assert offset is not None and offset >= 0, "acknowledged without an offset: %r %r" % (key, value)
        assert offset not in self.at, "offset %d acknowledged twice: %r then %r" % (
            offset, self.at[offset], (key, value))
        self.at[offset] = (key, value)
        if offset > self.latest.get(key, -1):
            self.latest[key] = offset

    def latest_value(self, key):
        return self.at[self.latest[key]][1]


def produce(producer, topic, acked, pairs, timestamp=None):
    """confluent-kafka: (key, value) pairs to partition 0, flushed; offsets from the delivery
    reports go into `acked`. `timestamp` (ms) sets every record's CreateTime."""
    items = [{"key": k, "value": v, "partition": 0, "timestamp": timestamp} for k, v in pairs]
    reports = ck_produce(producer, topic, items, flush_timeout=30)
    for (k, v), d in zip(pairs, reports):
        assert d.err is None, "produce %r=%r to %s failed: %s" % (k, v, topic, d.err)
        acked.add(d.offset, k, v)


def value(key, version, pad=40):
    v = b"%s@%03d:" % (key, version)
    return v + b"." * max(0, pad - len(v))


def read_all(bootstrap, topic):
    """Every record of partition 0 from its beginning to the high watermark, as
    [(offset, key, value)] (confluent-kafka)."""
    got = ck_consume(bootstrap, topic, {0: -2}, timeout=20)  # -2: OFFSET_BEGINNING
    return [(m.offset(), m.key(), m.value()) for m in got[0]]


def by_key(records):
    out = {}
    for off, k, v in records:
        out.setdefault(k, []).append((off, v))
    return out


def check_read(records, acked, complete=True, where=""):
    """What any correct log shows at any time, compacted or not: offsets strictly increasing,
    every record exactly as acknowledged at its offset, and (`complete`: no retention took
    anything) each key's latest acknowledged record present as that key's last record, unless
    it is a tombstone that went, and then with every older record of its key."""
    offsets = [o for o, _, _ in records]
    bad = [(a, b) for a, b in zip(offsets, offsets[1:]) if b <= a]
    assert not bad, "%soffsets not strictly increasing: %s" % (where, bad[:5])
    for off, k, v in records:
        assert off in acked.at, "%sread %r=%r at offset %d, which no delivery report gave" % (
            where, k, (v or b"")[:40], off)
        assert acked.at[off] == (k, v), "%soffset %d reads %r, but %r was acknowledged there" % (
            where, off, (k, v), acked.at[off])
    if not complete:
        return
    keys = by_key(records)
    for k, off in sorted(acked.latest.items()):
        want = acked.at[off][1]
        have = keys.get(k)
        if want is None and not have:
            continue  # a tombstone the cleaner removed, and with it its key
        assert have, "%skey %r lost: its latest acknowledged record (offset %d, %r) is not read back" % (
            where, k, off, want)
        assert have[-1] == (off, want), (
            "%skey %r: last record read is %r at offset %d, but the latest acknowledged is %r at offset %d"
            % (where, k, have[-1][1], have[-1][0], want, off))


def segment_listing(broker, topic):
    d = broker.partition_dir(topic, 0)
    try:
        names = sorted(os.listdir(d))
    except OSError as e:
        return "(%s)" % e
    logs = [n for n in names if n.endswith(".log")]
    return "%d .log files (%s%s), other files: %s" % (
        len(logs), ", ".join(logs[:4]), ", ..." if len(logs) > 4 else "",
        sorted({n.split(".", 1)[-1] for n in names if not n.endswith(".log")}))


def duplicates(records, keys):
    """Keys of `keys` read more than once, with how often."""
    counts = {}
    for _, k, _ in records:
        if k in keys:
            counts[k] = counts.get(k, 0) + 1
    return {k: n for k, n in counts.items() if n > 1}


def compacted(records, live, deleted, tombstones_kept=False):
    """Why `records` is not yet the fully compacted log of `live` keys and `deleted` keys
    (tombstoned), or None if it is: every live key once, every deleted key gone (or, with
    `tombstones_kept`, there once as its tombstone)."""
    counts = {}
    for _, k, _ in records:
        counts[k] = counts.get(k, 0) + 1
    dup = {k: n for k, n in counts.items() if k in live and n > 1}
    problems = []
    if dup:
        problems.append("%d of %d keys still have older versions (e.g. %s)" % (
            len(dup), len(live), sorted(dup.items())[:3]))
    if tombstones_kept:
        dup_del = {k: counts.get(k, 0) for k in deleted if counts.get(k, 0) != 1}
        if dup_del:
            problems.append("%d of %d deleted keys not read exactly once (as their tombstone): %s" % (
                len(dup_del), len(deleted), sorted(dup_del.items())[:3]))
    else:
        still = {k: counts[k] for k in deleted if k in counts}
        if still:
            problems.append("%d of %d deleted keys still read, their tombstones not yet gone (e.g. %s)" % (
                len(still), len(deleted), sorted(still.items())[:3]))
    return "; ".join(problems) or None


def wait_compacted(broker, topics, producer, timeout=COMPACTION_WAIT_S, tick=0.15, min_rounds=1):
    """topics: {topic: (acked, why_not)} with why_not(records) -> str or None. Appends one
    filler record to every topic per round (so no record of interest stays in the active
    segment and the cleaner has new work) and reads each topic whole, checking it every time,
    until every why_not says None (and at least `min_rounds` rounds). Returns {topic: records}."""
    deadline = time.monotonic() + timeout
    filler = 0
    while True:
        time.sleep(tick)
        for t, (acked, _) in topics.items():
            produce(producer, t, acked, [(FILLER, b"filler-%05d" % filler)])
        filler += 1
        reads = {}
        pending = {}
        for t, (acked, why_not) in topics.items():
            reads[t] = read_all(broker.bootstrap, t)
            check_read(reads[t], acked, where="%s: " % t)
            reason = why_not(reads[t])
            if reason:
                pending[t] = reason
        if not pending and filler >= min_rounds:
            return reads
        if time.monotonic() > deadline:
            raise AssertionError("log not compacted after %ds (%d filler rounds): %s" % (
                timeout, filler, "\n".join(
                    "%s: %d records read of %d acknowledged: %s; log: %s" % (
                        t, len(reads[t]), len(topics[t][0].at), r, segment_listing(broker, t))
                    for t, r in pending.items())))


# ------------------------------------------------------------------------------- tests


def test_compaction_keeps_each_keys_latest_record_at_its_offset(broker_factory):
    """confluent-kafka's default producer: 50 keys x 20 versions in 20 rounds (segments roll
    between them), then tombstones for 10 keys; with delete.retention.ms=0 the cleaner leaves
    one record for each of the 40 other keys, the latest, at its acknowledged offset, and
    nothing of the 10 deleted keys."""
    broker = broker_factory(**BROKER)
    topic = unique_topic("compact")
    ck_create_topic(broker.bootstrap, topic, 1, config=compacted_topic(delete_retention_ms=0))
    p = ck_producer(broker.bootstrap)
    acked = Acked()
    keys = [b"key-%02d" % i for i in range(50)]
    for version in range(20):
        produce(p, topic, acked, [(k, value(k, version)) for k in keys])
        time.sleep(0.12)
    deleted, live = set(keys[:10]), set(keys[10:])
    produce(p, topic, acked, [(k, None) for k in sorted(deleted)])
    produced = len(acked.at)
    assert sorted(acked.at) == list(range(produced)), "one partition, offsets from 0 without gaps"

    reads = wait_compacted(broker, {topic: (acked, lambda r: compacted(r, live, deleted))}, p)
    records = reads[topic]
    keys_read = by_key(records)
    for k in sorted(live):
        assert keys_read[k] == [(acked.latest[k], value(k, 19))], (k, keys_read[k])
    assert not deleted & set(keys_read), sorted(deleted & set(keys_read))
    assert len(records) - len(keys_read.get(FILLER, ())) == 40
    # Offsets kept: the survivors still read at the very offsets produced in round 19.
    assert [o for o, k, _ in records if k != FILLER] == sorted(acked.latest[k] for k in live)
    low, high = ck_watermarks(broker.bootstrap, topic)
    assert low == 0, "compaction does not move the log start offset (retention does): %d" % low
    assert high == max(acked.at) + 1, (high, max(acked.at))


def kp_default_producer(bootstrap):
    """kafka-python's producer with the library's defaults (idempotent in kafka-python 3; plain
    acks=1 in 2.0.2)."""
    import kafka
    from kafka import KafkaProducer
    p = KafkaProducer(bootstrap_servers=bootstrap, client_id="compat-kp-compact")
    if int(kafka.__version__.split(".")[0]) >= 3:
        assert p.config["enable_idempotence"] is True, p.config["enable_idempotence"]
    return p


def kp_produce(producer, topic, acked, pairs, one_batch_each=False):
    """kafka-python: (key, value) pairs to partition 0; offsets from the futures. With
    `one_batch_each`, each record is sent and acknowledged alone."""
    futs = []
    for k, v in pairs:
        futs.append(producer.send(topic, key=k, value=v, partition=0))
        if one_batch_each:
            producer.flush(timeout=30)
    producer.flush(timeout=30)
    for (k, v), f in zip(pairs, futs):
        try:
            md = f.get(timeout=30)
        except Exception as e:
            raise AssertionError("kafka-python produce %r=%r to %s failed: %s: %s" % (
                k, v, topic, type(e).__name__, e))
        acked.add(md.offset, k, v)


def kp_producer_id(producer):
    """(producer id, epoch) of kafka-python 3's idempotent producer, or None."""
    tm = getattr(producer, "_transaction_manager", None)
    pe = getattr(tm, "producer_id_and_epoch", None)
    if pe is None:
        return None
    return (pe.producer_id, pe.epoch)


def kp_read_all(bootstrap, topic, timeout=20):
    """Partition 0 from its log start to its end offset with kafka-python's consumer, as
    [(offset, key, value)]."""
    from kafka import TopicPartition as KpTopicPartition
    from clients import kp_consumer
    c = kp_consumer(bootstrap)
    try:
        tp = KpTopicPartition(topic, 0)
        c.assign([tp])
        c.seek_to_beginning(tp)
        end = c.end_offsets([tp])[tp]
        got = []
        deadline = time.monotonic() + timeout
        while c.position(tp) < end:
            assert time.monotonic() < deadline, "kafka-python consumer at %d of end offset %d after %ds" % (
                c.position(tp), end, timeout)
            for _, recs in c.poll(timeout_ms=500).items():
                got.extend((r.offset, r.key, r.value) for r in recs)
        return got
    finally:
        c.close()


def test_kafka_python_producers_after_compaction_and_restart(broker_factory):
    """kafka-python's default producer writes 20 keys; another producer overwrites them all,
    so the cleaner removes every record the first one wrote (Kafka keeps its last batch, empty,
    for its sequence). After a restart the SAME producer object and a new one both produce
    again and are acknowledged; the latest value of each key is the newest acknowledged one, as
    confluent-kafka and kafka-python read it."""
    broker = broker_factory(**BROKER)
    topic = unique_topic("compact-kp")
    ck_create_topic(broker.bootstrap, topic, 1, config=compacted_topic())
    acked = Acked()
    keys = [b"kp-%02d" % i for i in range(20)]
    kp = kp_default_producer(broker.bootstrap)
    try:
        for version in range(5):  # five rounds of batches, segments rolling between them
            kp_produce(kp, topic, acked, [(k, value(k, version)) for k in keys])
            time.sleep(0.12)
        first_offsets = set(acked.at)
        pid_before = kp_producer_id(kp)
        ck = ck_producer(broker.bootstrap)
        produce(ck, topic, acked, [(k, value(k, 10)) for k in keys])

        def first_producer_gone(records):
            left = [o for o, _, _ in records if o in first_offsets]
            return compacted(records, set(keys), set()) or (
                left and "%d records of the first producer still read (offsets %s...)" % (len(left), left[:5]))

        wait_compacted(broker, {topic: (acked, first_producer_gone)}, ck)

        broker.restart()

        # The producer kept from before the restart: each record its own batch, acknowledged.
        kp_produce(kp, topic, acked, [(k, value(k, 20)) for k in keys[:10]], one_batch_each=True)
        kp_produce(kp, topic, acked, [(k, value(k, 21)) for k in keys[:10]])
        if pid_before is not None:
            assert kp_producer_id(kp) == pid_before, (
                "the kept producer's id/epoch changed from %s to %s: the broker refused its sequence "
                "after compaction and restart (OutOfOrderSequence/UnknownProducerId)" % (pid_before, kp_producer_id(kp)))
        kp2 = kp_default_producer(broker.bootstrap)
        try:
            kp_produce(kp2, topic, acked, [(k, value(k, 30)) for k in keys[5:15]])
        finally:
            kp2.close(timeout=10)
        records = read_all(broker.bootstrap, topic)
        check_read(records, acked, where="after restart: ")
        last_read = by_key(records)
        latest = {k: last_read[k][-1][1] for k in keys}
        want = {k: value(k, 30) if 5 <= i < 15 else value(k, 21) if i < 10 else value(k, 10)
                for i, k in enumerate(keys)}
        assert latest == want, sorted(set(latest.items()) ^ set(want.items()))[:6]

        ck = ck_producer(broker.bootstrap)
        reads = wait_compacted(broker, {topic: (acked, lambda r: compacted(r, set(keys), set()))}, ck)
        kp_records = kp_read_all(broker.bootstrap, topic)
        assert [r for r in kp_records if r[1] in set(keys)] == [r for r in reads[topic] if r[1] in set(keys)]
        check_read(kp_records, acked, where="kafka-python consumer: ")
    finally:
        kp.close(timeout=10)


def test_kafka_python_tombstones_go_after_delete_retention_ms(broker_factory):
    """kafka-python's default producer (idempotent in kafka-python 3) writes 30 keys x 4
    versions, then tombstones (value None) for 10 of them; delete.retention.ms=5000. Every read
    that ends less than 5 s after the tombstones were sent still has each tombstone, as its key's
    last record at its offset (their segment was sealed after they were appended, so none may go
    sooner); meanwhile a pass drops the deleted keys' older values and keeps the tombstones.
    Then the tombstones go with every older record of their keys, and the 20 other keys keep
    exactly their latest value at the offset it was acknowledged at, as confluent-kafka and
    kafka-python read it. The same producer object then writes on (its sequence survives its
    last batch, the tombstones, being emptied)."""
    retention_s = 5.0
    broker = broker_factory(**BROKER)
    topic = unique_topic("kp-tomb")
    ck_create_topic(broker.bootstrap, topic, 1,
                    config=compacted_topic(delete_retention_ms=int(retention_s * 1000)))
    acked = Acked()
    keys = [b"kt-%02d" % i for i in range(30)]
    deleted, live = set(keys[::3]), set(keys) - set(keys[::3])
    kp = kp_default_producer(broker.bootstrap)
    try:
        for version in range(4):  # four rounds, segments rolling between them
            kp_produce(kp, topic, acked, [(k, value(k, version)) for k in keys])
            time.sleep(0.12)
        sent = time.time()
        kp_produce(kp, topic, acked, [(k, None) for k in sorted(deleted)])
        assert all(acked.latest_value(k) is None for k in deleted)
        seen = {"tombstones only": None}

        def tombstones_gone(records):
            elapsed = time.time() - sent  # the read ended before this
            if elapsed < retention_s - 0.25:
                present = sorted(deleted - set(by_key(records)))
                assert not present, (
                    "%.2fs after the tombstones were sent (delete.retention.ms=%d), tombstones of %d keys "
                    "are gone already: %s" % (elapsed, retention_s * 1000, len(present), present[:5]))
                if seen["tombstones only"] is None and compacted(records, live, deleted, tombstones_kept=True) is None:
                    seen["tombstones only"] = elapsed
            return compacted(records, live, deleted)

        reads = wait_compacted(broker, {topic: (acked, tombstones_gone)}, ck_producer(broker.bootstrap))
        done = time.time() - sent
        assert seen["tombstones only"] is not None, (
            "no read in the first %.1fs showed the log compacted with its tombstones kept" % retention_s)
        assert done >= retention_s, done
        records = reads[topic]
        keys_read = by_key(records)
        assert not deleted & set(keys_read), sorted(deleted & set(keys_read))
        for k in sorted(live):
            assert keys_read[k] == [(acked.latest[k], value(k, 3))], (k, keys_read[k])
        kp_records = kp_read_all(broker.bootstrap, topic)
        check_read(kp_records, acked, where="kafka-python consumer: ")
        assert [r for r in kp_records if r[1] != FILLER] == [r for r in records if r[1] != FILLER]

        # The producer whose last batch (the tombstones) was emptied writes on.
        again = sorted(deleted)[0]
        kp_produce(kp, topic, acked, [(again, value(again, 9)), (sorted(live)[0], value(sorted(live)[0], 9))])
        records = read_all(broker.bootstrap, topic)
        check_read(records, acked, where="after producing again: ")
        assert by_key(records)[again] == [(acked.latest[again], value(again, 9))]
    finally:
        kp.close(timeout=10)


def test_tombstones_kept_for_delete_retention_ms(broker_factory):
    """Tombstones for 10 of 30 keys: with delete.retention.ms=86400000 compaction leaves each
    deleted key's tombstone (value None, at its offset) and nothing older; with
    delete.retention.ms=0 the tombstones go too, and keep going no further."""
    broker = broker_factory(**BROKER)
    keep = unique_topic("tomb-keep")
    drop = unique_topic("tomb-drop")
    ck_create_topic(broker.bootstrap, keep, 1, config=compacted_topic(delete_retention_ms=86400000))
    ck_create_topic(broker.bootstrap, drop, 1, config=compacted_topic(delete_retention_ms=0))
    p = ck_producer(broker.bootstrap)
    acked = {keep: Acked(), drop: Acked()}
    keys = [b"t-%02d" % i for i in range(30)]
    deleted, live = set(keys[::3]), set(keys) - set(keys[::3])
    for version in range(5):
        for t in (keep, drop):
            produce(p, t, acked[t], [(k, value(k, version)) for k in keys])
        time.sleep(0.12)
    for t in (keep, drop):
        produce(p, t, acked[t], [(k, None) for k in sorted(deleted)])

    wait_compacted(broker, {
        keep: (acked[keep], lambda r: compacted(r, live, deleted, tombstones_kept=True)),
        drop: (acked[drop], lambda r: compacted(r, live, deleted)),
    }, p)
    # Both topics went through the same cleanings; six more rounds (~2 s) for good measure.
    reads = wait_compacted(broker, {keep: (acked[keep], lambda r: None)}, p, tick=0.3, min_rounds=6)
    records = reads[keep]
    tombstones = [(o, k) for o, k, v in records if v is None]
    assert tombstones == [(acked[keep].latest[k], k) for k in sorted(deleted)], (
        "with delete.retention.ms=86400000 every tombstone stays: read %s" % tombstones)
    assert compacted(records, live, deleted, tombstones_kept=True) is None


def test_time_retention_only_with_delete_in_the_policy(broker_factory):
    """retention.ms=100 on two topics with segments rolling every 100 ms: a compact-only topic
    keeps every key's latest value (and its log start, 0) after seconds of retention checks; a
    compact,delete topic loses its old segments (its log start moves up)."""
    broker = broker_factory(**BROKER)
    compact = unique_topic("ret-compact")
    both = unique_topic("ret-compact-delete")
    ck_create_topic(broker.bootstrap, compact, 1, config=compacted_topic(retention_ms=100))
    ck_create_topic(broker.bootstrap, both, 1, config=compacted_topic(retention_ms=100, cleanup_policy="compact,delete"))
    p = ck_producer(broker.bootstrap)
    acked = {compact: Acked(), both: Acked()}
    keys = [b"r-%02d" % i for i in range(20)]
    for version in range(3):
        for t in (compact, both):
            produce(p, t, acked[t], [(k, value(k, version)) for k in keys])
        time.sleep(0.12)
    written = time.monotonic()

    def old_segments_gone(_records):
        low, _ = ck_watermarks(broker.bootstrap, both)
        if low == 0:
            return "the compact,delete topic's log start is still 0"
        if time.monotonic() - written < 2.0:
            return "waiting 2 s (10 retention checks)"
        return None

    # Retention may take whole keys from the compact,delete topic: check it without `complete`.
    acked_both = acked[both]
    deadline = time.monotonic() + COMPACTION_WAIT_S
    filler = 0
    while True:
        time.sleep(0.15)
        produce(p, compact, acked[compact], [(FILLER, b"filler-%05d" % filler)])
        produce(p, both, acked_both, [(FILLER, b"filler-%05d" % filler)])
        filler += 1
        # The compact-only topic must hold every key's latest value all along.
        check_read(read_all(broker.bootstrap, compact), acked[compact],
                   where="compact-only topic with retention.ms=100, %.1fs after the writes: " % (
                       time.monotonic() - written))
        records_both = read_all(broker.bootstrap, both)
        check_read(records_both, acked_both, complete=False, where="compact,delete topic: ")
        reason = old_segments_gone(records_both)
        if reason is None:
            break
        assert time.monotonic() < deadline, "after %ds: %s; log: %s" % (
            COMPACTION_WAIT_S, reason, segment_listing(broker, both))

    low, high = ck_watermarks(broker.bootstrap, compact)
    assert low == 0, "time retention moved a compact-only topic's log start to %d" % low
    records = read_all(broker.bootstrap, compact)
    assert {k for _, k, _ in records} >= set(keys)
    low, high = ck_watermarks(broker.bootstrap, both)
    assert 0 < low < high, (low, high)
    records_both = read_all(broker.bootstrap, both)
    assert records_both and records_both[0][0] >= low, (records_both[:1], low)


@pytest.mark.timeout(180)
def test_kill9_while_cleaning_keeps_every_keys_latest_value(broker_factory):
    """Three rounds of 7,000 records over 2,000 keys (segment.bytes=32768); after each, once the
    cleaner has work, kill -9 at a different moment and restart: every key's latest acknowledged
    value reads back at its offset. In the end the log compacts to one record a key."""
    broker = broker_factory(**BROKER)
    topic = unique_topic("compact-crash")
    ck_create_topic(broker.bootstrap, topic, 1, config=compacted_topic(segment_bytes=32768))
    acked = Acked()
    keys = [b"c-%04d" % i for i in range(2000)]
    version = 0
    for rnd, pause in enumerate((0.05, 0.25, 0.5)):
        p = ck_producer(broker.bootstrap)
        pairs = []
        while len(pairs) < 7000:
            pairs.extend((k, value(k, version)) for k in keys)
            version += 1
        produce(p, topic, acked, pairs[:7000])
        time.sleep(0.12)
        produce(p, topic, acked, [(FILLER, b"filler-round-%d" % rnd)])  # the round's last segment retires
        time.sleep(0.2 + pause)  # the cleaner's backoff is 200 ms
        broker.restart(clean=False)  # kill -9, then start again
        records = read_all(broker.bootstrap, topic)
        check_read(records, acked, where="after kill -9 #%d (%.2fs into cleaning): " % (rnd + 1, pause))

    p = ck_producer(broker.bootstrap)
    reads = wait_compacted(broker, {topic: (acked, lambda r: compacted(r, set(keys), set()))}, p)
    assert len(reads[topic]) - len(by_key(reads[topic]).get(FILLER, ())) == len(keys)


def offsets_log_bytes(broker):
    """Bytes of every __consumer_offsets segment file on disk."""
    total = 0
    for d in os.listdir(broker.data_dir):
        if d.startswith("__consumer_offsets-"):
            for f in os.listdir(os.path.join(broker.data_dir, d)):
                if f.endswith(".log"):
                    total += os.path.getsize(os.path.join(broker.data_dir, d, f))
    return total


def test_offsets_topic_is_compacted_and_read_back_after_restart(broker_factory):
    """A group commits the same partition's offset many times: __consumer_offsets (small
    segments here) is compacted down to little more than the last commit, and after a kill -9
    and a restart the group's committed offset is the last one committed."""
    broker = broker_factory(**BROKER, **{"offsets.topic.segment.bytes": "2000"})
    topic = unique_topic("offs")
    ck_create_topic(broker.bootstrap, topic, partitions=1)
    group = unique_topic("g")
    consumer = ck_consumer(broker.bootstrap, **{"group.id": group, "enable.auto.commit": False})
    commits = 400
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, 1)], asynchronous=False)
        # What the commits write, from the size of one (the cleaner may be at work before
        # the last: what is on disk then is no measure of what was written).
        one = offsets_log_bytes(broker)
        assert one > 0, "the first commit wrote nothing to __consumer_offsets"
        for i in range(2, commits + 1):
            consumer.commit(offsets=[TopicPartition(topic, 0, i)], asynchronous=False)
    finally:
        consumer.close()
    written = one * commits
    deadline = time.monotonic() + COMPACTION_WAIT_S
    while offsets_log_bytes(broker) > written // 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    left = offsets_log_bytes(broker)
    assert left <= written // 4, "__consumer_offsets not compacted: %d bytes of %d after %ds" % (
        left, written, COMPACTION_WAIT_S)
    broker.restart(clean=False)
    consumer = ck_consumer(broker.bootstrap, **{"group.id": group, "enable.auto.commit": False})
    try:
        got = consumer.committed([TopicPartition(topic, 0)], timeout=15)
    finally:
        consumer.close()
    assert got[0].error is None and got[0].offset == commits, "committed after restart: %r" % got


# ------------------------------------------------- the cleaner's settings, and changing them


def alter_topic(bootstrap, topic, changes, overrides):
    """Changes a topic's configs at runtime with confluent-kafka's AdminClient:
    IncrementalAlterConfigs (SET each of `changes`) where the library has it (confluent-kafka
    2.2 on), else AlterConfigs with the topic's whole set (`overrides` updated by `changes`: it
    replaces them all). DescribeConfigs then shows the new values. Returns the API used."""
    from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType
    admin = ck_admin(bootstrap)
    if hasattr(AdminClient, "incremental_alter_configs"):
        from confluent_kafka.admin import AlterConfigOpType, ConfigEntry
        entries = [ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in changes.items()]
        res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=entries)
        list(admin.incremental_alter_configs([res], request_timeout=15).values())[0].result(timeout=15)
        api = "IncrementalAlterConfigs"
    else:
        full = dict(overrides, **changes)
        res = ConfigResource(ResourceType.TOPIC, topic, set_config=full)
        list(admin.alter_configs([res], request_timeout=15).values())[0].result(timeout=15)
        api = "AlterConfigs"
    res = ConfigResource(ResourceType.TOPIC, topic)
    got = list(admin.describe_configs([res], request_timeout=15).values())[0].result(timeout=15)
    for k, v in changes.items():
        assert got[k].value == v, "%s after %s: %r, want %r" % (k, api, got[k].value, v)
    return api


def versions_of(records, key):
    return sum(1 for _, k, _ in records if k == key)


def hold(seconds, check):
    """A why_not for wait_compacted that runs `check(records)` (which raises when the log is
    not as it must be) on every read for `seconds`, then is satisfied."""
    until = time.monotonic() + seconds

    def why_not(records):
        check(records)
        return "holding" if time.monotonic() < until else None

    return why_not


def test_min_compaction_lag_ms_keeps_young_records(broker_factory):
    """min.compaction.lag.ms=5000: 10 keys written 3 times with timestamps an hour old, then 10
    keys written 3 times now (their own segments). The cleaner compacts the old keys at once
    but leaves every version of the young keys while any read ends within 5 s of their writing
    (no segment holding them may be cleaned before then: their timestamps are at least that);
    after the lag they are compacted to their latest values, at their offsets."""
    lag_s = 5.0
    broker = broker_factory(**BROKER)
    topic = unique_topic("lag")
    ck_create_topic(broker.bootstrap, topic, 1, config=compacted_topic(min_compaction_lag_ms=int(lag_s * 1000)))
    p = ck_producer(broker.bootstrap)
    acked = Acked()
    old_keys = [b"old-%02d" % i for i in range(10)]
    young_keys = [b"young-%02d" % i for i in range(10)]
    hour_ago = int(time.time() * 1000) - 3_600_000
    produce(p, topic, acked, [(k, value(k, v)) for v in range(3) for k in old_keys], timestamp=hour_ago)
    time.sleep(0.12)  # the next append rolls the segment: the old records' segment holds nothing else
    written = time.time()  # every young record's timestamp is at least this
    produce(p, topic, acked, [(k, value(k, v)) for v in range(3) for k in young_keys])
    seen = {"old compacted, young whole": None}

    def young_compacted_after_the_lag(records):
        elapsed = time.time() - written  # the read ended before this
        if elapsed < lag_s - 0.25:
            short = {k.decode(): versions_of(records, k) for k in young_keys if versions_of(records, k) != 3}
            assert not short, (
                "%.2fs after they were written (min.compaction.lag.ms=%d), young keys lost versions: %s"
                % (elapsed, lag_s * 1000, short))
            if seen["old compacted, young whole"] is None and compacted(records, set(old_keys), set()) is None:
                seen["old compacted, young whole"] = elapsed
            return "within the lag"
        return compacted(records, set(old_keys) | set(young_keys), set())

    reads = wait_compacted(broker, {topic: (acked, young_compacted_after_the_lag)}, p)
    assert time.time() - written >= lag_s
    assert seen["old compacted, young whole"] is not None, (
        "the cleaner did not compact the hour-old keys within %.1fs: nothing shows it ran" % lag_s)
    records = reads[topic]
    keys_read = by_key(records)
    for k in old_keys + young_keys:
        assert keys_read[k] == [(acked.latest[k], value(k, 2))], (k, keys_read[k])


def test_min_cleanable_dirty_ratio_and_lowering_it_at_runtime(broker_factory):
    """min.cleanable.dirty.ratio=0.5: 200 distinct keys of 1 kB and key "first" twice, in one
    batch written on a raw socket (so in one segment); a first pass cleans that segment (a log
    never cleaned is all dirty) and drops the older "first". Then key "dup" is written 3 times:
    with ~0.2 kB dirty (plus ~0.1 kB a filler round) against ~210 kB clean, the dirty share
    stays near 0.01, and for 4 s of cleaner checks every 200 ms "dup" keeps its 3 versions. The
    ratio lowered to 0.001 at runtime (IncrementalAlterConfigs; AlterConfigs with
    confluent-kafka 2.0), the cleaner compacts "dup" to its latest value."""
    broker = broker_factory(**BROKER)
    topic = unique_topic("ratio")
    overrides = compacted_topic(min_cleanable_dirty_ratio="0.5")
    ck_create_topic(broker.bootstrap, topic, 1, config=overrides)
    p = ck_producer(broker.bootstrap)
    acked = Acked()
    big = [b"big-%03d" % i for i in range(200)]
    # One batch (a Produce on a raw socket: a client may split it), so one segment: a first pass
    # that drops the older "first" has cleaned all of it.
    records = [wire.Record(value(k, 0, pad=1000), key=k) for k in big] + [
        wire.Record(value(b"first", v), key=b"first") for v in range(2)]
    with wire.Conn.to(broker.bootstrap) as conn:
        got = conn.produce(topic, 0, wire.encode_batch(records))
    assert got["error"] == 0, got
    for i, r in enumerate(records):
        acked.add(got["base_offset"] + i, r.key, r.value)
    wait_compacted(broker, {topic: (acked, lambda r: versions_of(r, b"first") != 1 and "first pass not done")}, p)
    logs = sorted(n for n in os.listdir(broker.partition_dir(topic, 0)) if n.endswith(".log"))
    assert logs[0] == "%020d.log" % 0 and logs[1] == "%020d.log" % 202, (
        "the first 202 records are not alone in the first segment: %s" % logs[:3])

    time.sleep(0.12)
    produce(p, topic, acked, [(b"dup", value(b"dup", v)) for v in range(3)])

    def dup_whole(records):
        n = versions_of(records, b"dup")
        assert n == 3, "\"dup\" compacted (%d of 3 versions left) with a dirty share far below "\
                       "min.cleanable.dirty.ratio=0.5; log: %s" % (n, segment_listing(broker, topic))

    wait_compacted(broker, {topic: (acked, hold(4.0, dup_whole))}, p)
    alter_topic(broker.bootstrap, topic, {"min.cleanable.dirty.ratio": "0.001"}, overrides)
    reads = wait_compacted(broker, {topic: (acked, lambda r: compacted(r, set(big) | {b"dup", b"first"}, set()))}, p)
    keys_read = by_key(reads[topic])
    assert keys_read[b"dup"] == [(acked.latest[b"dup"], value(b"dup", 2))], keys_read[b"dup"]


def test_cleanup_policy_changed_from_delete_to_compact_at_runtime(broker_factory):
    """A cleanup.policy=delete topic (segments rolling every 100 ms, min.cleanable.dirty.ratio
    0.01) with 20 keys x 5 versions keeps every record for 2 s of cleaner checks; changed to
    compact at runtime (IncrementalAlterConfigs; AlterConfigs with confluent-kafka 2.0), it is
    compacted to each key's latest value at its offset."""
    broker = broker_factory(**BROKER)
    topic = unique_topic("to-compact")
    overrides = {"cleanup.policy": "delete", "segment.ms": "100", "min.cleanable.dirty.ratio": "0.01"}
    ck_create_topic(broker.bootstrap, topic, 1, config=overrides)
    p = ck_producer(broker.bootstrap)
    acked = Acked()
    keys = [b"pc-%02d" % i for i in range(20)]
    for version in range(5):
        produce(p, topic, acked, [(k, value(k, version)) for k in keys])
        time.sleep(0.12)

    def everything_kept(records):
        assert [o for o, _, _ in records] == sorted(acked.at), (
            "a cleanup.policy=delete topic lost records: %d read of %d acknowledged"
            % (len(records), len(acked.at)))

    wait_compacted(broker, {topic: (acked, hold(2.0, everything_kept))}, p)
    alter_topic(broker.bootstrap, topic, {"cleanup.policy": "compact"}, overrides)
    reads = wait_compacted(broker, {topic: (acked, lambda r: compacted(r, set(keys), set()))}, p)
    keys_read = by_key(reads[topic])
    for k in keys:
        assert keys_read[k] == [(acked.latest[k], value(k, 4))], (k, keys_read[k])
