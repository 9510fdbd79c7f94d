"""Idempotent producer on raw sockets: InitProducerId and the per-partition
producer sequence checks on Produce.

Every expected answer here is what a real Apache Kafka broker answered to the
same bytes. Kafka 4.1.1 and 4.4.0 were checked (single-node KRaft, combined
broker+controller, default topic configs) and gave the same answers. Each test
says what Kafka answered. The error codes, by name:

    OUT_OF_ORDER_SEQUENCE_NUMBER 45, INVALID_PRODUCER_EPOCH 47,
    TRANSACTIONAL_ID_AUTHORIZATION_FAILED 53, INVALID_REQUEST 42,
    INVALID_RECORD 87, COORDINATOR_LOAD_IN_PROGRESS 14

Kafka never answers DUPLICATE_SEQUENCE_NUMBER (46) to these requests. A
duplicate gets NONE and the offsets of the batch first written.

To run the tests that need no restart against a broker that is already
running (for example real Kafka), set SLUICE_EXTERNAL_BOOTSTRAP=host:port.
The restart tests are then skipped, unless SLUICE_EXTERNAL_START (a shell
command that starts that broker in the background) and SLUICE_EXTERNAL_PIDFILE
(the file where that command writes the broker's PID) are also set. In that
case they stop it by that PID (SIGTERM, or SIGKILL for the kill -9 cases) and
start it again.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import pytest

import wire
from wire import Conn, ConnectionClosed, Reader, Record, decode_batch_headers, encode_batch, idempotent_batch
from conftest import unique_topic

EXTERNAL = os.environ.get("SLUICE_EXTERNAL_BOOTSTRAP")
EXTERNAL_START = os.environ.get("SLUICE_EXTERNAL_START")
EXTERNAL_PIDFILE = os.environ.get("SLUICE_EXTERNAL_PIDFILE")

INT32_MAX = 2 ** 31 - 1
# Kafka answered the same in Produce v3, v8 and v9 (the first flexible one).
PRODUCE_VERSIONS = [3, 9]


# --------------------------------------------------------------------- brokers

class ExternalBroker:
    """An already-running broker (e.g. real Kafka) that can be stopped by PID
    and started again by a shell command. Used only when SLUICE_EXTERNAL_* is set."""

    def __init__(self, bootstrap, start_cmd, pidfile):
        self.bootstrap = bootstrap
        self.start_cmd = start_cmd
        self.pidfile = pidfile

    def _pid(self):
        with open(self.pidfile) as f:
            return int(f.read().strip())

    def _signal_and_wait(self, sig, timeout=90.0):
        pid = self._pid()
        os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
        raise AssertionError("external broker pid %d still alive %.0fs after signal %d" % (pid, timeout, sig))

    def stop(self):
        self._signal_and_wait(signal.SIGTERM)

    def kill9(self):
        self._signal_and_wait(signal.SIGKILL)

    def start(self, timeout=90.0):
        subprocess.run(self.start_cmd, shell=True, check=True, stdout=subprocess.DEVNULL)
        host, port = self.bootstrap.rsplit(":", 1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((host, int(port)), timeout=1):
                    return self
            except OSError:
                time.sleep(0.2)
        raise AssertionError("external broker did not listen on %s within %.0fs" % (self.bootstrap, timeout))

    def restart(self):
        self.stop()
        return self.start()


@pytest.fixture
def bootstrap(request):
    """Bootstrap address: a fresh Sluice broker, or SLUICE_EXTERNAL_BOOTSTRAP."""
    if EXTERNAL:
        return EXTERNAL
    return request.getfixturevalue("broker").bootstrap


@pytest.fixture
def restartable(request):
    """A broker the test may restart: a fresh Sluice (conftest `broker`), or
    the external broker if it can be restarted, else the test is skipped."""
    if EXTERNAL:
        if not (EXTERNAL_START and EXTERNAL_PIDFILE):
            pytest.skip("SLUICE_EXTERNAL_BOOTSTRAP set without SLUICE_EXTERNAL_START/_PIDFILE: cannot restart it")
        return ExternalBroker(EXTERNAL, EXTERNAL_START, EXTERNAL_PIDFILE)
    return request.getfixturevalue("broker")


def restart(b, how):
    if how == "sigterm":
        b.restart()  # conftest Broker.restart(): SIGTERM, wait, start on the same port/data
    else:
        b.kill9()
        b.start()


# --------------------------------------------------------------------- helpers

def wait_ready(bootstrap, topic, partitions=1, timeout=60.0):
    """Until a Fetch at offset 0 answers NONE on every partition. Kafka answers
    NOT_LEADER_OR_FOLLOWER for a moment after a topic is created or the broker
    restarts."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            with Conn.to(bootstrap) as c:
                errs = [c.fetch(topic, p, 0, max_wait_ms=0)["error"] for p in range(partitions)]
            if all(e == 0 for e in errs):
                return
            last = errs
        except (OSError, ConnectionClosed, ValueError) as e:
            last = e
        time.sleep(0.1)
    raise AssertionError("topic %s not ready within %.0fs (last: %r)" % (topic, timeout, last))


def new_topic(bootstrap, partitions=1):
    topic = unique_topic("idem")
    with Conn.to(bootstrap) as c:
        err, msg = c.create_topic(topic, partitions)
    assert err == 0, "CreateTopics %s: %s %s" % (topic, wire.error_name(err), msg)
    wait_ready(bootstrap, topic, partitions)
    return topic


def init_pid(c, version=1, timeout=30.0, **kw):
    """InitProducerId, retried while the broker answers COORDINATOR_LOAD_IN_PROGRESS
    (Kafka does for a moment after it starts, until its producer-id block is
    allocated)."""
    deadline = time.monotonic() + timeout
    while True:
        d = c.init_producer_id(version, **kw)
        if d["error"] == 14 and time.monotonic() < deadline:
            time.sleep(0.1)
            continue
        return d


def new_pid(c, version=1):
    d = init_pid(c, version)
    assert d["error"] == 0 and d["producer_id"] >= 0 and d["producer_epoch"] == 0, d
    return d["producer_id"]


def vals(n, tag):
    return [b"%s-%d" % (tag.encode(), i) for i in range(n)]


def ib(n, tag, pid, epoch, seq, **kw):
    """An idempotent batch of n records with values tag-0..tag-(n-1)."""
    return idempotent_batch(vals(n, tag), pid, epoch, seq, **kw)


def ans(p):
    """(error name, base_offset) of one partition's Produce answer."""
    return wire.ERROR_NAMES.get(p["error"], p["error"]), p["base_offset"]


def produce(c, topic, batch, pv=3, partition=0, acks=-1):
    return ans(c.produce_v(topic, partition, batch, version=pv, acks=acks))


def log(c, topic, partition=0):
    """(high watermark, [(base_offset, record_count, producer_id, epoch, base_sequence)])."""
    f = c.fetch(topic, partition, 0)
    assert f["error"] == 0, wire.error_name(f["error"])
    hs = decode_batch_headers(f["records"] or b"")
    return f["high_watermark"], [(h.base_offset, h.record_count, h.producer_id, h.producer_epoch, h.base_sequence)
                                 for h in hs]


def values(c, topic, partition=0):
    recs, _hw = c.fetch_all(topic, partition)
    return [r.value for r in recs]


OK = "NONE"
OOO = "OUT_OF_ORDER_SEQUENCE_NUMBER"
BAD_EPOCH = "INVALID_PRODUCER_EPOCH"
INVALID_RECORD = "INVALID_RECORD"
TXN_AUTH = "TRANSACTIONAL_ID_AUTHORIZATION_FAILED"


# ===================================================================== InitProducerId

def test_api_versions_advertises_init_producer_id_0_to_5(bootstrap):
    # Kafka 4.1.1 / 4.4.0 ApiVersions: InitProducerId (key 22) min 0, max 5.
    with Conn.to(bootstrap) as c:
        err, keys = c.api_versions()
    assert err == 0 and keys.get(wire.INIT_PRODUCER_ID) == (0, 5), keys.get(wire.INIT_PRODUCER_ID)


@pytest.mark.parametrize("version", [0, 1, 2, 3, 4, 5])
def test_init_producer_id_non_transactional_gives_a_new_id_each_call(bootstrap, version):
    # Kafka (transactional_id null, v0..v5; v2+ flexible): error NONE,
    # producer_epoch 0, and every call a new producer_id, one higher than the
    # one before (a fresh cluster starts at 0).
    with Conn.to(bootstrap) as c:
        a = init_pid(c, version)
        b = init_pid(c, version)
    for d in (a, b):
        assert (d["error"], d["producer_epoch"]) == (0, 0) and d["producer_id"] >= 0, d
    assert b["producer_id"] > a["producer_id"], (a, b)


@pytest.mark.parametrize("version", [3, 4, 5])
def test_init_producer_id_v3_plus_existing_id_is_ignored_without_transactional_id(bootstrap, version):
    # Kafka: with transactional_id null, the producer_id/epoch of v3+ are not
    # looked at (if both are set or both -1). Each answer is NONE with a
    # brand-new producer_id and epoch 0, also for an epoch the id never had
    # and for an id that was never allocated.
    with Conn.to(bootstrap) as c:
        pid = new_pid(c, version)
        seen = {pid}
        for given in [(pid, 0), (pid, 5), (999999, 0)]:
            d = init_pid(c, version, producer_id=given[0], producer_epoch=given[1])
            assert d["error"] == 0 and d["producer_epoch"] == 0, (given, d)
            assert d["producer_id"] not in seen and d["producer_id"] > pid, (given, d, seen)
            seen.add(d["producer_id"])


@pytest.mark.parametrize("version", [3, 4, 5])
def test_init_producer_id_id_without_epoch_or_epoch_without_id_is_invalid_request(bootstrap, version):
    # Kafka: producer_id set with producer_epoch -1, or producer_id -1 with an
    # epoch set, gets INVALID_REQUEST (42) with producer_id -1, epoch -1.
    with Conn.to(bootstrap) as c:
        pid = new_pid(c, version)
        for given in [(pid, -1), (-1, 3)]:
            d = init_pid(c, version, producer_id=given[0], producer_epoch=given[1])
            assert (d["error"], d["producer_id"], d["producer_epoch"]) == (wire.INVALID_REQUEST, -1, -1), (given, d)
        # and the broker still hands out ids afterwards
        assert new_pid(c, version) > pid


def test_init_producer_id_ignores_transaction_timeout_without_transactional_id(bootstrap):
    # Kafka (v1, transactional_id null): transaction_timeout_ms -5, 0 and
    # INT32_MAX all get NONE, a new producer_id, epoch 0.
    with Conn.to(bootstrap) as c:
        for timeout_ms in (-5, 0, INT32_MAX):
            d = init_pid(c, 1, transaction_timeout_ms=timeout_ms)
            assert d["error"] == 0 and d["producer_id"] >= 0 and d["producer_epoch"] == 0, (timeout_ms, d)


@pytest.mark.parametrize("version", [0, 1, 2, 3, 4, 5])
def test_init_producer_id_empty_transactional_id_is_invalid_request(bootstrap, version):
    # Kafka: transactional_id "" (empty, not null) gets INVALID_REQUEST (42),
    # producer_id -1, epoch -1, in every version.
    with Conn.to(bootstrap) as c:
        d = init_pid(c, version, transactional_id="")
    assert (d["error"], d["producer_id"], d["producer_epoch"]) == (wire.INVALID_REQUEST, -1, -1), d


# ===================================================================== Produce: sequences

@pytest.mark.parametrize("pv", PRODUCE_VERSIONS)
def test_batches_in_sequence_are_appended_with_their_producer_fields(bootstrap, pv):
    # Kafka: seq 0 (3 records) -> NONE base_offset 0; seq 3 (2 records) -> NONE
    # base_offset 3. The fetched batches keep producer id, epoch and base sequence.
    t = new_topic(bootstrap)
    with Conn.to(bootstrap) as c:
        pid = new_pid(c)
        assert produce(c, t, ib(3, "a", pid, 0, 0), pv) == (OK, 0)
        assert produce(c, t, ib(2, "b", pid, 0, 3), pv) == (OK, 3)
        assert log(c, t) == (5, [(0, 3, pid, 0, 0), (3, 2, pid, 0, 3)])
        assert values(c, t) == vals(3, "a") + vals(2, "b")


@pytest.mark.parametrize("pv", PRODUCE_VERSIONS)
def test_duplicate_of_last_batch_gets_original_offset_and_is_written_once(bootstrap, pv):
    # Kafka: the exact retry of the last batch (twice) -> NONE, base_offset 3
    # (the original), nothing appended; the next sequence then lands at 5.
    t = new_topic(bootstrap)
    with Conn.to(bootstrap) as c:
        pid = new_pid(c)
        assert produce(c, t, ib(3, "a", pid, 0, 0), pv) == (OK, 0)
        assert produce(c, t, ib(2, "b", pid, 0, 3), pv) == (OK, 3)
        assert produce(c, t, ib(2, "b", pid, 0, 3), pv) == (OK, 3)
        assert produce(c, t, ib(2, "b", pid, 0, 3), pv) == (OK, 3)
        assert log(c, t) == (5, [(0, 3, pid, 0, 0), (3, 2, pid, 0, 3)])
        assert produce(c, t, ib(1, "c", pid, 0, 5), pv) == (OK, 5)
        assert log(c, t) == (6, [(0, 3, pid, 0, 0), (3, 2, pid, 0, 3), (5, 1, pid, 0, 5)])
        assert values(c, t) == vals(3, "a") + vals(2, "b") + vals(1, "c")


@pytest.mark.parametrize("pv", PRODUCE_VERSIONS)
def test_duplicates_within_the_last_five_batches_get_their_original_offsets(bootstrap, pv):
    # Kafka keeps the last 5 batches per producer and partition. Batches
    # 0..6 of 1..7 records (seqs 0,1,3,6,10,15,21 at offsets 0,1,3,6,10,15,21):
    # retries of the 1st..5th most recent -> NONE with their original
    # base_offset (21, 15, 10, 6, 3); retries of the 6th and 7th most recent
    # -> OUT_OF_ORDER_SEQUENCE_NUMBER (45), base_offset -1. Nothing is
    # appended by any retry; seq 28 then lands at 28.
    t = new_topic(bootstrap)
    with Conn.to(bootstrap) as c:
        pid = new_pid(c)
        batches, seq = [], 0
        for i in range(7):
            b = ib(i + 1, "w%d" % i, pid, 0, seq)
            assert produce(c, t, b, pv) == (OK, seq)  # offsets equal sequences here
            batches.append((seq, b))
            seq += i + 1
        before = log(c, t)
        assert before[0] == 28 and len(before[1]) == 7
        for i in (6, 5, 4, 3, 2):
            assert produce(c, t, batches[i][1], pv) == (OK, batches[i][0]), "retry of batch %d" % i
        for i in (1, 0):
            assert produce(c, t, batches[i][1], pv) == (OOO, -1), "retry of batch %d" % i
        assert log(c, t) == before
        assert produce(c, t, ib(1, "n", pid, 0, 28), pv) == (OK, 28)
        assert log(c, t)[0] == 29


def test_duplicate_detection_compares_sequence_range_not_payload(bootstrap):
    # Kafka: a batch with the same producer, epoch, first and last sequence as
    # the last batch but other record values -> NONE, base_offset 3 (the
    # original); the original records stay, nothing is appended.
    t = new_topic(bootstrap)
    with Conn.to(bootstrap) as c:
        pid = new_pid(c)
        assert produce(c, t, ib(3, "a", pid, 0, 0)) == (OK, 0)
        assert produce(c, t, ib(2, "b", pid, 0, 3)) == (OK, 3)
        assert produce(c, t, ib(2, "x", pid, 0, 3)) == (OK, 3)
        assert values(c, t) == vals(3, "a") + vals(2, "b")


@pytest.mark.parametrize("pv", PRODUCE_VERSIONS)
def test_partial_overlap_with_written_batches_is_out_of_order(bootstrap, pv):
    # Kafka, after seq 0 x3 and seq 3 x2 (next expected 5): seq 3 x1 (same
    # first seq, shorter), seq 3 x3 (longer), seq 4 x1 (inside the last
    # batch), seq 2 x2 (straddling two batches) -> each
    # OUT_OF_ORDER_SEQUENCE_NUMBER (45), base_offset -1, nothing appended.
    t = new_topic(bootstrap)
    with Conn.to(bootstrap) as c:
        pid = new_pid(c)
        assert produce(c, t, ib(3, "a", pid, 0, 0), pv) == (OK, 0)
        assert produce(c, t, ib(2, "b", pid, 0, 3), pv) == (OK, 3)
        for n, seq in [(1, 3), (3, 3), (1, 4), (2, 2)]:
            assert produce(c, t, ib(n, "o", pid, 0, seq), pv) == (OOO, -1), "seq %d x%d" % (seq, n)
        assert log(c, t) == (5, [(0, 3, pid, 0, 0), (3, 2, pid, 0, 3)])


@pytest.mark.parametrize("pv", PRODUCE_VERSIONS)
def test_sequence_gap_is_out_of_order_and_writes_nothing(bootstrap, pv):
    # Kafka, after seq 0 x3 (next expected 3): seq 5, seq 4 and seq INT32_MAX
    # -> OUT_OF_ORDER_SEQUENCE_NUMBER (45), base_offset -1, nothing appended
    # (fetch: hw 3, one batch). The expected seq 3 is still accepted after them.
    t = new_topic(bootstrap)
    with Conn.to(bootstrap) as c:
        pid = new_pid(c)
        assert produce(c, t, ib(3, "a", pid, 0, 0), pv) == (OK, 0)
        assert produce(c, t, ib(2, "g", pid, 0, 5), pv) == (OOO, -1)
        assert produce(c, t, ib(2, "g", pid, 0, 4), pv) == (OOO, -1)
        assert produce(c, t, ib(1, "g", pid, 0, INT32_MAX), pv) == (OOO, -1)
        assert log(c, t) == (3, [(0, 3, pid, 0, 0)])
        assert produce(c, t, ib(2, "b", pid, 0, 3), pv) == (OK, 3)
        assert log(c, t) == (5, [(0, 3, pid, 0, 0), (3, 2, pid, 0, 3)])
        assert values(c, t) == vals(3, "a") + vals(2, "b")


def test_first_batch_of_a_producer_on_a_partition_may_start_at_any_sequence(bootstrap):
    # Kafka: a producer (allocated by InitProducerId) with no state on the
    # partition: first batch seq 7 x2 -> NONE 0; seq 9 -> NONE 2; retry of
    # seq 9 -> NONE 2 (duplicate).
    t = new_topic(bootstrap)
    with Conn.to(bootstrap) as c:
        pid = new_pid(c)
        assert produce(c, t, ib(2, "a", pid, 0, 7)) == (OK, 0)
        assert produce(c, t, ib(1, "b", pid, 0, 9)) == (OK, 2)
        assert produce(c, t, ib(1, "b", pid, 0, 9)) == (OK, 2)
        assert log(c, t) == (3, [(0, 2, pid, 0, 7), (2, 1, pid, 0, 9)])


def test_producer_id_never_allocated_is_accepted(bootstrap):
    # Kafka does not check that a (non-transactional) producer id was handed out:
    # pid 999999 seq 0 x3 -> NONE 0, its retry -> NONE 0 (duplicate);
    # pid 999998 seq 7 x2 -> NONE 3, seq 9 -> NONE 5; pid 999997 epoch 5 seq 0 -> NONE 6.
    t = new_topic(bootstrap)
    with Conn.to(bootstrap) as c:
        assert produce(c, t, ib(3, "a", 999999, 0, 0)) == (OK, 0)
        assert produce(c, t, ib(3, "a", 999999, 0, 0)) == (OK, 0)
        assert produce(c, t, ib(2, "b", 999998, 0, 7)) == (OK, 3)
        assert produce(c, t, ib(1, "c", 999998, 0, 9)) == (OK, 5)
        assert produce(c, t, ib(1, "d", 999997, 5, 0)) == (OK, 6)
        assert log(c, t) == (7, [(0, 3, 999999, 0, 0), (3, 2, 999998, 0, 7), (5, 1, 999998, 0, 9),
                                 (6, 1, 999997, 5, 0)])


# ===================================================================== Produce: epochs

@pytest.mark.parametrize("pv", PRODUCE_VERSIONS)
def test_higher_epoch_must_restart_at_sequence_zero(bootstrap, pv):
    # Kafka, after epoch 0 seq 0 x3: epoch 1 seq 5 and epoch 1 seq 3 (the next
    # seq of epoch 0) -> OUT_OF_ORDER_SEQUENCE_NUMBER (45), nothing appended;
    # epoch 1 seq 0 x2 -> NONE 3, and its retry -> NONE 3 (duplicate).
    t = new_topic(bootstrap)
    with Conn.to(bootstrap) as c:
        pid = new_pid(c)
        assert produce(c, t, ib(3, "a", pid, 0, 0), pv) == (OK, 0)
        assert produce(c, t, ib(1, "b", pid, 1, 5), pv) == (OOO, -1)
        assert produce(c, t, ib(1, "b", pid, 1, 3), pv) == (OOO, -1)
        assert log(c, t) == (3, [(0, 3, pid, 0, 0)])
        assert produce(c, t, ib(2, "c", pid, 1, 0), pv) == (OK, 3)
        assert produce(c, t, ib(2, "c", pid, 1, 0), pv) == (OK, 3)
        assert log(c, t) == (5, [(0, 3, pid, 0, 0), (3, 2, pid, 1, 0)])


@pytest.mark.parametrize("pv", PRODUCE_VERSIONS)
def test_lower_epoch_is_invalid_producer_epoch(bootstrap, pv):
    # Kafka, after epoch 0 seq 0 x3 then epoch 1 seq 0 x2: epoch 0 seq 3 (the
    # next seq of the old epoch) and the exact retry of the epoch-0 batch ->
    # INVALID_PRODUCER_EPOCH (47), base_offset -1, nothing appended.
    t = new_topic(bootstrap)
    with Conn.to(bootstrap) as c:
        pid = new_pid(c)
        assert produce(c, t, ib(3, "a", pid, 0, 0), pv) == (OK, 0)
        assert produce(c, t, ib(2, "c", pid, 1, 0), pv) == (OK, 3)
        assert produce(c, t, ib(1, "d", pid, 0, 3), pv) == (BAD_EPOCH, -1)
        assert produce(c, t, ib(3, "a", pid, 0, 0), pv) == (BAD_EPOCH, -1)
        assert log(c, t) == (5, [(0, 3, pid, 0, 0), (3, 2, pid, 1, 0)])


def test_epoch_may_jump_and_is_compared_as_signed_int16(bootstrap):
    # Kafka: epoch 1 -> epoch 3 seq 0 -> NONE; epoch 3 seq 1 -> NONE;
    # epoch 32767 seq 0 -> NONE; then epoch -2 seq 0 -> INVALID_PRODUCER_EPOCH
    # (47): epochs compare as signed 16-bit numbers, no wrap-around.
    t = new_topic(bootstrap)
    with Conn.to(bootstrap) as c:
        pid = new_pid(c)
        assert produce(c, t, ib(3, "a", pid, 0, 0)) == (OK, 0)
        assert produce(c, t, ib(2, "c", pid, 1, 0)) == (OK, 3)
        assert produce(c, t, ib(1, "e", pid, 3, 0)) == (OK, 5)
        assert produce(c, t, ib(1, "f", pid, 3, 1)) == (OK, 6)
        assert produce(c, t, ib(1, "g", pid, 32767, 0)) == (OK, 7)
        assert produce(c, t, ib(1, "h", pid, -2, 0)) == (BAD_EPOCH, -1)
        assert log(c, t) == (8, [(0, 3, pid, 0, 0), (3, 2, pid, 1, 0), (5, 1, pid, 3, 0), (6, 1, pid, 3, 1),
                                 (7, 1, pid, 32767, 0)])


def test_producer_epoch_minus_one_with_producer_id(bootstrap):
    # Kafka: producer id set, producer epoch -1: seq 0 x2 -> NONE 0; its retry
    # -> NONE 0 (duplicate, not appended); seq 9 (a gap) -> NONE 2 (no
    # sequence check while the producer's epoch is -1); then epoch 0 seq 0 ->
    # NONE 3.
    t = new_topic(bootstrap)
    with Conn.to(bootstrap) as c:
        pid = new_pid(c)
        assert produce(c, t, ib(2, "a", pid, -1, 0)) == (OK, 0)
        assert produce(c, t, ib(2, "a", pid, -1, 0)) == (OK, 0)
        assert produce(c, t, ib(1, "b", pid, -1, 9)) == (OK, 2)
        assert produce(c, t, ib(1, "c", pid, 0, 0)) == (OK, 3)
        assert log(c, t) == (4, [(0, 2, pid, -1, 0), (2, 1, pid, -1, 9), (3, 1, pid, 0, 0)])


# ===================================================================== Produce: odd batches

def test_base_sequence_minus_one_with_producer_id_is_invalid_record(bootstrap):
    # Kafka: producer id set, epoch 0, base sequence -1 -> INVALID_RECORD (87),
    # base_offset -1, nothing appended (before and after a good batch).
    t = new_topic(bootstrap)
    with Conn.to(bootstrap) as c:
        pid = new_pid(c)
        assert produce(c, t, ib(2, "a", pid, 0, -1)) == (INVALID_RECORD, -1)
        assert log(c, t) == (0, [])
        assert produce(c, t, ib(2, "a", pid, 0, 0)) == (OK, 0)
        assert produce(c, t, ib(2, "a", pid, 0, -1)) == (INVALID_RECORD, -1)
        assert log(c, t) == (2, [(0, 2, pid, 0, 0)])


def test_batches_without_producer_id_are_never_deduplicated(bootstrap):
    # Kafka: producer id -1 is not idempotent whatever the other fields say:
    # (pid -1, epoch -1, seq 5) -> NONE 0 and again -> NONE 2;
    # (pid -1, epoch 3, seq -1) -> NONE 4. All written as sent.
    t = new_topic(bootstrap)
    with Conn.to(bootstrap) as c:
        assert produce(c, t, ib(2, "a", -1, -1, 5)) == (OK, 0)
        assert produce(c, t, ib(2, "a", -1, -1, 5)) == (OK, 2)
        assert produce(c, t, ib(2, "b", -1, 3, -1)) == (OK, 4)
        assert log(c, t) == (6, [(0, 2, -1, -1, 5), (2, 2, -1, -1, 5), (4, 2, -1, 3, -1)])


def test_plain_batches_between_idempotent_ones_do_not_disturb_producer_state(bootstrap):
    # Kafka: idempotent seq 0 x2 -> NONE 0; plain batch twice -> NONE 2, NONE 3
    # (both written); retry of seq 0 x2 -> NONE 0 (duplicate); seq 2 -> NONE 4.
    t = new_topic(bootstrap)
    with Conn.to(bootstrap) as c:
        pid = new_pid(c)
        assert produce(c, t, ib(2, "a", pid, 0, 0)) == (OK, 0)
        assert produce(c, t, encode_batch([Record(value=b"plain")])) == (OK, 2)
        assert produce(c, t, encode_batch([Record(value=b"plain")])) == (OK, 3)
        assert produce(c, t, ib(2, "a", pid, 0, 0)) == (OK, 0)
        assert produce(c, t, ib(1, "b", pid, 0, 2)) == (OK, 4)
        assert log(c, t) == (5, [(0, 2, pid, 0, 0), (2, 1, -1, -1, -1), (3, 1, -1, -1, -1), (4, 1, pid, 0, 2)])


@pytest.mark.parametrize("pv", PRODUCE_VERSIONS)
def test_transactional_batch_without_transactional_id_fails_the_whole_request(bootstrap, pv):
    # Kafka: a batch with the transactional attribute (0x10) in a Produce
    # request whose transactional_id is null -> TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    # (53), base_offset -1, for EVERY partition of the request, including a
    # partition that carried a valid idempotent batch; nothing is written
    # anywhere. The same with producer id -1. The producer's state is
    # untouched: its seq 0 batch is then accepted at offset 0.
    t = new_topic(bootstrap, partitions=2)
    with Conn.to(bootstrap) as c:
        pid = new_pid(c)
        r = c.produce_multi([(t, [(0, ib(1, "t", pid, 0, 0, attributes=0x10)), (1, ib(1, "u", pid, 0, 0))])],
                            version=pv)
        assert {k: ans(v) for k, v in r.items()} == {(t, 0): (TXN_AUTH, -1), (t, 1): (TXN_AUTH, -1)}
        assert produce(c, t, encode_batch([Record(value=b"x")], attributes=0x10), pv) == (TXN_AUTH, -1)
        assert log(c, t, 0) == (0, []) and log(c, t, 1) == (0, [])
        assert produce(c, t, ib(1, "u", pid, 0, 0), pv) == (OK, 0)
        assert produce(c, t, ib(1, "u", pid, 0, 0), pv, partition=1) == (OK, 0)


def test_control_batch_from_a_client_is_refused(bootstrap):
    # Kafka: a control batch (attribute 0x20) from a client:
    # transactional + control (0x30), with a producer id -> TRANSACTIONAL_ID_AUTHORIZATION_FAILED (53);
    # control only (0x20), producer id, seq 0 -> INVALID_RECORD (87);
    # control only (0x20), no producer id -> INVALID_RECORD (87).
    # Nothing written; a normal idempotent seq 0 then lands at offset 0.
    t = new_topic(bootstrap)
    marker = [Record(key=b"\x00\x00\x00\x00", value=b"\x00\x00\x00\x00\x00\x00")]  # an ABORT marker
    with Conn.to(bootstrap) as c:
        pid = new_pid(c)
        assert produce(c, t, encode_batch(marker, attributes=0x30, producer_id=pid, producer_epoch=0,
                                          base_sequence=-1)) == (TXN_AUTH, -1)
        assert produce(c, t, encode_batch(marker, attributes=0x20, producer_id=pid, producer_epoch=0,
                                          base_sequence=0)) == (INVALID_RECORD, -1)
        assert produce(c, t, encode_batch(marker, attributes=0x20)) == (INVALID_RECORD, -1)
        assert log(c, t) == (0, [])
        assert produce(c, t, ib(1, "z", pid, 0, 0)) == (OK, 0)
        assert log(c, t) == (1, [(0, 1, pid, 0, 0)])


@pytest.mark.parametrize("pv", PRODUCE_VERSIONS)
def test_two_batches_in_one_partitions_records_is_invalid_record(bootstrap, pv):
    # Kafka (Produce v3+ allows exactly one batch per partition): two
    # concatenated batches in one partition's records field -> INVALID_RECORD
    # (87), base_offset -1, for idempotent (seq 0 x2 + seq 2 x2) and for plain
    # batches alike; nothing written.
    t = new_topic(bootstrap)
    with Conn.to(bootstrap) as c:
        pid = new_pid(c)
        two = ib(2, "a", pid, 0, 0) + ib(2, "b", pid, 0, 2)
        assert produce(c, t, two, pv) == (INVALID_RECORD, -1)
        two = encode_batch([Record(value=b"p1")]) + encode_batch([Record(value=b"p2")])
        assert produce(c, t, two, pv) == (INVALID_RECORD, -1)
        assert log(c, t) == (0, [])


def _produce_v3_raw_entries(body):
    """Every (topic, partition, error, base_offset) entry of a Produce v3
    response, in order, without merging repeats."""
    r = Reader(body)
    out = []
    for _ in range(r.i32()):
        name = r.string()
        for _ in range(r.i32()):
            part, err, base = r.i32(), r.i16(), r.i64()
            r.i64()  # log_append_time
            out.append((name, part, err, base))
    return out


def test_same_partition_twice_in_one_request_only_the_last_entry_counts(bootstrap):
    # Kafka collapses repeated partitions of one Produce request and keeps the
    # LAST entry: the answer has ONE entry for the partition, and only the
    # last entry's batch is written. The first is dropped without an error.
    # Idempotent [seq 0 x2 'a', seq 2 x2 'b'] -> one entry NONE 0, log = the
    # seq-2 batch. Plain [A, B] -> one entry NONE 2, log gets only B. The same
    # holds when the topic itself is listed twice.
    t = new_topic(bootstrap)
    with Conn.to(bootstrap) as c:
        pid = new_pid(c)
        body = wire.produce_v3_multi([(t, [(0, ib(2, "a", pid, 0, 0)), (0, ib(2, "b", pid, 0, 2))])])
        assert _produce_v3_raw_entries(c.request(wire.PRODUCE, 3, body)) == [(t, 0, 0, 0)]
        assert log(c, t) == (2, [(0, 2, pid, 0, 2)])
        body = wire.produce_v3_multi([(t, [(0, encode_batch([Record(value=b"A")])),
                                           (0, encode_batch([Record(value=b"B")]))])])
        assert _produce_v3_raw_entries(c.request(wire.PRODUCE, 3, body)) == [(t, 0, 0, 2)]
        body = wire.produce_v3_multi([(t, [(0, encode_batch([Record(value=b"C")]))]),
                                      (t, [(0, encode_batch([Record(value=b"D")]))])])
        assert _produce_v3_raw_entries(c.request(wire.PRODUCE, 3, body)) == [(t, 0, 0, 3)]
        assert values(c, t) == vals(2, "b") + [b"B", b"D"]


@pytest.mark.parametrize("pv", PRODUCE_VERSIONS)
def test_base_sequence_wraps_after_int32_max(bootstrap, pv):
    # Kafka: a first batch at seq INT32_MAX-1 with 3 records (seqs MAX-1, MAX,
    # 0) -> NONE 0; then seq 1 x2 -> NONE 3; retries of both -> NONE 3 and
    # NONE 0 (duplicates). Another producer: seq INT32_MAX x1 -> NONE 5, then
    # seq 0 -> NONE 6.
    t = new_topic(bootstrap)
    with Conn.to(bootstrap) as c:
        p1, p2 = new_pid(c), new_pid(c)
        assert produce(c, t, ib(3, "a", p1, 0, INT32_MAX - 1), pv) == (OK, 0)
        assert produce(c, t, ib(2, "b", p1, 0, 1), pv) == (OK, 3)
        assert produce(c, t, ib(2, "b", p1, 0, 1), pv) == (OK, 3)
        assert produce(c, t, ib(3, "a", p1, 0, INT32_MAX - 1), pv) == (OK, 0)
        assert produce(c, t, ib(1, "c", p2, 0, INT32_MAX), pv) == (OK, 5)
        assert produce(c, t, ib(1, "d", p2, 0, 0), pv) == (OK, 6)
        assert log(c, t) == (7, [(0, 3, p1, 0, INT32_MAX - 1), (3, 2, p1, 0, 1), (5, 1, p2, 0, INT32_MAX),
                                 (6, 1, p2, 0, 0)])


def test_sequences_are_tracked_per_partition(bootstrap):
    # Kafka, one producer on a 2-partition topic: seq 0 x2 on both -> NONE 0
    # each; then [p0 seq 5 (gap), p1 seq 2] in one request -> p0
    # OUT_OF_ORDER_SEQUENCE_NUMBER (45) / -1, p1 NONE 2; then retries of seq
    # 0 x2 on both -> NONE 0 each.
    t = new_topic(bootstrap, partitions=2)
    with Conn.to(bootstrap) as c:
        pid = new_pid(c)

        def req(b0, b1):
            r = c.produce_multi([(t, [(0, b0), (1, b1)])])
            return ans(r[(t, 0)]), ans(r[(t, 1)])

        assert req(ib(2, "a", pid, 0, 0), ib(2, "b", pid, 0, 0)) == ((OK, 0), (OK, 0))
        assert req(ib(1, "a", pid, 0, 5), ib(1, "b", pid, 0, 2)) == ((OOO, -1), (OK, 2))
        assert req(ib(2, "a", pid, 0, 0), ib(2, "b", pid, 0, 0)) == ((OK, 0), (OK, 0))
        assert log(c, t, 0) == (2, [(0, 2, pid, 0, 0)])
        assert log(c, t, 1) == (3, [(0, 2, pid, 0, 0), (2, 1, pid, 0, 2)])


def test_sequences_are_tracked_per_producer(bootstrap):
    # Kafka, two producers interleaved on one partition: p1 seq 0 x2 -> NONE 0;
    # p2 seq 0 x2 -> NONE 2; p1 retry -> NONE 0; p1 seq 2 -> NONE 4; p2 retry -> NONE 2.
    t = new_topic(bootstrap)
    with Conn.to(bootstrap) as c:
        p1, p2 = new_pid(c), new_pid(c)
        assert produce(c, t, ib(2, "a", p1, 0, 0)) == (OK, 0)
        assert produce(c, t, ib(2, "b", p2, 0, 0)) == (OK, 2)
        assert produce(c, t, ib(2, "a", p1, 0, 0)) == (OK, 0)
        assert produce(c, t, ib(1, "c", p1, 0, 2)) == (OK, 4)
        assert produce(c, t, ib(2, "b", p2, 0, 0)) == (OK, 2)
        assert log(c, t) == (5, [(0, 2, p1, 0, 0), (2, 2, p2, 0, 0), (4, 1, p1, 0, 2)])


def test_acks_1_is_deduplicated_too(bootstrap):
    # Kafka does not require acks=-1 for idempotent batches: acks=1 seq 0 x2 ->
    # NONE 0; its retry -> NONE 0, not written again.
    t = new_topic(bootstrap)
    with Conn.to(bootstrap) as c:
        pid = new_pid(c)
        assert produce(c, t, ib(2, "a", pid, 0, 0), acks=1) == (OK, 0)
        assert produce(c, t, ib(2, "a", pid, 0, 0), acks=1) == (OK, 0)
        assert log(c, t) == (2, [(0, 2, pid, 0, 0)])


def test_duplicate_answer_carries_the_batch_max_timestamp_as_log_append_time(bootstrap):
    # Kafka (CreateTime topic): a new append answers log_append_time -1, but a
    # duplicate answers log_append_time = the original batch's max timestamp
    # (here 1700000005000, a record in the middle of the batch), in v3 as in v8/v9.
    t = new_topic(bootstrap)
    with Conn.to(bootstrap) as c:
        pid = new_pid(c)
        b = encode_batch([Record(value=b"x", timestamp=1700000000000), Record(value=b"y", timestamp=1700000005000),
                          Record(value=b"z", timestamp=1700000001000)],
                         base_timestamp=1700000000000, producer_id=pid, producer_epoch=0, base_sequence=0)
        first = c.produce_v(t, 0, b)
        assert (first["error"], first["base_offset"], first["log_append_time"]) == (0, 0, -1), first
        for pv in (3, 9):
            dup = c.produce_v(t, 0, b, version=pv)
            assert (dup["error"], dup["base_offset"], dup["log_append_time"]) == (0, 0, 1700000005000), (pv, dup)
        assert log(c, t) == (3, [(0, 3, pid, 0, 0)])


# ===================================================================== restarts

def _write_seven_batches(c, t, pid):
    """Batches 0..6 of 1..7 records; base sequences (= offsets) 0,1,3,6,10,15,21."""
    batches, seq = [], 0
    for i in range(7):
        b = ib(i + 1, "w%d" % i, pid, 0, seq)
        assert produce(c, t, b) == (OK, seq)
        batches.append((seq, b))
        seq += i + 1
    return batches


def _seven_batches_then_restart(b, how):
    """A new producer writes seven batches to a new topic; the broker restarts.
    Returns (topic, producer id, batches, the log before the restart)."""
    t = new_topic(b.bootstrap)
    with Conn.to(b.bootstrap) as c:
        pid = new_pid(c)
        batches = _write_seven_batches(c, t, pid)
        before = log(c, t)
    restart(b, how)
    wait_ready(b.bootstrap, t)
    return t, pid, batches, before


@pytest.mark.parametrize("how", ["sigterm", "kill9"])
def test_duplicate_of_last_batch_is_detected_after_restart(restartable, how):
    # Kafka 4.1.1 / 4.4.0, after SIGTERM + start and after kill -9 + start
    # alike: the retry of the last batch (seq 21 x7) -> NONE base_offset 21,
    # not written again; the next seq 28 -> NONE 28; its retry -> NONE 28.
    b = restartable
    t, pid, batches, before = _seven_batches_then_restart(b, how)
    with Conn.to(b.bootstrap) as c:
        assert produce(c, t, batches[6][1]) == (OK, 21)
        assert log(c, t) == before
        assert produce(c, t, ib(1, "n", pid, 0, 28)) == (OK, 28)
        assert produce(c, t, ib(1, "n", pid, 0, 28)) == (OK, 28)
        assert log(c, t) == (29, before[1] + [(28, 1, pid, 0, 28)])


@pytest.mark.parametrize("how", ["sigterm", "kill9"])
def test_after_restart_the_last_five_batches_are_still_remembered(restartable, how):
    # A deliberate departure from Kafka. Kafka 4.1.1 / 4.4.0 keep only the LAST
    # batch of each producer across a restart (its producer-state snapshot
    # holds one): retries of the 2nd-5th most recent batches, duplicates before
    # the restart, then get OUT_OF_ORDER_SEQUENCE_NUMBER (45), which a client
    # cannot tell from a real gap. Sluice rebuilds the state from the log, so a
    # restart changes nothing: the last five batches are still answered as
    # duplicates with their original offsets, and only the 6th and 7th most
    # recent (out of the window, as before the restart) get 45. Nothing is
    # written either way.
    b = restartable
    t, pid, batches, before = _seven_batches_then_restart(b, how)
    with Conn.to(b.bootstrap) as c:
        for i in (1, 0):
            assert produce(c, t, batches[i][1]) == (OOO, -1), "retry of batch %d" % i
        for i in (5, 4, 3, 2, 6):
            assert produce(c, t, batches[i][1]) == (OK, batches[i][0]), "retry of batch %d" % i
        assert log(c, t) == before


@pytest.mark.parametrize("how", ["sigterm", "kill9"])
def test_producer_epoch_and_sequence_survive_restart(restartable, how):
    # Kafka, after epoch 0 seq 0 x3 and epoch 1 seq 0 x2, then a restart
    # (SIGTERM or kill -9): epoch 0 seq 3 -> INVALID_PRODUCER_EPOCH (47); the
    # epoch-1 retry -> NONE 3; epoch 1 seq 3 (a gap) -> OUT_OF_ORDER (45);
    # epoch 1 seq 2 -> NONE 5.
    b = restartable
    t = new_topic(b.bootstrap)
    with Conn.to(b.bootstrap) as c:
        pid = new_pid(c)
        assert produce(c, t, ib(3, "a", pid, 0, 0)) == (OK, 0)
        assert produce(c, t, ib(2, "b", pid, 1, 0)) == (OK, 3)
    restart(b, how)
    wait_ready(b.bootstrap, t)
    with Conn.to(b.bootstrap) as c:
        assert produce(c, t, ib(1, "c", pid, 0, 3)) == (BAD_EPOCH, -1)
        assert produce(c, t, ib(2, "b", pid, 1, 0)) == (OK, 3)
        assert produce(c, t, ib(1, "b", pid, 1, 3)) == (OOO, -1)
        assert produce(c, t, ib(1, "b", pid, 1, 2)) == (OK, 5)
        assert log(c, t) == (6, [(0, 3, pid, 0, 0), (3, 2, pid, 1, 0), (5, 1, pid, 1, 2)])


@pytest.mark.parametrize("how", ["sigterm", "kill9"])
def test_init_producer_id_after_restart_never_reuses_an_id(restartable, how):
    # Kafka hands out ids in blocks of 1000 from the controller: before a
    # restart 0, 1, 2, ...; after it the next block (1000, then 2000 after a
    # second restart). It answers COORDINATOR_LOAD_IN_PROGRESS (14) for a
    # moment after starting, which init_pid() waits out. An id is never
    # handed out twice: every id after the restart is above every id before it.
    b = restartable
    with Conn.to(b.bootstrap) as c:
        before = [new_pid(c) for _ in range(3)]
    restart(b, how)
    with Conn.to(b.bootstrap) as c:
        after = [new_pid(c) for _ in range(2)]
    assert min(after) > max(before) and after[1] > after[0], (before, after)
