"""Consumer groups (classic protocol) against Sluice: librdkafka and kafka-python
group consumers, rebalances on join / leave / session expiry, committed offsets
across broker restarts, static membership, the admin group APIs, and the
coordinator's error codes on raw sockets.

Group timing follows Kafka's defaults: a new group's first generation forms
group.initial.rebalance.delay.ms (3 s) after its first JoinGroup, session
timeouts must lie in [6000, 1800000] ms.  Consumers here use a 6 s session
and a 500 ms heartbeat so that rebalances are noticed quickly.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest
import kafka
from confluent_kafka import KafkaError, KafkaException, TopicPartition

import wire
from wire import Reader, array, i16, i32, i64, kbytes, string
from clients import CK_VERSION, ck_admin, ck_consumer, ck_create_topic, ck_produce, ck_producer
from conftest import _set_pdeathsig, unique_topic

KP_VERSION = tuple(int(x) for x in kafka.__version__.split(".")[:3] if x.isdigit())

SESSION_MS = 6000
HEARTBEAT_MS = 500
INITIAL_DELAY_S = 3.0

# Kafka error codes
NONE = 0
ILLEGAL_GENERATION = 22
INVALID_GROUP_ID = 24
UNKNOWN_MEMBER_ID = 25
INVALID_SESSION_TIMEOUT = 26
REBALANCE_IN_PROGRESS = 27
MEMBER_ID_REQUIRED = 79

# API keys
OFFSET_COMMIT = 8
OFFSET_FETCH = 9
FIND_COORDINATOR = 10
JOIN_GROUP = 11
HEARTBEAT = 12
LEAVE_GROUP = 13
SYNC_GROUP = 14


def unique_group(prefix="g"):
    return unique_topic(prefix)


# ------------------------------------------------------------------ raw protocol


def find_coordinator(bootstrap, group, timeout=30.0):
    """FindCoordinator v0. The first group request may wait while the broker
    creates __consumer_offsets, so the timeout is generous."""
    with wire.Conn.to(bootstrap, timeout=timeout) as c:
        r = Reader(c.request(FIND_COORDINATOR, 0, string(group)))
        return dict(error=r.i16(), node_id=r.i32(), host=r.string(), port=r.i32())


def warm_coordinator(broker, group):
    """Make sure the coordinator (and __consumer_offsets) is ready before
    group members start, so that their joins all land in the first
    generation; also checks the answer names this broker."""
    deadline = time.monotonic() + 30
    while True:
        fc = find_coordinator(broker.bootstrap, group)
        if fc["error"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert fc == dict(error=0, node_id=1, host="127.0.0.1", port=broker.port), fc


def consumer_subscription(topics):
    # ConsumerProtocolSubscription v0: version, topics, user data
    return i16(0) + array(topics, string) + kbytes(None)


def consumer_assignment(assignment):
    # ConsumerProtocolAssignment v0: version, [(topic, [partition])], user data
    return i16(0) + array(list(assignment.items()), lambda t: string(t[0]) + array(t[1], i32)) + kbytes(None)


def join_group_body(group, session_ms, rebalance_ms, member_id, topics, protocol="range"):
    """JoinGroup v1..v4 (identical layouts)."""
    return (string(group) + i32(session_ms) + i32(rebalance_ms) + string(member_id) + string("consumer")
            + array([(protocol, consumer_subscription(topics))], lambda p: string(p[0]) + kbytes(p[1])))


def parse_join_group_v1(body):
    r = Reader(body)
    return dict(error=r.i16(), generation=r.i32(), protocol=r.string(), leader=r.string(),
                member_id=r.string(), members=r.array(lambda r: (r.string(), r.kbytes())))


def parse_join_group_v2(body):
    r = Reader(body)
    r.i32()  # throttle
    return dict(error=r.i16(), generation=r.i32(), protocol=r.string(), leader=r.string(),
                member_id=r.string(), members=r.array(lambda r: (r.string(), r.kbytes())))


def sync_group_v0(group, generation, member_id, assignments):
    return (string(group) + i32(generation) + string(member_id)
            + array(list(assignments.items()), lambda a: string(a[0]) + kbytes(a[1])))


def parse_sync_group_v0(body):
    r = Reader(body)
    return dict(error=r.i16(), assignment=r.kbytes())


def heartbeat_v0(group, generation, member_id):
    return string(group) + i32(generation) + string(member_id)


def offset_commit_v2(group, generation, member_id, offsets):
    """offsets: {(topic, partition): offset}"""
    by_topic = {}
    for (t, p), o in offsets.items():
        by_topic.setdefault(t, []).append((p, o))
    return (string(group) + i32(generation) + string(member_id) + i64(-1)
            + array(list(by_topic.items()),
                    lambda t: string(t[0]) + array(t[1], lambda p: i32(p[0]) + i64(p[1]) + string(""))))


def parse_offset_commit_v2(body):
    r = Reader(body)
    topics = r.array(lambda r: (r.string(), r.array(lambda r: (r.i32(), r.i16()))))
    return {(t, p): e for t, parts in topics for p, e in parts}


def offset_fetch_v1(group, topic, partitions):
    return string(group) + array([(topic, partitions)], lambda t: string(t[0]) + array(t[1], i32))


def parse_offset_fetch_v1(body):
    r = Reader(body)
    topics = r.array(lambda r: (r.string(), r.array(
        lambda r: dict(partition=r.i32(), offset=r.i64(), metadata=r.string(), error=r.i16()))))
    return {(t, p["partition"]): p for t, parts in topics for p in parts}


def leave_group_v0(group, member_id):
    return string(group) + string(member_id)


# ------------------------------------------------------------------ helpers


def produce_values(bootstrap, topic, partitions, per_partition, prefix):
    """Produce per_partition unique values to each partition; returns
    {partition: [value]} in offset order (offsets continue from what is there)."""
    items = []
    for i in range(per_partition):
        for p in partitions:
            items.append({"value": ("%s-p%d-%05d" % (prefix, p, i)).encode(), "partition": p})
    reports = ck_produce(ck_producer(bootstrap), topic, items)
    errs = [(r.idx, r.err) for r in reports if r.err is not None]
    assert not errs, "delivery errors: %s" % errs[:5]
    out = {}
    for it in items:
        out.setdefault(it["partition"], []).append(it["value"])
    return out


def all_values(by_part):
    return {v for vs in by_part.values() for v in vs}


class CkMember:
    """A confluent-kafka group consumer that records what it receives and
    every rebalance callback."""

    def __init__(self, bootstrap, group, topic, name, **conf):
        c = {
            "group.id": group,
            "client.id": name,
            "session.timeout.ms": SESSION_MS,
            "heartbeat.interval.ms": HEARTBEAT_MS,
            "enable.auto.commit": False,
            "enable.auto.offset.store": True,
            "enable.partition.eof": False,
            "auto.offset.reset": "earliest",
        }
        c.update(conf)
        self.name = name
        self.topic = topic
        self.consumer = ck_consumer(bootstrap, **c)
        self.assigns = []   # [sorted partitions] per on_assign
        self.revokes = []   # [sorted partitions] per on_revoke
        self.msgs = []      # (partition, offset, value, monotonic time)
        self.closed = False
        self.consumer.subscribe([topic], on_assign=self._on_assign, on_revoke=self._on_revoke)

    def _on_assign(self, consumer, parts):
        self.assigns.append(sorted(p.partition for p in parts))

    def _on_revoke(self, consumer, parts):
        self.revokes.append(sorted(p.partition for p in parts))

    def poll(self, timeout=0.05):
        for m in self.consumer.consume(num_messages=500, timeout=timeout):
            if m.error():
                raise AssertionError("%s: consumer error %s" % (self.name, m.error()))
            self.msgs.append((m.partition(), m.offset(), m.value(), time.monotonic()))

    def assignment(self):
        return sorted(tp.partition for tp in self.consumer.assignment())

    def values(self):
        return [v for _, _, v, _ in self.msgs]

    def committed(self, partitions, timeout=15):
        res = self.consumer.committed([TopicPartition(self.topic, p) for p in partitions], timeout=timeout)
        for tp in res:
            assert tp.error is None, "%s: committed() error for partition %d: %s" % (self.name, tp.partition, tp.error)
        return {tp.partition: tp.offset for tp in res}

    def commit(self, offsets=None):
        """Synchronous commit; offsets {partition: offset} or None (the
        consumed positions). Returns {partition: offset} as acknowledged."""
        if offsets is None:
            res = self.consumer.commit(asynchronous=False)
        else:
            res = self.consumer.commit(offsets=[TopicPartition(self.topic, p, o) for p, o in offsets.items()],
                                       asynchronous=False)
        for tp in res:
            assert tp.error is None, "%s: commit error for partition %d: %s" % (self.name, tp.partition, tp.error)
        return {tp.partition: tp.offset for tp in res}

    def close(self):
        if not self.closed:
            self.closed = True
            self.consumer.close()


def poll_until(members, cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            state = "; ".join("%s: assignment=%s assigns=%s revokes=%s msgs=%d" % (
                m.name, m.assignment(), m.assigns, m.revokes, len(m.msgs)) for m in members)
            raise AssertionError("timed out after %.0fs waiting for %s (%s)" % (timeout, what, state))
        for m in members:
            m.poll(0.05)


def assignments_partition(assignments, partitions):
    """True if the assignments are non-empty, pairwise disjoint and cover partitions."""
    seen = []
    for a in assignments:
        if not a:
            return False
        seen.extend(a)
    return sorted(seen) == sorted(partitions)


def drain(members, secs=1.0):
    end = time.monotonic() + secs
    while time.monotonic() < end:
        for m in members:
            m.poll(0.05)


# ------------------------------------------------------------------ 1. three librdkafka members


def test_three_members_split_partitions_exactly_once(broker):
    topic = unique_topic("grp-three")
    group = unique_group("g-three")
    parts = list(range(6))
    ck_create_topic(broker.bootstrap, topic, len(parts))
    written = produce_values(broker.bootstrap, topic, parts, 100, "three")
    want = all_values(written)
    warm_coordinator(broker, group)

    members = [CkMember(broker.bootstrap, group, topic, "three-%d" % i) for i in range(3)]
    try:
        t0 = time.monotonic()
        poll_until(members, lambda: {v for m in members for v in m.values()} >= want, 45,
                   "all %d records consumed by the group" % len(want))
        drain(members, 1.0)
        formed = min(m.msgs[0][3] for m in members if m.msgs) - t0
        # All three joined within the initial delay: one generation, no revocations.
        for m in members:
            assert len(m.assigns) == 1 and not m.revokes, (
                "%s saw a rebalance after the group formed: assigns=%s revokes=%s" % (m.name, m.assigns, m.revokes))
        owned = [m.assignment() for m in members]
        assert assignments_partition(owned, parts), "assignments %s do not split partitions %s" % (owned, parts)
        for m, a in zip(members, owned):
            assert len(a) == 2, "%s owns %s; 6 partitions over 3 members should give 2 each" % (m.name, a)
            assert a == m.assigns[0]
        # Each partition was consumed by exactly one member, its owner, in offset order.
        for p in parts:
            consumers = [m.name for m in members if any(mp == p for mp, _, _, _ in m.msgs)]
            owner = [m.name for m, a in zip(members, owned) if p in a]
            assert consumers == owner, "partition %d consumed by %s, owned by %s" % (p, consumers, owner)
            (m,) = [m for m in members if m.name == owner[0]]
            got = [(o, v) for mp, o, v, _ in m.msgs if mp == p]
            assert got == list(enumerate(written[p])), "partition %d: records out of order or wrong" % p
        # Exactly once.
        delivered = [v for m in members for v in m.values()]
        assert len(delivered) == len(want) and set(delivered) == want, (
            "delivered %d records (%d distinct), want %d" % (len(delivered), len(set(delivered)), len(want)))
        assert formed >= INITIAL_DELAY_S - 0.5, "first record after %.2fs; the initial rebalance delay is 3s" % formed

        # Synchronous commits of the consumed positions; every member sees all of them.
        for m, a in zip(members, owned):
            acked = m.commit()
            assert acked == {p: 100 for p in a}, "%s commit acknowledged %s" % (m.name, acked)
        for m in members:
            assert m.committed(parts) == {p: 100 for p in parts}, m.name
    finally:
        for m in members:
            m.close()


# ------------------------------------------------------------------ 2. clean leave


def test_leave_hands_partitions_to_survivor(broker):
    topic = unique_topic("grp-leave")
    group = unique_group("g-leave")
    parts = list(range(4))
    ck_create_topic(broker.bootstrap, topic, len(parts))
    first = produce_values(broker.bootstrap, topic, parts, 50, "first")
    warm_coordinator(broker, group)

    a = CkMember(broker.bootstrap, group, topic, "leave-a")
    b = CkMember(broker.bootstrap, group, topic, "leave-b")
    try:
        want_first = all_values(first)
        poll_until([a, b], lambda: set(a.values()) | set(b.values()) >= want_first
                   and assignments_partition([a.assignment(), b.assignment()], parts), 45,
                   "both members consuming the first half")
        a_owned, b_owned = a.assignment(), b.assignment()
        assert a.commit() == {p: 50 for p in a_owned}
        assert b.commit() == {p: 50 for p in b_owned}

        a.close()  # LeaveGroup
        t_leave = time.monotonic()
        second = produce_values(broker.bootstrap, topic, parts, 50, "second")
        want_second = all_values(second)
        mark = len(b.msgs)
        poll_until([b], lambda: b.assignment() == parts and set(b.values()[mark:]) >= want_second, 30,
                   "the survivor owning every partition and consuming the second half")
        took = time.monotonic() - t_leave
        drain([b], 1.0)
        assert b.assignment() == parts
        assert b.assigns[-1] == parts, b.assigns
        after = b.msgs[mark:]
        # At least once, nothing skipped: every second-half record arrived.
        missing = want_second - {v for _, _, v, _ in after}
        assert not missing, "%d records never delivered, e.g. %s" % (len(missing), sorted(missing)[:3])
        # Everything before the committed offsets (50) was committed: nothing of it comes back.
        for p in parts:
            offs = [o for mp, o, _, _ in after if mp == p]
            assert offs and min(offs) == 50, "partition %d: first offset after the leave %s, committed 50" % (
                p, offs[:1])
        assert took < 20, "takeover took %.1fs" % took
        assert b.committed(parts) == {p: 50 for p in parts}
    finally:
        a.close()
        b.close()


# ------------------------------------------------------------------ 3. kill -9, session timeout

VICTIM_SCRIPT = r"""
import json, sys
from confluent_kafka import Consumer, KafkaError, KafkaException

bootstrap, topic, group, session_ms, heartbeat_ms = sys.argv[1:6]

def emit(**kw):
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()

c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "client.id": "victim",
              "session.timeout.ms": int(session_ms), "heartbeat.interval.ms": int(heartbeat_ms),
              "enable.auto.commit": False, "enable.auto.offset.store": True,
              "enable.partition.eof": True, "auto.offset.reset": "earliest"})
eof = set()
dirty = False

def on_assign(consumer, parts):
    eof.clear()
    emit(assigned=sorted(p.partition for p in parts))

def on_revoke(consumer, parts):
    eof.clear()
    emit(revoked=sorted(p.partition for p in parts))

c.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
emit(started=True)
while True:
    m = c.poll(0.1)
    if m is None:
        owned = {tp.partition for tp in c.assignment()}
        if dirty and owned and owned <= eof:
            try:
                res = c.commit(asynchronous=False)
            except KafkaException as e:
                emit(commit_error=str(e))
                continue
            emit(committed={str(tp.partition): tp.offset for tp in res if tp.error is None})
            dirty = False
        continue
    if m.error():
        if m.error().code() == KafkaError._PARTITION_EOF:
            eof.add(m.partition())
        else:
            emit(error=str(m.error()))
        continue
    eof.discard(m.partition())
    dirty = True
    emit(msg=[m.partition(), m.offset()])
"""


def test_killed_member_partitions_taken_over_after_session_timeout(broker, tmp_path):
    topic = unique_topic("grp-kill")
    group = unique_group("g-kill")
    parts = list(range(4))
    ck_create_topic(broker.bootstrap, topic, len(parts))
    first = produce_values(broker.bootstrap, topic, parts, 40, "first")
    warm_coordinator(broker, group)

    script = tmp_path / "victim.py"
    script.write_text(VICTIM_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), broker.bootstrap, topic, group, str(SESSION_MS),
                             str(HEARTBEAT_MS)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True, preexec_fn=_set_pdeathsig)
    events = queue.Queue()

    def reader():
        for line in proc.stdout:
            try:
                events.put(json.loads(line))
            except ValueError:
                events.put({"junk": line})

    threading.Thread(target=reader, daemon=True).start()
    victim = {"assigned": [], "committed": {}, "msgs": [], "errors": []}

    def pump():
        while True:
            try:
                ev = events.get_nowait()
            except queue.Empty:
                return
            if "assigned" in ev:
                victim["assigned"] = ev["assigned"]
            elif "revoked" in ev:
                victim["assigned"] = []
            elif "committed" in ev:
                victim["committed"].update({int(k): v for k, v in ev["committed"].items()})
            elif "msg" in ev:
                victim["msgs"].append(tuple(ev["msg"]))
            elif "error" in ev or "commit_error" in ev or "junk" in ev:
                victim["errors"].append(ev)

    survivor = CkMember(broker.bootstrap, group, topic, "survivor")
    try:
        def both_ready():
            pump()
            va, sa = victim["assigned"], survivor.assignment()
            if not assignments_partition([va, sa], parts):
                return False
            if any(victim["committed"].get(p) != 40 for p in va):
                return False
            return {v for mp, _, v, _ in survivor.msgs if mp in sa} >= {v for p in sa for v in first[p]}

        try:
            poll_until([survivor], both_ready, 45,
                       "victim (subprocess) and survivor splitting the partitions, victim committed")
        except AssertionError as e:
            raise AssertionError("%s; victim: %s; victim stderr: %s" % (
                e, victim, proc.stderr.read(2000) if proc.poll() is not None else "(running)"))
        assert not victim["errors"], victim["errors"]
        victim_parts = list(victim["assigned"])
        survivor_parts = survivor.assignment()
        assert survivor.commit() == {p: 40 for p in survivor_parts}

        os.kill(proc.pid, signal.SIGKILL)
        t_kill = time.monotonic()
        proc.wait(10)
        second = produce_values(broker.bootstrap, topic, parts, 40, "second")
        want_second = all_values(second)
        mark = len(survivor.msgs)
        limit = SESSION_MS / 1000.0 + 6
        t_all = []

        def took_over():
            if not t_all and survivor.assignment() == parts:
                t_all.append(time.monotonic())
            return bool(t_all) and set(survivor.values()[mark:]) >= want_second

        poll_until([survivor], took_over, limit + 20, "the survivor taking over the killed member's partitions")
        took = t_all[0] - t_kill
        assert took <= limit, "takeover %.1fs after kill -9; session.timeout.ms=%d" % (took, SESSION_MS)
        drain([survivor], 1.0)
        after = survivor.msgs[mark:]
        missing = want_second - {v for _, _, v, _ in after}
        assert not missing, "%d records never delivered, e.g. %s" % (len(missing), sorted(missing)[:3])
        for p in victim_parts:
            offs = [o for mp, o, _, _ in after if mp == p]
            assert offs and min(offs) == 40, (
                "partition %d (the victim's, committed at 40): survivor started at %s" % (p, offs[:1]))
            vals = [v for mp, o, v, _ in after if mp == p]
            assert set(vals) == set(second[p]), "partition %d: unexpected records" % p
        assert survivor.committed(parts) == {p: 40 for p in parts}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        survivor.close()


# ------------------------------------------------------------------ 4. broker restart


def test_committed_offsets_survive_broker_restart(broker):
    topic = unique_topic("grp-restart")
    group = unique_group("g-restart")
    parts = [0, 1, 2]
    ck_create_topic(broker.bootstrap, topic, len(parts))
    first = produce_values(broker.bootstrap, topic, parts, 30, "first")
    warm_coordinator(broker, group)

    c1 = CkMember(broker.bootstrap, group, topic, "before")
    try:
        poll_until([c1], lambda: set(c1.values()) >= all_values(first), 45, "the first consumer reading everything")
        offsets = {0: 7, 1: 15, 2: 30}
        assert c1.commit(offsets) == offsets
        assert c1.committed(parts) == offsets
    finally:
        c1.close()

    broker.restart()
    second = produce_values(broker.bootstrap, topic, parts, 5, "second")  # offsets 30..34

    c2 = CkMember(broker.bootstrap, group, topic, "after")
    try:
        assert c2.committed(parts, timeout=20) == offsets, "committed offsets after a broker restart"
        poll_until([c2], lambda: all(any(mp == p and o == 34 for mp, o, _, _ in c2.msgs) for p in parts), 45,
                   "the new consumer reaching the end of every partition")
        drain([c2], 0.5)
        for p in parts:
            got = [(o, v) for mp, o, v, _ in c2.msgs if mp == p]
            want = list(zip(range(offsets[p], 35), (first[p] + second[p])[offsets[p]:]))
            assert got[0][0] == offsets[p], "partition %d: first record at %d, committed %d" % (p, got[0][0], offsets[p])
            assert got == want, "partition %d: resumed records differ" % p
    finally:
        c2.close()


def test_commits_survive_kill9_and_deleted_groups_stay_deleted(broker):
    """Every acknowledged OffsetCommit survives a crash; a deleted group's
    offsets do not come back after a restart."""
    topic = unique_topic("grp-k9")
    ck_create_topic(broker.bootstrap, topic, 2)
    warm_coordinator(broker, "k9")
    keep, doomed = unique_group("g-keep"), unique_group("g-doomed")
    with wire.Conn.to(broker.bootstrap, timeout=15) as c:
        def commit(group, offsets):
            # A "simple" commit: no member, generation -1 (allowed for groups without members).
            return parse_offset_commit_v2(c.request(OFFSET_COMMIT, 2, offset_commit_v2(group, -1, "", offsets)))

        assert set(commit(doomed, {(topic, 0): 3, (topic, 1): 4}).values()) == {NONE}
        for i in range(1, 101):
            res = commit(keep, {(topic, 0): i, (topic, 1): 1000 + i})
            assert set(res.values()) == {NONE}, res
    admin = ck_admin(broker.bootstrap)
    assert admin.delete_consumer_groups([doomed], request_timeout=15)[doomed].result(timeout=20) is None
    del admin

    def offsets(group):
        # Right after a start the coordinator may still be loading the offsets topic and answer
        # COORDINATOR_LOAD_IN_PROGRESS (14), as Kafka does; a client retries, and so does this.
        deadline = time.monotonic() + 20
        while True:
            with wire.Conn.to(broker.bootstrap, timeout=15) as c:
                got = parse_offset_fetch_v1(c.request(OFFSET_FETCH, 1, offset_fetch_v1(group, topic, [0, 1])))
            if time.monotonic() > deadline or any(v["error"] != 14 for v in got.values()):
                break
            time.sleep(0.05)
        assert {k: v["error"] for k, v in got.items()} == {(topic, 0): NONE, (topic, 1): NONE}, got
        return {p: got[(topic, p)]["offset"] for p in (0, 1)}

    broker.restart()  # clean: the deletion's tombstones are written
    assert offsets(keep) == {0: 100, 1: 1100}
    assert offsets(doomed) == {0: -1, 1: -1}, "a deleted group's offsets came back after a restart"
    with wire.Conn.to(broker.bootstrap, timeout=15) as c:
        for i in range(101, 151):
            res = parse_offset_commit_v2(c.request(OFFSET_COMMIT, 2, offset_commit_v2(
                keep, -1, "", {(topic, 0): i, (topic, 1): 1000 + i})))
            assert set(res.values()) == {NONE}, res
    broker.kill9()
    broker.start()
    assert offsets(keep) == {0: 150, 1: 1150}, "acknowledged commits lost in a crash"
    assert offsets(doomed) == {0: -1, 1: -1}


# ------------------------------------------------------------------ 5. kafka-python group consumers


def _kp_assignor(name):
    if name == "range":
        from kafka.coordinator.assignors.range import RangePartitionAssignor
        return RangePartitionAssignor
    if name == "roundrobin":
        from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
        return RoundRobinPartitionAssignor
    try:
        from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
    except ImportError:
        pytest.skip("kafka-python %s has no cooperative-sticky assignor" % kafka.__version__)
    return CooperativeStickyAssignor


class KpMember(threading.Thread):
    """A kafka-python KafkaConsumer polled in its own thread (its group join
    blocks inside poll(), so two members cannot share one thread)."""

    def __init__(self, bootstrap, group, topic, name, assignor):
        super().__init__(daemon=True, name=name)
        from kafka import KafkaConsumer
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap, group_id=group, client_id=name,
            partition_assignment_strategy=[assignor], session_timeout_ms=SESSION_MS,
            heartbeat_interval_ms=HEARTBEAT_MS, enable_auto_commit=False, auto_offset_reset="earliest",
            request_timeout_ms=20000)
        self.topic = topic
        self.lock = threading.Lock()
        self.stop_evt = threading.Event()
        self.records = []  # (partition, offset, value)
        self.owned = []
        self.error = None

    def run(self):
        try:
            self.consumer.subscribe([self.topic])
            while not self.stop_evt.is_set():
                res = self.consumer.poll(timeout_ms=100)
                with self.lock:
                    for tp, recs in res.items():
                        self.records.extend((r.partition, r.offset, r.value) for r in recs)
                    self.owned = sorted(tp.partition for tp in self.consumer.assignment())
        except Exception as e:  # reported by the test
            self.error = e
        finally:
            try:
                self.consumer.close()
            except Exception:
                pass

    def snapshot(self):
        if self.error is not None:
            raise AssertionError("%s failed: %r" % (self.name, self.error))
        with self.lock:
            return list(self.owned), list(self.records)


@pytest.mark.parametrize("assignor", ["range", "roundrobin", "cooperative-sticky"])
def test_kafka_python_group(broker, assignor):
    cls = _kp_assignor(assignor)
    topic = unique_topic("grp-kp")
    group = unique_group("g-kp")
    parts = list(range(4))
    ck_create_topic(broker.bootstrap, topic, len(parts))
    warm_coordinator(broker, group)

    members = [KpMember(broker.bootstrap, group, topic, "kp-%s-%d" % (assignor, i), cls) for i in range(2)]
    for m in members:
        m.start()
    try:
        # Wait until the group is stable: both own partitions, disjoint, covering all, for 1s.
        deadline = time.monotonic() + 45
        stable_since = None
        while True:
            owned = [m.snapshot()[0] for m in members]
            if assignments_partition(owned, parts):
                stable_since = stable_since or time.monotonic()
                if time.monotonic() - stable_since >= 1.0:
                    break
            else:
                stable_since = None
            assert time.monotonic() < deadline, "kafka-python group never stabilised: %s" % owned
            time.sleep(0.05)
        if assignor == "range":
            assert owned == [[0, 1], [2, 3]] or owned == [[2, 3], [0, 1]], owned
        elif assignor == "roundrobin":
            assert owned == [[0, 2], [1, 3]] or owned == [[1, 3], [0, 2]], owned
        else:
            assert sorted(len(o) for o in owned) == [2, 2], owned

        written = produce_values(broker.bootstrap, topic, parts, 25, "kp")
        want = all_values(written)
        deadline = time.monotonic() + 30
        while {r[2] for m in members for r in m.snapshot()[1]} < want:
            assert time.monotonic() < deadline, "records not all delivered: %d of %d" % (
                len({r[2] for m in members for r in m.snapshot()[1]}), len(want))
            time.sleep(0.1)
        time.sleep(1.0)
        snaps = [m.snapshot() for m in members]
        assert [s[0] for s in snaps] == owned, "assignment changed while consuming: %s -> %s" % (
            owned, [s[0] for s in snaps])
        for p in parts:
            who = [i for i, (_, recs) in enumerate(snaps) if any(r[0] == p for r in recs)]
            owner = [i for i, o in enumerate(owned) if p in o]
            assert who == owner, "partition %d consumed by members %s, owned by %s" % (p, who, owner)
            (i,) = owner
            got = [(r[1], r[2]) for r in snaps[i][1] if r[0] == p]
            assert got == list(enumerate(written[p])), "partition %d records differ" % p
        delivered = [r[2] for _, recs in snaps for r in recs]
        assert len(delivered) == len(want), "%d deliveries for %d records" % (len(delivered), len(want))
    finally:
        for m in members:
            m.stop_evt.set()
        for m in members:
            m.join(15)


# ------------------------------------------------------------------ 6. static membership


def test_static_member_restart_keeps_assignment(broker):
    topic = unique_topic("grp-static")
    group = unique_group("g-static")
    parts = list(range(4))
    session = 30000
    ck_create_topic(broker.bootstrap, topic, len(parts))
    first = produce_values(broker.bootstrap, topic, parts, 20, "first")
    warm_coordinator(broker, group)

    def member(name, inst):
        return CkMember(broker.bootstrap, group, topic, name, **{"group.instance.id": inst,
                                                                 "session.timeout.ms": session})

    a = member("static-a", "inst-a")
    b = member("static-b", "inst-b")
    a2 = None
    try:
        poll_until([a, b], lambda: assignments_partition([a.assignment(), b.assignment()], parts)
                   and set(a.values()) | set(b.values()) >= all_values(first), 45, "the static group forming")
        a_owned, b_owned = a.assignment(), b.assignment()
        assert a.commit() == {p: 20 for p in a_owned}
        assert b.commit() == {p: 20 for p in b_owned}
        b_assigns, b_revokes = len(b.assigns), len(b.revokes)

        a.close()  # a static member sends no LeaveGroup: it stays in the group
        second = produce_values(broker.bootstrap, topic, parts, 20, "second")
        a2 = member("static-a2", "inst-a")
        t0 = time.monotonic()
        b_mark = len(b.msgs)
        want_a2 = {v for p in a_owned for v in second[p]}
        want_b = {v for p in b_owned for v in second[p]}
        poll_until([a2, b], lambda: set(a2.values()) >= want_a2 and set(b.values()[b_mark:]) >= want_b, 25,
                   "the restarted static member resuming")
        took = time.monotonic() - t0
        drain([a2, b], 1.0)
        assert a2.assignment() == a_owned, "restarted static member got %s, had %s" % (a2.assignment(), a_owned)
        assert a2.assigns == [a_owned], a2.assigns
        assert b.assignment() == b_owned
        assert (len(b.assigns), len(b.revokes)) == (b_assigns, b_revokes), (
            "the other member rebalanced when a static member restarted: assigns %s revokes %s"
            % (b.assigns, b.revokes))
        assert took < session / 1000.0, "resumed after %.1fs" % took
        assert a2.committed(a_owned) == {p: 20 for p in a_owned}
        for p in a_owned:
            got = [(o, v) for mp, o, v, _ in a2.msgs if mp == p]
            assert got == list(zip(range(20, 40), second[p])), (
                "partition %d: restarted static member did not resume at committed offset 20: %s" % (p, got[:2]))
    finally:
        a.close()
        b.close()
        if a2 is not None:
            a2.close()


# ------------------------------------------------------------------ 7. admin


def _make_groups(broker, topic, parts, prefix):
    """A live group (one stable member, committed), an empty group (member
    committed then left) and returns (live member, live group, empty group,
    live offsets, empty offsets)."""
    ck_create_topic(broker.bootstrap, topic, len(parts))
    written = produce_values(broker.bootstrap, topic, parts, 10, prefix)
    live, empty = unique_group(prefix + "-live"), unique_group(prefix + "-empty")
    warm_coordinator(broker, live)
    m_live = CkMember(broker.bootstrap, live, topic, prefix + "-live-client")
    m_empty = CkMember(broker.bootstrap, empty, topic, prefix + "-empty-client")
    try:
        poll_until([m_live, m_empty], lambda: set(m_live.values()) >= all_values(written)
                   and set(m_empty.values()) >= all_values(written), 45, "both groups consuming")
        live_offs = {p: 10 for p in parts}
        empty_offs = {p: 3 + p for p in parts}
        assert m_live.commit() == live_offs
        assert m_empty.commit(empty_offs) == empty_offs
    finally:
        m_empty.close()  # leaves: the group is Empty but keeps its offsets
    return m_live, live, empty, live_offs, empty_offs


def _ck_err(fut):
    with pytest.raises(KafkaException) as ei:
        fut.result(timeout=20)
    return ei.value.args[0].code()


def test_confluent_admin_groups(broker):
    from confluent_kafka.admin import AdminClient
    if not hasattr(AdminClient, "list_consumer_groups"):
        pytest.skip("confluent-kafka %s has no AdminClient.list_consumer_groups" % (CK_VERSION,))
    from confluent_kafka import ConsumerGroupState, ConsumerGroupTopicPartitions
    topic = unique_topic("grp-cka")
    parts = [0, 1]
    m_live, live, empty, live_offs, empty_offs = _make_groups(broker, topic, parts, "cka")
    admin = ck_admin(broker.bootstrap)
    try:
        res = admin.list_consumer_groups(request_timeout=15).result(timeout=20)
        assert not res.errors, res.errors
        listed = {g.group_id: g for g in res.valid}
        assert live in listed and empty in listed, sorted(listed)
        assert listed[live].state == ConsumerGroupState.STABLE, listed[live].state
        assert listed[empty].state == ConsumerGroupState.EMPTY, listed[empty].state
        assert listed[live].is_simple_consumer_group is False

        # State filter (ListGroups v4).
        res = admin.list_consumer_groups(states={ConsumerGroupState.EMPTY}, request_timeout=15).result(timeout=20)
        names = {g.group_id for g in res.valid}
        assert empty in names and live not in names, names

        desc = admin.describe_consumer_groups([live, empty], request_timeout=15)
        d = desc[live].result(timeout=20)
        assert d.group_id == live and d.state == ConsumerGroupState.STABLE, (d.group_id, d.state)
        assert d.is_simple_consumer_group is False
        assert d.partition_assignor == "range", d.partition_assignor
        assert d.coordinator.id == 1 and d.coordinator.port == broker.port, d.coordinator
        assert len(d.members) == 1, d.members
        (mem,) = d.members
        assert mem.client_id == "cka-live-client", mem.client_id
        assert mem.member_id, mem.member_id
        assert sorted((tp.topic, tp.partition) for tp in mem.assignment.topic_partitions) == [
            (topic, p) for p in parts], mem.assignment.topic_partitions
        e = desc[empty].result(timeout=20)
        assert e.state == ConsumerGroupState.EMPTY and e.members == [], (e.state, e.members)

        for g, want in ((live, live_offs), (empty, empty_offs)):
            r = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(g)],
                                                  request_timeout=15)[g].result(timeout=20)
            got = {tp.partition: tp.offset for tp in r.topic_partitions if tp.topic == topic}
            assert got == want, "%s: offsets %s want %s" % (g, got, want)
            r = admin.list_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(g, [TopicPartition(topic, 1)])], request_timeout=15)[g].result(timeout=20)
            assert [(tp.partition, tp.offset) for tp in r.topic_partitions] == [(1, want[1])]

        # A group with a live member cannot be deleted; an empty one can; an unknown one is not found.
        assert _ck_err(admin.delete_consumer_groups([live], request_timeout=15)[live]) == KafkaError.NON_EMPTY_GROUP
        assert admin.delete_consumer_groups([empty], request_timeout=15)[empty].result(timeout=20) is None
        missing = unique_group("cka-missing")
        assert _ck_err(admin.delete_consumer_groups([missing], request_timeout=15)[missing]) == \
            KafkaError.GROUP_ID_NOT_FOUND

        res = admin.list_consumer_groups(request_timeout=15).result(timeout=20)
        names = {g.group_id for g in res.valid}
        assert empty not in names and live in names, names
        r = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(empty)],
                                              request_timeout=15)[empty].result(timeout=20)
        assert [tp for tp in r.topic_partitions if tp.offset >= 0] == [], "deleted group still has offsets"
        r = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(live)],
                                              request_timeout=15)[live].result(timeout=20)
        assert {tp.partition: tp.offset for tp in r.topic_partitions} == live_offs
        # The live member is undisturbed.
        assert m_live.assignment() == parts and m_live.committed(parts) == live_offs
    finally:
        m_live.close()


def _kp_error_name(err):
    if isinstance(err, str):
        return err
    if isinstance(err, type):
        return err.__name__
    return type(err).__name__


def test_kafka_python_admin_groups(broker):
    from kafka import TopicPartition as KTP
    from clients import kp_admin
    topic = unique_topic("grp-kpa")
    parts = [0, 1]
    m_live, live, empty, live_offs, empty_offs = _make_groups(broker, topic, parts, "kpa")
    admin = kp_admin(broker.bootstrap)
    try:
        if KP_VERSION >= (3, 0, 0):
            listed = {g["group_id"]: g for g in admin.list_groups()}
            assert live in listed and empty in listed, sorted(listed)
            assert listed[live]["protocol_type"] == "consumer", listed[live]
            if "group_state" in listed[live]:
                assert listed[live]["group_state"] == "Stable" and listed[empty]["group_state"] == "Empty", listed

            desc = admin.describe_groups([live, empty])
            d, e = desc[live], desc[empty]
            assert d["error"] is None and d["group_state"] == "Stable", d
            assert d["protocol_type"] == "consumer" and d["protocol_data"] == "range", d
            assert len(d["members"]) == 1, d["members"]
            mem = d["members"][0]
            assert mem["client_id"] == "kpa-live-client", mem
            asg = mem["member_assignment"]
            tps = sorted((t, p) for t, ps in _kp_assignment_topics(asg) for p in ps)
            assert tps == [(topic, p) for p in parts], asg
            assert e["group_state"] == "Empty" and e["members"] == [], e

            offs = admin.list_group_offsets({live: None, empty: None})
            for g, want in ((live, live_offs), (empty, empty_offs)):
                got = {tp.partition: om.offset for tp, om in offs[g].items() if tp.topic == topic}
                assert got == want, (g, got, want)
            one = admin.list_group_offsets({empty: [KTP(topic, 1)]})[empty]
            assert {tp.partition: om.offset for tp, om in one.items()} == {1: empty_offs[1]}, one

            res = dict(admin.delete_groups([live, empty]))
            assert _kp_error_name(res[live]) == "NonEmptyGroupError", res
            assert res[empty] in ("OK", None) or _kp_error_name(res[empty]) == "NoError", res
            names = {g["group_id"] for g in admin.list_groups()}
        else:
            listed = dict((g[0], g[1]) for g in admin.list_consumer_groups())
            assert live in listed and empty in listed, sorted(listed)
            assert listed[live] == "consumer", listed

            d = admin.describe_consumer_groups([live])[0]
            assert d.group == live and d.error_code == 0 and d.state == "Stable", d
            assert d.protocol_type == "consumer" and d.protocol == "range", d
            assert len(d.members) == 1, d.members
            mem = d.members[0]
            assert mem.client_id == "kpa-live-client", mem
            tps = sorted((t, p) for t, ps in mem.member_assignment.assignment for p in ps)
            assert tps == [(topic, p) for p in parts], mem.member_assignment
            e = admin.describe_consumer_groups([empty])[0]
            assert e.state == "Empty" and list(e.members) == [], e

            for g, want in ((live, live_offs), (empty, empty_offs)):
                got = {tp.partition: om.offset for tp, om in admin.list_consumer_group_offsets(g).items()
                       if tp.topic == topic}
                assert got == want, (g, got, want)
            one = admin.list_consumer_group_offsets(empty, partitions=[KTP(topic, 1)])
            assert {tp.partition: om.offset for tp, om in one.items()} == {1: empty_offs[1]}, one

            res = dict(admin.delete_consumer_groups([live, empty]))
            assert _kp_error_name(res[live]) == "NonEmptyGroupError", res
            assert _kp_error_name(res[empty]) == "NoError", res
            names = {g[0] for g in admin.list_consumer_groups()}
        assert empty not in names and live in names, names
        assert m_live.assignment() == parts and m_live.committed(parts) == live_offs
    finally:
        admin.close()
        m_live.close()


def _kp_assignment_topics(asg):
    """[(topic, [partitions])] from a decoded ConsumerProtocolAssignment (3.x)."""
    if isinstance(asg, dict) and "assigned_partitions" in asg:
        return [(t["topic"], list(t["partitions"])) for t in asg["assigned_partitions"]]
    if hasattr(asg, "assigned_partitions"):
        out = []
        for t in asg.assigned_partitions:
            if isinstance(t, tuple):
                out.append((t[0], list(t[1])))
            else:
                out.append((t.topic, list(t.partitions)))
        return out
    if hasattr(asg, "assignment"):
        return [(t, list(ps)) for t, ps in asg.assignment]
    raise AssertionError("cannot decode assignment %r" % (asg,))


# ------------------------------------------------------------------ 8. coordinator errors (raw)


def test_coordinator_error_codes(broker):
    topic = unique_topic("grp-raw")
    ck_create_topic(broker.bootstrap, topic, 1)
    group = unique_group("g-raw")
    warm_coordinator(broker, group)
    with wire.Conn.to(broker.bootstrap, timeout=15) as c:
        def join(group, session_ms, rebalance_ms=1000, member_id="", version=1):
            body = c.request(JOIN_GROUP, version, join_group_body(group, session_ms, rebalance_ms, member_id, [topic]))
            return parse_join_group_v2(body) if version >= 2 else parse_join_group_v1(body)

        def heartbeat(group, generation, member_id):
            return Reader(c.request(HEARTBEAT, 0, heartbeat_v0(group, generation, member_id))).i16()

        def commit(group, generation, member_id, offset):
            body = c.request(OFFSET_COMMIT, 2, offset_commit_v2(group, generation, member_id, {(topic, 0): offset}))
            return parse_offset_commit_v2(body)[(topic, 0)]

        def fetched(group):
            return parse_offset_fetch_v1(c.request(OFFSET_FETCH, 1, offset_fetch_v1(group, topic, [0])))[(topic, 0)]

        # Session timeouts outside [group.min.session.timeout.ms, group.max.session.timeout.ms].
        for bad in (1000, 5999, 1800001):
            r = join(group, bad)
            assert r["error"] == INVALID_SESSION_TIMEOUT, "session_timeout_ms=%d -> %s" % (bad, r)
        r = join("", SESSION_MS)
        assert r["error"] == INVALID_GROUP_ID, r
        # JoinGroup v4 without a member id: MEMBER_ID_REQUIRED, with the id to use.
        r = join(unique_group("g-raw-v4"), SESSION_MS, version=4)
        assert r["error"] == MEMBER_ID_REQUIRED and r["member_id"], r

        # Unknown members.
        assert heartbeat(unique_group("g-raw-none"), 1, "nobody") == UNKNOWN_MEMBER_ID

        # A live group: one member, generation 1 (after min(3000, rebalance timeout) ms).
        t0 = time.monotonic()
        r = join(group, 10000, rebalance_ms=1000)
        assert r["error"] == NONE and r["generation"] == 1, r
        assert time.monotonic() - t0 >= 0.8, "first generation formed before the initial delay"
        me = r["member_id"]
        assert me and r["leader"] == me and [m for m, _ in r["members"]] == [me], r
        assert r["protocol"] == "range"
        assignment = consumer_assignment({topic: [0]})
        s = parse_sync_group_v0(c.request(SYNC_GROUP, 0, sync_group_v0(group, 1, me, {me: assignment})))
        assert s == dict(error=NONE, assignment=assignment), s
        assert heartbeat(group, 1, me) == NONE
        assert heartbeat(group, 1, me + "-bogus") == UNKNOWN_MEMBER_ID
        assert heartbeat(group, 1, "") == UNKNOWN_MEMBER_ID
        assert commit(group, 1, me, 5) == NONE

        # The member rejoins: generation 2. Generation 1 is now stale.
        r = join(group, 10000, rebalance_ms=1000, member_id=me)
        assert r["error"] == NONE and r["generation"] == 2 and r["member_id"] == me, r
        s = parse_sync_group_v0(c.request(SYNC_GROUP, 0, sync_group_v0(group, 2, me, {me: assignment})))
        assert s["error"] == NONE, s
        assert commit(group, 1, me, 9) == ILLEGAL_GENERATION
        assert commit(group, 3, me, 9) == ILLEGAL_GENERATION
        assert commit(group, 2, me + "-bogus", 9) == UNKNOWN_MEMBER_ID
        assert heartbeat(group, 1, me) == ILLEGAL_GENERATION
        f = fetched(group)
        assert (f["error"], f["offset"]) == (NONE, 5), "rejected commits must not change the offset: %s" % f
        assert commit(group, 2, me, 11) == NONE
        assert fetched(group)["offset"] == 11

        # A second member joins: PreparingRebalance. The current generation may still commit
        # (eager members commit before rejoining), a stale one may not.
        with wire.Conn.to(broker.bootstrap, timeout=15) as c2:
            c2.corr += 1
            c2.send_raw(wire.request_frame(JOIN_GROUP, 1, c2.corr,
                                           join_group_body(group, 10000, 1000, "", [topic])))
            deadline = time.monotonic() + 5
            while heartbeat(group, 2, me) != REBALANCE_IN_PROGRESS:
                assert time.monotonic() < deadline, "no rebalance after a second member joined"
                time.sleep(0.05)
            assert commit(group, 2, me, 12) == NONE
            assert commit(group, 1, me, 99) == ILLEGAL_GENERATION
            assert fetched(group)["offset"] == 12
            # The member rejoins: generation 3 forms at once (everyone is in).
            r = join(group, 10000, rebalance_ms=1000, member_id=me)
            assert r["error"] == NONE and r["generation"] == 3 and r["leader"] == me, r
            other = parse_join_group_v1(c2.recv_response()[1])
            assert other["error"] == NONE and other["generation"] == 3 and other["leader"] == me, other
            assert sorted(m for m, _ in r["members"]) == sorted([me, other["member_id"]]), r["members"]
            # CompletingRebalance (no assignment yet): commits are refused with REBALANCE_IN_PROGRESS.
            assert commit(group, 3, me, 13) == REBALANCE_IN_PROGRESS
            s = parse_sync_group_v0(c.request(SYNC_GROUP, 0, sync_group_v0(
                group, 3, me, {me: assignment, other["member_id"]: consumer_assignment({})})))
            assert s == dict(error=NONE, assignment=assignment), s
            s = parse_sync_group_v0(c2.request(SYNC_GROUP, 0, sync_group_v0(group, 3, other["member_id"], {})))
            assert s == dict(error=NONE, assignment=consumer_assignment({})), s
            assert commit(group, 3, me, 14) == NONE
            assert fetched(group)["offset"] == 14

        # After LeaveGroup the member is unknown.
        assert Reader(c.request(LEAVE_GROUP, 0, leave_group_v0(group, me))).i16() == NONE
        assert heartbeat(group, 3, me) == UNKNOWN_MEMBER_ID
        assert Reader(c.request(LEAVE_GROUP, 0, leave_group_v0(group, me))).i16() == UNKNOWN_MEMBER_ID


# ------------------------------------------------------------------ once deviations from Kafka (fixed)


def test_heartbeat_with_stale_generation_during_rebalance(broker):
    topic = unique_topic("grp-hb")
    ck_create_topic(broker.bootstrap, topic, 1)
    group = unique_group("g-hb")
    warm_coordinator(broker, group)
    with wire.Conn.to(broker.bootstrap, timeout=15) as c, wire.Conn.to(broker.bootstrap, timeout=15) as c2:
        def join(member_id=""):
            return parse_join_group_v1(c.request(JOIN_GROUP, 1, join_group_body(group, 10000, 1000, member_id,
                                                                                  [topic])))

        def sync(gen, me):
            s = parse_sync_group_v0(c.request(SYNC_GROUP, 0, sync_group_v0(group, gen, me, {me: b""})))
            assert s["error"] == NONE, s

        def heartbeat(gen, me):
            return Reader(c.request(HEARTBEAT, 0, heartbeat_v0(group, gen, me))).i16()

        r = join()
        me = r["member_id"]
        assert r["generation"] == 1, r
        sync(1, me)
        r = join(me)
        assert r["generation"] == 2, r
        sync(2, me)
        assert heartbeat(1, me) == ILLEGAL_GENERATION  # Stable: right
        c2.corr += 1
        c2.send_raw(wire.request_frame(JOIN_GROUP, 1, c2.corr, join_group_body(group, 10000, 1000, "", [topic])))
        deadline = time.monotonic() + 5
        while heartbeat(2, me) != REBALANCE_IN_PROGRESS:
            assert time.monotonic() < deadline, "no rebalance after a second member joined"
            time.sleep(0.05)
        assert heartbeat(1, me) == ILLEGAL_GENERATION, "stale generation during PreparingRebalance"
        assert heartbeat(7, me) == ILLEGAL_GENERATION, "unknown generation during PreparingRebalance"


def test_deleting_a_topic_removes_its_committed_offsets(broker):
    topic = unique_topic("grp-deltopic")
    admin = ck_create_topic(broker.bootstrap, topic, 1)
    group = unique_group("g-deltopic")
    warm_coordinator(broker, group)

    def fetched():
        with wire.Conn.to(broker.bootstrap, timeout=15) as c:
            return parse_offset_fetch_v1(c.request(OFFSET_FETCH, 1, offset_fetch_v1(group, topic, [0])))[(topic, 0)]

    with wire.Conn.to(broker.bootstrap, timeout=15) as c:
        res = parse_offset_commit_v2(c.request(OFFSET_COMMIT, 2, offset_commit_v2(group, -1, "", {(topic, 0): 7})))
        assert res == {(topic, 0): NONE}, res
    assert fetched()["offset"] == 7
    admin.delete_topics([topic], operation_timeout=10, request_timeout=15)[topic].result(timeout=20)
    deadline = time.monotonic() + 5
    while fetched()["offset"] != -1 and time.monotonic() < deadline:
        time.sleep(0.2)
    f = fetched()
    assert f["offset"] == -1, "offset of a deleted topic's partition still committed: %s" % f
    ck_create_topic(admin, topic, 1)
    assert fetched()["offset"] == -1, "the re-created topic inherited the old committed offset"


def test_simple_commit_group_is_a_simple_consumer_group(broker):
    from confluent_kafka.admin import AdminClient
    if not hasattr(AdminClient, "list_consumer_groups"):
        pytest.skip("confluent-kafka %s has no AdminClient.list_consumer_groups" % (CK_VERSION,))
    topic = unique_topic("grp-simple")
    admin = ck_create_topic(broker.bootstrap, topic, 1)
    group = unique_group("g-simple")
    c = ck_consumer(broker.bootstrap, **{"group.id": group})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        res = c.commit(offsets=[TopicPartition(topic, 0, 0)], asynchronous=False)
        assert [tp.error for tp in res] == [None], res
    finally:
        c.close()
    listed = {g.group_id: g for g in admin.list_consumer_groups(request_timeout=15).result(timeout=20).valid}
    assert group in listed, sorted(listed)
    d = admin.describe_consumer_groups([group], request_timeout=15)[group].result(timeout=20)
    assert (listed[group].is_simple_consumer_group, d.is_simple_consumer_group) == (True, True)
