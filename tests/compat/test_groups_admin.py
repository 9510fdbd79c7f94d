"""Consumer groups, continued: resetting a group's committed offsets from the
admin APIs (confluent-kafka AdminClient, kafka-python), the group size limit
(group.max.size) on raw sockets, and a group that carries on across a clean
broker restart without rebalancing (its generation record is read back from
__consumer_offsets).

Helpers (raw JoinGroup/SyncGroup/Heartbeat codecs, CkMember, ...) come from
test_groups.py.  The group.max.size tests follow Kafka's GroupCoordinator
(acceptJoiningMember): refused before the member-id handshake, with no member
id, and during a rebalance counted by the members that have rejoined.
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

import wire
from wire import Reader, array, string
from clients import CK_VERSION, ck_admin, ck_create_topic, ck_produce, ck_producer, kp_admin, kp_consumer
from conftest import unique_topic
from test_groups import (
    HEARTBEAT, ILLEGAL_GENERATION, JOIN_GROUP, LEAVE_GROUP, MEMBER_ID_REQUIRED, NONE, OFFSET_COMMIT,
    OFFSET_FETCH, REBALANCE_IN_PROGRESS, SYNC_GROUP, UNKNOWN_MEMBER_ID, CkMember, all_values, assignments_partition,
    consumer_assignment, drain, heartbeat_v0, join_group_body, leave_group_v0, offset_commit_v2, offset_fetch_v1,
    parse_join_group_v1, parse_join_group_v2, parse_offset_commit_v2, parse_offset_fetch_v1, parse_sync_group_v0,
    poll_until, produce_values, sync_group_v0, unique_group, warm_coordinator,
)

DESCRIBE_GROUPS = 15

COORDINATOR_LOAD_IN_PROGRESS = 14
COORDINATOR_NOT_AVAILABLE = 15
NOT_COORDINATOR = 16
GROUP_MAX_SIZE_REACHED = 81
RETRIABLE_COORDINATOR = (COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR)


def _need_ck_group_admin(*methods):
    from confluent_kafka.admin import AdminClient
    for m in methods:
        if not hasattr(AdminClient, m):
            pytest.skip("confluent-kafka %s has no AdminClient.%s" % (CK_VERSION, m))


def _ck_offsets(admin, group, topic):
    """{partition: committed offset} of `group` for `topic` (AdminClient.list_consumer_group_offsets)."""
    from confluent_kafka import ConsumerGroupTopicPartitions
    r = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)],
                                          request_timeout=15)[group].result(timeout=20)
    for tp in r.topic_partitions:
        assert tp.error is None, "list_consumer_group_offsets: partition %d error %s" % (tp.partition, tp.error)
    return {tp.partition: tp.offset for tp in r.topic_partitions if tp.topic == topic and tp.offset >= 0}


def _consumed_and_committed_group(broker, topic, group, parts, per_partition, prefix):
    """Writes per_partition records to each partition; a confluent group member
    reads them all and commits the end. Returns (member, written)."""
    written = produce_values(broker.bootstrap, topic, parts, per_partition, prefix)
    warm_coordinator(broker, group)
    m = CkMember(broker.bootstrap, group, topic, prefix + "-first")
    try:
        poll_until([m], lambda: set(m.values()) >= all_values(written) and m.assignment() == parts, 45,
                   "the first member reading everything")
        end = {p: per_partition for p in parts}
        assert m.commit() == end
        assert m.committed(parts) == end
    except BaseException:
        m.close()
        raise
    return m, written


def _produce_markers(bootstrap, topic, parts, prefix):
    items = [{"value": ("%s-marker-p%d" % (prefix, p)).encode(), "partition": p} for p in parts]
    reports = ck_produce(ck_producer(bootstrap), topic, items)
    assert [r.err for r in reports] == [None] * len(parts), [r.err for r in reports]
    return {p: (r.offset, it["value"]) for p, r, it in zip(parts, reports, items)}


RESET = {0: 5, 1: 0, 2: 10}  # offset 5; the earliest; the end (10 records each)


def _check_rereads_from_reset(records_of, start, written, markers, parts):
    """records_of(p) -> [(offset, value)] a new group member read from p.
    It must have started exactly at the reset positions and read through the
    marker written afterwards (so partition 2, reset to its end, yields only
    the marker)."""
    for p in parts:
        got = records_of(p)
        want = list(zip(range(start[p], len(written[p])), written[p][start[p]:])) + [markers[p]]
        assert got == want, "partition %d (reset to %d): re-read %s, want %s" % (
            p, start[p], [o for o, _ in got], [o for o, _ in want])


# ------------------------------------------------------------------ 1. reset offsets, confluent-kafka admin


def test_confluent_admin_resets_offsets_of_an_empty_group(broker_factory):
    _need_ck_group_admin("alter_consumer_group_offsets", "list_consumer_group_offsets", "describe_consumer_groups")
    from confluent_kafka import ConsumerGroupState, ConsumerGroupTopicPartitions
    broker = broker_factory(**{"group.initial.rebalance.delay.ms": "500"})
    topic = unique_topic("gadm-reset")
    group = unique_group("g-reset")
    parts = [0, 1, 2]
    admin = ck_create_topic(broker.bootstrap, topic, len(parts))
    m, written = _consumed_and_committed_group(broker, topic, group, parts, 10, "ckreset")

    def alter(offsets):
        req = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p, o) for p, o in sorted(offsets.items())])
        return admin.alter_consumer_group_offsets([req], request_timeout=15)[group]

    try:
        # While a member is active the group is not the admin's to change: Kafka refuses a commit
        # without member id / generation (-1) to a non-empty group with UNKNOWN_MEMBER_ID.
        d = admin.describe_consumer_groups([group], request_timeout=15)[group].result(timeout=20)
        assert d.state == ConsumerGroupState.STABLE and len(d.members) == 1, (d.state, d.members)
        fut = alter(RESET)
        try:
            res = fut.result(timeout=20)
        except KafkaException as e:
            assert e.args[0].code() == KafkaError.UNKNOWN_MEMBER_ID, e
        else:
            errs = {tp.partition: tp.error.code() if tp.error is not None else None for tp in res.topic_partitions}
            assert errs == {p: KafkaError.UNKNOWN_MEMBER_ID for p in parts}, (
                "altering the offsets of a group with an active member: %s" % errs)
        assert _ck_offsets(admin, group, topic) == {p: 10 for p in parts}, "a refused alter changed offsets"
        assert m.committed(parts) == {p: 10 for p in parts}
    finally:
        m.close()  # LeaveGroup: the group is Empty and keeps its offsets

    d = admin.describe_consumer_groups([group], request_timeout=15)[group].result(timeout=20)
    assert d.state == ConsumerGroupState.EMPTY and d.members == [], (d.state, d.members)
    res = alter(RESET).result(timeout=20)
    assert res.group_id == group
    got = {tp.partition: (tp.offset, tp.error) for tp in res.topic_partitions if tp.topic == topic}
    assert got == {p: (o, None) for p, o in RESET.items()}, got
    assert _ck_offsets(admin, group, topic) == RESET

    # A new member of the group starts exactly where the offsets were reset to.
    m2 = CkMember(broker.bootstrap, group, topic, "ckreset-second")
    try:
        assert m2.committed(parts) == RESET
        want_old = {v for p in parts for v in written[p][RESET[p]:]}
        poll_until([m2], lambda: m2.assignment() == parts and set(m2.values()) >= want_old, 45,
                   "the new member re-reading from the reset offsets")
        markers = _produce_markers(broker.bootstrap, topic, parts, "ckreset")
        poll_until([m2], lambda: {mk[1] for mk in markers.values()} <= set(m2.values()), 30, "the markers")
        drain([m2], 0.5)
        _check_rereads_from_reset(lambda p: [(o, v) for mp, o, v, _ in m2.msgs if mp == p], RESET, written,
                                  markers, parts)
        assert len(m2.assigns) == 1 and not m2.revokes, (m2.assigns, m2.revokes)
    finally:
        m2.close()


# ------------------------------------------------------------------ 1b. reset offsets, kafka-python


def _kp_oam(offset):
    from kafka.structs import OffsetAndMetadata
    if "leader_epoch" in OffsetAndMetadata._fields:
        return OffsetAndMetadata(offset, "", -1)
    return OffsetAndMetadata(offset, "")


def _kp_alter(admin):
    if admin is None:
        return None
    return getattr(admin, "alter_group_offsets", None) or getattr(admin, "alter_consumer_group_offsets", None)


def _kp_group_offsets(admin, group, topic):
    if hasattr(admin, "list_group_offsets"):
        offs = admin.list_group_offsets({group: None})[group]
    else:
        offs = admin.list_consumer_group_offsets(group)
    return {tp.partition: om.offset for tp, om in offs.items() if tp.topic == topic}


def test_kafka_python_resets_offsets_of_an_empty_group(broker_factory):
    """kafka-python 3.x: KafkaAdminClient.alter_group_offsets / reset_group_offsets.
    kafka-python 2.0.2 has neither: a KafkaConsumer with the group's id that
    assign()s the partitions and commits explicit offsets (no member id,
    generation -1) does the same."""
    from kafka import TopicPartition as KTP
    from kafka.errors import CommitFailedError, KafkaError as KpError
    broker = broker_factory(**{"group.initial.rebalance.delay.ms": "500"})
    topic = unique_topic("gadm-kpreset")
    group = unique_group("g-kpreset")
    parts = [0, 1, 2]
    ck_create_topic(broker.bootstrap, topic, len(parts))
    tps = {p: KTP(topic, p) for p in parts}
    admin = kp_admin(broker.bootstrap)
    alter = _kp_alter(admin)
    committer = None
    m, written = _consumed_and_committed_group(broker, topic, group, parts, 10, "kpreset")
    try:
        # Refused while a member is active.
        if alter is not None:
            res = alter(group, {tps[p]: _kp_oam(o) for p, o in RESET.items()})
            names = {tp.partition: getattr(e, "__name__", type(e).__name__) for tp, e in res.items()}
            assert names == {p: "UnknownMemberIdError" for p in parts}, names
        else:
            committer = kp_consumer(broker.bootstrap, group_id=group, client_id="kpreset-committer")
            committer.assign(list(tps.values()))
            with pytest.raises(KpError) as ei:
                committer.commit({tps[p]: _kp_oam(o) for p, o in RESET.items()})
            assert isinstance(ei.value, CommitFailedError), repr(ei.value)
        assert _kp_group_offsets(admin, group, topic) == {p: 10 for p in parts}, "a refused commit changed offsets"
    finally:
        m.close()

    if alter is not None and hasattr(admin, "reset_group_offsets"):
        from kafka.admin import OffsetSpec
        res = admin.reset_group_offsets(group, {tps[0]: 5, tps[1]: OffsetSpec.EARLIEST, tps[2]: OffsetSpec.LATEST})
        got = {tp.partition: (r["offset"], getattr(r["error"], "__name__", str(r["error"]))) for tp, r in res.items()}
        assert got == {p: (o, "NoError") for p, o in RESET.items()}, got
    elif alter is not None:
        res = alter(group, {tps[p]: _kp_oam(o) for p, o in RESET.items()})
        names = {tp.partition: getattr(e, "__name__", type(e).__name__) for tp, e in res.items()}
        assert names == {p: "NoError" for p in parts}, names
    else:
        committer.commit({tps[p]: _kp_oam(o) for p, o in RESET.items()})
        assert {p: committer.committed(tps[p]) for p in parts} == RESET
        committer.close()
        committer = None
    assert _kp_group_offsets(admin, group, topic) == RESET
    admin.close()

    # A kafka-python group member resumes from the reset offsets.
    from kafka import KafkaConsumer
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group, client_id="kpreset-second",
                      enable_auto_commit=False, auto_offset_reset="earliest", session_timeout_ms=10000,
                      heartbeat_interval_ms=500, request_timeout_ms=20000)
    recs = {p: [] for p in parts}

    def pump(until, timeout, what):
        deadline = time.monotonic() + timeout
        while not until():
            assert time.monotonic() < deadline, "timed out waiting for %s (have %s)" % (
                what, {p: [o for o, _ in r] for p, r in recs.items()})
            for tp, rs in c.poll(timeout_ms=100).items():
                recs[tp.partition].extend((r.offset, r.value) for r in rs)

    try:
        c.subscribe([topic])
        pump(lambda: all(len(recs[p]) >= 10 - RESET[p] for p in parts), 45, "the reset records")
        markers = _produce_markers(broker.bootstrap, topic, parts, "kpreset")
        pump(lambda: all(markers[p] in recs[p] for p in parts), 30, "the markers")
        _check_rereads_from_reset(lambda p: recs[p], RESET, written, markers, parts)
    finally:
        c.close()
        if committer is not None:
            committer.close()


# ------------------------------------------------------------------ 2. group.max.size


class RawMember:
    """A group member speaking JoinGroup/SyncGroup/Heartbeat on its own socket."""

    def __init__(self, bootstrap, group, topic, session_ms=10000, rebalance_ms=1000):
        self.conn = wire.Conn.to(bootstrap, timeout=15)
        self.group, self.topic = group, topic
        self.session_ms, self.rebalance_ms = session_ms, rebalance_ms
        self.member_id = ""
        self.generation = -1
        self._pending_version = None

    def close(self):
        self.conn.close()

    def send_join(self, version=1, member_id=None):
        mid = self.member_id if member_id is None else member_id
        self.conn.corr += 1
        self._pending_corr = self.conn.corr
        self._pending_version = version
        self.conn.send_raw(wire.request_frame(JOIN_GROUP, version, self.conn.corr, join_group_body(
            self.group, self.session_ms, self.rebalance_ms, mid, [self.topic])))

    def recv_join(self):
        corr, body = self.conn.recv_response()
        assert corr == self._pending_corr, (corr, self._pending_corr)
        r = parse_join_group_v2(body) if self._pending_version >= 2 else parse_join_group_v1(body)
        if r["error"] == NONE:
            self.member_id, self.generation = r["member_id"], r["generation"]
        return r

    def join(self, version=1, member_id=None):
        self.send_join(version, member_id)
        return self.recv_join()

    def sync(self, assignments=None, generation=None):
        gen = self.generation if generation is None else generation
        return parse_sync_group_v0(self.conn.request(SYNC_GROUP, 0, sync_group_v0(
            self.group, gen, self.member_id, assignments or {})))

    def heartbeat(self, generation=None, member_id=None):
        gen = self.generation if generation is None else generation
        mid = self.member_id if member_id is None else member_id
        return Reader(self.conn.request(HEARTBEAT, 0, heartbeat_v0(self.group, gen, mid))).i16()

    def leave(self):
        return Reader(self.conn.request(LEAVE_GROUP, 0, leave_group_v0(self.group, self.member_id))).i16()

    def commit(self, offsets, generation=None):
        gen = self.generation if generation is None else generation
        return parse_offset_commit_v2(self.conn.request(OFFSET_COMMIT, 2, offset_commit_v2(
            self.group, gen, self.member_id, {(self.topic, p): o for p, o in offsets.items()})))


def _form_group(members, topic, assignment_of):
    """All members join at once (JoinGroup v1) and sync; the leader hands out
    assignment_of(index) to the member at that index. Returns the join answers."""
    for m in members:
        m.send_join(1)
    joins = [m.recv_join() for m in members]
    for r in joins:
        assert r["error"] == NONE, joins
    gens = {r["generation"] for r in joins}
    leaders = {r["leader"] for r in joins}
    assert len(gens) == 1 and len(leaders) == 1, "members joined different generations: %s" % joins
    (leader_id,) = leaders
    (leader,) = [m for m in members if m.member_id == leader_id]
    (lj,) = [r for r in joins if r["member_id"] == leader_id]
    assert sorted(mid for mid, _ in lj["members"]) == sorted(m.member_id for m in members), lj
    asg = {m.member_id: consumer_assignment(assignment_of(i)) for i, m in enumerate(members)}
    s = leader.sync(asg)
    assert s == dict(error=NONE, assignment=asg[leader.member_id]), s
    for m in members:
        if m is not leader:
            s = m.sync()
            assert s == dict(error=NONE, assignment=asg[m.member_id]), s
    return joins, leader, asg


def _group_limit_setup(broker_factory):
    broker = broker_factory(**{"group.max.size": "2", "group.initial.rebalance.delay.ms": "1000"})
    topic = unique_topic("gadm-max")
    ck_create_topic(broker.bootstrap, topic, 2)
    group = unique_group("g-max")
    warm_coordinator(broker, group)
    a, b = RawMember(broker.bootstrap, group, topic), RawMember(broker.bootstrap, group, topic)
    _, leader, _ = _form_group([a, b], topic, lambda i: {topic: [i]})
    assert (a.heartbeat(), b.heartbeat()) == (NONE, NONE)
    return broker, topic, group, a, b, leader


def test_group_max_size_refuses_a_third_member(broker_factory):
    broker, topic, group, a, b, leader = _group_limit_setup(broker_factory)
    c = RawMember(broker.bootstrap, group, topic)
    d = RawMember(broker.bootstrap, group, topic)
    try:
        gen = a.generation
        # JoinGroup v1 (no member id handshake): refused at once.
        r = c.join(1)
        assert r["error"] == GROUP_MAX_SIZE_REACHED, r
        # JoinGroup v4: refused before a member id is handed out.
        r = c.join(4)
        assert r["error"] == GROUP_MAX_SIZE_REACHED, r
        assert c.heartbeat(gen, r["member_id"] or "x") == UNKNOWN_MEMBER_ID

        # The refused joins did not disturb the group: no rebalance, both members current.
        assert (a.heartbeat(), b.heartbeat()) == (NONE, NONE)
        # A full group still takes its own members back: the follower rejoins with unchanged
        # protocols and gets the current generation (no rebalance).
        follower = b if leader is a else a
        r = follower.join(1)
        assert r["error"] == NONE and r["generation"] == gen and r["member_id"] == follower.member_id, r
        assert (a.heartbeat(), b.heartbeat()) == (NONE, NONE)

        # A member leaves: now there is room. The new member's join starts a rebalance the
        # remaining member must join; generation gen+1 has exactly those two.
        stay = a if follower is b else b
        assert follower.leave() == NONE
        c.send_join(1, member_id="")
        deadline = time.monotonic() + 5
        while stay.heartbeat() != REBALANCE_IN_PROGRESS:
            assert time.monotonic() < deadline, "no rebalance after a member left and another joined"
            time.sleep(0.05)
        rs = stay.join(1)
        rc = c.recv_join()
        assert rs["error"] == NONE and rc["error"] == NONE, (rs, rc)
        assert rs["generation"] == rc["generation"] == gen + 1, (rs, rc)
        assert rs["leader"] == rc["leader"] == stay.member_id, (rs, rc)
        assert sorted(mid for mid, _ in rs["members"]) == sorted([stay.member_id, c.member_id]), rs
        # Full again (CompletingRebalance): a fourth member is refused.
        r = d.join(1)
        assert r["error"] == GROUP_MAX_SIZE_REACHED, r
        asg = {stay.member_id: consumer_assignment({topic: [0, 1]}), c.member_id: consumer_assignment({})}
        assert stay.sync(asg) == dict(error=NONE, assignment=asg[stay.member_id])
        assert c.sync() == dict(error=NONE, assignment=asg[c.member_id])
        assert (stay.heartbeat(), c.heartbeat()) == (NONE, NONE)
        r = d.join(1)
        assert r["error"] == GROUP_MAX_SIZE_REACHED, r
        assert (stay.heartbeat(), c.heartbeat()) == (NONE, NONE)
    finally:
        for m in (a, b, c, d):
            m.close()


def test_group_max_size_refused_before_member_id_required(broker_factory):
    broker, topic, group, a, b, _ = _group_limit_setup(broker_factory)
    c = RawMember(broker.bootstrap, group, topic)
    try:
        r = c.join(4)
        assert r["error"] == GROUP_MAX_SIZE_REACHED, (
            "JoinGroup v4 without member id to a full Stable group: got error %d, want 81" % r["error"])
    finally:
        for m in (a, b, c):
            m.close()


def test_group_max_size_refusal_names_no_member(broker_factory):
    broker, topic, group, a, b, _ = _group_limit_setup(broker_factory)
    c = RawMember(broker.bootstrap, group, topic)
    try:
        r = c.join(1)
        assert r["error"] == GROUP_MAX_SIZE_REACHED, r
        assert r["member_id"] == "", "refused JoinGroup v1 answered member_id %r, want \"\"" % r["member_id"]
    finally:
        for m in (a, b, c):
            m.close()


def test_group_max_size_counts_awaiting_members_during_a_rebalance(broker_factory):
    broker, topic, group, a, b, leader = _group_limit_setup(broker_factory)
    follower = b if leader is a else a
    c = RawMember(broker.bootstrap, group, topic)
    try:
        gen = leader.generation
        leader.send_join(1)  # the leader rejoins: PreparingRebalance, one member awaiting
        deadline = time.monotonic() + 5
        while follower.heartbeat() != REBALANCE_IN_PROGRESS:
            assert time.monotonic() < deadline, "no rebalance after the leader rejoined"
            time.sleep(0.05)
        c.send_join(1)  # 1 awaiting < 2: Kafka admits it (its answer comes with the new generation)
        c.conn.sock.settimeout(0.5)
        try:
            early = c.recv_join()
        except OSError:
            early = None
        finally:
            c.conn.sock.settimeout(15)
        assert early is None, "new member answered during the rebalance with only 1 of 2 awaiting: %s" % early
        r = follower.join(1)  # 2 awaiting: the last to rejoin is evicted
        assert r["error"] == GROUP_MAX_SIZE_REACHED, r
        rl, rc = leader.recv_join(), c.recv_join()
        assert rl["error"] == NONE and rc["error"] == NONE and rl["generation"] == rc["generation"] == gen + 1, (rl, rc)
        assert sorted(mid for mid, _ in rl["members"]) == sorted([leader.member_id, c.member_id]), rl
    finally:
        for m in (a, b, c):
            m.close()


# ------------------------------------------------------------------ 3. groups across a restart


def describe_groups_v0(groups):
    return array(groups, string)


def parse_describe_groups_v0(body):
    r = Reader(body)
    return r.array(lambda r: dict(
        error=r.i16(), group=r.string(), state=r.string(), protocol_type=r.string(), protocol=r.string(),
        members=r.array(lambda r: dict(member_id=r.string(), client_id=r.string(), client_host=r.string(),
                                       metadata=r.kbytes(), assignment=r.kbytes()))))


def _describe_raw(conn, group):
    (d,) = parse_describe_groups_v0(conn.request(DESCRIBE_GROUPS, 0, describe_groups_v0([group])))
    return d


def _retry_coordinator(fn, what, timeout=15.0):
    """Calls fn() until it no longer answers a coordinator-loading error code."""
    deadline = time.monotonic() + timeout
    while True:
        res = fn()
        code = res if isinstance(res, int) else res.get("error")
        if code not in RETRIABLE_COORDINATOR:
            return res
        assert time.monotonic() < deadline, "%s: still %d after %.0fs" % (what, code, timeout)
        time.sleep(0.1)


def test_raw_group_members_survive_a_broker_restart(broker_factory):
    broker = broker_factory(**{"group.initial.rebalance.delay.ms": "1000"})
    topic = unique_topic("gadm-rst")
    ck_create_topic(broker.bootstrap, topic, 2)
    group = unique_group("g-rst")
    warm_coordinator(broker, group)
    a = RawMember(broker.bootstrap, group, topic, session_ms=10000, rebalance_ms=5000)
    b = RawMember(broker.bootstrap, group, topic, session_ms=10000, rebalance_ms=5000)
    try:
        joins, leader, asg = _form_group([a, b], topic, lambda i: {topic: [i]})
        follower = b if leader is a else a
        gen = a.generation
        assert (a.heartbeat(), b.heartbeat()) == (NONE, NONE)
        assert a.commit({0: 3}) == {(topic, 0): NONE}
        assert b.commit({1: 4}) == {(topic, 1): NONE}
        before = _describe_raw(a.conn, group)
        assert before["error"] == NONE and before["state"] == "Stable", before
        assert sorted(m["member_id"] for m in before["members"]) == sorted([a.member_id, b.member_id]), before
    finally:
        a.close()
        b.close()

    broker.restart()  # SIGTERM, then start on the same port and data dir

    a.conn = wire.Conn.to(broker.bootstrap, timeout=15)
    b.conn = wire.Conn.to(broker.bootstrap, timeout=15)
    try:
        after = _retry_coordinator(lambda: _describe_raw(a.conn, group), "DescribeGroups after restart")
        assert after["error"] == NONE, after
        assert (after["state"], after["protocol_type"], after["protocol"]) == ("Stable", "consumer", "range"), after
        key = lambda d: sorted((m["member_id"], m["client_id"], m["metadata"], m["assignment"]) for m in d["members"])
        assert key(after) == key(before), "members after restart:\n%s\nbefore:\n%s" % (after, before)
        assert {m["member_id"]: m["assignment"] for m in after["members"]} == asg

        # Members carry on with their pre-restart ids and generation.
        assert _retry_coordinator(lambda: a.heartbeat(), "Heartbeat after restart") == NONE
        assert b.heartbeat() == NONE
        assert a.heartbeat(gen - 1) == ILLEGAL_GENERATION
        assert b.heartbeat(gen + 1) == ILLEGAL_GENERATION
        assert a.heartbeat(gen, a.member_id + "-bogus") == UNKNOWN_MEMBER_ID
        # SyncGroup in the Stable group hands back the restored assignment.
        assert follower.sync() == dict(error=NONE, assignment=asg[follower.member_id])
        # Committed offsets are there, and the generation still commits (a stale one does not).
        f = parse_offset_fetch_v1(a.conn.request(OFFSET_FETCH, 1, offset_fetch_v1(group, topic, [0, 1])))
        assert {p: (f[(topic, p)]["error"], f[(topic, p)]["offset"]) for p in (0, 1)} == {0: (NONE, 3), 1: (NONE, 4)}
        assert a.commit({0: 5}) == {(topic, 0): NONE}
        assert a.commit({0: 6}, generation=gen - 1) == {(topic, 0): ILLEGAL_GENERATION}
        # A follower rejoining with unchanged protocols gets the current generation: the
        # restored member metadata is what it joined with.
        r = follower.join(1)
        assert r["error"] == NONE and r["generation"] == gen and r["member_id"] == follower.member_id, r
        assert (a.heartbeat(), b.heartbeat()) == (NONE, NONE)
        d = _describe_raw(a.conn, group)
        assert d["state"] == "Stable" and key(d) == key(before), d
    finally:
        a.close()
        b.close()


def test_confluent_group_carries_on_across_a_broker_restart(broker_factory):
    _need_ck_group_admin("describe_consumer_groups")
    from confluent_kafka import ConsumerGroupState
    broker = broker_factory(**{"group.initial.rebalance.delay.ms": "1500"})
    topic = unique_topic("gadm-ckrst")
    group = unique_group("g-ckrst")
    parts = [0, 1, 2, 3]
    ck_create_topic(broker.bootstrap, topic, len(parts))
    first = produce_values(broker.bootstrap, topic, parts, 20, "first")
    warm_coordinator(broker, group)

    def describe():
        # A fresh AdminClient each time, like a CLI tool: librdkafka 2.16 re-bootstraps a client
        # whose brokers all went down, and an admin request issued to the old client while its
        # broker handle is being decommissioned can hang until it times out (a client race).
        adm = ck_admin(broker.bootstrap)
        deadline = time.monotonic() + 15
        while True:
            try:
                d = adm.describe_consumer_groups([group], request_timeout=10)[group].result(timeout=15)
                return d.state, {m.member_id: sorted(tp.partition for tp in m.assignment.topic_partitions
                                                     if tp.topic == topic) for m in d.members}
            except KafkaException as e:
                code = e.args[0].code()
                if code not in (KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.COORDINATOR_NOT_AVAILABLE,
                                KafkaError.NOT_COORDINATOR, KafkaError._TRANSPORT, KafkaError._TIMED_OUT) \
                        or time.monotonic() > deadline:
                    raise

    conf = {"session.timeout.ms": 15000, "heartbeat.interval.ms": 500}
    members = [CkMember(broker.bootstrap, group, topic, "ckrst-%d" % i, **conf) for i in range(2)]
    try:
        poll_until(members, lambda: assignments_partition([m.assignment() for m in members], parts)
                   and {v for m in members for v in m.values()} >= all_values(first), 45,
                   "two members splitting the partitions and reading the first records")
        drain(members, 1.0)
        owned = [m.assignment() for m in members]
        for m, o in zip(members, owned):
            assert m.commit() == {p: 20 for p in o}
        state, before = describe()
        assert state == ConsumerGroupState.STABLE, state
        assert sorted(before.values()) == sorted(owned), (before, owned)
        marks = [(len(m.assigns), len(m.revokes), len(m.msgs)) for m in members]

        broker.restart()  # SIGTERM, then start on the same port and data dir
        state, after = describe()
        assert (state, after) == (ConsumerGroupState.STABLE, before), (
            "group after restart: %s %s; before: %s" % (state, after, before))

        second = produce_values(broker.bootstrap, topic, parts, 20, "second")
        want = all_values(second)
        poll_until(members, lambda: {v for m, mk in zip(members, marks) for v in m.values()[mk[2]:]} >= want, 45,
                   "the members consuming the records written after the restart")
        drain(members, 1.0)
        new = [m.msgs[mk[2]:] for m, mk in zip(members, marks)]
        # No rebalance: same assignment, no callbacks; each member read its own partitions from
        # where it was, nothing twice.
        for m, o, mk, got in zip(members, owned, marks, new):
            assert m.assignment() == o, (m.name, m.assignment(), o)
            assert (len(m.assigns), len(m.revokes)) == mk[:2], (
                "%s rebalanced across the restart: assigns %s revokes %s" % (m.name, m.assigns, m.revokes))
            for p in o:
                assert [(mp, off, v) for mp, off, v, _ in got if mp == p] == [
                    (p, 20 + i, v) for i, v in enumerate(second[p])], "%s partition %d" % (m.name, p)
            assert {mp for mp, _, _, _ in got} <= set(o), (m.name, o)
        assert sorted(v for g in new for _, _, v, _ in g) == sorted(want)
        for m, o in zip(members, owned):
            assert m.commit() == {p: 40 for p in o}
        assert members[0].committed(parts) == {p: 40 for p in parts}
        state, still = describe()
        assert (state, still) == (ConsumerGroupState.STABLE, before), (state, still, before)
    finally:
        for m in members:
            m.close()
