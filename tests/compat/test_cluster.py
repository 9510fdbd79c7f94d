"""A three-node Sluice cluster on loopback, driven by real clients with their defaults.

Each node is started as a Kafka user would start a KRaft combined node: `process.roles=
broker,controller`, its `node.id`, a PLAINTEXT and a CONTROLLER listener, and the same
`controller.quorum.voters`. The nodes elect a controller among themselves, register as
brokers, and place a new topic's partitions across all three; clients find each partition's
leader through Metadata from any node. Killing the controller (kill -9) moves the role to
another voter; killing a broker fences it until it comes back.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time

import pytest

from clients import ck_admin, ck_consume, ck_produce, ck_producer
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import ConfigResource, NewTopic, ResourceType
import wire
from conftest import Broker, BrokerStartError, free_port, unique_topic

# Short enough that the fencing test does not wait long; the heartbeat keeps Kafka's default.
SESSION_MS = 4000


class Cluster:
    def __init__(self, n=3, overrides=None):
        self.base = tempfile.mkdtemp(prefix="sluice-cluster-")
        ports = [(free_port(), free_port()) for _ in range(n)]
        voters = ",".join("%d@127.0.0.1:%d" % (i + 1, c) for i, (_, c) in enumerate(ports))
        self.nodes = []
        for i, (client, controller) in enumerate(ports):
            d = os.path.join(self.base, "node%d" % (i + 1))
            b = Broker(os.path.join(d, "data"), port=client, workdir=os.path.join(d, "run"), overrides={
                "node.id": i + 1,
                "process.roles": "broker,controller",
                "listeners": "PLAINTEXT://127.0.0.1:%d,CONTROLLER://127.0.0.1:%d" % (client, controller),
                "controller.listener.names": "CONTROLLER",
                "controller.quorum.voters": voters,
                "broker.session.timeout.ms": SESSION_MS,
                **(overrides or {}),
            })
            self.nodes.append(b)

    def start(self):
        for b in self.nodes:
            b.start()
        return self

    @property
    def bootstrap(self):
        return ",".join(b.bootstrap for b in self.nodes if b.alive())

    def node(self, node_id) -> Broker:
        return self.nodes[node_id - 1]

    def close(self, keep):
        for b in self.nodes:
            b.stop()
        if not keep:
            shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def started(request, c, kill9_at_end=False):
    """Starts Cluster `c` for the test; at the end stops every node by PID (SIGKILL first with
    `kill9_at_end`) and removes the temp dir, unless the test failed."""
    request.node._sluice_brokers = c.nodes
    try:
        c.start()
    except BrokerStartError as e:
        c.close(keep=True)
        pytest.fail(str(e), pytrace=False)
    yield c
    failed = any(getattr(request.node, "rep_" + w, None) is not None
                 and getattr(request.node, "rep_" + w).failed for w in ("setup", "call"))
    if kill9_at_end:
        for b in c.nodes:
            b.kill9()
    c.close(keep=failed)
    if failed:
        print("cluster temp dir kept: %s" % c.base)


@pytest.fixture
def cluster(request):
    with started(request, Cluster()) as c:
        yield c


def view(node: Broker, topic=None):
    """What one node says: its brokers, its controller, and a topic's partition leaders."""
    md = ck_admin(node.bootstrap).list_topics(topic=topic, timeout=5)
    leaders = None
    if topic is not None:
        t = md.topics.get(topic)
        if t is not None and t.error is None:
            leaders = {p: v.leader for p, v in t.partitions.items()}
    return sorted(md.brokers), md.controller_id, leaders


def wait_until(what, check, timeout=30):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as e:  # a node still starting, a metadata timeout
            last = e
        time.sleep(0.2)
    raise AssertionError("timed out waiting until %s (last: %r)" % (what, last))


def all_agree(cluster, brokers, topic=None, partitions=None):
    views = [view(b, topic) for b in cluster.nodes if b.alive()]
    ok = all(v[0] == brokers and v[1] in brokers and v[1] == views[0][1] for v in views)
    if topic is not None:
        ok = ok and all(v[2] is not None and len(v[2]) == partitions and all(l in brokers for l in v[2].values())
                        for v in views)
    return views if ok else None


def create_topic(bootstrap, topic, partitions):
    """Creates a topic through the admin client, retrying as an application would while the
    controller moves (the client itself retries NOT_CONTROLLER)."""
    def attempt():
        admin = ck_admin(bootstrap)  # kept alive until its future is answered
        futs = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)],
                                   request_timeout=15)
        futs[topic].result(timeout=20)
        return True
    wait_until("topic %s is created" % topic, attempt, timeout=40)


@pytest.mark.timeout(180)
def test_three_nodes_elect_a_controller_and_spread_a_topic(cluster):
    views = wait_until("every node lists brokers 1-3 and one controller", lambda: all_agree(cluster, [1, 2, 3]))
    controller = views[0][1]
    assert controller in (1, 2, 3)

    topic = unique_topic("cluster")
    create_topic(cluster.bootstrap, topic, 6)
    views = wait_until("every node knows the topic's six leaders",
                       lambda: all_agree(cluster, [1, 2, 3], topic, 6))
    leaders = views[0][2]
    assert all(v[2] == leaders for v in views), views
    # Round robin over three live brokers: two partitions each.
    assert sorted(leaders.values()) == [1, 1, 2, 2, 3, 3], leaders
    # Each broker keeps files only for the partitions it leads.
    for p, leader in leaders.items():
        for b in cluster.nodes:
            held = os.path.isdir(b.partition_dir(topic, p))
            assert held == (b is cluster.node(leader)), (p, leader, b.bootstrap, held)

    # A producer with the library's defaults, bootstrapped from one node, reaches every leader.
    items = [{"value": b"m-%d-%d" % (i % 6, i), "partition": i % 6} for i in range(600)]
    reports = ck_produce(ck_producer(cluster.node(1).bootstrap), topic, items)
    assert all(r.err is None for r in reports), [r.err for r in reports if r.err][:3]
    got = ck_consume(cluster.node(2).bootstrap, topic, {p: 0 for p in range(6)},
                     expected_counts={p: 100 for p in range(6)})
    for p in range(6):
        want = [it["value"] for it in items if it["partition"] == p]
        assert [m.value() for m in got[p]] == want, "partition %d came back out of order or incomplete" % p
        assert [m.offset() for m in got[p]] == list(range(100))

    # A topic config changed at runtime takes effect on every leader: the controller records it,
    # each node applies it (max.message.bytes refuses a 20 KB record on all six partitions).
    admin = ck_admin(cluster.bootstrap)
    res = ConfigResource(ResourceType.TOPIC, topic, set_config={"max.message.bytes": "10000"})
    list(admin.alter_configs([res], request_timeout=15).values())[0].result(timeout=15)

    def all_refuse():
        big = [{"value": b"x" * 20_000, "partition": p} for p in range(6)]
        reports = ck_produce(ck_producer(cluster.node(1).bootstrap, retries=0), topic, big)
        codes = [r.err.code() if r.err else None for r in reports]
        return codes if all(c == KafkaError.MSG_SIZE_TOO_LARGE for c in codes) else None

    wait_until("every leader refuses a batch over the new max.message.bytes", all_refuse)

    # Debian's kcat (librdkafka 2.0.2) lists the three brokers too.
    out = subprocess.run(["kcat", "-b", cluster.node(3).bootstrap, "-L", "-t", topic],
                         capture_output=True, text=True, timeout=30).stdout
    assert "3 brokers:" in out, out
    for p, leader in leaders.items():
        assert "partition %d, leader %d," % (p, leader) in out, out


def _create_topics_v2(name, partitions):
    body = wire.array([wire.string(name) + wire.i32(partitions) + wire.i16(-1) + wire.array([]) + wire.array([])])
    return body + wire.i32(15000) + wire.i8(0)


def _incremental_alter_v0(name, key, value, resource_type=2):
    config = wire.string(key) + wire.i8(0) + wire.string(value)  # SET
    return wire.array([wire.i8(resource_type) + wire.string(name) + wire.array([config])]) + wire.i8(0)


def test_admin_requests_to_any_node_reach_the_controller(cluster):
    """KIP-590: a broker that is not the controller forwards what only the controller can do
    (the Java admin client sends topic config changes to any broker), and relays the answer."""
    views = wait_until("every node lists brokers 1-3 and one controller", lambda: all_agree(cluster, [1, 2, 3]))
    controller = views[0][1]
    other = next(b for b in cluster.nodes if int(b.overrides["node.id"]) != controller)
    topic = unique_topic("forwarded")
    with wire.Conn.to(other.bootstrap, timeout=20) as c:
        r = wire.Reader(c.request(19, 2, _create_topics_v2(topic, 3)))  # CreateTopics v2
        r.i32()  # throttle
        (name, code, msg), = r.array(lambda r: (r.string(), r.i16(), r.string()))
        assert (name, code) == (topic, 0), (name, code, msg)
        r = wire.Reader(c.request(44, 0, _incremental_alter_v0(topic, "retention.ms", "7200000")))
        r.i32()
        (code, msg, rtype, rname), = r.array(lambda r: (r.i16(), r.string(), r.i8(), r.string()))
        assert (code, rtype, rname) == (0, 2, topic), (code, msg, rtype, rname)
    wait_until("every node knows the forwarded topic", lambda: all_agree(cluster, [1, 2, 3], topic, 3))
    # Each node applied the change: DescribeConfigs v1 sent to each one.
    describe = wire.array([wire.i8(2) + wire.string(topic) + wire.array(["retention.ms"], wire.string)]) + wire.i8(0)

    def entry(r):
        name, value, _ro, source, _sens = r.string(), r.string(), r.i8(), r.i8(), r.i8()
        r.array(lambda r: (r.string(), r.string(), r.i8()))
        return name, value, source

    for b in cluster.nodes:
        def applied():
            with wire.Conn.to(b.bootstrap) as c:
                r = wire.Reader(c.request(32, 1, describe))
                r.i32()
                (code, _msg, _t, _n, configs), = r.array(
                    lambda r: (r.i16(), r.string(), r.i8(), r.string(), r.array(entry)))
                return code == 0 and configs == [("retention.ms", "7200000", 1)]
        wait_until("node %s applied the forwarded config change" % b.overrides["node.id"], applied)

    # A cluster-wide dynamic broker config, sent to a broker that is not the controller: every
    # node takes it, as DYNAMIC_DEFAULT_BROKER_CONFIG (3).
    with wire.Conn.to(other.bootstrap, timeout=20) as c:
        r = wire.Reader(c.request(44, 0, _incremental_alter_v0("", "message.max.bytes", "2000000", 4)))
        r.i32()
        (code, msg, rtype, rname), = r.array(lambda r: (r.i16(), r.string(), r.i8(), r.string()))
        assert (code, rtype, rname) == (0, 4, ""), (code, msg, rtype, rname)
    for b in cluster.nodes:
        me = b.overrides["node.id"]
        ask = wire.array([wire.i8(4) + wire.string(str(me)) + wire.array(["message.max.bytes"], wire.string)])

        def taken():
            with wire.Conn.to(b.bootstrap) as c:
                r = wire.Reader(c.request(32, 1, ask + wire.i8(0)))
                r.i32()
                (code, _msg, _t, _n, configs), = r.array(
                    lambda r: (r.i16(), r.string(), r.i8(), r.string(), r.array(entry)))
                return code == 0 and configs == [("message.max.bytes", "2000000", 3)]
        wait_until("node %s took the cluster-wide broker config" % me, taken)

    # A manual replica assignment (kafka-topics --replica-assignment), sent to a broker that
    # is not the controller: the partitions get exactly the replicas asked for, leader first;
    # assignments Kafka refuses are refused with its errors.
    admin = ck_admin(other.bootstrap)
    placed = unique_topic("placed")
    want = [[2, 3], [3, 1], [1, 2]]
    admin.create_topics([NewTopic(placed, num_partitions=3, replica_assignment=want)])[placed].result(20)

    def as_asked():
        md = admin.list_topics(placed, timeout=10).topics[placed]
        got = [md.partitions[p].replicas for p in sorted(md.partitions)] if md.error is None else None
        return got == want and [md.partitions[p].leader for p in sorted(md.partitions)] == [2, 3, 1]
    wait_until("%s has the replicas it was created with" % placed, as_asked)
    for bad in ([[1, 1]], [[1, 9]], [[1, 2], [3]]):
        t = unique_topic("badplace")
        f = admin.create_topics([NewTopic(t, num_partitions=len(bad), replica_assignment=bad)])[t]
        with pytest.raises(KafkaException) as e:
            f.result(20)
        assert e.value.args[0].code() == KafkaError.INVALID_REPLICA_ASSIGNMENT, (bad, e.value)


@pytest.mark.timeout(180)
def test_killed_controller_is_replaced_and_rejoins(cluster):
    views = wait_until("a controller is elected", lambda: all_agree(cluster, [1, 2, 3]))
    old = views[0][1]
    cluster.node(old).kill9()
    t0 = time.monotonic()
    others = [b for b in cluster.nodes if b.alive()]

    def new_controller():
        ids = {view(b)[1] for b in others}
        return ids.pop() if len(ids) == 1 and ids != {old} and ids <= {1, 2, 3} else None

    new = wait_until("another voter takes over", new_controller)
    took = time.monotonic() - t0
    print("controller %d killed; node %d took over in %.1f s" % (old, new, took))
    assert took < 20

    topic = unique_topic("after-failover")
    create_topic(cluster.bootstrap, topic, 4)
    live = sorted(int(b.overrides["node.id"]) for b in others)
    wait_until("the two live nodes know the new topic",
               lambda: all(v[2] is not None and len(v[2]) == 4 for v in (view(b, topic) for b in others)))

    cluster.node(old).start()
    wait_until("the old controller rejoins as a broker and knows the new topic",
               lambda: all_agree(cluster, [1, 2, 3], topic, 4), timeout=60)
    assert view(cluster.node(old))[1] == new, "the old controller took the role back on restart"
    assert live == sorted(set([1, 2, 3]) - {old})


@pytest.mark.timeout(180)
def test_a_silent_broker_is_fenced_and_comes_back(cluster):
    views = wait_until("a controller is elected", lambda: all_agree(cluster, [1, 2, 3]))
    controller = views[0][1]
    topic = unique_topic("fence")
    create_topic(cluster.bootstrap, topic, 3)
    views = wait_until("the topic is placed", lambda: all_agree(cluster, [1, 2, 3], topic, 3))
    victim = next(i for i in (1, 2, 3) if i != controller)
    lost = [p for p, l in views[0][2].items() if l == victim]
    assert lost, views[0][2]

    cluster.node(victim).kill9()
    others = [b for b in cluster.nodes if b.alive()]
    survivors = sorted(set([1, 2, 3]) - {victim})

    def fenced():
        vs = [view(b, topic) for b in others]
        return all(v[0] == survivors and all(v[2][p] == -1 for p in lost) for v in vs) and vs

    wait_until("the killed broker is fenced and its partitions have no leader", fenced,
               timeout=SESSION_MS / 1000 + 20)

    cluster.node(victim).start()
    wait_until("the broker is unfenced and leads its partitions again",
               lambda: all_agree(cluster, [1, 2, 3], topic, 3), timeout=60)
    items = [{"value": b"after-%d" % p, "partition": p} for p in lost]
    reports = ck_produce(ck_producer(cluster.bootstrap), topic, items)
    assert all(r.err is None for r in reports), [r.err for r in reports]


@pytest.mark.timeout(180)
def test_consumer_group_spans_the_cluster(cluster):
    """A consumer group's coordinator is the broker leading its __consumer_offsets partition;
    members bootstrapped from different nodes find it, split the partitions, and commit."""
    from confluent_kafka import Consumer, TopicPartition

    wait_until("a controller is elected", lambda: all_agree(cluster, [1, 2, 3]))
    topic = unique_topic("group")
    create_topic(cluster.bootstrap, topic, 6)
    wait_until("the topic is placed", lambda: all_agree(cluster, [1, 2, 3], topic, 6))
    items = [{"value": b"g-%d" % i, "partition": i % 6} for i in range(300)]
    assert all(r.err is None for r in ck_produce(ck_producer(cluster.bootstrap), topic, items))

    group = "cluster-group-" + topic
    members = [Consumer({"bootstrap.servers": cluster.node(i).bootstrap, "group.id": group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
               for i in (1, 3)]
    try:
        for m in members:
            m.subscribe([topic])
        seen = {}
        deadline = time.monotonic() + 90
        while len(seen) < len(items) and time.monotonic() < deadline:
            for m in members:
                msg = m.poll(0.2)
                if msg is None or msg.error():
                    continue
                seen[(msg.partition(), msg.offset())] = msg.value()
        assert len(seen) == len(items), "consumed %d of %d" % (len(seen), len(items))
        assert sorted(seen.values()) == sorted(it["value"] for it in items)
        for m in members:
            m.commit(asynchronous=False)
        # Both members ask the one coordinator: each sees the whole group's commits (two
        # coordinators would each know only their own member's half).
        for i, m in enumerate(members):
            got = {tp.partition: tp.offset
                   for tp in m.committed([TopicPartition(topic, p) for p in range(6)], timeout=20)}
            assert got == {p: 50 for p in range(6)}, (i, got)
    finally:
        for m in members:
            m.close()


@pytest.mark.timeout(180)
def test_default_idempotent_producers_on_every_node(cluster):
    """kafka-python's default producer is idempotent (in 3.x) and asks any broker for a
    producer id; confluent-kafka's is asked to be. Each broker gets its ids in blocks the
    controller records, so every node can answer. Two producers given one id would have the
    second one's batches taken for duplicates of the first's, and records would be missing."""
    from kafka import KafkaProducer
    views = wait_until("a controller is elected", lambda: all_agree(cluster, [1, 2, 3]))
    controller = views[0][1]
    topic = unique_topic("idem")
    create_topic(cluster.bootstrap, topic, 3)
    wait_until("the topic is placed", lambda: all_agree(cluster, [1, 2, 3], topic, 3))
    sent = {p: [] for p in range(3)}
    for node_id in (1, 2, 3):
        # Bootstrapped from one node only: its producer id comes from that node.
        kp = KafkaProducer(bootstrap_servers=cluster.node(node_id).bootstrap, linger_ms=5,
                           request_timeout_ms=15000, max_block_ms=30000)
        for i in range(30):
            v = b"kp-%d-%d" % (node_id, i)
            kp.send(topic, value=v, partition=i % 3).get(timeout=30)
            sent[i % 3].append(v)
        kp.close()
        ck = ck_producer(cluster.node(node_id).bootstrap, **{"enable.idempotence": True})
        items = [{"value": b"ck-%d-%d" % (node_id, i), "partition": i % 3} for i in range(30)]
        assert all(r.err is None for r in ck_produce(ck, topic, items))
        for it in items:
            sent[it["partition"]].append(it["value"])
    got = ck_consume(cluster.node(controller).bootstrap, topic, {p: 0 for p in range(3)},
                     expected_counts={p: len(v) for p, v in sent.items()})
    for p in range(3):
        assert [m.value() for m in got[p]] == sent[p], "partition %d: duplicates, gaps or reordering" % p


@pytest.mark.timeout(180)
def test_a_broker_behind_the_metadata_log_start_catches_up_from_a_snapshot(request):
    """With a metadata snapshot due every 256 bytes of records, a broker that is down while
    30 topics are made finds, on its return, that the others have deleted the start of their
    metadata log (each keeps a segment or two and one snapshot): it fetches the controller's
    snapshot, takes its image, and serves as before: every topic listed, a new topic spread
    over all three."""
    c = Cluster(overrides={"metadata.log.max.record.bytes.between.snapshots": 256})
    request.node._sluice_brokers = c.nodes
    try:
        c.start()
        views = wait_until("every node lists brokers 1-3 and one controller", lambda: all_agree(c, [1, 2, 3]))
        away = next(b for b in c.nodes if int(b.overrides["node.id"]) != views[0][1])
        away.kill9()
        topics = [unique_topic("behind") for _ in range(30)]
        for t in topics:
            create_topic(c.bootstrap, t, 1)
        here = [b for b in c.nodes if b is not away]

        def trimmed():
            out = []
            for b in here:
                files = os.listdir(os.path.join(b.data_dir, ".sluice-meta"))
                segs = [f for f in files if f.startswith("quorum") and f.endswith(".log")]
                snaps = [f for f in files if f.endswith(".checkpoint")]
                if "quorum.log" in segs or len(segs) > 2 or len(snaps) != 1:
                    return None
                out.append((sorted(segs), snaps))
            return out
        print(wait_until("the others deleted the start of their metadata log", trimmed, timeout=30))
        away.start()
        wait_until("all three list brokers 1-3 and every topic",
                   lambda: all(all_agree(c, [1, 2, 3], t, 1) for t in (topics[0], topics[-1])))
        with open(away.stderr_path, "rb") as f:
            log = f.read().decode("utf-8", "replace")
        assert "metadata snapshot fetched from the leader" in log, log[-3000:]
        md = ck_admin(away.bootstrap).list_topics(timeout=10)
        missing = [t for t in topics if t not in md.topics]
        assert not missing, "the returning broker lacks %d topics, first %s" % (len(missing), missing[:3])
        spread = unique_topic("spread")
        create_topic(c.bootstrap, spread, 6)
        views = wait_until("%s is led on all three" % spread,
                           lambda: (lambda v: v if v and set(v[0][2].values()) == {1, 2, 3} else None)(
                               all_agree(c, [1, 2, 3], spread, 6)))
        items = [{"value": b"v-%d" % i, "partition": i % 6} for i in range(60)]
        reports = ck_produce(ck_producer(away.bootstrap), spread, items)
        assert all(r.err is None for r in reports), [r.err for r in reports if r.err][:3]
        got = ck_consume(away.bootstrap, spread, {p: 0 for p in range(6)}, expected_counts={p: 10 for p in range(6)})
        for p in range(6):
            assert [m.value() for m in got[p]] == [it["value"] for it in items if it["partition"] == p]
    finally:
        failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
        c.close(keep=failed)
