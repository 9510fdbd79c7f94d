"""Consumer groups of the KIP-848 protocol (ConsumerGroupHeartbeat, API 68) against
Sluice: librdkafka group consumers with group.protocol=consumer (the broker
assigns partitions itself and moves them incrementally), members killed without
leaving, committed offsets (OffsetCommit / OffsetFetch v9 with member epochs)
across broker restarts, the admin view of such a group, and the heartbeat's
error codes and epochs on raw sockets (fencing, revocation before hand-over,
the rebalance timeout, topic changes, static members, durability of epochs).

The brokers here run with group.consumer.heartbeat.interval.ms=500 and
group.consumer.session.timeout.ms=6000 so that membership changes are noticed
quickly.  confluent-kafka 2.0.2 (the old venv) has no group.protocol setting:
the librdkafka tests skip there; the raw-socket tests run in both venvs.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
import confluent_kafka
from confluent_kafka import Consumer, KafkaException

import wire
from wire import Reader, i8, i32, i64, uvarint
from clients import CK_VERSION, ck_admin, ck_consumer, ck_create_topic, ck_produce, ck_producer
from conftest import _set_pdeathsig, unique_topic
from test_groups import (
    OFFSET_COMMIT, OFFSET_FETCH, VICTIM_SCRIPT, CkMember, all_values, assignments_partition, drain,
    offset_commit_v2, offset_fetch_v1, parse_offset_commit_v2, parse_offset_fetch_v1, poll_until,
    produce_values, unique_group, warm_coordinator,
)
from test_groups_admin import _retry_coordinator

HEARTBEAT_MS = 500
SESSION_MS = 6000
OVERRIDES = {"group.consumer.heartbeat.interval.ms": str(HEARTBEAT_MS),
             "group.consumer.session.timeout.ms": str(SESSION_MS)}
# A group counts as settled once its assignment has not changed for this long
# (several heartbeat intervals: a member still converging would move on).
SETTLE_S = 2.0

# API keys
METADATA = 3
CONSUMER_GROUP_HEARTBEAT = 68

# Kafka error codes
NONE = 0
UNSUPPORTED_VERSION = 35
UNKNOWN_MEMBER_ID = 25
INVALID_REQUEST = 42
FENCED_MEMBER_EPOCH = 110
UNRELEASED_INSTANCE_ID = 111
UNSUPPORTED_ASSIGNOR = 112
STALE_MEMBER_EPOCH = 113


@functools.lru_cache(maxsize=None)
def _consumer_protocol_refused():
    """Why this librdkafka cannot use group.protocol=consumer, or None if it can
    (the configuration is checked when the client is created)."""
    try:
        c = Consumer({"bootstrap.servers": "127.0.0.1:9", "group.id": "probe-kip848",
                      "group.protocol": "consumer", "log_level": 0})
    except KafkaException as e:
        return e.args[0].str()
    c.close()
    return None


def _require_consumer_protocol():
    """Skip unless this librdkafka speaks group.protocol=consumer (KIP-848)."""
    why = _consumer_protocol_refused()
    if why is not None:
        pytest.skip("confluent-kafka %s (librdkafka %s) has no group.protocol=consumer: %s"
                    % (".".join(map(str, CK_VERSION)), confluent_kafka.libversion()[0], why))


class Member(CkMember):
    """CkMember (test_groups.py) for the consumer protocol: librdkafka refuses
    session.timeout.ms / heartbeat.interval.ms there (the broker owns them), so
    the consumer is built here; everything else is CkMember's.  Rebalance
    callbacks are also kept with their time, in `events`."""

    def __init__(self, bootstrap, group, topic, name, **conf):
        c = {
            "group.id": group,
            "group.protocol": "consumer",
            "client.id": name,
            "enable.auto.commit": False,
            "enable.auto.offset.store": True,
            "enable.partition.eof": False,
            "auto.offset.reset": "earliest",
        }
        c.update(conf)
        self.name = name
        self.topic = topic
        self.assigns, self.revokes, self.msgs = [], [], []
        self.events = []  # (monotonic time, "assign" | "revoke" | "lost", sorted partitions)
        self.closed = False
        self.closed_at = None
        self.consumer = ck_consumer(bootstrap, **c)
        self.consumer.subscribe([topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)

    def _on_assign(self, consumer, parts):
        super()._on_assign(consumer, parts)
        self.events.append((time.monotonic(), "assign", self.assigns[-1]))

    def _on_revoke(self, consumer, parts):
        super()._on_revoke(consumer, parts)
        self.events.append((time.monotonic(), "revoke", self.revokes[-1]))

    def _on_lost(self, consumer, parts):
        self.events.append((time.monotonic(), "lost", sorted(p.partition for p in parts)))

    def lost(self):
        return [e for e in self.events if e[1] == "lost"]

    def close(self):
        if not self.closed:
            super().close()
            self.closed_at = time.monotonic()


def settle(members, parts, sizes, timeout=30):
    """Polls until the members' assignments split `parts` with the given sizes
    (sorted) and stay unchanged for SETTLE_S; returns them."""
    seen = {"owned": None, "since": None}

    def settled():
        owned = [m.assignment() for m in members]
        if not (assignments_partition(owned, parts) and sorted(map(len, owned)) == sorted(sizes)):
            seen["owned"] = None
            return False
        if owned != seen["owned"]:
            seen["owned"], seen["since"] = owned, time.monotonic()
        return time.monotonic() - seen["since"] >= SETTLE_S

    poll_until(members, settled, timeout, "the group settling on %s partitions per member" % sorted(sizes))
    return seen["owned"]


class BackgroundProducer(threading.Thread):
    """Writes one record to each partition every ~20 ms until stopped; the
    values name the partition and a per-partition sequence number."""

    def __init__(self, bootstrap, topic, parts, prefix):
        super().__init__(daemon=True)
        self.producer = ck_producer(bootstrap)
        self.topic, self.parts, self.prefix = topic, parts, prefix
        self.written = {p: [] for p in parts}
        self.stop_evt = threading.Event()
        self.error = None

    def run(self):
        try:
            i = 0
            while not self.stop_evt.is_set():
                items = [{"value": ("%s-p%d-%06d" % (self.prefix, p, i)).encode(), "partition": p}
                         for p in self.parts]
                reports = ck_produce(self.producer, self.topic, items, flush_timeout=20)
                errs = [r.err for r in reports if r.err is not None]
                assert not errs, "delivery errors: %s" % errs
                for r in reports:
                    assert r.offset is not None and r.offset >= 0
                    self.written[r.partition].append((r.offset, r.value))
                i += 1
                time.sleep(0.02)
        except Exception as e:  # reported by the test
            self.error = e

    def finish(self):
        self.stop_evt.set()
        self.join(30)
        assert not self.is_alive(), "background producer did not stop"
        if self.error is not None:
            raise AssertionError("background producer failed: %r" % (self.error,))
        return self.written


# ------------------------------------------------------------------ 1. three, then four, then three members


def test_members_split_partitions_and_rebalance_incrementally(broker_factory):
    _require_consumer_protocol()
    broker = broker_factory(**OVERRIDES)
    topic = unique_topic("kip-grp")
    group = unique_group("g-kip")
    parts = list(range(6))
    ck_create_topic(broker.bootstrap, topic, len(parts))
    warm_coordinator(broker, group)

    # Auto-commit (also on revocation): a partition that moves resumes near where it was.
    conf = {"enable.auto.commit": True, "auto.commit.interval.ms": 200}
    members = [Member(broker.bootstrap, group, topic, "kip-%d" % i, **conf) for i in range(3)]
    producer = None
    try:
        # --- three members, stable: 2 partitions each, every record exactly once.
        owned3 = settle(members, parts, [2, 2, 2])
        marks = [len(m.events) for m in members]
        written = produce_values(broker.bootstrap, topic, parts, 100, "one")
        want = all_values(written)
        poll_until(members, lambda: {v for m in members for v in m.values()} >= want, 30,
                   "all %d records consumed by the group" % len(want))
        drain(members, 1.0)
        assert [m.assignment() for m in members] == owned3, "assignment changed while the group was stable"
        for m, mk in zip(members, marks):
            assert m.events[mk:] == [], "%s: rebalance callbacks while stable: %s" % (m.name, m.events[mk:])
        for p in parts:
            (owner,) = [m for m, o in zip(members, owned3) if p in o]
            consumers = [m.name for m in members if any(mp == p for mp, _, _, _ in m.msgs)]
            assert consumers == [owner.name], "partition %d consumed by %s, owned by %s" % (p, consumers, owner.name)
            got = [(o, v) for mp, o, v, _ in owner.msgs if mp == p]
            assert got == list(enumerate(written[p])), "partition %d: records out of order or wrong" % p
        delivered = [v for m in members for v in m.values()]
        assert len(delivered) == len(want) and set(delivered) == want, (
            "delivered %d records (%d distinct), want %d" % (len(delivered), len(set(delivered)), len(want)))
        # The auto-commits (OffsetCommit v9 with the member epoch) land; every member reads
        # them back (OffsetFetch v9 with its member id and epoch).
        poll_until(members, lambda: all(m.committed(parts) == {p: 100 for p in parts} for m in members), 15,
                   "the auto-committed offsets reaching 100 on every partition")

        # --- a fourth member joins, later an original one leaves, while records keep coming.
        producer = BackgroundProducer(broker.bootstrap, topic, parts, "two")
        producer.start()
        drain(members, 0.5)
        m4 = Member(broker.bootstrap, group, topic, "kip-3", **conf)
        members.append(m4)
        owned4 = settle(members, parts, [2, 2, 1, 1])
        leaver, stayers = members[0], members[1:]
        drain(members, 0.5)
        leaver.close()
        owned3b = settle(stayers, parts, [2, 2, 2])
        drain(stayers, 0.5)
        written2 = producer.finish()
        producer = None
        want2 = {v for p in parts for _, v in written2[p]}
        assert len(want2) >= 6 * 20, "the background producer wrote only %d records" % len(want2)
        poll_until(stayers, lambda: {v for m in members for v in m.values()} >= want2, 30,
                   "every record written across the membership changes consumed by someone")
        drain(stayers, 1.0)

        # Incremental: on the join, old members kept a subset of what they had and the
        # newcomer's partitions all came from them; on the leave, the stayers kept theirs.
        for m, before, after in zip(members[:3], owned3, owned4[:3]):
            assert set(after) <= set(before), "%s had %s, then %s after a member joined" % (m.name, before, after)
        assert owned4[3], "the new member got nothing"
        for m, before, after in zip(stayers, owned4[1:], owned3b):
            assert set(before) <= set(after), "%s had %s, then %s after a member left" % (m.name, before, after)
        assert set(owned4[0]) <= {p for o in owned3b for p in o}
        for m in members:
            assert not m.lost(), "%s lost partitions (fenced) during clean membership changes: %s" % (
                m.name, m.lost())

        # Who owned each partition, in order (one entry per settled assignment).
        owners = {}
        for snap, who in ((owned3, members[:3]), (owned4, members), (owned3b, stayers)):
            for m, o in zip(who, snap):
                for p in o:
                    if not owners.get(p) or owners[p][-1] is not m:
                        owners.setdefault(p, []).append(m)
        moved = sorted(p for p in parts if len(owners[p]) > 1)
        assert moved, "no partition moved"

        # A partition is released before it is handed on: the old owner's revocation
        # callback (or close) comes before the new owner's assignment callback.
        for p in moved:
            for old, new in zip(owners[p], owners[p][1:]):
                t_rev = [t for t, kind, ps in old.events if kind == "revoke" and p in ps]
                t_asg = [t for t, kind, ps in new.events if kind == "assign" and p in ps]
                assert t_rev and t_asg, "partition %d: no revoke by %s (%s) or assign to %s (%s)" % (
                    p, old.name, old.events, new.name, new.events)
                assert t_rev[-1] <= t_asg[-1], (
                    "partition %d assigned to %s before %s revoked it" % (p, new.name, old.name))

        # Per partition: every offset delivered; each owner read a contiguous run in order;
        # duplicates only where a partition changed hands (the new owner re-reading what the
        # old one consumed but had not committed yet).
        for p in parts:
            assert [o for o, _ in written2[p]] == list(range(100, 100 + len(written2[p]))), (
                "partition %d: the second records were not appended at offsets 100.." % p)
        end = {p: 100 + len(written2[p]) for p in parts}
        value_at = {(p, o): v for p in parts for o, v in written2[p]}
        value_at.update({(p, i): v for p in parts for i, v in enumerate(written[p])})
        dups = {}
        for p in parts:
            deliveries = sorted(((t, o, v, m) for m in members for mp, o, v, t in m.msgs if mp == p),
                                key=lambda d: (d[0], d[1]))
            for _, o, v, _ in deliveries:
                assert value_at.get((p, o)) == v, "partition %d offset %d: got %r" % (p, o, v)
            offs = {o for _, o, _, _ in deliveries}
            assert offs == set(range(end[p])), "partition %d: offsets never delivered: %s" % (
                p, sorted(set(range(end[p])) - offs)[:10])
            runs = []  # [member, [offsets]] in delivery order
            for _, o, _, m in deliveries:
                if runs and runs[-1][0] is m:
                    runs[-1][1].append(o)
                else:
                    runs.append([m, [o]])
            run_members = [m for m, _ in runs]
            it = iter(owners[p])
            assert all(any(m is o for o in it) for m in run_members), (
                "partition %d consumed by %s, owned in turn by %s" % (
                    p, [m.name for m in run_members], [m.name for m in owners[p]]))
            for m, offs_run in runs:
                assert offs_run == list(range(offs_run[0], offs_run[0] + len(offs_run))), (
                    "partition %d: %s read a non-contiguous run %s" % (p, m.name, offs_run[:20]))
            assert runs[0][1][0] == 0 and runs[-1][1][-1] == end[p] - 1
            n_dup = len(deliveries) - end[p]
            redelivered = sum(max(0, a[1][-1] - b[1][0] + 1) for a, b in zip(runs, runs[1:]))
            assert n_dup == redelivered
            if p not in moved:
                assert n_dup == 0, "partition %d never moved but saw %d duplicates" % (p, n_dup)
            dups[p] = n_dup
        print("KIP-848 group: owners %s; moved partitions %s; duplicates per partition %s (total %d of %d records)"
              % ({p: [m.name for m in owners[p]] for p in parts}, moved, dups, sum(dups.values()),
                 sum(end.values())))
    finally:
        if producer is not None:
            producer.stop_evt.set()
            producer.join(30)
        for m in members:
            m.close()


# ------------------------------------------------------------------ 2. kill -9 of a member

_KIP848_VICTIM_CONF = '"session.timeout.ms": int(session_ms), "heartbeat.interval.ms": int(heartbeat_ms),'
assert _KIP848_VICTIM_CONF in VICTIM_SCRIPT, "test_groups.VICTIM_SCRIPT changed; update the substitution"
# test_groups' victim (consume, commit synchronously once caught up, report as JSON lines)
# with the consumer protocol instead of the classic session settings.
KIP848_VICTIM_SCRIPT = VICTIM_SCRIPT.replace(_KIP848_VICTIM_CONF, '"group.protocol": "consumer",')


def test_killed_member_partitions_taken_over_after_session_timeout(broker_factory, tmp_path):
    _require_consumer_protocol()
    broker = broker_factory(**OVERRIDES)
    topic = unique_topic("kip-kill")
    group = unique_group("g-kip-kill")
    parts = list(range(6))
    ck_create_topic(broker.bootstrap, topic, len(parts))
    warm_coordinator(broker, group)

    script = tmp_path / "victim.py"
    script.write_text(KIP848_VICTIM_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), broker.bootstrap, topic, group, "0", "0"],
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
    victim = {"owned": set(), "committed": {}, "msgs": [], "errors": []}

    def pump():
        while True:
            try:
                ev = events.get_nowait()
            except queue.Empty:
                return
            # The consumer protocol is incremental: callbacks name the partitions added/removed.
            if "assigned" in ev:
                victim["owned"] |= set(ev["assigned"])
            elif "revoked" in ev:
                victim["owned"] -= set(ev["revoked"])
            elif "committed" in ev:
                victim["committed"].update({int(k): v for k, v in ev["committed"].items()})
            elif "msg" in ev:
                victim["msgs"].append(tuple(ev["msg"]))
            elif "error" in ev or "commit_error" in ev or "junk" in ev:
                victim["errors"].append(ev)

    survivors = [Member(broker.bootstrap, group, topic, "kip-survivor-%d" % i) for i in range(2)]
    try:
        def split3():
            pump()
            owned = [sorted(victim["owned"])] + [s.assignment() for s in survivors]
            return assignments_partition(owned, parts) and sorted(map(len, owned)) == [2, 2, 2]

        try:
            poll_until(survivors, split3, 30, "the victim (subprocess) and two survivors splitting 6 partitions")
            drain(survivors, SETTLE_S)
            assert split3(), "the group did not stay settled"
        except AssertionError as e:
            raise AssertionError("%s; victim: %s; victim stderr: %s" % (
                e, victim, proc.stderr.read(2000) if proc.poll() is not None else "(running)"))
        victim_parts = sorted(victim["owned"])
        surv_parts = [s.assignment() for s in survivors]

        first = produce_values(broker.bootstrap, topic, parts, 40, "first")
        poll_until(survivors, lambda: pump() or (
            all(victim["committed"].get(p) == 40 for p in victim_parts)
            and all({v for mp, _, v, _ in s.msgs if mp in o} >= {v for p in o for v in first[p]}
                    for s, o in zip(survivors, surv_parts))), 30,
            "everyone consuming the first records and the victim committing them")
        pump()
        assert not victim["errors"], victim["errors"]
        assert sorted(victim["owned"]) == victim_parts and [s.assignment() for s in survivors] == surv_parts
        # The victim read exactly its own partitions' records, once, in order.
        assert sorted(victim["msgs"]) == sorted((p, o) for p in victim_parts for o in range(40)), victim["msgs"]
        for s, o in zip(survivors, surv_parts):
            assert s.commit() == {p: 40 for p in o}

        os.kill(proc.pid, signal.SIGKILL)
        t_kill = time.monotonic()
        proc.wait(10)
        second = produce_values(broker.bootstrap, topic, parts, 40, "second")
        want_second = all_values(second)
        marks = [len(s.msgs) for s in survivors]
        t_all = []

        def took_over():
            if not t_all and assignments_partition([s.assignment() for s in survivors], parts):
                t_all.append(time.monotonic())
            return bool(t_all) and {v for s, mk in zip(survivors, marks) for v in s.values()[mk:]} >= want_second

        poll_until(survivors, took_over, SESSION_MS / 1000.0 + 20,
                   "the survivors taking over the killed member's partitions")
        took = t_all[0] - t_kill
        drain(survivors, 1.0)
        # Not before the session timeout (counted from the victim's last heartbeat, normally
        # less than one interval before the kill; two allowed), and not long after it.
        assert (SESSION_MS - 2 * HEARTBEAT_MS) / 1000.0 - 0.5 <= took <= SESSION_MS / 1000.0 + 6, (
            "takeover %.1fs after kill -9; group.consumer.session.timeout.ms=%d" % (took, SESSION_MS))
        final = [s.assignment() for s in survivors]
        assert sorted(map(len, final)) == [3, 3], final
        for s, before, after in zip(survivors, surv_parts, final):
            assert set(before) <= set(after), "%s had %s, then %s" % (s.name, before, after)
            assert not s.lost(), (s.name, s.lost())
        after = [(mp, o, v) for s, mk in zip(survivors, marks) for mp, o, v, _ in s.msgs[mk:]]
        missing = want_second - {v for _, _, v in after}
        assert not missing, "%d records never delivered, e.g. %s" % (len(missing), sorted(missing)[:3])
        # The victim's partitions resume at its committed offset (40): nothing it committed is
        # read again, nothing after it skipped, nothing twice.
        for p in parts:
            got = sorted((o, v) for mp, o, v in after if mp == p)
            assert got == list(zip(range(40, 80), second[p])), (
                "partition %d (%s): after the kill got offsets %s" % (
                    p, "the victim's" if p in victim_parts else "a survivor's", [o for o, _ in got][:5]))
        for s, o in zip(survivors, final):
            assert s.commit() == {p: 80 for p in o}
        assert survivors[0].committed(parts) == {p: 80 for p in parts}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for s in survivors:
            s.close()


# ------------------------------------------------------------------ 3. commits across a broker restart


def _list_group(bootstrap, group):
    """The group's ListConsumerGroups entry, from a fresh AdminClient (None if absent)."""
    admin = ck_admin(bootstrap)
    deadline = time.monotonic() + 15
    while True:
        try:
            res = admin.list_consumer_groups(request_timeout=10).result(timeout=15)
            if not res.errors:
                break
            err = res.errors
        except KafkaException as e:  # e.g. the coordinator still loading after a restart
            err = e
        assert time.monotonic() < deadline, "ListConsumerGroups kept failing: %s" % (err,)
        time.sleep(0.2)
    return {g.group_id: g for g in res.valid}.get(group)


def test_committed_offsets_survive_broker_restart(broker_factory):
    _require_consumer_protocol()
    from confluent_kafka import ConsumerGroupState
    broker = broker_factory(**OVERRIDES)
    topic = unique_topic("kip-restart")
    group = unique_group("g-kip-restart")
    parts = [0, 1, 2]
    ck_create_topic(broker.bootstrap, topic, len(parts))
    first = produce_values(broker.bootstrap, topic, parts, 30, "first")
    warm_coordinator(broker, group)

    c1 = Member(broker.bootstrap, group, topic, "kip-before")
    try:
        poll_until([c1], lambda: set(c1.values()) >= all_values(first), 30, "the first consumer reading everything")
        assert c1.assignment() == parts
        listing = _list_group(broker.bootstrap, group)
        assert listing is not None and listing.state == ConsumerGroupState.STABLE, listing
        assert listing.is_simple_consumer_group is False
        assert c1.commit() == {p: 30 for p in parts}  # commit(asynchronous=False): the positions
        offsets = {0: 7, 1: 15, 2: 30}
        assert c1.commit(offsets) == offsets  # commit(offsets=..., asynchronous=False)
        assert c1.committed(parts) == offsets
    finally:
        c1.close()  # leaves the group
    listing = _list_group(broker.bootstrap, group)
    assert listing is not None and listing.state == ConsumerGroupState.EMPTY, listing

    broker.restart()
    second = produce_values(broker.bootstrap, topic, parts, 5, "second")  # offsets 30..34
    listing = _list_group(broker.bootstrap, group)
    assert listing is not None and listing.state == ConsumerGroupState.EMPTY, (
        "after a restart the empty group is %s" % (listing,))

    c2 = Member(broker.bootstrap, group, topic, "kip-after")
    try:
        poll_until([c2], lambda: all(any(mp == p and o == 34 for mp, o, _, _ in c2.msgs) for p in parts), 30,
                   "the new consumer reaching the end of every partition")
        drain([c2], 0.5)
        assert c2.committed(parts) == offsets, "committed offsets after a broker restart"
        for p in parts:
            got = [(o, v) for mp, o, v, _ in c2.msgs if mp == p]
            want = list(zip(range(offsets[p], 35), (first[p] + second[p])[offsets[p]:]))
            assert got[0][0] == offsets[p], "partition %d: first record at %d, committed %d" % (p, got[0][0], offsets[p])
            assert got == want, "partition %d: resumed records differ" % p
        listing = _list_group(broker.bootstrap, group)
        assert listing is not None and listing.state == ConsumerGroupState.STABLE, listing
        assert c2.commit() == {p: 35 for p in parts}
    finally:
        c2.close()


def test_listed_group_type_is_consumer(broker_factory):
    _require_consumer_protocol()
    from confluent_kafka import ConsumerGroupType
    broker = broker_factory(**OVERRIDES)
    topic = unique_topic("kip-type")
    group = unique_group("g-kip-type")
    ck_create_topic(broker.bootstrap, topic, 1)
    warm_coordinator(broker, group)
    c = Member(broker.bootstrap, group, topic, "kip-type")
    try:
        poll_until([c], lambda: c.assignment() == [0], 30, "the member getting its partition")
        listing = _list_group(broker.bootstrap, group)
        assert listing is not None, "group not listed"
        assert listing.type == ConsumerGroupType.CONSUMER, listing.type
    finally:
        c.close()


def test_admin_describes_a_consumer_protocol_group(broker_factory):
    """describe_consumer_groups of a KIP-848 group comes from ConsumerGroupDescribe:
    type CONSUMER, Stable, each member with its assignment and target; a classic
    group in the same cluster still describes through DescribeGroups."""
    _require_consumer_protocol()
    from confluent_kafka import ConsumerGroupState, ConsumerGroupType
    broker = broker_factory(**OVERRIDES)
    topic = unique_topic("kip-desc")
    group = unique_group("g-kip-desc")
    classic = unique_group("g-classic-desc")
    ck_create_topic(broker.bootstrap, topic, 4)
    warm_coordinator(broker, group)
    members = [Member(broker.bootstrap, group, topic, "kip-desc-%d" % i) for i in range(2)]
    old = CkMember(broker.bootstrap, classic, topic, "classic-desc")
    admin = ck_admin(broker.bootstrap)
    try:
        poll_until(members + [old], lambda: sorted(members[0].assignment() + members[1].assignment()) == [0, 1, 2, 3]
                   and len(members[0].assignment()) == 2 and old.assignment() == [0, 1, 2, 3],
                   40, "both groups settling")
        d = admin.describe_consumer_groups([group])[group].result(timeout=15)
        assert d.type == ConsumerGroupType.CONSUMER, d.type
        assert d.state == ConsumerGroupState.STABLE, d.state
        got = {}
        for m in d.members:
            assigned = sorted(tp.partition for tp in m.assignment.topic_partitions)
            target = sorted(tp.partition for tp in m.target_assignment.topic_partitions)
            assert assigned == target, (assigned, target)
            assert all(tp.topic == topic for tp in m.assignment.topic_partitions)
            got[m.member_id] = assigned
        assert sorted(p for ps in got.values() for p in ps) == [0, 1, 2, 3], got
        assert sorted(got.values()) == sorted([sorted(m.assignment()) for m in members]), got
        d = admin.describe_consumer_groups([classic])[classic].result(timeout=15)
        assert d.type == ConsumerGroupType.CLASSIC, d.type
        assert d.state == ConsumerGroupState.STABLE and len(d.members) == 1, (d.state, d.members)
    finally:
        for m in members + [old]:
            m.close()


def test_live_member_carries_on_across_broker_restart(broker_factory):
    """The group's members and epochs are in __consumer_offsets: after a clean
    restart the member's next heartbeat (same id, same epoch) is accepted, so it
    keeps its partitions without a rebalance."""
    _require_consumer_protocol()
    broker = broker_factory(**OVERRIDES)
    topic = unique_topic("kip-live")
    group = unique_group("g-kip-live")
    parts = [0, 1, 2, 3]
    ck_create_topic(broker.bootstrap, topic, len(parts))
    warm_coordinator(broker, group)
    members = [Member(broker.bootstrap, group, topic, "kip-live-%d" % i) for i in range(2)]
    try:
        owned = settle(members, parts, [2, 2])
        first = produce_values(broker.bootstrap, topic, parts, 20, "first")
        poll_until(members, lambda: {v for m in members for v in m.values()} >= all_values(first), 30,
                   "the members reading the first records")
        for m, o in zip(members, owned):
            assert m.commit() == {p: 20 for p in o}
        marks = [(len(m.events), len(m.msgs)) for m in members]

        broker.restart()
        second = produce_values(broker.bootstrap, topic, parts, 20, "second")
        want = all_values(second)
        poll_until(members, lambda: {v for m, mk in zip(members, marks) for v in m.values()[mk[1]:]} >= want, 30,
                   "the members consuming the records written after the restart")
        # Several heartbeats after the restart: a member the broker had forgotten would be
        # fenced by now (UNKNOWN_MEMBER_ID) and lose its partitions.
        drain(members, max(SETTLE_S, 4 * HEARTBEAT_MS / 1000.0))
        for m, o, mk in zip(members, owned, marks):
            assert m.assignment() == o, (m.name, m.assignment(), o)
            assert m.events[mk[0]:] == [], "%s rebalanced across the restart: %s" % (m.name, m.events[mk[0]:])
            got = [(mp, off, v) for mp, off, v, _ in m.msgs[mk[1]:]]
            assert sorted(got) == sorted((p, 20 + i, v) for p in o for i, v in enumerate(second[p])), m.name
        for m, o in zip(members, owned):
            assert m.commit() == {p: 40 for p in o}
        assert members[0].committed(parts) == {p: 40 for p in parts}
    finally:
        for m in members:
            m.close()


# ------------------------------------------------------------------ 4. raw ConsumerGroupHeartbeat
#
# Flexible versions: request header v2 (header v1 plus an empty tag section, which
# goes in front of the body here) and response header v1 (a tag section after the
# correlation id, stripped from the body).

TAGS = b"\x00"


def cstring(s):
    if s is None:
        return uvarint(0)
    b = s.encode()
    return uvarint(len(b) + 1) + b


def carray(items, enc):
    if items is None:
        return uvarint(0)
    return uvarint(len(items) + 1) + b"".join(enc(x) for x in items)


def read_cstring(r):
    n = r.uvarint()
    return None if n == 0 else r.raw(n - 1).decode()


def read_carray(r, fn):
    n = r.uvarint()
    return None if n == 0 else [fn(r) for _ in range(n - 1)]


def skip_tags(r):
    for _ in range(r.uvarint()):
        r.uvarint()
        r.raw(r.uvarint())


def flexible_request(conn, api_key, version, body):
    resp = conn.request(api_key, version, TAGS + body)
    r = Reader(resp)
    skip_tags(r)  # response header v1
    return r


def cgh_body(version, group, member_id, epoch, topics=None, owned=None, rebalance_ms=-1, regex=None,
             assignor=None, instance_id=None, rack_id=None):
    """ConsumerGroupHeartbeat v0/v1; owned: [(topic id bytes, [partitions])] or None."""
    body = cstring(group) + cstring(member_id) + i32(epoch) + cstring(instance_id) + cstring(rack_id)
    body += i32(rebalance_ms) + carray(topics, cstring)
    if version >= 1:
        body += cstring(regex)
    else:
        assert regex is None
    body += cstring(assignor)
    body += carray(owned, lambda t: t[0] + carray(t[1], i32) + TAGS)
    return body + TAGS


def parse_cgh(r):
    d = dict(throttle=r.i32(), error=r.i16(), message=read_cstring(r), member_id=read_cstring(r),
             epoch=r.i32(), interval=r.i32())
    present = r.i8()
    d["assignment"] = None
    if present >= 0:
        tps = read_carray(r, lambda r: (r.raw(16), read_carray(r, lambda r: r.i32()), skip_tags(r))[:2])
        skip_tags(r)
        d["assignment"] = {tid: sorted(ps) for tid, ps in tps}
    skip_tags(r)
    assert r.remaining() == 0, "%d trailing bytes in the ConsumerGroupHeartbeat response" % r.remaining()
    return d


def metadata_v12_topic_ids(conn, topics):
    """{topic: (topic id bytes, partition count)} from Metadata v12."""
    body = carray(topics, lambda t: b"\x00" * 16 + cstring(t) + TAGS) + i8(0) + i8(0) + TAGS
    r = flexible_request(conn, METADATA, 12, body)
    r.i32()  # throttle
    read_carray(r, lambda r: (r.i32(), read_cstring(r), r.i32(), read_cstring(r), skip_tags(r)))
    read_cstring(r)  # cluster id
    r.i32()  # controller

    def part(r):
        r.i16(), r.i32(), r.i32(), r.i32()
        for _ in range(3):
            read_carray(r, lambda r: r.i32())
        skip_tags(r)

    def topic(r):
        err, name, tid = r.i16(), read_cstring(r), r.raw(16)
        r.i8()
        n = len(read_carray(r, part))
        r.i32()
        skip_tags(r)
        return name, (err, tid, n)

    out = dict(read_carray(r, topic))
    for t in topics:
        assert out[t][0] == NONE and out[t][1] != b"\x00" * 16, out
    return {t: out[t][1:] for t in topics}


def offset_commit_v9(group, epoch, member_id, topic, offsets):
    parts = sorted(offsets.items())
    return (cstring(group) + i32(epoch) + cstring(member_id) + cstring(None)
            + carray([topic], lambda t: cstring(t) + carray(
                parts, lambda po: i32(po[0]) + i64(po[1]) + i32(-1) + cstring(None) + TAGS) + TAGS)
            + TAGS)


def parse_offset_commit_v9(r):
    r.i32()  # throttle
    topics = read_carray(r, lambda r: (read_cstring(r), read_carray(r, lambda r: (r.i32(), r.i16(), skip_tags(r))),
                                       skip_tags(r)))
    return {(t, p): e for t, ps, _ in topics for p, e, _ in ps}


class Hb:
    """One raw ConsumerGroupHeartbeat connection."""

    def __init__(self, bootstrap, group, topic):
        self.conn = wire.Conn.to(bootstrap, timeout=15)
        self.group, self.topic = group, topic

    def send(self, member_id, epoch, version=1, **kw):
        body = cgh_body(version, self.group, member_id, epoch, **kw)
        return parse_cgh(flexible_request(self.conn, CONSUMER_GROUP_HEARTBEAT, version, body))

    def join(self, member_id, version=1, **kw):
        kw.setdefault("topics", [self.topic])
        kw.setdefault("owned", [])
        kw.setdefault("rebalance_ms", 30000)
        return self.send(member_id, 0, version, **kw)

    def close(self):
        self.conn.close()


def test_raw_consumer_group_heartbeat(broker_factory):
    broker = broker_factory(**OVERRIDES)
    topic = unique_topic("kip-raw")
    n_parts = 4
    ck_create_topic(broker.bootstrap, topic, n_parts)
    group = unique_group("g-kip-raw")
    warm_coordinator(broker, group)
    a = Hb(broker.bootstrap, group, topic)
    b = Hb(broker.bootstrap, group, topic)
    try:
        err, versions = a.conn.api_versions()
        assert err == NONE and versions.get(CONSUMER_GROUP_HEARTBEAT) == (0, 1), versions.get(CONSUMER_GROUP_HEARTBEAT)
        tid, n = metadata_v12_topic_ids(a.conn, [topic])[topic]
        assert n == n_parts

        # Refusals that leave no member behind.
        r = _retry_coordinator(lambda: a.join(""), "ConsumerGroupHeartbeat while the coordinator loads")
        assert r["error"] == INVALID_REQUEST, "v1 join without a member id: %s" % r
        r = a.join(str(uuid.uuid4()), regex="^%s.*" % topic[:6], topics=None)
        assert r["error"] == INVALID_REQUEST, "regex subscription: %s" % r
        r = a.join(str(uuid.uuid4()), assignor="nope")
        assert r["error"] == UNSUPPORTED_ASSIGNOR, "server assignor 'nope': %s" % r
        r = a.send("nobody-" + uuid.uuid4().hex, 5, owned=[])
        assert r["error"] == UNKNOWN_MEMBER_ID, "unknown member at epoch 5: %s" % r

        # The first member joins: an epoch and the whole topic, named by its id.
        me = str(uuid.uuid4())
        r = a.join(me)
        assert r["error"] == NONE and r["member_id"] == me, r
        epoch = r["epoch"]
        assert epoch >= 1, r
        assert r["interval"] == HEARTBEAT_MS, "heartbeat_interval_ms %d, configured %d" % (r["interval"], HEARTBEAT_MS)
        assert r["assignment"] == {tid: list(range(n_parts))}, (r["assignment"], tid.hex())
        all_parts = [(tid, list(range(n_parts)))]
        r = a.send(me, epoch, owned=all_parts)
        assert (r["error"], r["epoch"], r["assignment"]) == (NONE, epoch, None), r
        r = a.send(me, epoch + 5, owned=all_parts)
        assert r["error"] == FENCED_MEMBER_EPOCH, "epoch ahead of the member's: %s" % r

        # OffsetCommit v9: only at the member's current epoch; older versions are refused to
        # consumer-protocol members; OffsetFetch without a member (admin style) reads it.
        def commit9(member_id, ep, offset):
            r = flexible_request(a.conn, OFFSET_COMMIT, 9, offset_commit_v9(group, ep, member_id, topic, {0: offset}))
            return parse_offset_commit_v9(r)[(topic, 0)]

        def fetched():
            return parse_offset_fetch_v1(a.conn.request(OFFSET_FETCH, 1, offset_fetch_v1(group, topic, [0])))[(topic, 0)]

        assert commit9(me, epoch, 5) == NONE
        assert commit9(me, epoch - 1, 6) == STALE_MEMBER_EPOCH
        assert commit9(me, epoch + 1, 6) == STALE_MEMBER_EPOCH
        assert commit9("nobody", epoch, 6) == UNKNOWN_MEMBER_ID
        assert commit9("", -1, 6) == UNKNOWN_MEMBER_ID, "a memberless commit to a group with members"
        v2 = parse_offset_commit_v2(a.conn.request(OFFSET_COMMIT, 2, offset_commit_v2(group, epoch, me, {(topic, 0): 6})))
        assert v2 == {(topic, 0): UNSUPPORTED_VERSION}, v2
        f = fetched()
        assert (f["error"], f["offset"]) == (NONE, 5), f

        # A second member (v0: the coordinator names it): the first gives up half its
        # partitions before the second gets any of them.
        r = b.join("", version=0)
        assert r["error"] == NONE and r["member_id"], r
        other, epoch2 = r["member_id"], r["epoch"]
        assert epoch2 > epoch, (epoch, r)
        assert not (r["assignment"] or {}).get(tid), "partitions handed out before they were revoked: %s" % r
        r = a.send(me, epoch, owned=all_parts)
        assert r["error"] == NONE and r["epoch"] == epoch, "a member revoking keeps its epoch: %s" % r
        kept = r["assignment"][tid]
        assert 0 < len(kept) < n_parts and set(kept) < set(range(n_parts)), r
        r = b.send(other, epoch2, version=0, owned=[])
        assert r["error"] == NONE and not (r["assignment"] or {}).get(tid), (
            "partitions handed out before the first member released them: %s" % r)
        r = a.send(me, epoch, owned=[(tid, kept)])  # released
        assert (r["error"], r["epoch"]) == (NONE, epoch2), r
        assert commit9(me, epoch, 7) == STALE_MEMBER_EPOCH
        assert commit9(me, epoch2, 7) == NONE
        r = b.send(other, epoch2, version=0, owned=[])
        assert r["error"] == NONE and r["epoch"] == epoch2, r
        got = r["assignment"][tid]
        assert sorted(kept + got) == list(range(n_parts)), (kept, got)
        r = b.send(other, epoch2, version=0, owned=[(tid, got)])
        assert (r["error"], r["epoch"], r["assignment"]) == (NONE, epoch2, None), r

        # Leaving: epoch -1 comes back; the member is gone; the first takes everything again.
        r = b.send(other, -1, version=0)
        assert (r["error"], r["epoch"]) == (NONE, -1), r
        r = b.send(other, epoch2, version=0, owned=[(tid, got)])
        assert r["error"] == UNKNOWN_MEMBER_ID, "heartbeat after leaving: %s" % r
        r = a.send(me, epoch2, owned=[(tid, kept)])
        assert r["error"] == NONE and r["epoch"] > epoch2 and r["assignment"] == {tid: list(range(n_parts))}, r
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("crash", [False, True], ids=["restart", "kill9"])
def test_raw_member_epoch_survives_broker_restart(broker_factory, crash):
    """An epoch the coordinator answered is durable: after a restart (or kill -9)
    the member heartbeats on at the same epoch; a higher one is still fenced."""
    broker = broker_factory(**OVERRIDES)
    topic = unique_topic("kip-rawrst")
    ck_create_topic(broker.bootstrap, topic, 2)
    group = unique_group("g-kip-rawrst")
    warm_coordinator(broker, group)
    a = Hb(broker.bootstrap, group, topic)
    me = str(uuid.uuid4())
    try:
        r = _retry_coordinator(lambda: a.join(me), "ConsumerGroupHeartbeat join")
        assert r["error"] == NONE and r["epoch"] >= 1, r
        epoch, asg = r["epoch"], r["assignment"]
        (tid,) = asg
        owned = [(tid, asg[tid])]
        assert asg[tid] == [0, 1], asg
        r = a.send(me, epoch, owned=owned)
        assert (r["error"], r["epoch"]) == (NONE, epoch), r
        commit = offset_commit_v9(group, epoch, me, topic, {1: 11})
        assert parse_offset_commit_v9(flexible_request(a.conn, OFFSET_COMMIT, 9, commit)) == {(topic, 1): NONE}
    finally:
        a.close()

    broker.restart(clean=not crash)

    a = Hb(broker.bootstrap, group, topic)
    try:
        r = _retry_coordinator(lambda: a.send(me, epoch, owned=owned), "ConsumerGroupHeartbeat after restart")
        assert (r["error"], r["epoch"]) == (NONE, epoch), "member after %s: %s" % (
            "kill -9" if crash else "restart", r)
        assert r["assignment"] in (None, asg), r
        r = a.send(me, epoch + 1, owned=owned)
        assert r["error"] == FENCED_MEMBER_EPOCH, r
        f = parse_offset_fetch_v1(a.conn.request(OFFSET_FETCH, 1, offset_fetch_v1(group, topic, [1])))[(topic, 1)]
        assert (f["error"], f["offset"]) == (NONE, 11), f
        r = a.send(me, -1)
        assert (r["error"], r["epoch"]) == (NONE, -1), r
    finally:
        a.close()


def _two_raw_members(bootstrap, group, topic, n_parts, **join_kw):
    """Two raw members that have converged on a split of the topic: returns
    (conns, ids, epochs, {member index: partitions}, topic id)."""
    conns = [Hb(bootstrap, group, topic) for _ in range(2)]
    ids = ["m%d-%s" % (i, uuid.uuid4().hex) for i in range(2)]
    kws = [{k: v[i] for k, v in join_kw.items()} for i in range(2)]
    r = _retry_coordinator(lambda: conns[0].join(ids[0], **kws[0]), "ConsumerGroupHeartbeat join")
    assert r["error"] == NONE, r
    (tid,) = r["assignment"]
    owned = {0: r["assignment"][tid], 1: []}
    epochs = {0: r["epoch"]}
    r = conns[1].join(ids[1], **kws[1])
    assert r["error"] == NONE, r
    epochs[1] = r["epoch"]
    deadline = time.monotonic() + 10
    while True:
        for i in (0, 1):
            r = conns[i].send(ids[i], epochs[i], owned=[(tid, owned[i])])
            assert r["error"] == NONE, (i, r)
            epochs[i] = r["epoch"]
            if r["assignment"] is not None:
                owned[i] = r["assignment"].get(tid, [])
        if epochs[0] == epochs[1] and owned[0] and owned[1] and sorted(owned[0] + owned[1]) == list(range(n_parts)):
            return conns, ids, epochs, owned, tid
        assert time.monotonic() < deadline, "two raw members did not converge: %s %s" % (epochs, owned)


def test_raw_member_that_does_not_revoke_is_removed_after_its_rebalance_timeout(broker_factory):
    """A partition is never handed on while its owner still holds it; an owner
    that keeps heartbeating but never releases it is removed once its
    rebalance timeout has passed, and the partitions move then."""
    broker = broker_factory(**OVERRIDES)
    topic = unique_topic("kip-rto")
    ck_create_topic(broker.bootstrap, topic, 4)
    group = unique_group("g-kip-rto")
    warm_coordinator(broker, group)
    rebalance_ms = 2000
    a, b = Hb(broker.bootstrap, group, topic), Hb(broker.bootstrap, group, topic)
    me, other = "stuck-" + uuid.uuid4().hex, "waiting-" + uuid.uuid4().hex
    try:
        r = _retry_coordinator(lambda: a.join(me, rebalance_ms=rebalance_ms), "ConsumerGroupHeartbeat join")
        assert r["error"] == NONE, r
        epoch = r["epoch"]
        (tid,) = r["assignment"]
        everything = [(tid, [0, 1, 2, 3])]
        r = b.join(other, rebalance_ms=rebalance_ms)
        assert r["error"] == NONE, r
        epoch_b = r["epoch"]
        r = a.send(me, epoch, owned=everything)
        t_revoke = time.monotonic()
        assert r["error"] == NONE and r["epoch"] == epoch and len(r["assignment"][tid]) == 2, r
        # The stuck member keeps heartbeating with all four partitions.
        while True:
            ra = a.send(me, epoch, owned=everything)
            rb = b.send(other, epoch_b, owned=[])
            assert rb["error"] == NONE, rb
            if ra["error"] != NONE:
                break
            assert not (rb["assignment"] or {}).get(tid), (
                "partitions handed on while their owner still holds them: %s" % rb)
            assert time.monotonic() - t_revoke < rebalance_ms / 1000.0 + 5, "the stuck member was never removed"
            time.sleep(0.1)
        took = time.monotonic() - t_revoke
        assert ra["error"] == UNKNOWN_MEMBER_ID, ra
        assert took >= rebalance_ms / 1000.0 - 0.3, "removed %.1fs after the revocation, rebalance timeout %dms" % (
            took, rebalance_ms)
        rb = b.send(other, epoch_b, owned=[])
        assert rb["error"] == NONE and rb["epoch"] > epoch_b and rb["assignment"] == {tid: [0, 1, 2, 3]}, rb
    finally:
        a.close()
        b.close()


def test_raw_subscribed_topic_changes_move_the_group_epoch(broker_factory):
    """A topic created after the subscription, and partitions added to it, reach
    the member at a new epoch."""
    broker = broker_factory(**OVERRIDES)
    topic = unique_topic("kip-late")
    group = unique_group("g-kip-late")
    admin = ck_admin(broker.bootstrap)
    warm_coordinator(broker, group)
    a = Hb(broker.bootstrap, group, topic)
    me = str(uuid.uuid4())
    try:
        r = _retry_coordinator(lambda: a.join(me), "ConsumerGroupHeartbeat join")
        assert r["error"] == NONE and r["epoch"] >= 1 and not r["assignment"], r
        epoch = r["epoch"]
        r = a.send(me, epoch, owned=[])
        assert (r["error"], r["epoch"]) == (NONE, epoch) and not r["assignment"], r

        ck_create_topic(admin, topic, 2)
        tid, _ = metadata_v12_topic_ids(a.conn, [topic])[topic]
        r = a.send(me, epoch, owned=[])
        assert r["error"] == NONE and r["epoch"] > epoch and r["assignment"] == {tid: [0, 1]}, r
        epoch = r["epoch"]
        r = a.send(me, epoch, owned=[(tid, [0, 1])])
        assert (r["error"], r["epoch"], r["assignment"]) == (NONE, epoch, None), r

        from confluent_kafka.admin import NewPartitions
        admin.create_partitions([NewPartitions(topic, 5)], operation_timeout=10,
                                request_timeout=15)[topic].result(timeout=20)
        deadline = time.monotonic() + 5
        while True:
            r = a.send(me, epoch, owned=[(tid, [0, 1])])
            assert r["error"] == NONE, r
            if r["epoch"] != epoch or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert r["epoch"] > epoch and r["assignment"] == {tid: [0, 1, 2, 3, 4]}, r
    finally:
        a.close()


def test_raw_static_member_instance_id(broker_factory):
    broker = broker_factory(**OVERRIDES)
    topic = unique_topic("kip-static")
    ck_create_topic(broker.bootstrap, topic, 4)
    group = unique_group("g-kip-static")
    warm_coordinator(broker, group)
    conns, ids, epochs, owned, tid = _two_raw_members(broker.bootstrap, group, topic, 4,
                                                      instance_id=["inst-a", "inst-b"])
    try:
        # The instance id is held by a live member: another member may not take it.
        r = conns[0].join("intruder-" + uuid.uuid4().hex, instance_id="inst-a")
        assert r["error"] == UNRELEASED_INSTANCE_ID, r
        r = conns[1].send(ids[1], epochs[1], owned=[(tid, owned[1])])
        assert (r["error"], r["epoch"], r["assignment"]) == (NONE, epochs[1], None), r
        # A static member leaving for a while answers epoch -2.
        r = conns[0].send(ids[0], -2, instance_id="inst-a", owned=[(tid, owned[0])])
        assert (r["error"], r["epoch"]) == (NONE, -2), r
    finally:
        for c in conns:
            c.close()


def test_raw_static_member_temporary_leave_keeps_its_assignment(broker_factory):
    broker = broker_factory(**OVERRIDES)
    topic = unique_topic("kip-static2")
    ck_create_topic(broker.bootstrap, topic, 4)
    group = unique_group("g-kip-static2")
    warm_coordinator(broker, group)
    conns, ids, epochs, owned, tid = _two_raw_members(broker.bootstrap, group, topic, 4,
                                                      instance_id=["inst-a", "inst-b"])
    try:
        r = conns[0].send(ids[0], -2, instance_id="inst-a", owned=[(tid, owned[0])])
        assert (r["error"], r["epoch"]) == (NONE, -2), r
        r = conns[1].send(ids[1], epochs[1], owned=[(tid, owned[1])])
        assert (r["error"], r["epoch"], r["assignment"]) == (NONE, epochs[1], None), (
            "the other member after a static member left temporarily: %s" % r)
        r = conns[0].join("back-" + uuid.uuid4().hex, instance_id="inst-a")
        assert r["error"] == NONE and r["assignment"] == {tid: owned[0]}, (
            "the static member rejoining under its instance id: %s (had %s)" % (r, owned[0]))
    finally:
        for c in conns:
            c.close()
