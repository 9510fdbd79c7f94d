"""Transactions (KIP-98, transaction protocol version 1) with the Python
client libraries, used as applications use them: producers configured with
nothing but bootstrap.servers and a transactional.id (plus
transaction.timeout.ms where a test is about the timeout), consumers with
the isolation level they read at.

Each scenario runs once per library (`lib` parameter):

* confluent-kafka (librdkafka) -- both pinned versions have the
  transactional API;
* kafka-python 3.x (`KafkaProducer(transactional_id=...)`,
  `KafkaConsumer(isolation_level=...)`).  kafka-python 2.0.2 has no
  transactional producer: skipped there.

Whatever the library under test, the records are also read back with a
confluent-kafka consumer at both isolation levels, and the partitions'
`.log` segments are read to check the control markers (commit/abort, in
order) and the transactional flag of every data batch.  A `LogModel` keeps
what each partition must hold: every acknowledged record at its
acknowledged offset, and each transaction's outcome.

Scenarios: commit/abort across partitions of two topics; many
transactions spanning several fetches; read_committed stopping at the last
stable offset while a transaction is open; consume-transform-produce with
send_offsets_to_transaction (committed offsets only after commit, unchanged
after abort; a read_committed consumer's committed() does not report
offsets as stable while a transaction holds pending ones); fencing by a
second producer with the same transactional.id; the transaction timeout
(the broker aborts and fences); kill -9 of the broker after commits and in
the middle of a transaction (records, and group offsets sent in the
transactions, survive or stay hidden as their transactions decide).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid

import pytest
import kafka
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

try:  # kafka-python 3.x
    from kafka import KafkaConsumer, KafkaProducer
    from kafka import TopicPartition as KTopicPartition
    from kafka.structs import OffsetAndMetadata as KOffsetAndMetadata
except ImportError:  # pragma: no cover
    KafkaProducer = None

import wire
from clients import CK_VERSION, ck_create_topic
from conftest import HERE, _set_pdeathsig, unique_topic

KP_VERSION = kafka.__version__
KP_HAS_TXN = KafkaProducer is not None and "transactional_id" in getattr(KafkaProducer, "DEFAULT_CONFIG", {})

LIBS = ("confluent", "kafka-python")
SEGMENT_RE = re.compile(r"^(\d{20})\.log$")

# librdkafka's fatal fencing error (local), PRODUCER_FENCED, INVALID_PRODUCER_EPOCH
CK_FENCED_CODES = (KafkaError._FENCED, 90, 47)


def lib_label(lib):
    return ("confluent-kafka %s" % (".".join(map(str, CK_VERSION)),) if lib == "confluent"
            else "kafka-python %s" % KP_VERSION)


@pytest.fixture(params=LIBS)
def lib(request):
    if request.param == "kafka-python" and not KP_HAS_TXN:
        pytest.skip("kafka-python %s has no transactional producer (KafkaProducer has no transactional_id)"
                    % KP_VERSION)
    return request.param


def tid(prefix="txn"):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:10])


# ====================================================================== producer


class Sent:
    """One record handed to a producer, and what its delivery report said."""

    __slots__ = ("topic", "partition", "value", "key", "offset", "error", "future")

    def __init__(self, topic, partition, value, key):
        self.topic, self.partition, self.value, self.key = topic, partition, value, key
        self.offset = None
        self.error = None
        self.future = None

    @property
    def tp(self):
        return (self.topic, self.partition)

    def __repr__(self):
        return "Sent(%s[%d] %r @%s%s)" % (self.topic, self.partition, self.value, self.offset,
                                         " err=%s" % self.error if self.error else "")


class TxnProducer:
    """A transactional producer of either library with the library's defaults
    (only bootstrap servers, the transactional id and, where asked, the
    transaction timeout are set)."""

    def __init__(self, lib, bootstrap, transactional_id, timeout_ms=None):
        self.lib = lib
        self.tid = transactional_id
        self.bootstrap = bootstrap
        self.sent = []
        if lib == "confluent":
            conf = {"bootstrap.servers": bootstrap, "transactional.id": transactional_id}
            if timeout_ms:
                conf["transaction.timeout.ms"] = int(timeout_ms)
            self.p = Producer(conf)
        else:
            kw = dict(bootstrap_servers=bootstrap, transactional_id=transactional_id)
            if timeout_ms:
                kw["transaction_timeout_ms"] = int(timeout_ms)
            self.p = KafkaProducer(**kw)

    def init(self, timeout=60):
        if self.lib == "confluent":
            self.p.init_transactions(timeout)
        else:
            self.p.init_transactions()

    def begin(self):
        self.p.begin_transaction()

    def send(self, topic, partition, value, key=None):
        s = Sent(topic, partition, value, key)
        self.sent.append(s)
        if self.lib == "confluent":
            def cb(err, msg, s=s):
                if err is not None:
                    s.error = err
                else:
                    s.offset = msg.offset()
            while True:
                try:
                    self.p.produce(topic, value=value, key=key, partition=partition, on_delivery=cb)
                    break
                except BufferError:
                    self.p.poll(0.05)
            self.p.poll(0)
        else:
            s.future = self.p.send(topic, value=value, key=key, partition=partition)
        return s

    def flush(self, timeout=30):
        if self.lib == "confluent":
            left = self.p.flush(timeout)
            assert left == 0, "%s: %d records undelivered after flush(%ss)" % (self.tid, left, timeout)
        else:
            self.p.flush(timeout)
        self.resolve()

    def resolve(self, timeout=15):
        """Collects delivery results (after flush/commit they are all known)."""
        if self.lib == "confluent":
            self.p.poll(0)
            deadline = time.monotonic() + timeout
            while any(s.offset is None and s.error is None for s in self.sent):
                if time.monotonic() > deadline:
                    break
                self.p.poll(0.1)
        else:
            for s in self.sent:
                if s.future is not None and s.offset is None and s.error is None:
                    try:
                        s.offset = s.future.get(timeout=timeout).offset
                    except Exception as e:  # the error is what the test looks at
                        s.error = e

    def commit(self, timeout=60):
        if self.lib == "confluent":
            self.p.commit_transaction(timeout)
        else:
            self.p.commit_transaction()
        self.resolve()

    def abort(self, timeout=60):
        if self.lib == "confluent":
            self.p.abort_transaction(timeout)
        else:
            self.p.abort_transaction()

    def send_offsets(self, offsets, consumer=None, group=None, timeout=30):
        """offsets: {(topic, partition): next offset}; consumer: a
        GroupConsumer whose group metadata goes with them, or else `group`: a
        group id (a consumer of that group that never joined provides the
        metadata, generation -1)."""
        if self.lib == "confluent":
            if consumer is not None:
                meta = consumer.c.consumer_group_metadata()
            else:
                c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": group})
                meta = c.consumer_group_metadata()
                c.close()
            self.p.send_offsets_to_transaction(
                [TopicPartition(t, p, o) for (t, p), o in sorted(offsets.items())], meta, timeout)
        else:
            self.p.send_offsets_to_transaction(
                {KTopicPartition(t, p): KOffsetAndMetadata(o, "", -1) for (t, p), o in sorted(offsets.items())},
                consumer.c.group_metadata() if consumer is not None else group)

    def close(self):
        if self.p is None:
            return
        try:
            if self.lib == "confluent":
                self.p.flush(0)
            else:
                self.p.close(timeout=5)
        except Exception:
            pass
        self.p = None


def run_txn(prod, records, outcome, model=None, name=None, group=None, offsets=None):
    """One transaction: begin, send records [(topic, partition, value)]
    (and, with `group`, send_offsets_to_transaction(offsets) for it), then
    commit / abort (after a flush, so the aborted records really are in the
    log) / leave open (flushed).  Records must all be acknowledged.  Returns
    the Sent list; with a model, the records (and the marker, unless left
    open) are entered."""
    name = name or uuid.uuid4().hex[:6]
    prod.begin()
    sent = [prod.send(t, p, v, key=b"k-" + v[-3:]) for t, p, v in records]
    if group is not None:
        prod.send_offsets(offsets, group=group)
    if outcome == "commit":
        prod.commit()
    else:
        prod.flush()
        if outcome == "abort":
            prod.abort()
    bad = [s for s in sent if s.offset is None or s.error is not None]
    assert not bad, "%s (%s, %s): %d of %d records not acknowledged, e.g. %s" % (
        prod.tid, name, outcome, len(bad), len(sent), bad[:5])
    if model is not None:
        model.add(sent, txn=name)
        if outcome != "open":
            model.end(name, outcome == "commit")
    return sent


def plain_produce(bootstrap, records, model=None):
    """A non-transactional confluent producer with its defaults."""
    p = Producer({"bootstrap.servers": bootstrap})
    sent = []
    for t, q, v in records:
        s = Sent(t, q, v, None)

        def cb(err, msg, s=s):
            if err is not None:
                s.error = err
            else:
                s.offset = msg.offset()
        p.produce(t, value=v, partition=q, on_delivery=cb)
        sent.append(s)
    left = p.flush(30)
    assert left == 0 and all(s.offset is not None for s in sent), \
        "plain producer: %d undelivered, errors %s" % (left, [s for s in sent if s.error][:3])
    if model is not None:
        model.add(sent, txn=None)
    return sent


def values(tag, tps, n, start=0):
    """[(topic, partition, value)]: n records per partition, interleaved."""
    return [(t, p, b"%s|%s-%d|%03d" % (tag.encode(), t[-4:].encode(), p, i))
            for i in range(start, start + n) for t, p in tps]


# ====================================================================== model


class LogModel:
    """What each partition must hold: records (value, acknowledged offset,
    transaction name or None) and, per partition, the markers in the order
    their transactions ended."""

    def __init__(self, tps):
        self.tps = list(tps)
        self.entries = {tp: [] for tp in self.tps}
        self.markers = {tp: [] for tp in self.tps}
        self.outcome = {}  # txn name -> True (commit) / False (abort); absent: open

    def add(self, sent, txn):
        for s in sent:
            self.entries[s.tp].append((s.offset, s.value, txn))
        if txn is not None:
            self.outcome.setdefault(txn, None)

    def end(self, txn, commit):
        assert self.outcome.get(txn) is None, "transaction %s ended twice" % txn
        self.outcome[txn] = commit
        for tp in self.tps:
            if any(t == txn for _, _, t in self.entries[tp]):
                self.markers[tp].append((txn, commit))

    def ordered(self, tp):
        return sorted(self.entries[tp])

    def visible(self, tp, committed):
        """Values a reader sees from offset 0: read_uncommitted everything,
        read_committed the committed and non-transactional records below
        the first open transaction."""
        out = []
        for o, v, t in self.ordered(tp):
            if not committed or t is None:
                out.append((o, v))
                continue
            st = self.outcome.get(t)
            if st is None:
                break  # the last stable offset
            if st:
                out.append((o, v))
        if committed:
            lso = self.lso(tp)
            out = [(o, v) for o, v in out if o < lso]
        return out

    def hw(self, tp):
        return len(self.entries[tp]) + len(self.markers[tp])

    def lso(self, tp):
        opened = [o for o, _, t in self.entries[tp] if t is not None and self.outcome.get(t) is None]
        return min(opened) if opened else self.hw(tp)

    def aborted_offsets(self, tp):
        return {o for o, _, t in self.entries[tp] if t is not None and self.outcome.get(t) is False}


# ====================================================================== readers


def ck_marks(bootstrap, tps, isolation):
    """High watermark per partition as ListOffsets answers it at the given
    isolation level (read_committed: the last stable offset)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "txn-marks-" + uuid.uuid4().hex[:6],
                  "isolation.level": isolation})
    try:
        return {(t, p): c.get_watermark_offsets(TopicPartition(t, p), timeout=10, cached=False)[1]
                for t, p in tps}
    finally:
        c.close()


class Reader:
    """An assigned (group-less) consumer of `lib` at an isolation level,
    reading from `start` offsets (default 0) and collecting
    {tp: [(offset, value)]}."""

    def __init__(self, lib, bootstrap, tps, isolation, start=None):
        self.lib, self.tps, self.isolation = lib, list(tps), isolation
        self.records = {tp: [] for tp in self.tps}
        self.errors = []
        start = start or {}
        if lib == "confluent":
            self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": "txn-read-" + uuid.uuid4().hex[:6],
                               "enable.auto.commit": False, "enable.partition.eof": True,
                               "isolation.level": isolation, "auto.offset.reset": "error"})
            self.c.assign([TopicPartition(t, p, start.get((t, p), 0)) for t, p in self.tps])
        else:
            self.c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                   isolation_level=isolation, auto_offset_reset="earliest")
            ktps = [KTopicPartition(t, p) for t, p in self.tps]
            self.c.assign(ktps)
            for t, p in self.tps:
                self.c.seek(KTopicPartition(t, p), start.get((t, p), 0))

    def poll(self, timeout=0.2):
        if self.lib == "confluent":
            m = self.c.poll(timeout)
            if m is None:
                return
            if m.error():
                if m.error().code() != KafkaError._PARTITION_EOF:
                    self.errors.append(str(m.error()))
                return
            self.records[(m.topic(), m.partition())].append((m.offset(), m.value()))
        else:
            for ktp, recs in self.c.poll(timeout_ms=int(timeout * 1000)).items():
                self.records[(ktp.topic, ktp.partition)].extend((r.offset, r.value) for r in recs)

    def positions(self):
        if self.lib == "confluent":
            return {(x.topic, x.partition): x.offset
                    for x in self.c.position([TopicPartition(t, p) for t, p in self.tps])}
        return {(t, p): self.c.position(KTopicPartition(t, p)) for t, p in self.tps}

    def poll_for(self, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.poll(0.2)

    def read_to(self, targets, timeout=30, what=""):
        """Polls until every partition's position reaches targets[tp] (the
        end a reader at this isolation level must get to) and it holds at
        least as many records as `targets`' model says; then a short drain
        catches extras.  Fails with the positions if it stalls."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll(0.2)
            pos = self.positions()
            if all(pos.get(tp) is not None and pos[tp] >= targets[tp] for tp in self.tps):
                break
            if time.monotonic() > deadline:
                raise AssertionError(
                    "%s %s reader (%s) stalled: positions %s, want %s; got %s records per partition; errors %s"
                    % (lib_label(self.lib), self.isolation, what, pos, targets,
                       {tp: len(v) for tp, v in self.records.items()}, self.errors[:3]))
        self.poll_for(0.5)
        return self.records

    def close(self):
        try:
            self.c.close()
        except Exception:
            pass


def check_reads(model, records, isolation, where):
    """records as a Reader collected them from offset 0 against the model:
    exactly the visible records, in offset order, at their acknowledged
    offsets; never an aborted one."""
    committed = isolation == "read_committed"
    for tp in model.tps:
        got = records[tp]
        want = model.visible(tp, committed)
        aborted = model.aborted_offsets(tp)
        if committed:
            leaked = [(o, v) for o, v in got if o in aborted]
            assert not leaked, "%s: %s[%d] read_committed returned %d aborted records, e.g. %s" % (
                where, tp[0], tp[1], len(leaked), leaked[:5])
        if got != want:
            gv = [v for _, v in got]
            i = next((k for k, (x, y) in enumerate(zip(got, want)) if x != y), min(len(got), len(want)))
            raise AssertionError(
                "%s: %s[%d] %s read %d records, want %d; missing %s; unexpected %s; duplicated %s; "
                "first difference at index %d: got %s, want %s" % (
                    where, tp[0], tp[1], isolation, len(got), len(want),
                    [x for x in want if x not in got][:5], [x for x in got if x not in want][:5],
                    sorted({v for v in gv if gv.count(v) > 1})[:5], i, got[i:i + 3], want[i:i + 3]))


def read_and_check(lib, bootstrap, model, where, isolations=("read_committed", "read_uncommitted"),
                   timeout=45):
    """Reads every partition of the model from 0 with `lib`'s consumer (and
    confluent's, if lib is another library) at each isolation level, checks
    the records and that the position reaches the end (read_committed: the
    last stable offset; with no open transaction that is the high watermark,
    past the last marker)."""
    for reader_lib in sorted({lib, "confluent"}):
        for iso in isolations:
            committed = iso == "read_committed"
            targets = {tp: (model.lso(tp) if committed else model.hw(tp)) for tp in model.tps}
            r = Reader(reader_lib, bootstrap, model.tps, iso)
            try:
                recs = r.read_to(targets, timeout=timeout, what=where)
                pos = r.positions()
            finally:
                r.close()
            w = "%s [%s %s reader]" % (where, lib_label(reader_lib), iso)
            check_reads(model, recs, iso, w)
            assert pos == targets, "%s: positions after reading %s, want %s (the end, past the markers)" % (
                w, pos, targets)


def check_marks(bootstrap, model, where):
    """ListOffsets latest at both isolation levels: the high watermark counts
    every record and marker; read_committed answers the last stable offset."""
    hw = ck_marks(bootstrap, model.tps, "read_uncommitted")
    want = {tp: model.hw(tp) for tp in model.tps}
    assert hw == want, "%s: high watermarks %s, want %s (records + markers)" % (where, hw, want)
    lso = ck_marks(bootstrap, model.tps, "read_committed")
    want = {tp: model.lso(tp) for tp in model.tps}
    assert lso == want, "%s: read_committed latest offsets (last stable offsets) %s, want %s" % (where, lso, want)


def wait_marks(bootstrap, tps, isolation, want, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        got = ck_marks(bootstrap, tps, isolation)
        if got == want:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise AssertionError("%s: %s latest offsets still %s after %ss, want %s" % (
                what, isolation, got, timeout, want))
        time.sleep(0.3)


# ====================================================================== on disk


def segment_batches(pdir):
    segs = sorted((int(m.group(1)), os.path.join(pdir, n))
                  for n in os.listdir(pdir) for m in [SEGMENT_RE.match(n)] if m)
    assert segs, "no .log segments in %s: %s" % (pdir, sorted(os.listdir(pdir)))
    full, heads = [], []
    for _, path in segs:
        with open(path, "rb") as f:
            data = f.read()
        try:
            full.extend(wire.decode_batches(data, strict=True))
        except ValueError as e:
            raise AssertionError("%s (%d bytes): %s" % (path, len(data), e))
        heads.extend(wire.decode_batch_headers(data))
    assert len(full) == len(heads)
    return list(zip(full, heads))


def check_disk(broker, model, where):
    """Every partition's segments: the control batches (one marker record
    each) carry the outcomes in the order the transactions ended, each after
    its transaction's records; data batches are transactional exactly when
    their records were sent in a transaction."""
    for tp in model.tps:
        batches = segment_batches(broker.partition_dir(*tp))
        by_offset = {e[0]: e for e in model.entries[tp]}
        markers = []
        for b, h in batches:
            if h.is_control:
                assert h.is_transactional, "%s: %s[%d] control batch at %d is not transactional" % (
                    where, tp[0], tp[1], b.base_offset)
                assert len(b.records) == 1 and b.records[0].key is not None and len(b.records[0].key) >= 4, \
                    "%s: %s[%d] control batch at %d: %r" % (where, tp[0], tp[1], b.base_offset, b.records)
                kind = int.from_bytes(b.records[0].key[2:4], "big")
                assert kind in (0, 1), "%s: control record type %d at %d" % (where, kind, b.base_offset)
                markers.append((b.base_offset, kind == 1, h.producer_id, h.producer_epoch))
                continue
            for r in b.records:
                e = by_offset.get(r.offset)
                assert e is not None, "%s: %s[%d] offset %d holds %r, which no acknowledged send put there" % (
                    where, tp[0], tp[1], r.offset, r.value)
                assert e[1] == r.value, "%s: %s[%d] offset %d holds %r, acknowledged for %r" % (
                    where, tp[0], tp[1], r.offset, r.value, e[1])
                assert h.is_transactional == (e[2] is not None), \
                    "%s: %s[%d] batch at %d has transactional=%s for a %s record" % (
                        where, tp[0], tp[1], b.base_offset, h.is_transactional,
                        "transactional" if e[2] else "plain")
        want = [c for _, c in model.markers[tp]]
        assert [c for _, c, _, _ in markers] == want, \
            "%s: %s[%d] markers on disk (offset, commit, pid, epoch) %s, want commits %s" % (
                where, tp[0], tp[1], markers, want)
        for (txn, _), (off, _, _, _) in zip(model.markers[tp], markers):
            last = max(o for o, _, t in model.entries[tp] if t == txn)
            assert off > last, "%s: %s[%d] marker of %s at %d, before its record at %d" % (
                where, tp[0], tp[1], txn, off, last)
        total = sum(len(b.records) for b, _ in batches)
        assert total == model.hw(tp), "%s: %s[%d] %d records + markers on disk, want %d" % (
            where, tp[0], tp[1], total, model.hw(tp))


def check_all(lib, broker, model, where):
    check_marks(broker.bootstrap, model, where)
    read_and_check(lib, broker.bootstrap, model, where)
    check_disk(broker, model, where)


# ====================================================================== errors


def ck_error(exc):
    """The KafkaError of a confluent exception (possibly the cause of a
    SystemError raised through a delivery callback), or None."""
    for e in (exc, getattr(exc, "__cause__", None), getattr(exc, "__context__", None)):
        if isinstance(e, KafkaException) and e.args and isinstance(e.args[0], KafkaError):
            return e.args[0]
    return None


def assert_ck_fenced(exc, what):
    ke = ck_error(exc)
    assert ke is not None, "%s: raised %r, not a KafkaException" % (what, exc)
    assert ke.fatal() and ke.code() in CK_FENCED_CODES, \
        "%s: %s (code %s, fatal=%s), want a fatal fencing error (_FENCED / PRODUCER_FENCED)" % (
            what, ke, ke.code(), ke.fatal())


def kp_fenced(exc):
    if exc is None:
        return False
    from kafka import errors as E
    if isinstance(exc, (E.ProducerFencedError, getattr(E, "InvalidProducerEpochError", E.ProducerFencedError))):
        return True
    return "ProducerFenced" in str(exc) or "PRODUCER_FENCED" in str(exc)


def attempt(fn):
    try:
        fn()
        return None
    except Exception as e:
        return e


# ====================================================================== the abandoned producer


CHILD_TIMEOUT_S = 60


def start_child(spec, tmp_path, name):
    """Runs a transactional producer in a separate process (this file's
    __main__): it runs spec["steps"], prints each step's acknowledgements as
    JSON lines, then holds its last (open) transaction and idles until it is
    killed.  Returns (proc, stdout path, stderr path)."""
    out, err = str(tmp_path / ("%s.out" % name)), str(tmp_path / ("%s.err" % name))
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen([sys.executable, os.path.join(HERE, "test_transactions.py"), "child",
                                 json.dumps(spec)], stdin=subprocess.DEVNULL, stdout=o, stderr=e,
                                cwd=HERE, preexec_fn=_set_pdeathsig)
    return proc, out, err


def wait_child_ready(proc, out, err, timeout=CHILD_TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while True:
        with open(out, encoding="utf-8", errors="replace") as f:
            lines = [json.loads(l) for l in f.read().splitlines() if l.startswith("{")]
        if any(l.get("t") == "ready" for l in lines):
            return [l for l in lines if l.get("t") == "step"]
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            with open(err, encoding="utf-8", errors="replace") as f:
                tail = f.read()[-3000:]
            raise AssertionError("transactional producer process not ready (exit %s):\nstdout %s\nstderr %s"
                                 % (proc.returncode, lines, tail))
        time.sleep(0.1)


def stop_child(proc):
    if proc.poll() is None:
        proc.kill()  # SIGKILL by PID: the producer stops dead, nothing is aborted by it
    proc.wait(10)


def child_steps_into(model, steps, prefix):
    """Enters a child's steps into the model; returns the Sent lists."""
    out = []
    for i, st in enumerate(steps):
        sent = []
        for t, p, v, off, err in st["acks"]:
            s = Sent(t, p, v.encode("latin-1"), None)
            s.offset, s.error = off, err
            sent.append(s)
        bad = [s for s in sent if s.offset is None or s.error]
        assert not bad, "child step %d (%s): unacknowledged records %s" % (i, st["outcome"], bad[:5])
        name = "%s%d" % (prefix, i)
        model.add(sent, txn=name)
        if st["outcome"] != "open":
            model.end(name, st["outcome"] == "commit")
        out.append((name, sent))
    return out


def child_main(spec):
    prod = TxnProducer(spec["lib"], spec["bootstrap"], spec["tid"], spec.get("timeout_ms"))
    prod.init(60)
    for st in spec["steps"]:
        prod.sent = []
        sent = run_txn(prod, [(t, p, v.encode("latin-1")) for t, p, v in st["records"]], st["outcome"],
                       group=st.get("group"), offsets={(t, p): o for t, p, o in st.get("offsets", [])})
        print(json.dumps({"t": "step", "outcome": st["outcome"],
                          "acks": [[s.topic, s.partition, s.value.decode("latin-1"), s.offset,
                                    None if s.error is None else str(s.error)] for s in sent]}), flush=True)
    print(json.dumps({"t": "ready"}), flush=True)
    time.sleep(spec.get("hold_s", 300))
    os._exit(0)


def records_json(recs):
    return [[t, p, v.decode("latin-1")] for t, p, v in recs]


# ====================================================================== tests


@pytest.mark.timeout(150)
def test_commit_and_abort_across_partitions_and_topics(lib, broker):
    """Six transactions over 3 + 2 partitions of two topics (commit, abort,
    commit on one topic only, abort on two partitions, commit, abort), with
    plain records between them.  read_committed readers get exactly the
    committed and plain records, in order, at their acknowledged offsets;
    read_uncommitted readers everything; both end past the markers (the last
    transaction on every partition is aborted, so its marker is the last
    offset); the markers on disk match the outcomes."""
    a, b = unique_topic("txa"), unique_topic("txb")
    ck_create_topic(broker.bootstrap, a, 3)
    ck_create_topic(broker.bootstrap, b, 2)
    ta = [(a, p) for p in range(3)]
    tb = [(b, p) for p in range(2)]
    model = LogModel(ta + tb)
    prod = TxnProducer(lib, broker.bootstrap, tid())
    try:
        prod.init()
        run_txn(prod, values("T1", ta + tb, 12), "commit", model, "T1")
        run_txn(prod, values("T2", ta + tb, 7), "abort", model, "T2")
        plain_produce(broker.bootstrap, values("P1", [(a, 0), (b, 1)], 3), model)
        run_txn(prod, values("T3", tb, 9), "commit", model, "T3")
        run_txn(prod, values("T4", [(a, 1), (b, 0)], 4), "abort", model, "T4")
        run_txn(prod, values("T5", ta + tb, 5), "commit", model, "T5")
        run_txn(prod, values("T6", ta + tb, 3), "abort", model, "T6")
    finally:
        prod.close()
    where = "%s commit/abort" % lib_label(lib)
    check_all(lib, broker, model, where)

    # A read_committed reader starting inside an aborted transaction (T2 on
    # a[0], its 4th record) still skips the rest of it.
    t2 = [o for o, _, t in model.ordered((a, 0)) if t == "T2"]
    start = {tp: 0 for tp in model.tps}
    start[(a, 0)] = t2[3]
    r = Reader(lib, broker.bootstrap, [(a, 0)], "read_committed", start=start)
    try:
        got = r.read_to({(a, 0): model.hw((a, 0))}, what="from inside T2")[(a, 0)]
    finally:
        r.close()
    want = [(o, v) for o, v in model.visible((a, 0), True) if o >= t2[3]]
    assert got == want, "%s: read_committed from offset %d (inside aborted T2) got %s, want %s" % (
        where, t2[3], got, want)


@pytest.mark.timeout(240)
def test_many_transactions_read_committed_across_fetches(lib, broker):
    """24 transactions (a seeded mix of commits and aborts) of 60 records of
    1 kB on each of 3 partitions: over 1.4 MB a partition, so readers with
    default fetch sizes need several fetches, each with its own aborted
    transactions list."""
    import random
    rnd = random.Random(4711)
    t = unique_topic("txmany")
    ck_create_topic(broker.bootstrap, t, 3)
    tps = [(t, p) for p in range(3)]
    model = LogModel(tps)
    outcomes = ["commit" if rnd.random() < 0.5 else "abort" for _ in range(23)] + ["abort"]
    prod = TxnProducer(lib, broker.bootstrap, tid())
    try:
        prod.init()
        for i, oc in enumerate(outcomes):
            recs = [(tt, p, v + b"|" + b"x" * 1000) for tt, p, v in values("M%02d" % i, tps, 60)]
            prod.sent = []
            run_txn(prod, recs, oc, model, "M%02d" % i)
    finally:
        prod.close()
    check_all(lib, broker, model, "%s 24 transactions (%d commits)" % (lib_label(lib), outcomes.count("commit")))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("outcome", ["commit", "abort"])
def test_read_committed_stops_at_last_stable_offset(lib, outcome, broker):
    """Plain records, then a transaction produced and flushed but left open,
    then more plain records from another (non-transactional) producer.  A
    read_committed reader gets the first plain records and nothing more --
    not the open transaction, nor the plain records after it -- and waits at
    the last stable offset; read_uncommitted sees everything.  Once the
    transaction ends, the same reader goes on: everything (commit) or the
    later plain records (abort)."""
    t = unique_topic("txlso")
    ck_create_topic(broker.bootstrap, t, 2)
    tps = [(t, 0), (t, 1)]
    model = LogModel(tps)
    where = "%s last stable offset (%s)" % (lib_label(lib), outcome)
    plain_produce(broker.bootstrap, values("P0", tps, 3), model)
    prod = TxnProducer(lib, broker.bootstrap, tid())
    reader = None
    try:
        prod.init()
        run_txn(prod, values("T", tps, 4), "open", model, "T")
        plain_produce(broker.bootstrap, values("P1", tps, 3), model)
        assert {tp: model.lso(tp) for tp in tps} == {tp: 3 for tp in tps}
        check_marks(broker.bootstrap, model, where + ", transaction open")

        reader = Reader(lib, broker.bootstrap, tps, "read_committed")
        reader.poll_for(3.0)
        early = {tp: list(v) for tp, v in reader.records.items()}
        for tp in tps:
            assert early[tp] == model.visible(tp, True), \
                "%s: while the transaction is open a read_committed reader got %s, want only the records " \
                "below the last stable offset %d: %s" % (where, early[tp], model.lso(tp), model.visible(tp, True))
        pos = reader.positions()
        assert pos == {tp: 3 for tp in tps}, "%s: read_committed position %s, want the last stable offset 3" % (
            where, pos)
        read_and_check(lib, broker.bootstrap, model, where + ", transaction open", isolations=("read_uncommitted",))

        if outcome == "commit":
            prod.commit()
        else:
            prod.abort()
        model.end("T", outcome == "commit")
        targets = {tp: model.hw(tp) for tp in tps}
        recs = reader.read_to(targets, what="after the transaction ended")
        check_reads(model, recs, "read_committed", where + " [the reader that waited]")
    finally:
        if reader is not None:
            reader.close()
        prod.close()
    check_all(lib, broker, model, where)


# ---------------------------------------------------------------- consume-transform-produce


class GroupConsumer:
    """A subscribed group member of `lib`: group.id, no auto commit,
    read_committed, auto.offset.reset=earliest (as consume-transform-produce
    applications configure it)."""

    def __init__(self, lib, bootstrap, topic, group):
        self.lib = lib
        self.topic = topic
        if lib == "confluent":
            self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                               "isolation.level": "read_committed", "auto.offset.reset": "earliest"})
            self.c.subscribe([topic])
        else:
            self.c = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                                   isolation_level="read_committed", auto_offset_reset="earliest")

    def poll_batch(self, n, timeout=1.0):
        """[(partition, offset, key, value)]"""
        if self.lib == "confluent":
            out = []
            for m in self.c.consume(num_messages=n, timeout=timeout):
                if m.error():
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        raise AssertionError("consumer error: %s" % m.error())
                    continue
                out.append((m.partition(), m.offset(), m.key(), m.value()))
            return out
        out = []
        for ktp, recs in self.c.poll(timeout_ms=int(timeout * 1000), max_records=n).items():
            out.extend((r.partition, r.offset, r.key, r.value) for r in recs)
        return sorted(out)

    def assignment(self):
        if self.lib == "confluent":
            return sorted((x.topic, x.partition) for x in self.c.assignment())
        return sorted((x.topic, x.partition) for x in self.c.assignment())

    def positions(self):
        tps = self.assignment()
        if self.lib == "confluent":
            pos = {(x.topic, x.partition): x.offset for x in self.c.position([TopicPartition(t, p) for t, p in tps])}
        else:
            pos = {(t, p): self.c.position(KTopicPartition(t, p)) for t, p in tps}
        return {tp: o for tp, o in pos.items() if o is not None and o >= 0}

    def rewind(self):
        """After an aborted transaction: back to the committed offsets."""
        tps = self.assignment()
        if self.lib == "confluent":
            for x in self.c.committed([TopicPartition(t, p) for t, p in tps], timeout=15):
                off = x.offset if x.offset >= 0 else 0
                self.c.seek(TopicPartition(x.topic, x.partition, off))
        else:
            for t, p in tps:
                c = self.c.committed(KTopicPartition(t, p))
                self.c.seek(KTopicPartition(t, p), c if c is not None else 0)

    def close(self):
        try:
            self.c.close()
        except Exception:
            pass


def group_offsets(bootstrap, group, tps, require_stable=False):
    """The group's committed offsets as AdminClient.list_consumer_group_offsets
    reports them: {tp: offset or None}."""
    from confluent_kafka import ConsumerGroupTopicPartitions
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futs = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, [TopicPartition(t, p) for t, p in tps])],
        require_stable=require_stable, request_timeout=15)
    res = futs[group].result(timeout=20)
    out = {}
    for x in res.topic_partitions:
        assert x.error is None, "list_consumer_group_offsets %s %s[%d]: %s" % (group, x.topic, x.partition, x.error)
        out[(x.topic, x.partition)] = x.offset if x.offset >= 0 else None
    return out


def wait_group_offsets(bootstrap, group, tps, want, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        got = group_offsets(bootstrap, group, tps)
        if got == want or time.monotonic() > deadline:
            assert got == want, "%s: committed offsets of %s are %s, want %s" % (what, group, got, want)
            return
        time.sleep(0.2)


@pytest.mark.timeout(180)
def test_consume_transform_produce(lib, broker):
    """A group member reads 60 records from 2 input partitions in small
    batches; per batch a transaction writes the transformed records to the
    output topic (same partition) and send_offsets_to_transaction()s the
    member's positions.  Rounds 2 and 4 abort (the member then rewinds to
    the committed offsets, as applications do), the others commit.  While
    a transaction is open the group's committed offsets (admin
    list_consumer_group_offsets) still show the previous values; after a
    commit they show the positions sent; after an abort they stay.  In the
    end the read_committed output holds every input transformed exactly
    once, in input order; a new member of the group finds nothing left."""
    src, dst = unique_topic("txin"), unique_topic("txout")
    ck_create_topic(broker.bootstrap, src, 2)
    ck_create_topic(broker.bootstrap, dst, 2)
    in_tps = [(src, 0), (src, 1)]
    n = 60
    inputs = plain_produce(broker.bootstrap, values("IN", in_tps, n // 2))
    in_by_tp = {tp: [s.value for s in inputs if s.tp == tp] for tp in in_tps}
    group = "txg-" + uuid.uuid4().hex[:8]
    where = "%s consume-transform-produce" % lib_label(lib)

    out_model = LogModel([(dst, 0), (dst, 1)])
    prod = TxnProducer(lib, broker.bootstrap, tid("ctp"))
    cons = GroupConsumer(lib, broker.bootstrap, src, group)
    rounds = []
    try:
        prod.init()
        committed = {tp: None for tp in in_tps}
        assert group_offsets(broker.bootstrap, group, in_tps) == committed
        done = 0
        rnd = 0
        deadline = time.monotonic() + 120
        while done < n:
            assert time.monotonic() < deadline, "%s: only %d of %d inputs processed in 120 s (rounds %s)" % (
                where, done, n, rounds)
            batch = cons.poll_batch(7, 1.0)
            if not batch:
                continue
            rnd += 1
            abort = rnd in (2, 4)
            name = "R%d" % rnd
            prod.begin()
            prod.sent = []
            for p, o, k, v in batch:
                prod.send(dst, p, b"out:" + v, key=k)
            pos = cons.positions()
            prod.send_offsets(pos, cons)
            prod.flush()
            before = group_offsets(broker.bootstrap, group, in_tps)
            assert before == committed, \
                "%s round %d: with the transaction still open the committed offsets are %s, want the " \
                "previous %s (sent in the transaction: %s)" % (where, rnd, before, committed, pos)
            if abort:
                prod.abort()
                out_model.add(prod.sent, name)
                out_model.end(name, False)
                after = group_offsets(broker.bootstrap, group, in_tps)
                assert after == committed, "%s round %d: after abort the committed offsets are %s, want %s" % (
                    where, rnd, after, committed)
                time.sleep(0.5)
                after = group_offsets(broker.bootstrap, group, in_tps)
                assert after == committed, "%s round %d: 0.5 s after abort the committed offsets are %s, " \
                                           "want %s" % (where, rnd, after, committed)
                cons.rewind()
            else:
                prod.commit()
                out_model.add(prod.sent, name)
                out_model.end(name, True)
                committed = dict(committed)
                committed.update(pos)
                wait_group_offsets(broker.bootstrap, group, in_tps, committed, 10,
                                   "%s round %d after commit" % (where, rnd))
                done += len(batch)
            rounds.append((rnd, "abort" if abort else "commit", len(batch), pos))
    finally:
        cons.close()
        prod.close()
    assert done == n, "%s: %d records processed in committed rounds, want %d (rounds %s)" % (
        where, done, n, rounds)
    assert [r[1] for r in rounds[:4]] == ["commit", "abort", "commit", "abort"], rounds
    assert committed == {tp: n // 2 for tp in in_tps}, "%s: final committed offsets %s" % (where, committed)

    # The output at read_committed: each input once, transformed, in input order.
    r = Reader(lib, broker.bootstrap, out_model.tps, "read_committed")
    try:
        out = r.read_to({tp: out_model.hw(tp) for tp in out_model.tps}, what=where)
    finally:
        r.close()
    for q in (0, 1):
        got = [v for _, v in out[(dst, q)]]
        want = [b"out:" + v for v in in_by_tp[(src, q)]]
        assert got == want, "%s: output partition %d at read_committed: %d records, want %d; duplicates %s; " \
                            "missing %s" % (where, q, len(got), len(want), sorted({v for v in got if got.count(v) > 1})[:5],
                                            [v for v in want if v not in got][:5])
    check_all(lib, broker, out_model, where + " output")

    # A new member resumes at the committed offsets: nothing left.
    again = GroupConsumer(lib, broker.bootstrap, src, group)
    try:
        deadline = time.monotonic() + 30
        extra = []
        while not again.assignment():
            assert time.monotonic() < deadline, "%s: a new member got no assignment in 30 s" % where
            extra += again.poll_batch(10, 0.5)
        end = time.monotonic() + 3
        while time.monotonic() < end:
            extra += again.poll_batch(10, 0.5)
        assert not extra, "%s: a new member of %s re-read %d records past the committed offsets: %s" % (
            where, group, len(extra), extra[:5])
    finally:
        again.close()


@pytest.mark.timeout(90)
def test_pending_transactional_offsets_are_not_stable(lib, broker):
    """While a transaction holds offsets for a group (sent with
    send_offsets_to_transaction, not yet committed), a read_committed
    consumer of that group asking for its committed offsets
    (OffsetFetch with require_stable, KIP-447) must not be told the old
    offset as if it were stable: Kafka answers UNSTABLE_OFFSET_COMMIT and the
    client retries until the transaction ends.  So committed() either
    returns the new offset (once the commit lands, 3 s later) or gives up
    with an unstable-offset/timeout error -- never the stale value."""
    src = unique_topic("txst")
    ck_create_topic(broker.bootstrap, src, 1)
    plain_produce(broker.bootstrap, values("S", [(src, 0)], 5))
    group = "txst-" + uuid.uuid4().hex[:8]
    where = "%s committed() while offsets are pending" % lib_label(lib)
    member = GroupConsumer(lib, broker.bootstrap, src, group)
    prod = TxnProducer(lib, broker.bootstrap, tid("st"))
    try:
        deadline = time.monotonic() + 30
        got = []
        while len(got) < 3:
            assert time.monotonic() < deadline, "%s: member read %d records in 30 s" % (where, len(got))
            got += member.poll_batch(3, 0.5)
        prod.init()
        prod.begin()
        prod.send_offsets({(src, 0): 3}, member)
        # The pending offset is not visible without require_stable either.
        assert group_offsets(broker.bootstrap, group, [(src, 0)]) == {(src, 0): None}

        result = {}

        def ask():
            t0 = time.monotonic()
            if lib == "confluent":
                c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                              "isolation.level": "read_committed"})
                try:
                    x = c.committed([TopicPartition(src, 0)], timeout=15)[0]
                    result["v"] = (x.offset if x.error is None else "error %s" % x.error)
                except Exception as e:
                    result["v"] = "error %r" % e
                finally:
                    c.close()
            else:
                c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group, enable_auto_commit=False,
                                  isolation_level="read_committed")
                try:
                    result["v"] = c.committed(KTopicPartition(src, 0), timeout_ms=15000)
                except Exception as e:
                    result["v"] = "error %r" % e
                finally:
                    c.close()
            result["s"] = time.monotonic() - t0

        th = threading.Thread(target=ask, daemon=True)
        t_ask = time.monotonic()
        th.start()
        time.sleep(3.0)
        prod.commit()
        t_commit = time.monotonic()
        th.join(30)
        assert not th.is_alive(), "%s: committed() did not return within 30 s" % where
    finally:
        prod.close()
        member.close()
    v = result.get("v")
    stale = v is None or v == -1001 or (isinstance(v, int) and v < 0)
    assert not stale, (
        "%s: a read_committed consumer's committed() returned %r after %.2f s, i.e. the previous (no) "
        "committed offset, while a transaction still held offset 3 for the group; Kafka answers "
        "OffsetFetch(require_stable=true) with UNSTABLE_OFFSET_COMMIT for such partitions (KIP-447), "
        "so the client waits until the transaction ends" % (where, v, result.get("s", -1)))
    assert v == 3 or (isinstance(v, str) and re.search(r"UNSTABLE|imed ?out|TIMED_OUT", v)), \
        "%s: committed() returned %r" % (where, v)
    wait_group_offsets(broker.bootstrap, group, [(src, 0)], {(src, 0): 3}, 10, where + ", after the commit")
    print("%s: committed() returned %r after %.2f s (commit at +%.2f s)" % (
        where, v, result.get("s", -1), t_commit - t_ask))


# ---------------------------------------------------------------- fencing


@pytest.mark.timeout(120)
@pytest.mark.parametrize("next_op", ["commit", "produce"])
def test_second_producer_fences_the_first(lib, next_op, broker):
    """Producer 1 has a transaction open (records flushed to partition 0).
    Producer 2 with the same transactional.id calls init_transactions: the
    open transaction is aborted (its partitions' last stable offsets move
    on) and producer 1 is fenced -- its next operation (commit, or a send
    to partitions 0 and 1 then commit) fails with a fatal fencing error, as
    do the ones after it; none of its later records reach the log.
    Producer 2 then commits normally."""
    t = unique_topic("txfence")
    ck_create_topic(broker.bootstrap, t, 2)
    tps = [(t, 0), (t, 1)]
    model = LogModel(tps)
    the_id = tid("fence")
    where = "%s fencing (%s)" % (lib_label(lib), next_op)
    p1 = TxnProducer(lib, broker.bootstrap, the_id)
    p2 = TxnProducer(lib, broker.bootstrap, the_id)
    try:
        p1.init()
        run_txn(p1, values("F1", [(t, 0)], 5), "open", model, "F1")
        check_marks(broker.bootstrap, model, where + ", producer 1's transaction open")

        p2.init()
        model.end("F1", False)
        wait_marks(broker.bootstrap, tps, "read_committed", {tp: model.hw(tp) for tp in tps}, 10,
                   where + ": producer 2's init_transactions should abort producer 1's transaction")

        p1.sent = []
        late = []
        if next_op == "produce":
            for q in (0, 1):
                # kafka-python may learn of the fencing from the first send's
                # answer before the second is called: the second then raises
                # at once (it is in BUMPING_PRODUCER_EPOCH), which is as good
                # a refusal as a failed delivery.
                if attempt(lambda: late.append(p1.send(t, q, b"F1-late-%d" % q))) is not None:
                    break
        err = attempt(p1.commit)
        attempt(lambda: p1.resolve(5))
        assert err is not None, "%s: producer 1's %s succeeded after producer 2 took over its transactional id" % (
            where, next_op)
        if lib == "confluent":
            assert_ck_fenced(err, "%s: producer 1's %s" % (where, next_op))
            # (what librdkafka raises for the calls after a fatal error varies:
            # _FENCED, or _CONFLICT for a commit it still counts as in progress)
            err2 = attempt(p1.begin)
            assert err2 is not None, "%s: producer 1 began a transaction after being fenced" % where
        else:
            # kafka-python reacts to the produce error (INVALID_PRODUCER_EPOCH)
            # by trying an epoch bump in the background, which the broker
            # must refuse as fenced: every later call then fails fenced.
            deadline = time.monotonic() + 15
            while True:
                err2 = attempt(p1.abort)
                if kp_fenced(err2) or (kp_fenced(err) and err2 is not None):
                    break
                assert time.monotonic() < deadline, \
                    "%s: producer 1 not reported fenced: %s raised %r, abort_transaction then %r" % (
                        where, next_op, err, err2)
                time.sleep(0.3)
        for s in late:
            assert s.offset is None or s.offset < 0, "%s: a fenced producer's record was written at %s[%d]@%s" % (
                where, s.topic, s.partition, s.offset)

        run_txn(p2, values("F2", tps, 4), "commit", model, "F2")
    finally:
        p1.close()
        p2.close()
    check_all(lib, broker, model, where)


# ---------------------------------------------------------------- transaction timeout


TXN_TIMEOUT_MS = 3000
ABORT_WAIT_S = 25  # timeout + the broker's 10 s check interval + margin


@pytest.mark.timeout(150)
def test_transaction_timeout_aborts_and_fences(lib, broker, tmp_path):
    """Two producers with transaction.timeout.ms=3000 leave a transaction
    open on both partitions: one in a process that is then killed (it stops
    dead), one that just stays idle.  Plain records follow.  The broker
    aborts both transactions (it checks every 10 s): the last stable offset
    moves to the end, read_committed never sees their records (it is read
    all along), the idle producer's later commit fails, and a new producer
    with the dead one's transactional.id starts and commits normally."""
    t = unique_topic("txtmo")
    ck_create_topic(broker.bootstrap, t, 2)
    tps = [(t, 0), (t, 1)]
    model = LogModel(tps)
    where = "%s transaction timeout" % lib_label(lib)
    dead_id = tid("dead")
    plain_produce(broker.bootstrap, values("P0", tps, 2), model)
    proc, out, err = start_child({"lib": lib, "bootstrap": broker.bootstrap, "tid": dead_id,
                                  "timeout_ms": TXN_TIMEOUT_MS,
                                  "steps": [{"outcome": "open", "records": records_json(values("D", tps, 4))}]},
                                 tmp_path, "dead")
    idle = TxnProducer(lib, broker.bootstrap, tid("idle"), timeout_ms=TXN_TIMEOUT_MS)
    watcher = None
    try:
        steps = wait_child_ready(proc, out, err)
        stop_child(proc)
        t_open = time.monotonic()
        child_steps_into(model, steps, "D")
        idle.init()
        run_txn(idle, values("I", tps, 3), "open", model, "I")
        plain_produce(broker.bootstrap, values("P1", tps, 2), model)
        lso = ck_marks(broker.bootstrap, tps, "read_committed")
        if time.monotonic() - t_open < TXN_TIMEOUT_MS / 1000.0 - 0.5:  # else the broker may have aborted already
            assert lso == {tp: 2 for tp in tps}, \
                "%s: right after the transactions opened, read_committed latest offsets are %s, want 2" % (
                    where, lso)

        watcher = Reader(lib, broker.bootstrap, tps, "read_committed")
        model.end("D0", False)
        model.end("I", False)
        # the order the broker aborts them in is its own: compare marker sets below
        hw = {tp: model.hw(tp) for tp in tps}
        deadline = t_open + ABORT_WAIT_S
        while ck_marks(broker.bootstrap, tps, "read_committed") != hw:
            assert time.monotonic() < deadline, \
                "%s: %d s after the transactions opened (timeout %d ms), read_committed latest offsets are " \
                "still %s, want %s (the broker should have aborted them)\nread_uncommitted: %s" % (
                    where, ABORT_WAIT_S, TXN_TIMEOUT_MS, ck_marks(broker.bootstrap, tps, "read_committed"), hw,
                    ck_marks(broker.bootstrap, tps, "read_uncommitted"))
            watcher.poll_for(0.5)
        aborted_after = time.monotonic() - t_open
        recs = watcher.read_to(hw, what="while waiting for the timeout")
        check_reads(model, recs, "read_committed", where + " [reader running throughout]")

        err_commit = attempt(idle.commit)
        assert err_commit is not None, \
            "%s: the idle producer committed after the broker had aborted its transaction on timeout" % where
        if lib == "confluent":
            ke = ck_error(err_commit)
            assert ke is not None, "%s: idle producer's commit raised %r" % (where, err_commit)

        fresh = TxnProducer(lib, broker.bootstrap, dead_id, timeout_ms=TXN_TIMEOUT_MS)
        try:
            fresh.init()
            run_txn(fresh, values("N", tps, 2), "commit", model, "N")
        finally:
            fresh.close()
    finally:
        if watcher is not None:
            watcher.close()
        idle.close()
        stop_child(proc)
    # Markers: both aborts (in the broker's order), then the new commit.
    for tp in tps:
        ms = model.markers[tp]
        assert sorted(x[0] for x in ms[:2]) == ["D0", "I"] and [x[1] for x in ms] == [False, False, True]
    check_marks(broker.bootstrap, model, where)
    read_and_check(lib, broker.bootstrap, model, where)
    check_disk(broker, model, where)
    print("%s: aborted %.1f s after opening (timeout %d ms)" % (where, aborted_after, TXN_TIMEOUT_MS))


# ---------------------------------------------------------------- kill -9


@pytest.mark.timeout(180)
def test_kill9_after_commits(lib, broker):
    """Commit, abort, commit on two topics, then kill -9 the broker before
    anything was read, and restart it: the committed records are all there
    exactly once at their offsets, the aborted ones stay hidden from
    read_committed; the group offsets the committed transactions sent
    (send_offsets_to_transaction) are the group's committed offsets, the
    aborted one's are not.  The same producer carries on and commits.  A
    second producer with the same transactional.id then takes over, the
    broker is killed again: after the restart the first producer is still
    fenced (the bumped epoch survived) and the second one commits."""
    a, b = unique_topic("txka"), unique_topic("txkb")
    ck_create_topic(broker.bootstrap, a, 3)
    ck_create_topic(broker.bootstrap, b, 1)
    tps = [(a, 0), (a, 1), (a, 2), (b, 0)]
    model = LogModel(tps)
    the_id = tid("kill")
    where = "%s kill -9 after commits" % lib_label(lib)
    group = "txkg-" + uuid.uuid4().hex[:8]
    gtps = [(b, 0), (a, 0), (a, 1)]
    p1 = TxnProducer(lib, broker.bootstrap, the_id)
    p2 = None
    try:
        p1.init()
        run_txn(p1, values("K1", tps, 10), "commit", model, "K1", group=group, offsets={(b, 0): 5, (a, 0): 11})
        run_txn(p1, values("K2", tps, 5), "abort", model, "K2", group=group, offsets={(b, 0): 9, (a, 1): 3})
        run_txn(p1, values("K3", tps[:3], 7), "commit", model, "K3", group=group, offsets={(a, 0): 12})
        want_offsets = {(b, 0): 5, (a, 0): 12, (a, 1): None}
        wait_group_offsets(broker.bootstrap, group, gtps, want_offsets, 10, where + ", before the crash")
        broker.kill9()
        broker.start()
        wait_group_offsets(broker.bootstrap, group, gtps, want_offsets, 10, where + ", after restart 1")
        check_all(lib, broker, model, where + ", restart 1")

        run_txn(p1, values("K4", tps, 3), "commit", model, "K4")
        p2 = TxnProducer(lib, broker.bootstrap, the_id)
        p2.init()
        broker.kill9()
        broker.start()
        p1.sent = []
        err = attempt(lambda: run_txn(p1, values("K5", tps, 2), "commit"))
        assert err is not None, "%s: producer 1 committed after producer 2 took over its id (and a restart)" % where
        if lib == "confluent":
            assert_ck_fenced(err, where + ": producer 1 after restart 2")
        late = [s for s in p1.sent if s.offset is not None and s.offset >= 0]
        assert not late, "%s: a fenced producer's records were written: %s" % (where, late[:5])
        run_txn(p2, values("K6", tps, 4), "commit", model, "K6", group=group, offsets={(a, 1): 4})
    finally:
        p1.close()
        if p2 is not None:
            p2.close()
    check_all(lib, broker, model, where + ", restart 2")
    wait_group_offsets(broker.bootstrap, group, gtps, {(b, 0): 5, (a, 0): 12, (a, 1): 4}, 10, where + ", end")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", ["reinit", "timeout", "carry-on"])
def test_kill9_mid_transaction(lib, mode, broker, tmp_path):
    """A producer commits a transaction, then opens another (records flushed
    on both partitions) and plain records follow; the broker is killed with
    kill -9 and restarted.  Right after the restart the open transaction
    still holds the last stable offset back.  Then:

    * reinit: the producer had died too (killed); a new producer with its
      transactional.id initialises: the open transaction is aborted, the new
      one commits;
    * timeout: the producer had died (transaction.timeout.ms=3000): the
      broker aborts the transaction on timeout after the restart;
    * carry-on: the producer lived on: it sends more in the same transaction
      and commits it.

    The open transaction is never visible to read_committed before it is
    committed (a reader runs throughout), committed data is there once.  The
    open transaction also holds offsets for a group
    (send_offsets_to_transaction): they become the group's committed offsets
    only if it commits (carry-on), never while it is open or once aborted."""
    t = unique_topic("txkm")
    ck_create_topic(broker.bootstrap, t, 2)
    tps = [(t, 0), (t, 1)]
    model = LogModel(tps)
    the_id = tid("km")
    where = "%s kill -9 mid-transaction (%s)" % (lib_label(lib), mode)
    timeout_ms = TXN_TIMEOUT_MS if mode == "timeout" else None
    group = "txkmg-" + uuid.uuid4().hex[:8]
    pending = {(t, 0): 4, (t, 1): 7}
    nothing = {tp: None for tp in tps}
    proc = None
    prod = None
    watcher = None
    try:
        if mode == "carry-on":
            prod = TxnProducer(lib, broker.bootstrap, the_id)
            prod.init()
            run_txn(prod, values("C", tps, 6), "commit", model, "C")
            run_txn(prod, values("O", tps, 5), "open", model, "O", group=group, offsets=pending)
        else:
            proc, out, err = start_child(
                {"lib": lib, "bootstrap": broker.bootstrap, "tid": the_id, "timeout_ms": timeout_ms,
                 "steps": [{"outcome": "commit", "records": records_json(values("C", tps, 6))},
                           {"outcome": "open", "records": records_json(values("O", tps, 5)),
                            "group": group, "offsets": [[tt, q, o] for (tt, q), o in pending.items()]}]},
                tmp_path, "producer")
            steps = wait_child_ready(proc, out, err)
            named = child_steps_into(model, steps, "S")
            assert [n for n, _ in named] == ["S0", "S1"]
            stop_child(proc)
        t_open = time.monotonic()
        open_txn = "O" if mode == "carry-on" else "S1"
        plain_produce(broker.bootstrap, values("P", tps, 3), model)
        if mode != "timeout":
            check_marks(broker.bootstrap, model, where + ", before the crash")
        assert group_offsets(broker.bootstrap, group, tps) == nothing, "%s: pending offsets visible" % where

        broker.kill9()
        broker.start()
        if mode != "timeout":
            check_marks(broker.bootstrap, model, where + ", right after the restart")
        assert group_offsets(broker.bootstrap, group, tps) == nothing, \
            "%s: the open transaction's offsets are visible after the restart" % where
        watcher = Reader(lib, broker.bootstrap, tps, "read_committed")
        watcher.poll_for(1.0)
        check_reads(model, watcher.records, "read_committed", where + " [reader right after the restart]")

        if mode == "reinit":
            fresh = TxnProducer(lib, broker.bootstrap, the_id)
            try:
                fresh.init()
                model.end(open_txn, False)
                wait_marks(broker.bootstrap, tps, "read_committed", {tp: model.hw(tp) for tp in tps}, 10,
                           where + ": the new producer's init_transactions should abort the open transaction")
                run_txn(fresh, values("N", tps, 4), "commit", model, "N")
            finally:
                fresh.close()
        elif mode == "timeout":
            model.end(open_txn, False)
            hw = {tp: model.hw(tp) for tp in tps}
            deadline = t_open + ABORT_WAIT_S + 10
            while ck_marks(broker.bootstrap, tps, "read_committed") != hw:
                assert time.monotonic() < deadline, \
                    "%s: the transaction open at the crash was not aborted %d s after it opened: read_committed " \
                    "latest offsets %s, want %s" % (where, ABORT_WAIT_S + 10,
                                                    ck_marks(broker.bootstrap, tps, "read_committed"), hw)
                watcher.poll_for(0.5)
        else:
            prod.sent = []
            more = [prod.send(tt, q, v) for tt, q, v in values("O", tps, 3, start=5)]
            prod.commit()
            assert all(s.offset is not None and s.error is None for s in more), \
                "%s: records sent after the restart not acknowledged: %s" % (where, more)
            model.add(more, open_txn)
            model.end(open_txn, True)

        recs = watcher.read_to({tp: model.lso(tp) for tp in tps}, what="after the open transaction ended")
        check_reads(model, recs, "read_committed", where + " [reader running throughout]")
        if mode == "carry-on":
            wait_group_offsets(broker.bootstrap, group, tps, pending, 10, where + ": after the commit")
        else:
            time.sleep(0.5)
            assert group_offsets(broker.bootstrap, group, tps) == nothing, \
                "%s: the aborted transaction's offsets became the group's committed offsets" % where
    finally:
        if watcher is not None:
            watcher.close()
        if prod is not None:
            prod.close()
        if proc is not None:
            stop_child(proc)
    check_all(lib, broker, model, where)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "child":
    child_main(json.loads(sys.argv[2]))


@pytest.mark.timeout(120)
def test_offsets_sent_with_an_old_generation_are_fenced(broker):
    """KIP-447 zombie fencing, as Kafka Streams relies on it: a consume-transform-produce
    member whose group has since rebalanced (a second member joined: a new generation)
    sends offsets to its transaction with the group metadata it had before. The
    coordinator refuses them (ILLEGAL_GENERATION; librdkafka makes it an abortable error),
    the transaction is aborted and the group's offsets stay as they were. With the
    member's current metadata the same offsets are committed. (librdkafka sends
    TxnOffsetCommit v3 with the generation, member id and instance id of the metadata.)"""
    src, dst = unique_topic("zin"), unique_topic("zout")
    ck_create_topic(broker.bootstrap, src, 2)
    ck_create_topic(broker.bootstrap, dst, 1)
    plain_produce(broker.bootstrap, values("Z", [(src, 0), (src, 1)], 5))
    group = "zg-" + uuid.uuid4().hex[:8]
    first = GroupConsumer("confluent", broker.bootstrap, src, group)
    second = None
    prod = TxnProducer("confluent", broker.bootstrap, tid("zombie"))
    try:
        prod.init()
        deadline = time.monotonic() + 30
        while len(first.assignment()) < 2:
            assert time.monotonic() < deadline, "the first member got no assignment in 30 s"
            first.poll_batch(10, 0.5)
        old = first.c.consumer_group_metadata()
        second = GroupConsumer("confluent", broker.bootstrap, src, group)
        deadline = time.monotonic() + 60
        while not (second.assignment() and len(first.assignment()) == 1):
            assert time.monotonic() < deadline, "no rebalance to two members in 60 s: %s / %s" % (
                first.assignment(), second.assignment())
            first.poll_batch(10, 0.2)
            second.poll_batch(10, 0.2)
        tp = first.assignment()[0]

        prod.begin()
        prod.send(dst, 0, b"from-a-zombie")
        with pytest.raises(KafkaException) as e:
            prod.p.send_offsets_to_transaction([TopicPartition(tp[0], tp[1], 3)], old, 30)
        err = e.value.args[0]
        assert err.code() == KafkaError.ILLEGAL_GENERATION, "send_offsets with the old generation: %s" % err
        assert err.txn_requires_abort(), "an abortable error, as Kafka's is: %s" % err
        prod.abort()
        assert group_offsets(broker.bootstrap, group, [tp]) == {tp: None}

        prod.begin()
        prod.send(dst, 0, b"from-the-member")
        prod.send_offsets({tp: 3}, first)
        prod.commit()
        wait_group_offsets(broker.bootstrap, group, [tp], {tp: 3}, 10, "offsets sent with the current metadata")
    finally:
        first.close()
        if second is not None:
            second.close()
        prod.close()
