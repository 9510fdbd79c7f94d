"""Replicated partitions on a three-node Sluice cluster, driven by real clients.

The nodes are the combined KRaft nodes of `test_cluster.Cluster` (broker.session.timeout.ms
= 4000). Topics are created with replication_factor 3 (or -1 for `default.replication.factor`);
each partition has a leader, three replicas and an ISR in Metadata; followers copy the
leader's log over the peer connection, and an acks=all produce is answered once the in-sync
replicas hold the records. The tests kill (SIGKILL), pause (SIGSTOP) and restart nodes by PID
and check, with confluent-kafka, kcat and kafka-python, that:

- Metadata shows three replicas, an ISR of three and a leader per partition (confluent-kafka
  and `kcat -L`); an idempotent acks=all producer carries on when the leader of its partition
  is killed, and every acknowledged record is later read at its acknowledged offset; the
  replicas' segment files are byte-identical;
- a leader paused past the session timeout is replaced; on SIGCONT it follows the new leader,
  rejoins the ISR and ends up with the new leader's bytes;
- `min.insync.replicas` (topic config and broker default) refuses acks=all with
  NOT_ENOUGH_REPLICAS while the ISR is short, acks=1 still works, and the ISR grows back;
- a kill -9 of all three nodes at once loses no acknowledged record on any replica;
- Metadata v5+ `offline_replicas` names a down broker's replicas (kafka-python's admin).

The producers are confluent-kafka's with `enable.idempotence=True` (acks=all is librdkafka's
default; its enable.idempotence default is false, so the idempotent producer the tests rely on
for "in order, exactly once" is asked for, as in test_cluster.py); the acks tests set acks and
retries where they are the subject.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import time

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import NewTopic

import wire
from clients import ck_admin, ck_consume, ck_consumer, ck_producer, kp_admin
from conftest import BrokerStartError, unique_topic
from test_cluster import SESSION_MS, Cluster, all_agree, wait_until

ALL = [1, 2, 3]
Part = collections.namedtuple("Part", "leader replicas isr error")


# ------------------------------------------------------------------ fixtures and helpers


@pytest.fixture
def cluster_factory(request):
    """Starts test_cluster's Cluster of `n` nodes (three unless asked), with extra
    `--override`s for every node. Stops every node by PID at the end; keeps the temp dir when
    the test failed."""
    made = []

    def make(n=3, **extra):
        c = Cluster(n)
        for b in c.nodes:
            b.overrides.update(extra)
        made.append(c)
        request.node._sluice_brokers = [b for m in made for b in m.nodes]
        try:
            c.start()
        except BrokerStartError as e:
            pytest.fail(str(e), pytrace=False)
        return c

    yield make
    failed = any(getattr(request.node, "rep_" + w, None) is not None
                 and getattr(request.node, "rep_" + w).failed for w in ("setup", "call"))
    for c in made:
        for b in c.nodes:  # a paused node would only die of the SIGKILL after SIGTERM's wait
            if b.alive():
                try:
                    os.kill(b.pid, signal.SIGCONT)
                except OSError:
                    pass
        c.close(keep=failed)
        if failed:
            print("cluster temp dir kept: %s" % c.base)


@pytest.fixture
def cluster(cluster_factory):
    return cluster_factory()


def node_id(b):
    return int(b.overrides["node.id"])


def bootstrap_of(nodes):
    return ",".join(b.bootstrap for b in nodes)


def topic_state(node, topic):
    """{partition: Part(leader, sorted replicas, sorted isr, error code)} as one node's
    Metadata tells confluent-kafka, or None while it does not know the topic."""
    md = ck_admin(node.bootstrap).list_topics(topic=topic, timeout=5)
    t = md.topics.get(topic)
    if t is None or t.error is not None:
        return None
    return {p: Part(v.leader, sorted(v.replicas), sorted(v.isrs), v.error.code() if v.error else 0)
            for p, v in t.partitions.items()}


def agreed_state(nodes, topic, partitions, ok):
    """The topic's partitions if every node in `nodes` reports the same and ok(part) holds
    for each, else None."""
    states = [topic_state(b, topic) for b in nodes]
    if any(s is None or len(s) != partitions for s in states):
        return None
    if any(s != states[0] for s in states):
        return None
    return states[0] if all(ok(v) for v in states[0].values()) else None


def fully_replicated(v):
    return v.replicas == ALL and v.isr == ALL and v.leader in ALL and v.error == 0


def wait_fully_replicated(nodes, topic, partitions, timeout=60, what=None):
    return wait_until(what or "every node shows %s with 3 replicas, an ISR of 3 and a leader" % topic,
                      lambda: agreed_state(nodes, topic, partitions, fully_replicated), timeout=timeout)


def create_topic(bootstrap, topic, partitions, rf=3, config=None, assignment=None):
    """CreateTopics through the admin client, retried while the controller moves; a retry
    told TOPIC_ALREADY_EXISTS means the earlier try got through. `assignment` (a list of
    replica lists, one a partition) places the replicas instead of partitions and rf."""
    tries = [0]

    def attempt():
        admin = ck_admin(bootstrap)  # kept alive until its future is answered
        spec = (NewTopic(topic, num_partitions=len(assignment), replica_assignment=assignment, config=config or {}) if assignment else
                NewTopic(topic, num_partitions=partitions, replication_factor=rf, config=config or {}))
        f = admin.create_topics([spec], request_timeout=15)[topic]
        tries[0] += 1
        try:
            f.result(timeout=20)
        except KafkaException as e:
            if tries[0] > 1 and e.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                return True
            raise
        return True

    wait_until("topic %s is created" % topic, attempt, timeout=40)


def controller_of(cluster, brokers=ALL):
    views = wait_until("every node lists brokers %s and one controller" % brokers,
                       lambda: all_agree(cluster, brokers))
    return views[0][1]


class Acks:
    """Delivery reports of a confluent-kafka producer, with the time each arrived."""

    def __init__(self):
        self.ok = []      # (monotonic time, partition, offset, value)
        self.failed = []  # (partition, value, KafkaError)

    def cb(self, err, msg):
        if err is None:
            self.ok.append((time.monotonic(), msg.partition(), msg.offset(), msg.value()))
        else:
            self.failed.append((msg.partition(), msg.value(), err))

    def of(self, partition):
        """[(offset, value)] acknowledged on a partition, in the order the acks came."""
        return [(o, v) for _, p, o, v in self.ok if p == partition]


def idempotent_producer(bootstrap, **conf):
    return ck_producer(bootstrap, **dict({"enable.idempotence": True}, **conf))


def produce_and_flush(producer, topic, partition, values, acks, timeout=40):
    for v in values:
        producer.produce(topic, value=v, partition=partition, on_delivery=acks.cb)
    left = producer.flush(timeout)
    assert left == 0, "%d records still unanswered after %ss" % (left, timeout)


def segment0(node, topic, partition):
    path = os.path.join(node.partition_dir(topic, partition), "%020d.log" % 0)
    with open(path, "rb") as f:
        return f.read()


def records_in(data):
    """{offset: value} of the complete batches in a segment's bytes."""
    return {r.offset: r.value for b in wire.decode_batches(data) for r in b.records}


def first_difference(a, b):
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def replicas_hold(nodes, topic, partition, acked, identical):
    """Checks the nodes' segment files for a partition: byte-identical up to the shortest
    (identical=True: also of one length), and each holding every acknowledged (offset,
    value). Raises AssertionError saying what differs (wait_until retries on it)."""
    datas = {node_id(b): segment0(b, topic, partition) for b in nodes}
    ids = sorted(datas)
    shortest = min(len(d) for d in datas.values())
    for i in ids[1:]:
        a, b = datas[ids[0]], datas[i]
        if a[:shortest] != b[:shortest]:
            raise AssertionError("%s-%d: node %d and node %d differ at byte %d (sizes %s)" % (
                topic, partition, ids[0], i, first_difference(a, b), {k: len(d) for k, d in datas.items()}))
    if identical and len({len(d) for d in datas.values()}) != 1:
        raise AssertionError("%s-%d: segment sizes differ: %s" % (
            topic, partition, {k: len(d) for k, d in datas.items()}))
    for i in ids:
        have = records_in(datas[i])
        missing = [(o, v) for o, v in acked if have.get(o) != v]
        if missing:
            raise AssertionError("%s-%d: node %d's segment (%d bytes, offsets %s..%s) lacks %d acknowledged "
                                 "records, first %r (has %r)" % (
                                     topic, partition, i, len(datas[i]), min(have, default=None),
                                     max(have, default=None), len(missing), missing[0], have.get(missing[0][0])))
    return {k: len(d) for k, d in datas.items()}


def assert_log_is(bootstrap, topic, partition, acked, exact=True):
    """Reads the partition from offset 0 with a confluent-kafka consumer: every acknowledged
    (offset, value) is at its offset; exact=True: the log is exactly those, in ack order."""
    want_end = max((o for o, _ in acked), default=-1) + 1
    got = ck_consume(bootstrap, topic, {partition: 0}, expected_counts={partition: want_end} if exact else None)
    log = [(m.offset(), m.value()) for m in got[partition]]
    at = dict(log)
    wrong = [(o, v, at.get(o)) for o, v in acked if at.get(o) != v]
    assert not wrong, "%d of %d acknowledged records are not at their offsets on %s-%d; first (offset, acked, " \
        "read): %r" % (len(wrong), len(acked), topic, partition, wrong[0])
    if exact:
        assert [o for o, _ in acked] == list(range(len(acked))), \
            "acknowledged offsets are not 0..%d in ack order: %r" % (len(acked) - 1, [o for o, _ in acked][:20])
        assert log == acked, "%s-%d holds %d records, %d acknowledged: extra/duplicates %r" % (
            topic, partition, len(log), len(acked), [r for r in log if r not in set(acked)][:5])
    return log


KCAT_PART = re.compile(r"partition (\d+), leader (-?\d+), replicas: ([\d,]*), isrs: ([\d,]*)")


def five_nodes_one_partition(cluster_factory, prefix):
    """A five-node cluster (five voters: the metadata quorum outlives two nodes down) and a
    one-partition topic with min.insync.replicas=2 placed by hand on three nodes that are not
    the controller, leader first: (cluster, controller, replicas, topic), once every node
    shows it led by its first replica with an ISR of three."""
    five = [1, 2, 3, 4, 5]
    cluster = cluster_factory(n=5)
    controller = controller_of(cluster, five)
    replicas = [i for i in five if i != controller][:3]
    topic = unique_topic(prefix)
    create_topic(cluster.bootstrap, topic, 1, config={"min.insync.replicas": "2"}, assignment=[replicas])
    wait_until("every node shows %s-0 on %s led by %d with an ISR of 3" % (topic, replicas, replicas[0]),
               lambda: agreed_state(cluster.nodes, topic, 1, lambda v: v.replicas == sorted(replicas)
                                    and v.isr == sorted(replicas) and v.leader == replicas[0] and v.error == 0),
               timeout=30)
    return cluster, controller, replicas, topic


def kcat_state(bootstrap, topic):
    out = subprocess.run(["kcat", "-b", bootstrap, "-L", "-t", topic, "-m", "10"],
                         capture_output=True, text=True, timeout=30)
    parts = {}
    for m in KCAT_PART.finditer(out.stdout):
        ids = lambda s: sorted(int(x) for x in s.split(",") if x)  # noqa: E731
        parts[int(m.group(1))] = (int(m.group(2)), ids(m.group(3)), ids(m.group(4)))
    return parts, out.stdout + out.stderr


# ------------------------------------------------------------------ tests


@pytest.mark.timeout(150)
def test_leader_killed_mid_stream_keeps_every_acked_record(cluster):
    """RF=3, min.insync.replicas=2, three partitions. An idempotent acks=all producer sends to
    all three while the leader of partition 0 is killed with SIGKILL; it carries on against
    the new leader. After the node is restarted and back in the ISR, every acknowledged record
    is read at its acknowledged offset, in order, with nothing else, and the three replicas'
    segment files hold the same bytes."""
    controller_of(cluster)
    topic = unique_topic("repl")
    create_topic(cluster.bootstrap, topic, 3, config={"min.insync.replicas": "2"})
    state = wait_fully_replicated(cluster.nodes, topic, 3)
    for p, v in state.items():
        assert v.leader in ALL and v.replicas == ALL and v.isr == ALL, (p, v)
    # Placement spreads the leaders: one partition per node.
    assert sorted(v.leader for v in state.values()) == ALL, state

    parts, out = kcat_state(cluster.node(1).bootstrap, topic)
    assert "3 brokers:" in out, out
    assert parts == {p: (v.leader, ALL, ALL) for p, v in state.items()}, out

    victim = state[0].leader
    acks = Acks()
    producer = idempotent_producer(cluster.bootstrap)
    seq = 0
    t_start = time.monotonic()
    t_kill = None
    while True:
        for p in range(3):
            producer.produce(topic, value=b"r-%d-%06d" % (p, seq), partition=p, on_delivery=acks.cb)
        seq += 1
        producer.poll(0.01)
        now = time.monotonic()
        if t_kill is None:
            if now - t_start >= 1.5 and len(acks.of(0)) >= 50:
                cluster.node(victim).kill9()
                t_kill = time.monotonic()
            assert now - t_start < 20, "no 50 acks on partition 0 in 20 s (%d)" % len(acks.of(0))
            continue
        after = [t for t, p, _, _ in acks.ok if p == 0 and t > t_kill]
        if after and after[-1] - after[0] >= 2.0 and len(after) >= 100:
            break
        if now - t_kill > 45:
            break
    left = producer.flush(40)
    assert left == 0, "%d records unanswered 40 s after producing stopped" % left
    assert not acks.failed, "%d records failed, first %r" % (len(acks.failed), acks.failed[:3])

    times0 = [t for t, p, _, _ in acks.ok if p == 0]
    gaps = [(b - a, a) for a, b in zip(times0, times0[1:])]
    gap, gap_at = max(gaps)
    resumed = [t for t in times0 if t > t_kill]
    print("\nleader %d of %s-0 killed %.2f s into the stream; partition 0 unavailable for %.2f s "
          "(largest gap between acks, from %.2f s after the kill); %d records acked, %d after the kill"
          % (victim, topic, t_kill - t_start, gap, gap_at - t_kill, len(acks.ok), len(resumed)))
    assert len(resumed) >= 100, "the producer did not carry on: %d acks on partition 0 after the kill" % len(resumed)
    live = [b for b in cluster.nodes if b.alive()]
    new_leader = topic_state(live[0], topic)[0].leader
    assert new_leader in ALL and new_leader != victim, new_leader

    cluster.node(victim).start()
    wait_fully_replicated(cluster.nodes, topic, 3, timeout=60,
                          what="node %d rejoins the ISR of every partition (metadata from all nodes)" % victim)
    for p in range(3):
        acked = acks.of(p)
        assert_log_is(cluster.bootstrap, topic, p, acked)
        sizes = wait_until("the replicas of %s-%d hold the same bytes and every acked record" % (topic, p),
                           lambda: replicas_hold(cluster.nodes, topic, p, acked, identical=True), timeout=20)
        print("%s-%d: %d records, segment sizes %s" % (topic, p, len(acked), sizes))


@pytest.mark.timeout(150)
def test_paused_leader_is_replaced_and_rejoins_as_follower(cluster):
    """SIGSTOP the leader of a partition (not the controller) past the session timeout: it is
    fenced and a new leader is elected from the ISR; records go to the new leader. After
    SIGCONT the old leader follows, rejoins the ISR and ends up with the new leader's bytes.
    A producer bootstrapped only at the resumed node (which may still think it leads) gets
    nothing acknowledged that is not in the final log."""
    controller = controller_of(cluster)
    topic = unique_topic("pause")
    create_topic(cluster.bootstrap, topic, 3)
    state = wait_fully_replicated(cluster.nodes, topic, 3)
    p = next(q for q, v in sorted(state.items()) if v.leader != controller)
    old = state[p].leader
    old_node = cluster.node(old)
    others = [b for b in cluster.nodes if b is not old_node]

    acks = Acks()
    produce_and_flush(idempotent_producer(cluster.bootstrap), topic, p, [b"before-%03d" % i for i in range(100)], acks)
    assert not acks.failed, acks.failed[:3]
    assert [o for o, _ in acks.of(p)] == list(range(100))

    os.kill(old_node.pid, signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        new_state = wait_until(
            "the live nodes agree on a new leader for %s-%d" % (topic, p),
            lambda: agreed_state(others, topic, 3,
                                 lambda v: v.leader not in (-1, old) and old not in v.isr and v.replicas == ALL),
            timeout=SESSION_MS / 1000 + 20)
        took = time.monotonic() - t0
        new = new_state[p].leader
        print("\nnode %d paused; node %d leads %s-%d after %.1f s (session %d ms)" % (old, new, topic, p, took,
                                                                                    SESSION_MS))
        assert new_state[p].isr == sorted(node_id(b) for b in others), new_state[p]

        produce_and_flush(idempotent_producer(bootstrap_of(others)), topic, p,
                          [b"during-%03d" % i for i in range(100)], acks)
        assert not acks.failed, acks.failed[:3]
        assert [o for o, _ in acks.of(p)] == list(range(200)), acks.of(p)[95:105]
    finally:
        os.kill(old_node.pid, signal.SIGCONT)

    # Straight after SIGCONT the resumed node may still believe it leads the partition.
    zombie = Acks()
    zp = idempotent_producer(old_node.bootstrap)
    produce_and_flush(zp, topic, p, [b"resumed-%03d" % i for i in range(20)], zombie, timeout=40)
    print("producer bootstrapped at the resumed node: %d acked, %d failed (%s)" % (
        len(zombie.ok), len(zombie.failed), sorted({str(e) for _, _, e in zombie.failed})[:3]))

    final = wait_until("node %d is a follower again and back in the ISR (metadata from all three)" % old,
                       lambda: agreed_state(cluster.nodes, topic, 3, fully_replicated), timeout=60)
    assert final[p].leader == new, "leadership of %s-%d moved again: %r" % (topic, p, final[p])
    acked = acks.of(p) + zombie.of(p)
    log = assert_log_is(cluster.bootstrap, topic, p, acked, exact=False)
    assert log[:200] == acks.of(p), "the records before and during the pause are not the log's first 200"
    wait_until("node %d's log of %s-%d is byte-identical to node %d's" % (old, topic, p, new),
               lambda: replicas_hold(cluster.nodes, topic, p, acked, identical=True), timeout=20)


@pytest.mark.timeout(150)
def test_min_insync_replicas_refuses_acks_all_while_the_isr_is_short(cluster_factory):
    """Broker defaults min.insync.replicas=3 and default.replication.factor=3. Topic `strict`
    is created with replication_factor -1 (the broker default: 3 replicas) and inherits
    min.insync.replicas=3; topic `lenient` sets min.insync.replicas=2. With one broker down
    (fenced, ISR 2): acks=all to `strict` fails with NOT_ENOUGH_REPLICAS, acks=1 succeeds,
    acks=all to `lenient` succeeds. The restarted broker rejoins the ISR by itself and
    acks=all to `strict` succeeds again."""
    cluster = cluster_factory(**{"min.insync.replicas": 3, "default.replication.factor": 3})
    controller = controller_of(cluster)
    strict, lenient = unique_topic("strict"), unique_topic("lenient")
    create_topic(cluster.bootstrap, strict, 1, rf=-1)
    create_topic(cluster.bootstrap, lenient, 1, config={"min.insync.replicas": "2"})
    wait_fully_replicated(cluster.nodes, strict, 1)
    wait_fully_replicated(cluster.nodes, lenient, 1)

    log = {strict: [], lenient: []}
    for t in (strict, lenient):
        a = Acks()
        produce_and_flush(idempotent_producer(cluster.bootstrap), t, 0, [b"full-%d" % i for i in range(10)], a)
        assert not a.failed, (t, a.failed[:3])
        log[t] += a.of(0)

    victim = next(i for i in ALL if i != controller)
    cluster.node(victim).kill9()
    live = [b for b in cluster.nodes if b.alive()]
    survivors = sorted(node_id(b) for b in live)
    for t in (strict, lenient):
        wait_until("%s's ISR shrinks to %s (metadata from the live nodes)" % (t, survivors),
                   lambda: agreed_state(live, t, 1, lambda v: v.isr == survivors and v.leader in survivors),
                   timeout=SESSION_MS / 1000 + 20)

    # acks=all (librdkafka's default) with retries=0, so that the broker's answer is the
    # delivery report's error rather than a retry until message.timeout.ms.
    refused = Acks()
    produce_and_flush(ck_producer(bootstrap_of(live), retries=0), strict, 0, [b"refused-%d" % i for i in range(5)],
                      refused)
    assert not refused.ok, "acks=all acknowledged with ISR %s < min.insync.replicas 3: %r" % (survivors, refused.ok)
    codes = [e.code() for _, _, e in refused.failed]
    assert codes == [KafkaError.NOT_ENOUGH_REPLICAS] * 5, [str(e) for _, _, e in refused.failed]

    one = Acks()
    t0 = time.monotonic()
    produce_and_flush(ck_producer(bootstrap_of(live), acks=1, **{"enable.idempotence": False}), strict, 0,
                      [b"acks1-%d" % i for i in range(5)], one)
    print("\nacks=1 with ISR %s < min.insync.replicas 3: %d acked, %d failed in %.1f s" % (
        survivors, len(one.ok), len(one.failed), time.monotonic() - t0))
    assert not one.failed, [str(e) for _, _, e in one.failed]
    log[strict] += one.of(0)

    ok = Acks()
    produce_and_flush(idempotent_producer(bootstrap_of(live)), lenient, 0, [b"isr2-%d" % i for i in range(5)], ok)
    assert not ok.failed, "acks=all to a topic with min.insync.replicas=2 and ISR %s failed: %s" % (
        survivors, [str(e) for _, _, e in ok.failed])
    log[lenient] += ok.of(0)

    cluster.node(victim).start()
    wait_fully_replicated(cluster.nodes, strict, 1, timeout=60,
                          what="node %d rejoins %s's ISR by itself" % (victim, strict))
    again = Acks()
    produce_and_flush(idempotent_producer(cluster.bootstrap), strict, 0, [b"again-%d" % i for i in range(5)], again)
    assert not again.failed, [str(e) for _, _, e in again.failed]
    log[strict] += again.of(0)

    for t in (strict, lenient):
        assert_log_is(cluster.bootstrap, t, 0, log[t])


@pytest.mark.timeout(120)
def test_two_of_three_replicas_down_refuse_acks_all_and_take_acks_1(cluster_factory):
    """Issue 10 on a five-node cluster (five voters, so the metadata quorum outlives two
    kills): a partition placed by hand on three nodes that are not the controller, leader
    first, min.insync.replicas=2. Both followers get SIGKILL; once fenced, the live nodes show
    the ISR shrunk to the leader alone. acks=all (retries=0) then fails with
    NOT_ENOUGH_REPLICAS for every record and nothing is acknowledged; acks=1 is acknowledged.
    Restarted, the two followers catch up and the ISR grows back to three by itself; acks=all
    is acknowledged again. The log holds exactly the acknowledged records at their
    acknowledged offsets (none of the refused ones), on all three replicas."""
    five = [1, 2, 3, 4, 5]
    cluster, controller, replicas, topic = five_nodes_one_partition(cluster_factory, "twodown")
    leader, followers = replicas[0], replicas[1:]
    full = sorted(replicas)

    def isr_is(isr):
        return lambda v: v.replicas == full and v.isr == isr and v.leader == leader and v.error == 0

    log = []
    before = Acks()
    produce_and_flush(idempotent_producer(cluster.bootstrap), topic, 0, [b"before-%03d" % i for i in range(20)],
                      before)
    assert not before.failed and len(before.ok) == 20, [str(e) for _, _, e in before.failed][:3]
    log += before.of(0)

    for f in followers:
        cluster.node(f).kill9()
    t_kill = time.monotonic()
    live = [b for b in cluster.nodes if b.alive()]
    assert sorted(node_id(b) for b in live) == sorted({controller, leader} | (set(five) - set(replicas)))
    wait_until("the live nodes %s show %s-0's ISR shrunk to [%d]" % ([node_id(b) for b in live], topic, leader),
               lambda: agreed_state(live, topic, 1, isr_is([leader])), timeout=SESSION_MS / 1000 + 20)
    shrunk = time.monotonic() - t_kill

    # acks=all with retries=0: the broker's answer is the delivery report's error.
    refused = Acks()
    refused_values = [b"refused-%d" % i for i in range(5)]
    produce_and_flush(ck_producer(bootstrap_of(live), retries=0), topic, 0, refused_values, refused)
    assert not refused.ok, "acks=all acknowledged with ISR [%d] < min.insync.replicas 2: %r" % (leader, refused.ok)
    codes = [e.code() for _, _, e in refused.failed]
    assert codes == [KafkaError.NOT_ENOUGH_REPLICAS] * 5, [str(e) for _, _, e in refused.failed]

    one = Acks()
    produce_and_flush(ck_producer(bootstrap_of(live), acks=1, **{"enable.idempotence": False}), topic, 0,
                      [b"acks1-%d" % i for i in range(5)], one)
    assert not one.failed and len(one.ok) == 5, [str(e) for _, _, e in one.failed]
    log += one.of(0)

    for f in followers:
        cluster.node(f).start()
    t_start = time.monotonic()
    wait_until("followers %s rejoin %s-0's ISR by themselves (metadata from all five nodes)" % (followers, topic),
               lambda: agreed_state(cluster.nodes, topic, 1, isr_is(full)), timeout=40)
    grew = time.monotonic() - t_start
    print("\nfollowers %s of %s-0 killed (leader %d, controller %d): ISR [%d] after %.1f s (session %d ms); "
          "restarted: ISR %s after %.1f s" % (followers, topic, leader, controller, leader, shrunk, SESSION_MS,
                                              full, grew))

    again = Acks()
    produce_and_flush(idempotent_producer(cluster.bootstrap), topic, 0, [b"again-%d" % i for i in range(5)], again)
    assert not again.failed and len(again.ok) == 5, [str(e) for _, _, e in again.failed]
    log += again.of(0)

    read = assert_log_is(cluster.bootstrap, topic, 0, log)
    assert not set(refused_values) & {v for _, v in read}, "refused records are in the log: %r" % read
    wait_until("the three replicas of %s-0 hold every acknowledged record, byte-identical" % topic,
               lambda: replicas_hold([cluster.node(i) for i in replicas], topic, 0, log, identical=True), timeout=20)
    # Done: SIGKILL rather than the teardown's SIGTERM, under which the last nodes, without a
    # quorum to hand their leadership to, each wait out the 10 s stop bound.
    for b in cluster.nodes:
        b.kill9()


def segment_bases(node, topic, partition):
    d = node.partition_dir(topic, partition)
    return sorted(int(f[:-4]) for f in os.listdir(d) if f.endswith(".log"))


@pytest.mark.timeout(150)
def test_follower_left_behind_by_retention_starts_at_the_leaders_log_start(cluster_factory):
    """A follower is down while its leader's retention deletes the segments it would fetch
    next (segment.bytes 16 KiB, retention.bytes 48 KiB, checked every 300 ms). Restarted, it
    is told OFFSET_OUT_OF_RANGE with the leader's log start: it empties its log, starts there,
    catches up and rejoins the ISR by itself. (Before, it asked for the same offset forever.)
    A consumer then reads every record from the log start on, from each replica as leader."""
    cluster = cluster_factory(**{"log.retention.check.interval.ms": 300})
    controller_of(cluster)
    topic = unique_topic("behind")
    create_topic(cluster.bootstrap, topic, 1, config={
        "min.insync.replicas": "2", "segment.bytes": "16384", "retention.bytes": "49152"})
    state = wait_fully_replicated(cluster.nodes, topic, 1)
    leader = state[0].leader
    victim = next(i for i in ALL if i != leader)
    early = Acks()
    produce_and_flush(idempotent_producer(cluster.bootstrap), topic, 0, [b"early-%04d" % i for i in range(50)], early)
    assert len(early.ok) == 50, early.failed[:3]
    wait_until("node %d holds the first 50 records" % victim,
               lambda: len(records_in(segment0(cluster.node(victim), topic, 0))) == 50, timeout=20)
    cluster.node(victim).kill9()
    live = [b for b in cluster.nodes if b.alive()]
    survivors = sorted(node_id(b) for b in live)
    wait_until("the ISR shrinks to %s" % survivors,
               lambda: agreed_state(live, topic, 1, lambda v: v.isr == survivors), timeout=SESSION_MS / 1000 + 20)

    later = Acks()
    producer = idempotent_producer(bootstrap_of(live), **{"batch.size": 4000, "linger.ms": 5})
    produce_and_flush(producer, topic, 0, [b"later-%05d-" % i + b"x" * 90 for i in range(3000)], later)
    assert len(later.ok) == 3000, later.failed[:3]
    end = max(o for o, _ in later.of(0)) + 1

    def leader_start_past_victim():
        bases = segment_bases(cluster.node(leader), topic, 0)
        return bases[0] if bases and bases[0] > 50 else None
    start = wait_until("the leader's retention deletes the first segments", leader_start_past_victim, timeout=20)

    cluster.node(victim).start()
    wait_fully_replicated(cluster.nodes, topic, 1, timeout=60,
                          what="node %d, left behind the leader's log start %d, rejoins the ISR" % (victim, start))
    bases = segment_bases(cluster.node(victim), topic, 0)
    assert bases[0] >= start, "node %d still holds segments from %d (leader starts at %d)" % (victim, bases[0], start)
    print("\nleader %d's log starts at %d of %d; node %d started again at %d and caught up" % (
        leader, start, end, victim, bases[0]))

    # Its files hold exactly the acknowledged records from where it started again.
    acked = dict(later.of(0))

    def holds_the_rest():
        have = {}
        for base in segment_bases(cluster.node(victim), topic, 0):
            path = os.path.join(cluster.node(victim).partition_dir(topic, 0), "%020d.log" % base)
            with open(path, "rb") as f:
                have.update(records_in(f.read()))
        want = {o: v for o, v in acked.items() if o >= min(have, default=end)}
        wrong = [o for o, v in want.items() if have.get(o) != v]
        assert min(have) >= start and not wrong and max(have) == end - 1, (
            min(have), max(have), start, end, wrong[:3])
        return True
    wait_until("node %d's segments hold every acknowledged record from its new start" % victim,
               holds_the_rest, timeout=20)
    c = ck_consumer(cluster.bootstrap)
    low, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    c.close()
    assert start <= low < end and high == end, (start, low, high, end)
    got = ck_consume(cluster.bootstrap, topic, {0: low}, expected_counts={0: end - low})
    assert [(m.offset(), m.value()) for m in got[0]] == [(o, v) for o, v in later.of(0) if o >= low]


@pytest.mark.timeout(150)
def test_delete_records_reaches_every_replica_and_outlives_the_leader(cluster):
    """DeleteRecords at the leader of an RF=3 partition: every replica's log start moves
    (whole segments below go on all three), and after the leader is killed the new one
    starts its log there too."""
    from clients import ck_watermarks
    from test_delete_records import delete_records_wire
    controller_of(cluster)
    topic = unique_topic("delrec-rf3")
    create_topic(cluster.bootstrap, topic, 1, config={"min.insync.replicas": "2", "segment.bytes": "16384"})
    leader = wait_fully_replicated(cluster.nodes, topic, 1)[0].leader
    acks = Acks()
    produce_and_flush(idempotent_producer(cluster.bootstrap, **{"linger.ms": 5, "batch.size": 2000}), topic, 0,
                      [b"d-%04d-" % i + b"y" * 90 for i in range(1000)], acks)
    assert len(acks.ok) == 1000, acks.failed[:3]
    wait_fully_replicated(cluster.nodes, topic, 1)
    follower = next(i for i in ALL if i != leader)
    assert delete_records_wire(cluster.node(follower).bootstrap, topic, 0, 600)[1] == 6, "only the leader deletes"
    assert delete_records_wire(cluster.node(leader).bootstrap, topic, 0, 600) == (600, 0)

    def first_bases():
        bases = {}
        for b in cluster.nodes:
            logs = sorted(int(f[:-4]) for f in os.listdir(b.partition_dir(topic, 0)) if f.endswith(".log"))
            bases[node_id(b)] = logs[0]
        return bases if all(0 < v <= 600 for v in bases.values()) else None
    bases = wait_until("every replica deletes its segments below 600", first_bases, timeout=20)
    print("\nfirst segment per node after deleting below 600: %s" % bases)

    cluster.node(leader).kill9()
    live = [b for b in cluster.nodes if b.alive()]
    wait_until("a new leader", lambda: agreed_state(live, topic, 1, lambda v: v.leader not in (-1, leader)),
               timeout=SESSION_MS / 1000 + 20)
    assert ck_watermarks(bootstrap_of(live), topic) == (600, 1000)
    cluster.node(leader).start()
    wait_fully_replicated(cluster.nodes, topic, 1, timeout=60)
    assert ck_watermarks(cluster.bootstrap, topic) == (600, 1000)


@pytest.mark.timeout(150)
def test_all_three_killed_at_once_lose_no_acked_record(cluster):
    """Power loss: an idempotent acks=all producer sends to an RF=3 topic (three partitions)
    while all three nodes get SIGKILL at once; all three are restarted and the producer goes
    on with what was unanswered. Every acknowledged record is on every replica at its offset
    (read from the leaders, and in each node's segment file), and the replicas' files end
    byte-identical."""
    controller_of(cluster)
    topic = unique_topic("power")
    create_topic(cluster.bootstrap, topic, 3, config={"min.insync.replicas": "2"})
    wait_fully_replicated(cluster.nodes, topic, 3)
    bootstrap = bootstrap_of(cluster.nodes)  # all three, for after the restart too

    acks = Acks()
    producer = idempotent_producer(bootstrap)
    seq = 0
    t_start = time.monotonic()
    while time.monotonic() - t_start < 2.0 or len(acks.ok) < 300:
        for p in range(3):
            producer.produce(topic, value=b"p-%d-%06d" % (p, seq), partition=p, on_delivery=acks.cb)
        seq += 1
        producer.poll(0.005)
        assert time.monotonic() - t_start < 20, "only %d acks in 20 s" % len(acks.ok)
    for b in cluster.nodes:
        os.kill(b.pid, signal.SIGKILL)
    t_kill = time.monotonic()
    for b in cluster.nodes:
        b.proc.wait(10)
    before = len(acks.ok)
    sent = seq * 3
    for b in cluster.nodes:
        b.start()
    # An idempotent producer's fatal error (the broker forgetting its sequence numbers) is
    # reported after the data is checked: lost records are the bigger news.
    fatal = None
    try:
        left = producer.flush(60)
    except KafkaException as e:
        fatal = e
        producer.purge()
        left = producer.flush(10)
    assert left == 0, "%d records unanswered 60 s after the restart" % left
    print("\n%d records sent, %d acked before the kill, %d acked after the restart, %d failed (%s); "
          "producer fatal error: %s" % (sent, before, len(acks.ok) - before, len(acks.failed),
                                        sorted({str(e) for _, _, e in acks.failed})[:3], fatal))
    assert before >= 300
    assert all(t <= t_kill for t, _, _, _ in acks.ok[:before])

    controller_of(cluster)
    wait_fully_replicated(cluster.nodes, topic, 3, timeout=60)
    for p in range(3):
        acked = acks.of(p)
        log = assert_log_is(cluster.bootstrap, topic, p, acked, exact=False)
        values = [v for _, v in log]
        assert len(values) == len(set(values)), "%s-%d holds duplicates from an idempotent producer: %r" % (
            topic, p, [v for v, n in collections.Counter(values).items() if n > 1][:5])
        if not acks.failed:
            assert log == acked, "%s-%d: the log is not exactly the acknowledged records" % (topic, p)
        sizes = wait_until("every replica of %s-%d holds every acked record, byte-identical" % (topic, p),
                           lambda: replicas_hold(cluster.nodes, topic, p, acked, identical=True), timeout=20)
        print("%s-%d: %d acked, %d in the log, segment sizes %s" % (topic, p, len(acked), len(log), sizes))
    assert fatal is None, "the idempotent producer failed fatally after the restart: %s" % fatal


@pytest.mark.timeout(120)
def test_metadata_names_offline_replicas(cluster):
    """kafka-python's KafkaAdminClient.describe_topics (Metadata v5+, whose partitions carry
    offline_replicas; confluent-kafka and kcat do not expose the field) shows a killed broker's
    replicas as offline once it is fenced: still in replicas, out of the ISR, not leader; and
    none offline once it is back."""
    controller = controller_of(cluster)
    topic = unique_topic("offline")
    create_topic(cluster.bootstrap, topic, 3)
    wait_fully_replicated(cluster.nodes, topic, 3)
    victim = next(i for i in ALL if i != controller)
    live = [b for b in cluster.nodes if node_id(b) != victim]

    def described(bootstrap):
        admin = kp_admin(bootstrap)
        try:
            (d,) = admin.describe_topics([topic])
        finally:
            admin.close()
        assert d.get("error_code", 0) == 0, d
        out = {}
        for p in d["partitions"]:
            assert "offline_replicas" in p, "no offline_replicas in kafka-python's describe_topics: %r" % p
            out[p.get("partition_index", p.get("partition"))] = dict(
                leader=p.get("leader_id", p.get("leader")),
                replicas=sorted(p.get("replica_nodes", p.get("replicas", []))),
                isr=sorted(p.get("isr_nodes", p.get("isr", []))),
                offline=sorted(p["offline_replicas"]))
        return out

    before = described(cluster.bootstrap)
    assert sorted(before) == [0, 1, 2], before
    assert all(v["offline"] == [] and v["replicas"] == ALL and v["isr"] == ALL for v in before.values()), before

    cluster.node(victim).kill9()
    survivors = sorted(node_id(b) for b in live)

    def offline_shown():
        views = [described(b.bootstrap) for b in live]
        ok = all(sorted(v) == [0, 1, 2] and all(
            x["offline"] == [victim] and x["replicas"] == ALL and x["isr"] == survivors and x["leader"] in survivors
            for x in v.values()) for v in views)
        return views[0] if ok else None

    shown = wait_until("both live nodes name node %d's replicas offline" % victim, offline_shown,
                       timeout=SESSION_MS / 1000 + 20)
    print("\nwith node %d down: %s" % (victim, shown))

    cluster.node(victim).start()
    wait_fully_replicated(cluster.nodes, topic, 3, timeout=60)
    wait_until("no replica is offline once node %d is back" % victim,
               lambda: all(x["offline"] == [] and x["isr"] == ALL and x["replicas"] == ALL
                           for x in described(cluster.bootstrap).values()), timeout=30)


@pytest.mark.timeout(150)
def test_sigterm_hands_leadership_over_before_stopping(cluster):
    """Controlled shutdown: SIGTERM to the leader of a partition that is not the controller.
    The broker asks the controller to move its leadership, stops by itself (exit code 0) once
    another in-sync replica leads, and says so in its log rather than stopping on its bound;
    a producer with its defaults carries on, and every acknowledged record is where it was
    acknowledged after the broker is back in the ISR."""
    controller = controller_of(cluster)
    topic = unique_topic("drain")
    create_topic(cluster.bootstrap, topic, 3, config={"min.insync.replicas": "2"})
    state = wait_fully_replicated(cluster.nodes, topic, 3)
    victim = next((v.leader for v in state.values() if v.leader != controller), None)
    assert victim is not None, state
    part = next(p for p, v in state.items() if v.leader == victim)
    acks = Acks()
    producer = idempotent_producer(cluster.bootstrap)
    produce_and_flush(producer, topic, part, [b"before-%04d" % i for i in range(200)], acks)
    node = cluster.node(victim)
    rc, clean = node.stop(timeout=30)
    assert clean and rc == 0, "SIGTERM: exit code %r, stopped by itself: %s\n%s" % (rc, clean, node.stderr_tail())
    log = open(node.stderr_path, "rb").read().decode("utf-8", "replace")
    assert "leadership handed over" in log and "not handed over in time" not in log, node.stderr_tail()
    live = [b for b in cluster.nodes if b.alive()]
    moved = wait_until("another in-sync replica leads %s-%d" % (topic, part),
                       lambda: agreed_state(live, topic, 3, lambda v: v.leader in ALL and v.leader != victim),
                       timeout=30)
    assert victim not in moved[part].isr, moved
    produce_and_flush(producer, topic, part, [b"after-%04d" % i for i in range(200)], acks)
    assert not acks.failed, acks.failed[:3]
    node.start()
    wait_fully_replicated(cluster.nodes, topic, 3, timeout=60,
                          what="node %d rejoins the ISR after its restart" % victim)
    assert_log_is(cluster.bootstrap, topic, part, acks.of(part))


@pytest.mark.timeout(150)
def test_preferred_leader_election_with_the_admin_client(cluster):
    """ElectLeaders (preferred) through confluent-kafka's admin client, while producing: after
    a leader is killed and comes back into the ISR, leadership stays where it moved; the
    election hands it back to the preferred (first) replica in a new leader epoch, the
    producer carries on, and a second election is answered ELECTION_NOT_NEEDED."""
    import confluent_kafka
    if not hasattr(confluent_kafka, "ElectionType"):
        pytest.skip("confluent-kafka %s has no elect_leaders (added in 2.4); kafka-python has none either"
                    % confluent_kafka.version()[0])
    from confluent_kafka import ElectionType, TopicPartition
    controller_of(cluster)
    topic = unique_topic("elect")
    create_topic(cluster.bootstrap, topic, 3, config={"min.insync.replicas": "2"})
    state = wait_fully_replicated(cluster.nodes, topic, 3)
    preferred = {p: v.leader for p, v in state.items()}  # a new partition's leader is its first replica
    controller = controller_of(cluster)
    victim = next(b for b in ALL if b != controller)
    part = next(p for p, l in preferred.items() if l == victim)
    acks = Acks()
    producer = idempotent_producer(cluster.bootstrap)
    produce_and_flush(producer, topic, part, [b"a-%04d" % i for i in range(100)], acks)
    cluster.node(victim).kill9()
    live = [b for b in cluster.nodes if b.alive()]
    wait_until("another replica leads %s-%d" % (topic, part),
               lambda: agreed_state(live, topic, 3, lambda v: v.leader in ALL and v.leader != victim), timeout=60)
    produce_and_flush(producer, topic, part, [b"b-%04d" % i for i in range(100)], acks)
    cluster.node(victim).start()
    moved = wait_fully_replicated(cluster.nodes, topic, 3, timeout=60)
    assert moved[part].leader != victim, "leadership went back by itself: %r" % (moved,)

    admin = ck_admin(cluster.bootstrap)
    fut = admin.elect_leaders(ElectionType.PREFERRED, [TopicPartition(topic, part)])
    result = fut.result(timeout=30)
    errors = {(tp.topic, tp.partition): e for tp, e in result.items()}
    assert errors == {(topic, part): None}, errors
    def led_by_victim():
        s = agreed_state(cluster.nodes, topic, 3, lambda v: v.isr == ALL)
        return s is not None and s[part].leader == victim

    wait_until("node %d leads %s-%d again" % (victim, topic, part), led_by_victim, timeout=30)
    produce_and_flush(producer, topic, part, [b"c-%04d" % i for i in range(100)], acks)
    assert not acks.failed, acks.failed[:3]
    again = admin.elect_leaders(ElectionType.PREFERRED, [TopicPartition(topic, part)]).result(timeout=30)
    codes = [e.code() if e is not None else 0 for e in again.values()]
    assert codes == [84], "a second election: %r (ELECTION_NOT_NEEDED is 84)" % (again,)
    assert_log_is(cluster.bootstrap, topic, part, acks.of(part))


def java_partition(key, partitions=50):
    """Kafka's placement of a key (a group, a transactional id) in an internal topic:
    abs(Java hashCode) % partitions."""
    h, data = 0, key.encode("utf-16-be")
    for i in range(0, len(data), 2):
        h = (h * 31 + (data[i] << 8 | data[i + 1])) & 0xFFFFFFFF
    h = h - (1 << 32) if h >= 1 << 31 else h
    return 0 if h == -(1 << 31) else abs(h) % partitions


def consume_group(consumer, want, seen, timeout, what):
    """Polls a subscribed consumer until `seen` ({(partition, offset): value}) has `want`
    entries; fails saying `what` if that takes longer than `timeout` s."""
    deadline = time.monotonic() + timeout
    while len(seen) < want:
        assert time.monotonic() < deadline, "%s: consumed %d of %d in %d s" % (what, len(seen), want, timeout)
        msg = consumer.poll(0.2)
        if msg is not None and not msg.error():
            seen[(msg.partition(), msg.offset())] = msg.value()


@pytest.mark.timeout(180)
def test_group_coordinator_moves_when_its_broker_dies(cluster):
    """__consumer_offsets is replicated (offsets.topic.replication.factor 3). A consumer
    group commits, then the broker leading the group's offsets partition (its coordinator) is
    killed with SIGKILL: another replica takes the partition over, reads it back and
    coordinates the group. The committed offsets are all there at the new coordinator, the
    same consumer carries on and commits again, and after the old coordinator restarts and
    catches up a new member resumes exactly at the last commit."""
    from confluent_kafka import Consumer, TopicPartition

    controller_of(cluster)
    topic = unique_topic("grpfail")
    create_topic(cluster.bootstrap, topic, 3, config={"min.insync.replicas": "2"})
    wait_fully_replicated(cluster.nodes, topic, 3)
    acks = Acks()
    producer = idempotent_producer(cluster.bootstrap)
    for p in range(3):
        produce_and_flush(producer, topic, p, [b"g-%d-%04d" % (p, i) for i in range(200)], acks)
    assert not acks.failed and len(acks.ok) == 600, (len(acks.ok), acks.failed[:3])

    group = "failover-" + topic
    conf = {"bootstrap.servers": cluster.bootstrap, "group.id": group, "auto.offset.reset": "earliest",
            "enable.auto.commit": False}
    tps = [TopicPartition(topic, p) for p in range(3)]
    c1 = Consumer(conf)
    seen = {}
    try:
        c1.subscribe([topic])
        consume_group(c1, 600, seen, 60, "before the kill")
        c1.commit(asynchronous=False)
        before = {tp.partition: tp.offset for tp in c1.committed(tps, timeout=20)}
        assert before == {0: 200, 1: 200, 2: 200}, before

        # The offsets topic is replicated: three replicas, all in sync, before the kill.
        offsets_part = java_partition(group)
        state = wait_until("__consumer_offsets-%d has 3 replicas in sync" % offsets_part,
                           lambda: (lambda s: s if s and fully_replicated(s[offsets_part]) else None)(
                               topic_state(cluster.node(1), "__consumer_offsets")))
        victim = state[offsets_part].leader
        cluster.node(victim).kill9()
        t_kill = time.monotonic()
        live = [b for b in cluster.nodes if b.alive()]

        # A client that only asks (OffsetFetch) finds the new coordinator and every commit.
        def committed_at_new_coordinator():
            probe = Consumer(dict(conf, **{"bootstrap.servers": bootstrap_of(live)}))
            try:
                got = {tp.partition: tp.offset for tp in probe.committed(tps, timeout=10)}
            except KafkaException:
                return None
            finally:
                probe.close()
            return got if got == before else None

        after = wait_until("the group's commits are read back by a new coordinator after node %d's kill" % victim,
                           committed_at_new_coordinator, timeout=60)
        t_found = time.monotonic()
        new_leader = topic_state(live[0], "__consumer_offsets")[offsets_part].leader
        print("\ncoordinator node %d killed; node %d coordinates the group; commits %s read back %.2f s later"
              % (victim, new_leader, after, t_found - t_kill))
        assert new_leader != victim and new_leader in ALL, new_leader

        # The same consumer carries on and commits at the new coordinator.
        for p in range(3):
            produce_and_flush(producer, topic, p, [b"h-%d-%04d" % (p, i) for i in range(100)], acks)
        assert not acks.failed, acks.failed[:3]
        consume_group(c1, 900, seen, 90, "after the kill")
        c1.commit(asynchronous=False)
        final = {tp.partition: tp.offset for tp in c1.committed(tps, timeout=20)}
        assert final == {0: 300, 1: 300, 2: 300}, final
    finally:
        c1.close()
    assert sorted(set(seen.values())) == sorted(v for _, _, _, v in acks.ok)

    # The old coordinator comes back as a follower of the offsets partition; a new member
    # of the group starts at the last commit and finds nothing left to read.
    cluster.node(victim).start()
    wait_fully_replicated(cluster.nodes, "__consumer_offsets", 50, timeout=60,
                          what="node %d is back in the ISR of every __consumer_offsets partition" % victim)
    producer.produce(topic, value=b"after-restart", partition=1, on_delivery=acks.cb)
    assert producer.flush(30) == 0 and not acks.failed
    c2 = Consumer(conf)
    try:
        c2.subscribe([topic])
        got = {}
        consume_group(c2, 1, got, 60, "a new member after the restart")
        assert list(got.items()) == [((1, 300), b"after-restart")], got
    finally:
        c2.close()


def produce_v10(node, topic, partition, version=10):
    """One batch sent with Produce `version` (10: KIP-951's hints) to one node: its partition
    answer and the response's node endpoints."""
    batch = wire.encode_batch([wire.Record(value=b"hint")])
    with wire.Conn.to(node.bootstrap) as c:
        body = c.request_flexible(0, version, wire.produce_v9_multi([(topic, [(partition, batch)])]))
    parts, endpoints = wire.parse_produce_v10(body)
    return parts[(topic, partition)], endpoints


@pytest.mark.timeout(120)
def test_produce_to_a_follower_names_the_leader(cluster):
    """KIP-951: Produce v10 sent to a broker that does not lead the partition is answered
    NOT_LEADER_OR_FOLLOWER naming the leader and its leader epoch, with the leader's endpoint
    in the response, so a client goes there without a metadata round trip; v9 carries no
    hint (the fields are v10's). After the leader is killed, a follower names the new one."""
    controller_of(cluster)
    topic = unique_topic("hint")
    create_topic(cluster.bootstrap, topic, 1)
    st = wait_fully_replicated(cluster.nodes, topic, 1)
    leader = st[0].leader
    follower = next(i for i in ALL if i != leader)
    p, endpoints = produce_v10(cluster.node(follower), topic, 0)
    assert p["error"] == 6, p
    host, port = cluster.node(leader).bootstrap.rsplit(":", 1)
    assert p["current_leader"] is not None and p["current_leader"][0] == leader, p
    epoch = p["current_leader"][1]
    assert epoch >= 0
    assert endpoints == {leader: (host, int(port), None)}, endpoints
    p, endpoints = produce_v10(cluster.node(follower), topic, 0, version=9)
    assert p["error"] == 6 and p["current_leader"] is None and endpoints == {}, (p, endpoints)
    p, endpoints = produce_v10(cluster.node(leader), topic, 0)
    assert p["error"] == 0 and p["current_leader"] is None and endpoints == {}, (p, endpoints)

    cluster.node(leader).kill9()
    live = [b for b in cluster.nodes if b.alive()]
    st = wait_until("a new leader", lambda: agreed_state(live, topic, 1, lambda v: v.leader not in (-1, leader)),
                    timeout=SESSION_MS / 1000 + 20)
    new_leader = st[0].leader
    other = next(node_id(b) for b in live if node_id(b) != new_leader)

    def hinted():
        p, endpoints = produce_v10(cluster.node(other), topic, 0)
        return (p, endpoints) if p["current_leader"] and p["current_leader"][0] == new_leader else None
    p, endpoints = wait_until("node %d names the new leader %d" % (other, new_leader), hinted, timeout=20)
    assert p["error"] == 6 and p["current_leader"][1] > epoch, p
    assert new_leader in endpoints, endpoints


def offset_for_leader_epoch_v3(conn, topic, partition, leader_epoch, current_leader_epoch=-1):
    """OffsetForLeaderEpoch v3 for one partition: (error_code, leader_epoch, end_offset)."""
    body = (wire.i32(-1) + wire.array([topic], lambda t: wire.string(t) + wire.array(
        [partition], lambda p: wire.i32(p) + wire.i32(current_leader_epoch) + wire.i32(leader_epoch))))
    r = wire.Reader(conn.request(23, 3, body))
    r.i32()  # throttle
    topics = r.array(lambda r: (r.string(), r.array(lambda r: (r.i16(), r.i32(), r.i32(), r.i64()))))
    (_, [(code, _, epoch, end)]), = topics
    return code, epoch, end


def fetch_v10_error(conn, topic, partition, offset, current_leader_epoch):
    """A Fetch v10 of one partition naming the leader epoch the client believes in: the
    partition's error code."""
    body = (wire.i32(-1) + wire.i32(0) + wire.i32(1) + wire.i32(1 << 20) + wire.i8(0) + wire.i32(0)
            + wire.i32(-1) + wire.array([topic], lambda t: wire.string(t) + wire.array(
                [partition], lambda p: wire.i32(p) + wire.i32(current_leader_epoch) + wire.i64(offset)
                + wire.i64(-1) + wire.i32(1 << 20))) + wire.array([]))
    r = wire.Reader(conn.request(1, 10, body))
    r.i32(), r.i16(), r.i32()  # throttle, error, session
    r.i32()  # one topic
    r.string()
    r.i32()  # one partition
    r.i32()  # partition index
    return r.i16()


@pytest.mark.timeout(150)
def test_leader_epochs_fence_stale_clients(cluster):
    """KIP-320 on a failover: after the leader of epoch 0 is killed and its successor writes
    in a new epoch, the new leader answers OffsetForLeaderEpoch with where epoch 0 ended (so a
    consumer can tell whether what it read was cut back) and where the latest ends; a Fetch
    naming the old epoch is FENCED_LEADER_EPOCH (refresh metadata), one naming an epoch it
    has not heard of UNKNOWN_LEADER_EPOCH (retry), one naming none is served. A consumer with
    librdkafka's defaults (which validates positions with OffsetForLeaderEpoch from 2.1 on)
    then reads every record."""
    controller_of(cluster)
    topic = unique_topic("epochs")
    create_topic(cluster.bootstrap, topic, 1, config={"min.insync.replicas": "2"})
    first = wait_fully_replicated(cluster.nodes, topic, 1)[0].leader
    acks = Acks()
    producer = idempotent_producer(cluster.bootstrap)
    produce_and_flush(producer, topic, 0, [b"e0-%d" % i for i in range(10)], acks)
    with wire.Conn.to(cluster.node(first).bootstrap) as c:
        assert offset_for_leader_epoch_v3(c, topic, 0, 0) == (0, 0, 10)
        assert fetch_v10_error(c, topic, 0, 0, 0) == 0

    cluster.node(first).kill9()
    live = [b for b in cluster.nodes if b.alive()]
    second = wait_until("a new leader of %s-0 after node %d's kill" % (topic, first),
                        lambda: (lambda s: s and s[0].leader not in (first, -1) and s[0].leader)(
                            topic_state(live[0], topic)), timeout=40)
    produce_and_flush(producer, topic, 0, [b"e1-%d" % i for i in range(5)], acks)
    assert not acks.failed and len(acks.ok) == 15, acks.failed[:3]
    with wire.Conn.to(cluster.node(second).bootstrap) as c:
        code, latest, end = offset_for_leader_epoch_v3(c, topic, 0, 1000)
        assert code == 0 and latest >= 1 and end == 15, (code, latest, end)
        assert offset_for_leader_epoch_v3(c, topic, 0, 0) == (0, 0, 10), "epoch 0 ends where the first leader stopped"
        assert offset_for_leader_epoch_v3(c, topic, 0, latest, current_leader_epoch=latest) == (0, latest, 15)
        FENCED_LEADER_EPOCH, UNKNOWN_LEADER_EPOCH = 74, 75
        assert fetch_v10_error(c, topic, 0, 0, 0) == FENCED_LEADER_EPOCH
        assert fetch_v10_error(c, topic, 0, 0, latest + 5) == UNKNOWN_LEADER_EPOCH
        assert fetch_v10_error(c, topic, 0, 0, latest) == 0
        assert fetch_v10_error(c, topic, 0, 0, -1) == 0
        assert offset_for_leader_epoch_v3(c, topic, 0, 0, current_leader_epoch=0)[0] == FENCED_LEADER_EPOCH
    assert_log_is(bootstrap_of(live), topic, 0, acks.of(0))


def list_offsets_v4(conn, topic, partition, timestamp=-1):
    """ListOffsets v4 (read_uncommitted) for one partition: (error_code, offset, leader_epoch)."""
    body = (wire.i32(-1) + wire.i8(0) + wire.array([topic], lambda t: wire.string(t) + wire.array(
        [partition], lambda p: wire.i32(p) + wire.i32(-1) + wire.i64(timestamp))))
    r = wire.Reader(conn.request(2, 4, body))
    r.i32()  # throttle
    topics = r.array(lambda r: (r.string(), r.array(lambda r: (r.i32(), r.i16(), r.i64(), r.i64(), r.i32()))))
    (_, [(_, code, _, offset, epoch)]), = topics
    return code, offset, epoch


@pytest.mark.timeout(180)
def test_new_leader_behind_its_epoch_start_answers_offset_not_available(cluster_factory):
    """KIP-207 on a five-node cluster (the metadata quorum outlives two nodes down): a new
    leader whose high watermark is still below the start of its epoch does not know the
    latest offset (the last leader may have answered a higher one), and answers ListOffsets
    OFFSET_NOT_AVAILABLE, which clients retry, until its high watermark gets there.

    Set-up: a partition on three nodes that are not the controller, min.insync.replicas=2.
    The second follower is paused (SIGSTOP), so the leader's high watermark stays where it
    was; 30 acks=1 records then reach the leader and the first follower only. The leader is
    killed: the first follower is elected, alone in the ISR (under min.insync.replicas), its
    epoch starting past its high watermark. After SIGCONT the other follower catches up and
    rejoins the ISR, the high watermark passes the epoch start, and ListOffsets answers it;
    a consumer with librdkafka's defaults reads every record."""
    cluster, _, replicas, topic = five_nodes_one_partition(cluster_factory, "notavail")
    leader, heir, paused = replicas
    acks = Acks()
    produce_and_flush(idempotent_producer(cluster.bootstrap), topic, 0, [b"all-%02d" % i for i in range(10)], acks)
    assert not acks.failed and len(acks.ok) == 10, acks.failed[:3]
    wait_until("node %d holds the first 10 records" % paused,
               lambda: len(records_in(segment0(cluster.node(paused), topic, 0))) == 10, timeout=20)

    os.kill(cluster.node(paused).pid, signal.SIGSTOP)
    try:
        one = Acks()
        produce_and_flush(ck_producer(cluster.node(leader).bootstrap, acks=1), topic, 0,
                          [b"one-%02d" % i for i in range(30)], one)
        assert not one.failed and len(one.ok) == 30, [str(e) for _, _, e in one.failed][:3]
        wait_until("node %d holds all 40 records" % heir,
                   lambda: len(records_in(segment0(cluster.node(heir), topic, 0))) == 40, timeout=20)
        with wire.Conn.to(cluster.node(leader).bootstrap) as c:
            code, hw, _ = list_offsets_v4(c, topic, 0)
        assert code == 0 and hw == 10, "the paused follower holds the high watermark at 10: %r" % ((code, hw),)

        cluster.node(leader).kill9()
        live = [b for b in cluster.nodes if b.alive() and node_id(b) != paused]
        wait_until("the live nodes show node %d leading %s-0 alone in its ISR" % (heir, topic),
                   lambda: agreed_state(live, topic, 1, lambda v: v.leader == heir and v.isr == [heir]),
                   timeout=SESSION_MS / 1000 + 20)
        with wire.Conn.to(cluster.node(heir).bootstrap) as c:
            OFFSET_NOT_AVAILABLE = 78
            assert list_offsets_v4(c, topic, 0)[0] == OFFSET_NOT_AVAILABLE
            # A timestamp past every record is not known either; the earliest offset is.
            assert list_offsets_v4(c, topic, 0, timestamp=int(time.time() * 1000) + 3_600_000)[0] == \
                OFFSET_NOT_AVAILABLE
            assert list_offsets_v4(c, topic, 0, timestamp=-2)[:2] == (0, 0)
            # Version 1 has no such error (Kafka answers it the high watermark).
            v1 = wire.parse_list_offsets_v1(c.request(2, 1, wire.list_offsets_v1(topic, 0, -1)))[(topic, 0)]
            assert (v1["error"], v1["offset"]) == (0, 10), v1
        consumer = ck_consumer(cluster.node(heir).bootstrap)
        try:
            with pytest.raises(KafkaException) as stuck:
                consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=3)
        finally:
            consumer.close()
        print("\nconfluent-kafka's get_watermark_offsets while the high watermark is behind: %s" % stuck.value)
    finally:
        os.kill(cluster.node(paused).pid, signal.SIGCONT)

    live = [b for b in cluster.nodes if b.alive()]
    wait_until("node %d rejoins %s-0's ISR" % (paused, topic),
               lambda: agreed_state(live, topic, 1, lambda v: v.leader == heir and v.isr == sorted([heir, paused])),
               timeout=60)

    def answered():
        with wire.Conn.to(cluster.node(heir).bootstrap) as c:
            code, offset, _ = list_offsets_v4(c, topic, 0)
        return offset if code == 0 else None
    assert wait_until("ListOffsets answered by node %d" % heir, answered, timeout=20) == 40
    consumer = ck_consumer(cluster.node(heir).bootstrap)
    try:
        assert consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10) == (0, 40)
    finally:
        consumer.close()
    assert_log_is(bootstrap_of(live), topic, 0, acks.of(0) + one.of(0))
    for b in cluster.nodes:
        b.kill9()


@pytest.mark.timeout(180)
def test_acks_all_waiting_on_paused_followers_times_out_or_fails_after_append(cluster_factory):
    """A produce with acks=all that the leader has appended but its followers do not copy is
    never left hanging: on five nodes (the metadata quorum outlives two paused ones), a
    partition on three nodes that are not the controller, min.insync.replicas=2, both
    followers paused (SIGSTOP). A Produce with a 1.5 s timeout is answered REQUEST_TIMED_OUT
    when the timeout is up (the ISR is still whole); one with a 30 s timeout is answered
    NOT_ENOUGH_REPLICAS_AFTER_APPEND once the followers are fenced and the ISR shrinks to the
    leader (broker.session.timeout.ms, 4 s), and a new one is refused NOT_ENOUGH_REPLICAS
    before it is written. Resumed, the followers rejoin the ISR and acks=all is acknowledged
    again."""
    cluster, _, replicas, topic = five_nodes_one_partition(cluster_factory, "afterappend")
    leader, followers = replicas[0], replicas[1:]
    REQUEST_TIMED_OUT, NOT_ENOUGH_REPLICAS, NOT_ENOUGH_REPLICAS_AFTER_APPEND = 7, 19, 20
    batch = lambda v: wire.encode_batch([wire.Record(value=v)])  # noqa: E731
    with wire.Conn.to(cluster.node(leader).bootstrap, timeout=40) as c:
        assert c.produce_multi([(topic, [(0, batch(b"first"))])], acks=-1)[(topic, 0)]["error"] == 0
        for f in followers:
            os.kill(cluster.node(f).pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            r = c.produce_multi([(topic, [(0, batch(b"timed-out"))])], acks=-1, timeout_ms=1500)[(topic, 0)]
            took = time.monotonic() - t0
            assert r["error"] == REQUEST_TIMED_OUT, r
            assert took >= 1.4, "answered after %.2f s, before its 1.5 s timeout" % took
            t0 = time.monotonic()
            r = c.produce_multi([(topic, [(0, batch(b"after-append"))])], acks=-1, timeout_ms=30000)[(topic, 0)]
            took = time.monotonic() - t0
            assert r["error"] == NOT_ENOUGH_REPLICAS_AFTER_APPEND, r
            assert took < 25, "answered only after %.1f s: at its timeout, not when the ISR shrank" % took
            r = c.produce_multi([(topic, [(0, batch(b"refused"))])], acks=-1, timeout_ms=30000)[(topic, 0)]
            assert r["error"] == NOT_ENOUGH_REPLICAS, r
            print("\nacks=all with both followers paused: REQUEST_TIMED_OUT at 1.5 s, "
                  "NOT_ENOUGH_REPLICAS_AFTER_APPEND after %.1f s (session %d ms)" % (took, SESSION_MS))
        finally:
            for f in followers:
                os.kill(cluster.node(f).pid, signal.SIGCONT)
    wait_until("the followers rejoin %s-0's ISR" % topic,
               lambda: agreed_state(cluster.nodes, topic, 1,
                                    lambda v: v.leader == leader and v.isr == sorted(replicas)), timeout=60)
    acks = Acks()
    produce_and_flush(idempotent_producer(cluster.bootstrap), topic, 0, [b"again-%d" % i for i in range(5)], acks)
    assert not acks.failed and len(acks.ok) == 5, acks.failed[:3]
    values = [v for _, v in assert_log_is(cluster.bootstrap, topic, 0, acks.of(0), exact=False)]
    assert values[0] == b"first" and b"refused" not in values, values
    for b in cluster.nodes:
        b.kill9()


@pytest.mark.timeout(150)
def test_kcat_producer_carries_on_when_the_leader_is_killed(cluster):
    """kcat -P (Debian's, librdkafka 2.0.2) with its defaults (acks=all, retries, no
    idempotence: a retried record may be written twice) feeds a partition line by line while
    its leader is killed with SIGKILL. It carries on against the new leader and exits once
    every line is delivered, reporting no failure; after the node is back every line is in the
    log. The topic stamps records with the broker's append time (LogAppendTime), so the log
    itself says how long the partition took nothing: printed."""
    controller = controller_of(cluster)
    topic = unique_topic("kcatkill")
    create_topic(cluster.bootstrap, topic, 1, config={"min.insync.replicas": "2",
                                                      "message.timestamp.type": "LogAppendTime"})
    state = wait_fully_replicated(cluster.nodes, topic, 1)
    victim = state[0].leader
    others = [b for b in cluster.nodes if node_id(b) != victim]
    kcat = subprocess.Popen(["kcat", "-P", "-b", bootstrap_of(others), "-t", topic, "-p", "0"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines = []
    t_kill = None
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 6:
            line = b"kcat-%05d" % len(lines)
            kcat.stdin.write(line + b"\n")
            kcat.stdin.flush()
            lines.append(line)
            if t_kill is None and time.monotonic() - t0 >= 1.5:
                cluster.node(victim).kill9()
                t_kill = time.time()
            time.sleep(0.005)
        kcat.stdin.close()
        rc = kcat.wait(timeout=90)
    finally:
        if kcat.poll() is None:
            kcat.kill()
            kcat.wait()
    err = kcat.stderr.read().decode(errors="replace")
    assert rc == 0 and "Delivery failed" not in err, "kcat rc=%s: %s" % (rc, err[-2000:])

    cluster.node(victim).start()
    wait_fully_replicated(cluster.nodes, topic, 1, timeout=60, what="node %d back in the ISR" % victim)
    got = ck_consume(cluster.bootstrap, topic, {0: 0}, expected_counts={0: len(lines)})[0]
    values = [m.value() for m in got]
    missing = sorted(set(lines) - set(values))
    assert not missing, "%d of %d lines kcat delivered are not in the log, first %r" % (
        len(missing), len(lines), missing[:3])
    times = [m.timestamp()[1] / 1000 for m in got]
    gap, at = max((b - a, a) for a, b in zip(times, times[1:]))
    print("\nkcat: %d lines, %d records in the log (%d repeated); leader %d killed; no record appended for "
          "%.2f s from %.2f s after the kill (controller %d, session %d ms)"
          % (len(lines), len(values), len(values) - len(set(values)), victim, gap, at - t_kill, controller,
             SESSION_MS))
    assert set(values) <= set(lines), "records kcat never sent: %r" % sorted(set(values) - set(lines))[:3]
